//! The workload CA in-process on loopback: a real tonic server behind Strait's TLS (client
//! certificates optional, as the zone's listener has them), real clients with and without
//! certificates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::UnixTime;
use strait_proto::identity_client::IdentityClient;
use strait_proto::identity_server::IdentityServer;
use strait_proto::sign_certificate_request::Credential;
use strait_trust::ca::{
    DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_VALIDITY, DEFAULT_ROOT_VALIDITY,
};
use strait_trust::tls::{PeerRole, crypto_provider, verify_peer};
use strait_trust::workload_token::{Claims, WorkloadToken};
use strait_trust::{
    AllowAny, AllowExactly, CertInfo, CredentialStore, IntermediateCa, KeyPair, RootCa, SpiffeId,
    TrustStore, client_config, pinned_client_config, server_config_optional_client_auth,
};
use tonic::Code;
use tonic::transport::Channel;

use super::*;

const TD: &str = "strait.local";
const ZONE: &str = "eu-1";
const HOUR: Duration = Duration::from_secs(3600);

fn h2() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

fn zone_ca(root: &RootCa, zone: &str) -> IntermediateCa {
    let key = KeyPair::generate().unwrap();
    let csr = key.intermediate_csr(TD, zone).unwrap();
    let cert = root
        .sign_intermediate(&csr, zone, DEFAULT_INTERMEDIATE_VALIDITY)
        .unwrap();
    IntermediateCa::from_pem(&cert.chain_pem, &key.to_pem()).unwrap()
}

/// A key and the credentials `ca` issued for it as `id`.
fn leaf(ca: &IntermediateCa, id: &SpiffeId) -> CredentialStore {
    let key = KeyPair::generate().unwrap();
    let issued = ca
        .sign_leaf(&key.leaf_csr(id).unwrap(), id, DEFAULT_LEAF_VALIDITY)
        .unwrap();
    CredentialStore::from_pem(&issued.chain_pem, &key.to_pem()).unwrap()
}

/// A running workload CA for zone `ZONE`.
struct Harness {
    root: RootCa,
    trust: TrustStore,
    addr: SocketAddr,
    cp: SpiffeId,
    service: IdentityService,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With `reviewer` checking service-account tokens (Kubernetes mode).
    async fn start_with(reviewer: Option<Arc<dyn TokenReviewer>>) -> Self {
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
        let ca = zone_ca(&root, ZONE);
        let cp = SpiffeId::zone_cp(TD, ZONE).unwrap();
        let cp_creds = leaf(&ca, &cp);
        let trust = TrustStore::new(root.bundle().unwrap());
        let service = IdentityService::new(
            IdentityConfig {
                zone: ZONE.to_owned(),
                trust_domain: TD.to_owned(),
                leaf_validity: HOUR,
            },
            CaHandle::new(ca),
            trust.clone(),
        )
        .unwrap();
        let service = match reviewer {
            Some(reviewer) => service.with_token_reviewer(reviewer),
            None => service,
        };
        let tls = server_config_optional_client_auth(&cp_creds, &trust, Arc::new(AllowAny), h2())
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = strait_proto::transport::tls_incoming(listener, Arc::new(tls));
        let router =
            tonic::transport::Server::builder().add_service(IdentityServer::new(service.clone()));
        let server = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Harness {
            root,
            trust,
            addr,
            cp,
            service,
            server,
        }
    }

    fn channel(&self, tls: rustls::ClientConfig) -> IdentityClient<Channel> {
        IdentityClient::new(strait_proto::transport::channel(
            &self.addr.to_string(),
            Arc::new(tls),
            Duration::from_secs(5),
        ))
    }

    /// A client with no certificate, trusting the federation by its root pin (as a fresh
    /// sidecar does, with the pin from its bootstrap config).
    fn anonymous(&self) -> IdentityClient<Channel> {
        let tls = pinned_client_config(
            TD,
            &self.root.pin(),
            Arc::new(AllowExactly(vec![self.cp.clone()])),
            h2(),
        )
        .unwrap();
        self.channel(tls)
    }

    /// A client presenting `creds` over mutual TLS.
    fn with_cert(&self, creds: &CredentialStore) -> IdentityClient<Channel> {
        let tls = client_config(
            creds,
            &self.trust,
            Arc::new(AllowExactly(vec![self.cp.clone()])),
            h2(),
        )
        .unwrap();
        self.channel(tls)
    }

    fn token(&self, id: &SpiffeId, zone: &str) -> String {
        let claims = Claims::new(id.clone(), zone, SystemTime::now(), HOUR);
        WorkloadToken::issue(&self.root, &claims).unwrap()
    }

    fn issued(&self, kind: &str) -> u64 {
        self.service
            .metrics()
            .issued
            .with_label_values(&[kind])
            .get()
    }

    fn refused(&self, reason: Refusal) -> u64 {
        self.service
            .metrics()
            .refused
            .with_label_values(&[reason.as_str()])
            .get()
    }
}

fn workload() -> SpiffeId {
    SpiffeId::workload(TD, "shop", "cart").unwrap()
}

fn request(csr_pem: String, token: Option<String>, requested: &str) -> pb::SignCertificateRequest {
    pb::SignCertificateRequest {
        csr_pem,
        credential: token.map(Credential::BootstrapToken),
        requested_spiffe_id: requested.to_owned(),
    }
}

async fn sign(
    client: &mut IdentityClient<Channel>,
    req: pb::SignCertificateRequest,
) -> Result<pb::SignCertificateResponse, tonic::Status> {
    client.sign_certificate(req).await.map(|r| r.into_inner())
}

/// Asserts a refusal's code and that its message says why.
#[track_caller]
fn assert_refused(
    result: Result<pb::SignCertificateResponse, tonic::Status>,
    code: Code,
    says: &str,
) -> tonic::Status {
    let status = result.expect_err("the request should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(says),
        "{:?} does not say {says:?}",
        status.message()
    );
    status
}

/// Checks that `chain_pem` is a valid client certificate for `id` chaining to `h`'s root.
fn assert_chains_to_root(h: &Harness, chain_pem: &str, id: &SpiffeId) {
    let info = CertInfo::from_pem(chain_pem).unwrap();
    assert_eq!(info.spiffe_id.as_ref(), Some(id));
    assert!(!info.is_ca);
    assert!(info.is_valid_at(SystemTime::now()));
    assert!(info.not_after <= SystemTime::now() + HOUR);
    let chain = strait_trust::pem::parse_certs(chain_pem, "issued").unwrap();
    let peer = verify_peer(
        &h.trust.current(),
        &chain[0],
        &chain[1..],
        UnixTime::now(),
        PeerRole::Client,
        &AllowAny,
        &crypto_provider(),
    )
    .unwrap();
    assert_eq!(&peer.id, id);
    assert_eq!(peer.issuer_zone.as_deref(), Some(ZONE));
}

#[tokio::test]
async fn bootstrap_token_gets_a_certificate_for_exactly_its_identity_then_renews_over_mtls() {
    let h = Harness::start().await;
    let id = workload();
    let key = KeyPair::generate().unwrap();
    let token = h.token(&id, ZONE);

    let resp = sign(
        &mut h.anonymous(),
        request(key.leaf_csr(&id).unwrap(), Some(token), &id.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(resp.spiffe_id, id.to_string());
    assert_eq!(resp.trust_bundle_pem, h.trust.current().to_pem());
    assert_chains_to_root(&h, &resp.cert_chain_pem, &id);
    let info = CertInfo::from_pem(&resp.cert_chain_pem).unwrap();
    assert_eq!(
        Some(resp.not_after_unix_ms),
        info.not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
    );
    assert_eq!(h.issued("bootstrap"), 1);

    // Renewal: the issued certificate over mTLS, no token, a CSR for a new key. The handshake
    // itself shows the certificate chains to the root the server trusts.
    let creds = CredentialStore::from_pem(&resp.cert_chain_pem, &key.to_pem()).unwrap();
    let new_key = KeyPair::generate().unwrap();
    let mut client = h.with_cert(&creds);
    let renewed = sign(
        &mut client,
        request(new_key.leaf_csr(&id).unwrap(), None, ""),
    )
    .await
    .unwrap();
    assert_eq!(renewed.spiffe_id, id.to_string());
    assert_chains_to_root(&h, &renewed.cert_chain_pem, &id);
    assert_ne!(renewed.cert_chain_pem, resp.cert_chain_pem);
    assert_eq!(h.issued("renewal"), 1);

    // Renewing into another identity is refused: the certificate authorizes itself only.
    let other = SpiffeId::workload(TD, "shop", "payments").unwrap();
    assert_refused(
        sign(
            &mut client,
            request(new_key.leaf_csr(&other).unwrap(), None, ""),
        )
        .await,
        Code::PermissionDenied,
        "authorized for spiffe://strait.local/ns/shop/sa/cart",
    );
    assert_eq!(h.refused(Refusal::IdentityMismatch), 1);
}

#[tokio::test]
async fn gateway_token_works_for_this_zones_gateway() {
    let h = Harness::start().await;
    let gw = SpiffeId::gateway(TD, ZONE).unwrap();
    let key = KeyPair::generate().unwrap();
    let resp = sign(
        &mut h.anonymous(),
        request(key.leaf_csr(&gw).unwrap(), Some(h.token(&gw, ZONE)), ""),
    )
    .await
    .unwrap();
    assert_chains_to_root(&h, &resp.cert_chain_pem, &gw);

    // And it renews over mTLS.
    let creds = CredentialStore::from_pem(&resp.cert_chain_pem, &key.to_pem()).unwrap();
    let resp = sign(
        &mut h.with_cert(&creds),
        request(key.leaf_csr(&gw).unwrap(), None, &gw.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(resp.spiffe_id, gw.to_string());
}

#[tokio::test]
async fn requested_identity_must_be_the_authorized_one() {
    let h = Harness::start().await;
    let id = workload();
    let key = KeyPair::generate().unwrap();
    let status = assert_refused(
        sign(
            &mut h.anonymous(),
            request(
                key.leaf_csr(&id).unwrap(),
                Some(h.token(&id, ZONE)),
                "spiffe://strait.local/ns/shop/sa/admin",
            ),
        )
        .await,
        Code::PermissionDenied,
        "requested spiffe://strait.local/ns/shop/sa/admin",
    );
    assert!(status.message().contains(&id.to_string()), "{status:?}");
    assert_eq!(h.refused(Refusal::IdentityMismatch), 1);
    assert_eq!(h.issued("bootstrap"), 0);
}

#[tokio::test]
async fn csr_for_another_identity_than_the_tokens_is_refused() {
    let h = Harness::start().await;
    let id = workload();
    let other = SpiffeId::workload(TD, "kube-system", "admin").unwrap();
    let key = KeyPair::generate().unwrap();
    let status = assert_refused(
        sign(
            &mut h.anonymous(),
            request(key.leaf_csr(&other).unwrap(), Some(h.token(&id, ZONE)), ""),
        )
        .await,
        Code::PermissionDenied,
        "asks for spiffe://strait.local/ns/kube-system/sa/admin",
    );
    assert!(status.message().contains(&id.to_string()), "{status:?}");

    // A CSR that is not a CSR.
    assert_refused(
        sign(
            &mut h.anonymous(),
            request("garbage".into(), Some(h.token(&id, ZONE)), ""),
        )
        .await,
        Code::InvalidArgument,
        "could not be parsed",
    );
    assert_refused(
        sign(
            &mut h.anonymous(),
            request(String::new(), Some(h.token(&id, ZONE)), ""),
        )
        .await,
        Code::InvalidArgument,
        "csr_pem is empty",
    );
    assert_eq!(h.refused(Refusal::IdentityMismatch), 1);
    assert_eq!(h.refused(Refusal::BadCsr), 2);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_reason() {
    let h = Harness::start().await;
    let id = workload();
    let key = KeyPair::generate().unwrap();
    let csr = key.leaf_csr(&id).unwrap();
    let mut client = h.anonymous();

    // Expired.
    let old = Claims::new(id.clone(), ZONE, SystemTime::now() - 3 * HOUR, HOUR);
    let expired = WorkloadToken::issue(&h.root, &old).unwrap();
    assert_refused(
        sign(&mut client, request(csr.clone(), Some(expired), "")).await,
        Code::Unauthenticated,
        "expired at",
    );
    // For another zone.
    assert_refused(
        sign(
            &mut client,
            request(csr.clone(), Some(h.token(&id, "us-1")), ""),
        )
        .await,
        Code::PermissionDenied,
        "is for zone \"us-1\", not \"eu-1\"",
    );
    // Forged: signed by a root that is not this federation's.
    let other_root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
    let forged = WorkloadToken::issue(
        &other_root,
        &Claims::new(id.clone(), ZONE, SystemTime::now(), HOUR),
    )
    .unwrap();
    let status = assert_refused(
        sign(&mut client, request(csr.clone(), Some(forged.clone()), "")).await,
        Code::Unauthenticated,
        "not signed by this federation",
    );
    assert!(!status.message().contains(&forged), "token echoed");
    // Garbage.
    assert_refused(
        sign(
            &mut client,
            request(csr.clone(), Some("stw1.nonsense".into()), ""),
        )
        .await,
        Code::Unauthenticated,
        "not a Strait workload token",
    );
    // Another zone's gateway, even with a token hand-made for it, is not this zone's to sign.
    let other_gw = SpiffeId::gateway(TD, "us-1").unwrap();
    let gw_key = KeyPair::generate().unwrap();
    assert_refused(
        sign(
            &mut client,
            request(
                gw_key.leaf_csr(&other_gw).unwrap(),
                Some(h.token(&other_gw, "us-1")),
                "",
            ),
        )
        .await,
        Code::PermissionDenied,
        "for zone \"us-1\"",
    );

    assert_eq!(h.refused(Refusal::ExpiredToken), 1);
    assert_eq!(h.refused(Refusal::WrongZone), 2);
    assert_eq!(h.refused(Refusal::InvalidToken), 2);
    assert_eq!(h.issued("bootstrap"), 0);
}

#[tokio::test]
async fn no_credential_is_unauthenticated() {
    let h = Harness::start().await;
    let id = workload();
    let key = KeyPair::generate().unwrap();
    assert_refused(
        sign(
            &mut h.anonymous(),
            request(key.leaf_csr(&id).unwrap(), None, &id.to_string()),
        )
        .await,
        Code::Unauthenticated,
        "no credential",
    );
    // An empty token is no token.
    assert_refused(
        sign(
            &mut h.anonymous(),
            request(key.leaf_csr(&id).unwrap(), Some(String::new()), ""),
        )
        .await,
        Code::Unauthenticated,
        "no credential",
    );
    assert_eq!(h.refused(Refusal::NoCredential), 2);
}

#[tokio::test]
async fn service_account_tokens_need_kubernetes_mode() {
    let h = Harness::start().await;
    let id = workload();
    let key = KeyPair::generate().unwrap();
    let req = pb::SignCertificateRequest {
        csr_pem: key.leaf_csr(&id).unwrap(),
        credential: Some(Credential::ServiceAccountToken("eyJhbGciOi...".into())),
        requested_spiffe_id: String::new(),
    };
    assert_refused(
        sign(&mut h.anonymous(), req).await,
        Code::Unimplemented,
        "Kubernetes mode",
    );
    assert_eq!(h.refused(Refusal::Unsupported), 1);
}

#[tokio::test]
async fn renewal_is_for_workloads_and_this_zones_gateway_only() {
    let h = Harness::start().await;
    // Another zone's gateway, validly issued by its own zone CA under the same root: the TLS
    // layer accepts it (it is a federation peer), this zone does not sign for it.
    let us = zone_ca(&h.root, "us-1");
    let other_gw = SpiffeId::gateway(TD, "us-1").unwrap();
    let creds = leaf(&us, &other_gw);
    let key = KeyPair::generate().unwrap();
    assert_refused(
        sign(
            &mut h.with_cert(&creds),
            request(key.leaf_csr(&other_gw).unwrap(), None, ""),
        )
        .await,
        Code::PermissionDenied,
        "can not renew here",
    );
    // Nor for a control plane.
    let us_cp = SpiffeId::zone_cp(TD, "us-1").unwrap();
    let creds = leaf(&us, &us_cp);
    assert_refused(
        sign(
            &mut h.with_cert(&creds),
            request(key.leaf_csr(&us_cp).unwrap(), None, ""),
        )
        .await,
        Code::PermissionDenied,
        "can not renew here",
    );
    assert_eq!(h.refused(Refusal::IdentityNotAllowed), 2);

    // A workload certificate from another zone renews here: workloads keep their identity in
    // every zone.
    let id = workload();
    let creds = leaf(&us, &id);
    let resp = sign(
        &mut h.with_cert(&creds),
        request(key.leaf_csr(&id).unwrap(), None, ""),
    )
    .await
    .unwrap();
    assert_chains_to_root(&h, &resp.cert_chain_pem, &id);
}

#[test]
fn config_must_match_the_ca_and_bundle() {
    let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
    let trust = TrustStore::new(root.bundle().unwrap());
    let config = |zone: &str, td: &str, validity| IdentityConfig {
        zone: zone.to_owned(),
        trust_domain: td.to_owned(),
        leaf_validity: validity,
    };
    let ca = || CaHandle::new(zone_ca(&root, ZONE));
    assert!(IdentityService::new(config(ZONE, TD, HOUR), ca(), trust.clone()).is_ok());
    assert!(matches!(
        IdentityService::new(config("us-1", TD, HOUR), ca(), trust.clone()),
        Err(IdentityError::CaMismatch { .. })
    ));
    assert!(matches!(
        IdentityService::new(config(ZONE, TD, Duration::ZERO), ca(), trust.clone()),
        Err(IdentityError::ZeroValidity)
    ));
    let other_root = RootCa::generate("other.td", DEFAULT_ROOT_VALIDITY).unwrap();
    let other_trust = TrustStore::new(other_root.bundle().unwrap());
    assert!(matches!(
        IdentityService::new(config(ZONE, TD, HOUR), ca(), other_trust),
        Err(IdentityError::TrustDomainMismatch { .. })
    ));
}

#[test]
fn metrics_have_every_label_from_the_start() {
    let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
    let registry = Registry::new();
    let _service = IdentityService::with_registry(
        IdentityConfig {
            zone: ZONE.to_owned(),
            trust_domain: TD.to_owned(),
            leaf_validity: HOUR,
        },
        CaHandle::new(zone_ca(&root, ZONE)),
        TrustStore::new(root.bundle().unwrap()),
        &registry,
    )
    .unwrap();
    let families = registry.gather();
    let series = |name: &str| {
        families
            .iter()
            .find(|f| f.name() == name)
            .map_or(0, |f| f.get_metric().len())
    };
    assert_eq!(series("strait_zone_certificates_issued_total"), 3);
    assert_eq!(
        series("strait_zone_certificate_refusals_total"),
        Refusal::ALL.len()
    );
}

/// A scripted TokenReview: each token's verdict, as the API server would give it.
#[derive(Debug, Default)]
struct ScriptedReviewer {
    verdicts: std::collections::HashMap<String, Result<ServiceAccount, ReviewError>>,
}

#[tonic::async_trait]
impl TokenReviewer for ScriptedReviewer {
    async fn review(&self, token: &str) -> Result<ServiceAccount, ReviewError> {
        self.verdicts
            .get(token)
            .cloned()
            .unwrap_or_else(|| Err(ReviewError::NotAuthenticated("unknown token".into())))
    }
}

fn sa_request(key: &KeyPair, id: &SpiffeId, token: &str) -> pb::SignCertificateRequest {
    pb::SignCertificateRequest {
        csr_pem: key.leaf_csr(id).unwrap(),
        credential: Some(Credential::ServiceAccountToken(token.to_owned())),
        requested_spiffe_id: String::new(),
    }
}

#[tokio::test]
async fn a_reviewed_service_account_token_gets_exactly_its_workload_identity() {
    let cart = ServiceAccount {
        namespace: "shop".into(),
        name: "cart".into(),
    };
    let mut reviewer = ScriptedReviewer::default();
    reviewer.verdicts.insert("cart-token".into(), Ok(cart));
    reviewer.verdicts.insert(
        "node-token".into(),
        Err(ReviewError::NotServiceAccount("system:node:n1".into())),
    );
    reviewer.verdicts.insert(
        "other-audience".into(),
        Err(ReviewError::WrongAudience {
            expected: "strait".into(),
            got: vec!["https://kubernetes.default.svc".into()],
        }),
    );
    reviewer.verdicts.insert(
        "api-down".into(),
        Err(ReviewError::Unavailable("connection refused".into())),
    );
    let h = Harness::start_with(Some(Arc::new(reviewer))).await;
    let id = workload(); // spiffe://strait.local/ns/shop/sa/cart
    let key = KeyPair::generate().unwrap();

    let response = sign(&mut h.anonymous(), sa_request(&key, &id, "cart-token"))
        .await
        .unwrap();
    assert_eq!(response.spiffe_id, id.to_string());
    assert_chains_to_root(&h, &response.cert_chain_pem, &id);
    assert_eq!(h.issued("service_account"), 1);

    // The token authorizes its own service account only.
    let other = SpiffeId::workload(TD, "shop", "payments").unwrap();
    let other_key = KeyPair::generate().unwrap();
    let mut req = sa_request(&other_key, &other, "cart-token");
    assert_refused(
        sign(&mut h.anonymous(), req.clone()).await,
        Code::PermissionDenied,
        "",
    );
    req.requested_spiffe_id = other.to_string();
    assert_refused(
        sign(&mut h.anonymous(), req).await,
        Code::PermissionDenied,
        "credential authorizes spiffe://strait.local/ns/shop/sa/cart",
    );
    assert_eq!(h.refused(Refusal::IdentityMismatch), 2);

    // Refused by the API server, for another audience, not a service account, empty.
    assert_refused(
        sign(&mut h.anonymous(), sa_request(&key, &id, "forged")).await,
        Code::Unauthenticated,
        "did not authenticate",
    );
    assert_refused(
        sign(&mut h.anonymous(), sa_request(&key, &id, "other-audience")).await,
        Code::Unauthenticated,
        "audience",
    );
    assert_eq!(h.refused(Refusal::InvalidToken), 2);
    assert_refused(
        sign(&mut h.anonymous(), sa_request(&key, &id, "node-token")).await,
        Code::PermissionDenied,
        "not a service account",
    );
    assert_eq!(h.refused(Refusal::IdentityNotAllowed), 1);
    assert_refused(
        sign(&mut h.anonymous(), sa_request(&key, &id, "  ")).await,
        Code::Unauthenticated,
        "empty",
    );
    // The API server could not be asked: a retryable status, counted apart.
    assert_refused(
        sign(&mut h.anonymous(), sa_request(&key, &id, "api-down")).await,
        Code::Unavailable,
        "try again",
    );
    assert_eq!(h.refused(Refusal::ReviewUnavailable), 1);
    assert_eq!(h.issued("service_account"), 1);
}

#[test]
fn service_account_usernames() {
    assert_eq!(
        ServiceAccount::from_username("system:serviceaccount:shop:cart"),
        Some(ServiceAccount {
            namespace: "shop".into(),
            name: "cart".into()
        })
    );
    for user in [
        "system:node:n1",
        "system:serviceaccount:shop",
        "system:serviceaccount::cart",
        "system:serviceaccount:shop:",
        "system:serviceaccount:shop:cart:extra",
        "alice",
        "",
    ] {
        assert_eq!(ServiceAccount::from_username(user), None, "{user}");
    }
}
