//! Workload identity on Kubernetes: a sidecar proves who it is with its pod's projected
//! service-account token (audience [`AUDIENCE`]), and the zone asks the API server about it with
//! an `authentication.k8s.io/v1` `TokenReview` ([`KubeTokenReviewer`]).
//!
//! The verdict ([`verdict`], pure) accepts only a token the API server authenticated, for the
//! audience the zone asked for — an API server that does not confirm the audience is refused
//! too, as the TokenReview API asks of its clients — as a user `system:serviceaccount:NS:SA`.
//! The workload CA ([`crate::identity`]) then signs exactly `spiffe://TD/ns/NS/sa/SA`.
//!
//! The zone's service account needs `create` on `tokenreviews` (cluster scope).

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};

use crate::identity::{ReviewError, ServiceAccount, TokenReviewer};

/// The audience of the projected token the injected sidecar presents.
pub const AUDIENCE: &str = "strait";

/// How long one review may take before the sidecar is told to try again.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Reviews tokens with the cluster's API server.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
    audience: String,
}

impl fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeTokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
    /// Reviews for [`AUDIENCE`].
    pub fn new(client: kube::Client) -> Self {
        Self::with_audience(client, AUDIENCE)
    }

    pub fn with_audience(client: kube::Client, audience: impl Into<String>) -> Self {
        Self {
            client,
            audience: audience.into(),
        }
    }
}

#[tonic::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<ServiceAccount, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(vec![self.audience.clone()]),
                token: Some(token.to_owned()),
            },
            ..TokenReview::default()
        };
        let reviewed =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    ReviewError::Unavailable(format!("no answer within {REVIEW_TIMEOUT:?}"))
                })?
                .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        verdict(reviewed.status.as_ref(), &self.audience)
    }
}

/// Whom a TokenReview's status authenticates, for a review that asked for `audience`.
pub fn verdict(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<ServiceAccount, ReviewError> {
    let Some(status) = status else {
        return Err(ReviewError::Unavailable(
            "the API server's answer has no status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "authenticated: false".into());
        return Err(ReviewError::NotAuthenticated(reason));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(ReviewError::WrongAudience {
            expected: audience.to_owned(),
            got: audiences,
        });
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    ServiceAccount::from_username(&username).ok_or(ReviewError::NotServiceAccount(username))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use http::Method;
    use serde_json::{Value, json};

    use super::super::fake_api;
    use super::*;

    const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

    /// Runs one review of `token` against an API server that answers with `status` (a
    /// TokenReview status) or, with `error`, an API error; returns the verdict.
    async fn review_answered(
        token: &str,
        answer: impl FnOnce(fake_api::Call),
    ) -> Result<ServiceAccount, ReviewError> {
        let (client, mut api) = fake_api::client();
        let reviewer = KubeTokenReviewer::new(client);
        let token = token.to_owned();
        let review = tokio::spawn(async move { reviewer.review(&token).await });
        let call = api.expect(Method::POST, PATH).await;
        answer(call);
        review.await.unwrap()
    }

    /// Answers as the API server does: the request's spec back, with `status`.
    fn reviewed(status: Value) -> impl FnOnce(fake_api::Call) {
        move |call: fake_api::Call| {
            let mut body = call.body.clone();
            body["status"] = status;
            call.json(201, body);
        }
    }

    #[tokio::test]
    async fn an_authenticated_service_account_token_is_accepted() {
        let (client, mut api) = fake_api::client();
        let reviewer = KubeTokenReviewer::new(client);
        let review = tokio::spawn(async move { reviewer.review("projected-token").await });
        let call = api.expect(Method::POST, PATH).await;
        // What the zone asks: this token, for audience `strait`.
        assert_eq!(call.body["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(call.body["kind"], "TokenReview");
        assert_eq!(call.body["spec"]["token"], "projected-token");
        assert_eq!(call.body["spec"]["audiences"], json!(["strait"]));
        let mut body = call.body.clone();
        body["status"] = json!({
            "authenticated": true,
            "audiences": ["strait"],
            "user": {
                "username": "system:serviceaccount:shop:cart",
                "uid": "5f0c",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["cart-7d9f"]}
            }
        });
        call.json(201, body);
        assert_eq!(
            review.await.unwrap(),
            Ok(ServiceAccount {
                namespace: "shop".into(),
                name: "cart".into()
            })
        );
    }

    #[tokio::test]
    async fn a_token_the_api_server_does_not_authenticate_is_refused() {
        let verdict = review_answered(
            "expired",
            reviewed(json!({"authenticated": false, "error": "token has expired", "user": {}})),
        )
        .await;
        assert_eq!(
            verdict,
            Err(ReviewError::NotAuthenticated("token has expired".into()))
        );
        let verdict = review_answered("forged", reviewed(json!({"user": {}}))).await;
        assert!(
            matches!(verdict, Err(ReviewError::NotAuthenticated(_))),
            "{verdict:?}"
        );
    }

    #[tokio::test]
    async fn another_audience_or_an_audience_unaware_server_is_refused() {
        let verdict = review_answered(
            "api-token",
            reviewed(json!({
                "authenticated": true,
                "audiences": ["https://kubernetes.default.svc.cluster.local"],
                "user": {"username": "system:serviceaccount:shop:cart"}
            })),
        )
        .await;
        assert_eq!(
            verdict,
            Err(ReviewError::WrongAudience {
                expected: "strait".into(),
                got: vec!["https://kubernetes.default.svc.cluster.local".into()]
            })
        );
        // An authenticator that ignores audiences confirms none: not good enough.
        let verdict = review_answered(
            "legacy-token",
            reviewed(json!({
                "authenticated": true,
                "user": {"username": "system:serviceaccount:shop:cart"}
            })),
        )
        .await;
        assert!(
            matches!(verdict, Err(ReviewError::WrongAudience { .. })),
            "{verdict:?}"
        );
    }

    #[tokio::test]
    async fn users_that_are_not_service_accounts_are_refused() {
        for username in [
            "system:node:worker-1",
            "alice@example.com",
            "system:serviceaccount:shop",
        ] {
            let verdict = review_answered(
                "token",
                reviewed(json!({
                    "authenticated": true,
                    "audiences": ["strait"],
                    "user": {"username": username}
                })),
            )
            .await;
            assert_eq!(
                verdict,
                Err(ReviewError::NotServiceAccount(username.into())),
                "{username}"
            );
        }
    }

    #[tokio::test]
    async fn an_api_error_is_retryable_not_a_verdict() {
        // The zone's service account lacks `create tokenreviews`.
        let verdict = review_answered("token", |call| call.error(403, "Forbidden")).await;
        match verdict {
            Err(ReviewError::Unavailable(message)) => {
                assert!(message.contains("Forbidden"), "{message}");
                assert!(
                    !message.contains("token\""),
                    "the token must not be echoed: {message}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let verdict = review_answered("token", |call| call.json(201, json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": {}}))).await;
        assert!(
            matches!(verdict, Err(ReviewError::Unavailable(_))),
            "{verdict:?}"
        );
    }
}
