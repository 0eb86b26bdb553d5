//! The zone's workload CA: `strait.v1.Identity`. Sidecars and gateways send a CSR for their own
//! key and a credential; the zone decides which identity the credential authorizes and signs a
//! certificate for exactly that identity with its intermediate CA.
//!
//! Credentials, in order:
//! - **bootstrap token** (universal mode): a workload token signed by the federation's root
//!   ([`strait_trust::workload_token`]), verified here offline against the trust bundle, so
//!   sidecars bootstrap while global is unreachable. Authorizes the token's `spiffe_id`, in
//!   this zone only. A token wins over a client certificate on the same call.
//! - **no credential, but a client certificate** (renewal): the TLS layer has verified the
//!   chain to the trust bundle and the identity rules; a workload, or this zone's gateway,
//!   renews its own identity. Other identities are refused.
//! - **service-account token** (Kubernetes mode): a projected token with audience `strait`,
//!   checked by a [`TokenReviewer`] (the API server's `TokenReview`,
//!   [`crate::kubernetes::tokenreview`]). Authorizes exactly `spiffe://TD/ns/NS/sa/SA` for the
//!   service account `system:serviceaccount:NS:SA` the API server authenticated. A zone
//!   without a reviewer (universal mode) refuses these tokens as unsupported.
//!
//! `requested_spiffe_id`, when set, must be the authorized identity, and the CSR's one URI SAN
//! must be it too ([`strait_trust::Issuer::sign_leaf`] enforces that with the other CSR checks).
//! Tokens are never logged; their `id` claim is.
//!
//! Metrics: `strait_zone_certificates_issued_total{kind="bootstrap"|"renewal"|"service_account"}` and
//! `strait_zone_certificate_refusals_total{reason}` (reasons: [`Refusal`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, Opts, Registry};
use rustls::pki_types::CertificateDer;
use strait_proto as pb;
use strait_trust::spiffe::{IdentityKind, SpiffeId};
use strait_trust::tls::TrustStore;
use strait_trust::workload_token::{self, WorkloadTokenError};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::credentials::CaHandle;

/// What the workload CA needs to know besides its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// This zone: bootstrap tokens must name it, gateways must be its own.
    pub zone: String,
    pub trust_domain: String,
    /// Lifetime of the certificates it signs (capped by the intermediate's own end).
    pub leaf_validity: Duration,
}

/// Why the service can not start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "the workload CA is configured for zone {configured:?} in {trust_domain:?}, but its \
         intermediate CA is zone {ca_zone:?}'s in {ca_trust_domain:?}"
    )]
    CaMismatch {
        configured: String,
        trust_domain: String,
        ca_zone: String,
        ca_trust_domain: String,
    },
    #[error(
        "the workload CA serves trust domain {configured:?}, but the trust bundle is for {bundle:?}"
    )]
    TrustDomainMismatch { configured: String, bundle: String },
    #[error("leaf_validity must be more than zero")]
    ZeroValidity,
    #[error("registering the workload CA's metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why a signing request was refused: the `reason` label of
/// `strait_zone_certificate_refusals_total`, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token and no client certificate.
    NoCredential,
    /// A malformed token, or one not signed by this federation.
    InvalidToken,
    /// A token that expired (or is not valid yet).
    ExpiredToken,
    /// A token for another zone.
    WrongZone,
    /// A credential for an identity this zone does not sign from it (another zone's gateway,
    /// a control plane, a global node, ...).
    IdentityNotAllowed,
    /// `requested_spiffe_id` or the CSR's URI SAN is not the authorized identity.
    IdentityMismatch,
    /// The CSR is unreadable, badly signed, asks for a CA, has the wrong SANs or key.
    BadCsr,
    /// A credential kind this zone does not support (a service-account token without
    /// Kubernetes mode).
    Unsupported,
    /// The zone's CA can not sign now (expired, or an internal failure).
    CaUnavailable,
    /// The Kubernetes API server could not review a service-account token (the caller may
    /// retry).
    ReviewUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::NoCredential,
        Refusal::InvalidToken,
        Refusal::ExpiredToken,
        Refusal::WrongZone,
        Refusal::IdentityNotAllowed,
        Refusal::IdentityMismatch,
        Refusal::BadCsr,
        Refusal::Unsupported,
        Refusal::CaUnavailable,
        Refusal::ReviewUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCredential => "no_credential",
            Refusal::InvalidToken => "invalid_token",
            Refusal::ExpiredToken => "expired_token",
            Refusal::WrongZone => "wrong_zone",
            Refusal::IdentityNotAllowed => "identity_not_allowed",
            Refusal::IdentityMismatch => "identity_mismatch",
            Refusal::BadCsr => "bad_csr",
            Refusal::Unsupported => "unsupported",
            Refusal::CaUnavailable => "ca_unavailable",
            Refusal::ReviewUnavailable => "review_unavailable",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller was authorized: the `kind` label of `strait_zone_certificates_issued_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bootstrap,
    Renewal,
    /// A Kubernetes service-account token, reviewed by the API server.
    ServiceAccount,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Bootstrap, Kind::Renewal, Kind::ServiceAccount];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Bootstrap => "bootstrap",
            Kind::Renewal => "renewal",
            Kind::ServiceAccount => "service_account",
        }
    }
}

// === service-account tokens ===

/// A Kubernetes service account, as the API server authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// The service account a Kubernetes username names: `system:serviceaccount:NS:SA`, both
    /// parts non-empty and free of `:`; `None` for any other user.
    pub fn from_username(username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Why a service-account token does not authorize anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server did not authenticate the token (forged, expired, of a deleted pod or
    /// service account, or another cluster's).
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    /// Authenticated, but not for the audience the zone asks for.
    #[error("the token is not for audience {expected:?} (the API server confirmed {got:?})")]
    WrongAudience { expected: String, got: Vec<String> },
    /// Authenticated, as a user that is not `system:serviceaccount:NS:SA`.
    #[error(
        "the token authenticates {0:?}, which is not a service account \
         (system:serviceaccount:NAMESPACE:NAME)"
    )]
    NotServiceAccount(String),
    /// The API server could not be asked, or answered with an error: the caller may retry.
    #[error("the TokenReview failed: {0}")]
    Unavailable(String),
}

/// Checks a Kubernetes service-account token.
///
/// Rules every implementation keeps: `Ok` only for a token the cluster authenticated *for this
/// zone's audience* (`strait`), as the service account it returns and nothing else; a token
/// that is not authenticated, is for another audience or is not a service account's is a
/// refusal, never an error to retry ([`ReviewError::Unavailable`] is only for "could not ask").
/// The token is a secret: never logged.
#[tonic::async_trait]
pub trait TokenReviewer: Send + Sync + fmt::Debug + 'static {
    async fn review(&self, token: &str) -> Result<ServiceAccount, ReviewError>;
}

fn review_refusal(e: ReviewError) -> Refused {
    let message = format!("service-account token refused: {e}");
    match e {
        ReviewError::NotAuthenticated(_) | ReviewError::WrongAudience { .. } => {
            Refused::new(Refusal::InvalidToken, Status::unauthenticated(message))
        }
        ReviewError::NotServiceAccount(_) => Refused::new(
            Refusal::IdentityNotAllowed,
            Status::permission_denied(message),
        ),
        ReviewError::Unavailable(_) => Refused::new(
            Refusal::ReviewUnavailable,
            Status::unavailable(format!("{message}; try again")),
        ),
    }
}

/// The workload CA's counters. Label values come from fixed sets only.
#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    pub issued: IntCounterVec,
    pub refused: IntCounterVec,
}

impl IdentityMetrics {
    /// Creates the counters and registers them with `registry`. Every label value starts at
    /// zero, so dashboards see the series before the first event.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let issued = IntCounterVec::new(
            Opts::new(
                "strait_zone_certificates_issued_total",
                "Workload and gateway certificates this zone signed, by how the caller was \
                 authorized (bootstrap token, or renewal with its current certificate).",
            ),
            &["kind"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "strait_zone_certificate_refusals_total",
                "Certificate signing requests this zone refused, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(issued.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        for kind in Kind::ALL {
            issued.with_label_values(&[kind.as_str()]);
        }
        for reason in Refusal::ALL {
            refused.with_label_values(&[reason.as_str()]);
        }
        Ok(Self { issued, refused })
    }
}

/// Serves `strait.v1.Identity`.
#[derive(Clone)]
pub struct IdentityService {
    config: Arc<IdentityConfig>,
    ca: CaHandle,
    trust: TrustStore,
    metrics: IdentityMetrics,
    registry: Registry,
    /// Checks service-account tokens (Kubernetes mode); `None`: they are unsupported.
    reviewer: Option<Arc<dyn TokenReviewer>>,
}

impl fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityService")
            .field("config", &self.config)
            .field("ca", &self.ca)
            .field("trust", &self.trust)
            .field("reviewer", &self.reviewer)
            .finish_non_exhaustive()
    }
}

/// A refusal: the status the caller gets and the metric label it counts under.
struct Refused {
    reason: Refusal,
    status: Status,
}

impl Refused {
    fn new(reason: Refusal, status: Status) -> Self {
        Self { reason, status }
    }
}

impl IdentityService {
    /// A workload CA with its own metrics registry ([`IdentityService::registry`]).
    pub fn new(
        config: IdentityConfig,
        ca: CaHandle,
        trust: TrustStore,
    ) -> Result<Self, IdentityError> {
        Self::with_registry(config, ca, trust, &Registry::new())
    }

    /// A workload CA whose metrics are registered with `registry` (the zone's admin endpoint
    /// registry).
    ///
    /// Checks that the configuration, the CA and the bundle agree: the CA must be this zone's
    /// intermediate in this trust domain, the bundle for this trust domain.
    pub fn with_registry(
        config: IdentityConfig,
        ca: CaHandle,
        trust: TrustStore,
        registry: &Registry,
    ) -> Result<Self, IdentityError> {
        if config.leaf_validity.is_zero() {
            return Err(IdentityError::ZeroValidity);
        }
        {
            let current = ca.current();
            if current.zone() != config.zone || current.trust_domain() != config.trust_domain {
                return Err(IdentityError::CaMismatch {
                    configured: config.zone.clone(),
                    trust_domain: config.trust_domain.clone(),
                    ca_zone: current.zone().to_owned(),
                    ca_trust_domain: current.trust_domain().to_owned(),
                });
            }
        }
        let bundle_td = trust.trust_domain();
        if bundle_td != config.trust_domain {
            return Err(IdentityError::TrustDomainMismatch {
                configured: config.trust_domain.clone(),
                bundle: bundle_td,
            });
        }
        Ok(Self {
            metrics: IdentityMetrics::new(registry)?,
            registry: registry.clone(),
            config: Arc::new(config),
            ca,
            trust,
            reviewer: None,
        })
    }

    /// Accepts Kubernetes service-account tokens, checked by `reviewer`.
    pub fn with_token_reviewer(mut self, reviewer: Arc<dyn TokenReviewer>) -> Self {
        self.reviewer = Some(reviewer);
        self
    }

    /// The registry holding this service's metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn metrics(&self) -> &IdentityMetrics {
        &self.metrics
    }

    /// Who the caller may be, from its credential.
    async fn authorize(
        &self,
        credential: Option<pb::sign_certificate_request::Credential>,
        peer: Option<&[CertificateDer<'static>]>,
        now: SystemTime,
    ) -> Result<(SpiffeId, Kind), Refused> {
        use pb::sign_certificate_request::Credential;
        match credential {
            Some(Credential::BootstrapToken(token)) if !token.is_empty() => {
                let bundle = self.trust.current();
                let claims = workload_token::verify(&token, &bundle, &self.config.zone, now)
                    .map_err(token_refusal)?;
                tracing::debug!(token_id = %claims.id, spiffe_id = %claims.spiffe_id, "bootstrap token verified");
                Ok((claims.spiffe_id, Kind::Bootstrap))
            }
            Some(Credential::ServiceAccountToken(token)) => {
                let Some(reviewer) = &self.reviewer else {
                    return Err(Refused::new(
                        Refusal::Unsupported,
                        Status::unimplemented(
                            "service-account tokens are for Kubernetes mode (TokenReview), \
                             which this zone does not run; use a bootstrap token from `strait \
                             token workload`",
                        ),
                    ));
                };
                if token.trim().is_empty() {
                    return Err(Refused::new(
                        Refusal::InvalidToken,
                        Status::unauthenticated("the service-account token is empty"),
                    ));
                }
                let account = reviewer.review(&token).await.map_err(review_refusal)?;
                let id = SpiffeId::workload(
                    &self.config.trust_domain,
                    &account.namespace,
                    &account.name,
                )
                .map_err(|e| {
                    Refused::new(
                        Refusal::IdentityNotAllowed,
                        Status::permission_denied(format!(
                            "service account {}/{} has no valid SPIFFE ID: {e}",
                            account.namespace, account.name
                        )),
                    )
                })?;
                tracing::debug!(spiffe_id = %id, "service-account token reviewed");
                Ok((id, Kind::ServiceAccount))
            }
            Some(Credential::BootstrapToken(_)) | None => {
                let Some(certs) = peer else {
                    return Err(Refused::new(
                        Refusal::NoCredential,
                        Status::unauthenticated(
                            "no credential: send a bootstrap token, or renew over mutual TLS \
                             with your current certificate",
                        ),
                    ));
                };
                let id = strait_trust::tls::peer_identity(certs).map_err(|e| {
                    Refused::new(
                        Refusal::NoCredential,
                        Status::unauthenticated(format!(
                            "the client certificate has no usable SPIFFE ID: {e}"
                        )),
                    )
                })?;
                match id.kind() {
                    IdentityKind::Workload { .. } => {}
                    IdentityKind::Gateway { zone } if zone == self.config.zone => {}
                    _ => {
                        return Err(Refused::new(
                            Refusal::IdentityNotAllowed,
                            Status::permission_denied(format!(
                                "{id} can not renew here: zone {:?} signs workloads and its own \
                                 gateway only",
                                self.config.zone
                            )),
                        ));
                    }
                }
                Ok((id, Kind::Renewal))
            }
        }
    }

    async fn sign(
        &self,
        req: pb::SignCertificateRequest,
        peer: Option<&[CertificateDer<'static>]>,
    ) -> Result<(pb::SignCertificateResponse, Kind), Refused> {
        let now = SystemTime::now();
        let (authorized, kind) = self.authorize(req.credential, peer, now).await?;
        if !req.requested_spiffe_id.is_empty() && req.requested_spiffe_id != authorized.to_string()
        {
            return Err(Refused::new(
                Refusal::IdentityMismatch,
                Status::permission_denied(format!(
                    "requested {} but the credential authorizes {authorized}",
                    req.requested_spiffe_id
                )),
            ));
        }
        if req.csr_pem.trim().is_empty() {
            return Err(Refused::new(
                Refusal::BadCsr,
                Status::invalid_argument("csr_pem is empty: send a CSR for your own key"),
            ));
        }
        let ca = self.ca.current();
        let issued = ca
            .sign_leaf_at(&req.csr_pem, &authorized, self.config.leaf_validity, now)
            .map_err(sign_refusal)?;
        let response = pb::SignCertificateResponse {
            cert_chain_pem: issued.chain_pem,
            trust_bundle_pem: self.trust.current().to_pem(),
            spiffe_id: issued.id.to_string(),
            not_after_unix_ms: unix_ms(issued.not_after),
            error: None,
        };
        Ok((response, kind))
    }
}

/// A token the zone does not honour, as the status the caller reads.
fn token_refusal(e: WorkloadTokenError) -> Refused {
    use WorkloadTokenError as E;
    let message = format!("bootstrap token refused: {e}");
    match e {
        E::Malformed { .. }
        | E::Version(_)
        | E::BadSignature
        | E::BadClaims { .. }
        | E::InvalidClaims { .. } => {
            Refused::new(Refusal::InvalidToken, Status::unauthenticated(message))
        }
        E::Expired { .. } | E::NotYetValid { .. } => {
            Refused::new(Refusal::ExpiredToken, Status::unauthenticated(message))
        }
        E::WrongZone { .. } => Refused::new(Refusal::WrongZone, Status::permission_denied(message)),
        E::ForeignTrustDomain { .. } | E::IdentityNotAllowed { .. } => Refused::new(
            Refusal::IdentityNotAllowed,
            Status::permission_denied(message),
        ),
        // Issuing-side errors; verification does not produce them.
        E::RootKey { .. } | E::Signing => {
            Refused::new(Refusal::InvalidToken, Status::unauthenticated(message))
        }
    }
}

/// A signing failure: what the CSR got wrong, or why the CA can not sign.
fn sign_refusal(e: strait_trust::Error) -> Refused {
    use strait_trust::Error as E;
    let message = e.to_string();
    match e {
        E::CsrIdentityMismatch { .. } => Refused::new(
            Refusal::IdentityMismatch,
            Status::permission_denied(format!("CSR refused: {message}")),
        ),
        E::ForeignTrustDomain { .. } | E::OutsideIssuerScope { .. } => Refused::new(
            Refusal::IdentityNotAllowed,
            Status::permission_denied(format!("CSR refused: {message}")),
        ),
        E::IssuerNotValid { .. } => Refused::new(
            Refusal::CaUnavailable,
            Status::unavailable(format!(
                "this zone can not sign right now: {message}; it renews its CA from global"
            )),
        ),
        E::Signing { .. } | E::Random => {
            Refused::new(Refusal::CaUnavailable, Status::internal(message))
        }
        _ => Refused::new(
            Refusal::BadCsr,
            Status::invalid_argument(format!("CSR refused: {message}")),
        ),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn sign_certificate(
        &self,
        request: Request<pb::SignCertificateRequest>,
    ) -> Result<Response<pb::SignCertificateResponse>, Status> {
        let peer = strait_proto::transport::peer_certificates(&request);
        let peer_addr = strait_proto::transport::peer_address(&request);
        let req = request.into_inner();
        let credential = match &req.credential {
            Some(pb::sign_certificate_request::Credential::BootstrapToken(t)) if !t.is_empty() => {
                "bootstrap_token"
            }
            Some(pb::sign_certificate_request::Credential::ServiceAccountToken(_)) => {
                "service_account_token"
            }
            _ if peer.is_some() => "client_certificate",
            _ => "none",
        };
        let span = tracing::info_span!(
            "sign_certificate",
            zone = %self.config.zone,
            peer = ?peer_addr,
            credential,
        );
        async move {
            match self.sign(req, peer.as_deref().map(Vec::as_slice)).await {
                Ok((response, kind)) => {
                    self.metrics
                        .issued
                        .with_label_values(&[kind.as_str()])
                        .inc();
                    tracing::info!(
                        spiffe_id = %response.spiffe_id,
                        kind = kind.as_str(),
                        not_after_unix_ms = response.not_after_unix_ms,
                        "certificate issued"
                    );
                    Ok(Response::new(response))
                }
                Err(Refused { reason, status }) => {
                    self.metrics
                        .refused
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    tracing::info!(%reason, message = status.message(), "certificate refused");
                    Err(status)
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
