//! The sidecar's workload certificate: bootstrap from the zone's workload CA with a token,
//! renewal at 2/3 of its life over mutual TLS, and the live [`CredentialStore`] and
//! [`TrustStore`] every TLS config of the sidecar is built from.
//!
//! The same code gets an east-west gateway its `spiffe://TD/zone/ZONE/gateway` certificate:
//! everything is driven by [`IdentitySettings`] (which identity, which zone, which files, the
//! metric prefix), which the sidecar builds with
//! [`SidecarSettings::identity_settings`](crate::config::SidecarSettings::identity_settings)
//! and the gateway builds from its own settings.
//!
//! # Bootstrap
//!
//! The sidecar generates its own key (it never leaves the process, or `data_dir` with mode
//! 0600), sends a CSR for its identity (`spiffe://TD/ns/NAMESPACE/sa/SERVICE` — the service
//! is its own service account — or a gateway's) and the bootstrap token to
//! `Identity.SignCertificate`, and gets back its chain (leaf, zone intermediate, root) and the
//! federation's trust bundle.
//!
//! # Trusting the zone before having a bundle
//!
//! The zone control plane must be `spiffe://TD/zone/ZONE/cp`, but a first start has nothing to
//! verify that with: the workload token is signed by the root (so the *zone* can check it
//! offline) and carries no pin the sidecar could use. What is trusted then, in this order:
//!
//! 1. `bundle_file`, when given: the zone's chain must verify against it, and the bootstrap
//!    fails otherwise. This is the safe choice wherever the bundle can be distributed (a
//!    Kubernetes ConfigMap, a file provisioned with the token).
//! 2. The bundle persisted in `data_dir` by an earlier run (a restart after the certificate
//!    expired): no trust on first use again.
//! 3. Otherwise **trust on first use**: the zone's chain is accepted only if it ends at a
//!    self-signed CA certificate (Strait servers send leaf, intermediate, *root*), that root
//!    verifies the chain, and the leaf is exactly `zone/ZONE/cp` issued under the identity
//!    rules of [`strait_trust::tls`]. That root is then pinned for the rest of the exchange:
//!    the certificate the zone returns must chain to it, and the bundle it returns must
//!    contain it and verify the new certificate.
//!
//! The trade-off of (3): an attacker who can intercept the sidecar's *first* connection to its
//! zone can hand it a certificate of a federation of its own making. It learns the bootstrap
//! token (which only works in the real zone, for this one identity, until it expires; the
//! real zone would issue the attacker that identity's certificate), and the sidecar ends up
//! in the attacker's mesh, not the real one: its traffic never verifies against real peers,
//! so it fails closed rather than leaking real peers' traffic. Every later connection (renewal,
//! discovery, data plane) verifies against the pinned bundle. Where that first-contact risk is
//! not acceptable, pass `bundle_file`.
//!
//! # Renewal
//!
//! [`Identity::run_renewal`] renews at 2/3 of the certificate's life (counted from its issuance,
//! see [`renew_at`]), authenticating with the
//! current certificate over mutual TLS (no token), with a fresh key. The new certificate and
//! bundle are swapped into the stores in place: the next handshake uses them, open connections
//! keep going. A failed renewal is retried with backoff (logged) until the certificate
//! expires; an expired certificate can not authenticate any more, so the sidecar then falls
//! back to the bootstrap token (re-read from its file, verified against the bundle it has).
//!
//! Metrics: `PREFIX_cert_expiry_timestamp_seconds`,
//! `PREFIX_cert_renewals_total{result="success"|"failure"}`, where `PREFIX` is
//! [`IdentitySettings::metrics_prefix`] (`strait_sidecar`, `strait_gateway`).

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus::{Gauge, IntCounterVec, Opts, Registry};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use strait_proto as pb;
use strait_trust::tls::{
    AllowExactly, CredentialStore, PeerRole, SpiffeServerVerifier, TrustStore, verify_peer,
};
use strait_trust::{KeyPair, SpiffeId, TrustBundle};

use crate::config::{SettingsError, check_dns_label, check_host_port};

/// ALPN of the zone's gRPC port.
const ALPN_H2: &[u8] = b"h2";
/// How long a connection to the zone control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one SignCertificate call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the bootstrap keeps retrying a zone that does not answer (it may be starting);
/// refusals are not retried.
const BOOTSTRAP_PATIENCE: Duration = Duration::from_secs(120);
/// Backoff between failed attempts (bootstrap and renewal): doubling from the first to the
/// last value.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// File names under `data_dir`.
const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const BUNDLE_FILE: &str = "bundle.pem";

/// Why the sidecar has no certificate, or could not renew it.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot read the bootstrap token {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bootstrap token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("cannot load the trust bundle {}: {source}", path.display())]
    BundleFile {
        path: PathBuf,
        source: strait_trust::Error,
    },
    #[error(
        "the zone control plane at {zone_cp} refused the certificate request ({code:?}): {message}"
    )]
    Refused {
        zone_cp: String,
        code: tonic::Code,
        message: String,
    },
    #[error("the zone control plane at {zone_cp} is not reachable: {message}")]
    Unreachable { zone_cp: String, message: String },
    #[error("the server at {zone_cp} is not trusted as {expected}: {reason}")]
    UntrustedZone {
        zone_cp: String,
        expected: String,
        reason: String,
    },
    #[error("the zone control plane at {zone_cp} returned an unusable certificate: {reason}")]
    BadResponse { zone_cp: String, reason: String },
    #[error("TLS or certificate handling failed: {0}")]
    Trust(#[from] strait_trust::Error),
    #[error("cannot {action} {}: {source}", path.display())]
    DataDir {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("registering the identity metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl IdentityError {
    /// Whether trying again later may help (the zone was unreachable or could not sign now),
    /// as opposed to a refusal or a local problem.
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::Unreachable { .. } => true,
            IdentityError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
            ),
            _ => false,
        }
    }
}

// === settings ===

/// What [`Identity::bootstrap`] needs: who to be, where the zone is, and where the token,
/// bundle and data directory live. Built from a component's own settings
/// ([`SidecarSettings::identity_settings`](crate::config::SidecarSettings::identity_settings)
/// for a sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// The zone control plane's gRPC address (`host:port`).
    pub zone_cp: String,
    /// The zone; the control plane must be `spiffe://TD/zone/ZONE/cp`.
    pub zone: String,
    pub trust_domain: String,
    /// The bootstrap token, read only when there is no usable certificate.
    pub token_file: PathBuf,
    /// What `token_file` holds: a Strait bootstrap token, or (Kubernetes) the pod's projected
    /// service-account token, which the zone checks with a TokenReview.
    pub token_kind: TokenKind,
    /// Where the key, certificate and bundle are kept across restarts.
    pub data_dir: Option<PathBuf>,
    /// The federation's trust bundle to verify the zone with on first contact.
    pub bundle_file: Option<PathBuf>,
    /// The identity to ask for (a workload's, or `zone/ZONE/gateway`).
    pub id: SpiffeId,
    /// Prefix of the identity metrics: `strait_sidecar`, `strait_gateway`.
    pub metrics_prefix: &'static str,
}

/// What a token file holds, and so which credential it is sent as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A Strait bootstrap token (`strait token workload`).
    #[default]
    Bootstrap,
    /// A Kubernetes projected service-account token (audience `strait`), re-read at every
    /// bootstrap because the kubelet rotates it.
    ServiceAccount,
}

impl TokenKind {
    fn credential(self, token: String) -> pb::sign_certificate_request::Credential {
        use pb::sign_certificate_request::Credential;
        match self {
            TokenKind::Bootstrap => Credential::BootstrapToken(token),
            TokenKind::ServiceAccount => Credential::ServiceAccountToken(token),
        }
    }
}

impl std::str::FromStr for TokenKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bootstrap" => Ok(TokenKind::Bootstrap),
            "service-account" | "service_account" => Ok(TokenKind::ServiceAccount),
            other => Err(format!(
                "{other:?} is not a token kind: use bootstrap or service-account"
            )),
        }
    }
}

impl IdentitySettings {
    /// Checks what can be checked without the disk or the network; errors name the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field: &'static str, reason: String| SettingsError { field, reason };
        check_host_port(&self.zone_cp).map_err(|r| invalid("zone_cp", r))?;
        check_dns_label(&self.zone).map_err(|r| invalid("zone", r))?;
        strait_trust::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        if self.token_file.as_os_str().is_empty() {
            return Err(invalid("token_file", "must not be empty".to_owned()));
        }
        if self.id.trust_domain() != self.trust_domain {
            return Err(invalid(
                "trust_domain",
                format!("{} is not in trust domain {:?}", self.id, self.trust_domain),
            ));
        }
        for (field, path) in [
            ("data_dir", &self.data_dir),
            ("bundle_file", &self.bundle_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(field, "must not be empty when given".to_owned()));
            }
        }
        Ok(())
    }

    /// `spiffe://TD/zone/ZONE/cp`: who the zone control plane must be.
    pub fn zone_cp_id(&self) -> Result<SpiffeId, SettingsError> {
        SpiffeId::zone_cp(&self.trust_domain, &self.zone).map_err(|e| SettingsError {
            field: "zone",
            reason: e.to_string(),
        })
    }
}

// === metrics ===

/// The identity's metrics.
#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    /// `PREFIX_cert_expiry_timestamp_seconds`: `not_after` of the current certificate.
    pub expiry: Gauge,
    /// `PREFIX_cert_renewals_total{result}`.
    pub renewals: IntCounterVec,
}

impl IdentityMetrics {
    /// Registers `PREFIX_cert_*` (`prefix` is e.g. `strait_sidecar`) with `registry`.
    pub fn new(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let expiry = Gauge::with_opts(Opts::new(
            format!("{prefix}_cert_expiry_timestamp_seconds"),
            "When the current certificate expires (Unix seconds).",
        ))?;
        let renewals = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_cert_renewals_total"),
                "Renewals of the certificate, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(renewals.clone()))?;
        for result in ["success", "failure"] {
            renewals.with_label_values(&[result]);
        }
        Ok(Self { expiry, renewals })
    }

    fn set_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.expiry.set(secs);
    }
}

// === Identity ===

/// The sidecar's live identity: cheap to clone, clones share the stores.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    zone_cp: String,
    id: SpiffeId,
    zone_cp_id: SpiffeId,
    trust_domain: String,
    token_file: PathBuf,
    token_kind: TokenKind,
    data_dir: Option<PathBuf>,
    creds: CredentialStore,
    trust: TrustStore,
    metrics: IdentityMetrics,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.inner.id.to_string())
            .field("zone_cp", &self.inner.zone_cp)
            .field("creds", &self.inner.creds)
            .field("trust", &self.inner.trust)
            .finish_non_exhaustive()
    }
}

/// What the zone's certificate is checked against on a bootstrap.
enum Anchor {
    /// A bundle from `bundle_file` or persisted by an earlier run.
    Bundle(TrustBundle),
    /// Trust on first use (see the module docs).
    FirstUse,
}

impl Identity {
    /// Gets the sidecar's certificate: loads it from `data_dir` when a usable one is there,
    /// otherwise bootstraps with the token (see the module docs). Metrics are registered with
    /// `registry`.
    ///
    /// A zone that does not answer is retried for up to two minutes (it may be starting);
    /// refusals (a bad token, a zone that is not who it should be) fail at once.
    pub async fn bootstrap(
        settings: &IdentitySettings,
        registry: &Registry,
    ) -> Result<Self, IdentityError> {
        settings.validate()?;
        let id = settings.id.clone();
        let zone_cp_id = settings.zone_cp_id()?;
        let metrics = IdentityMetrics::new(registry, settings.metrics_prefix)?;

        let mut anchor = match &settings.bundle_file {
            Some(path) => Some(Anchor::Bundle(read_bundle_file(
                path,
                &settings.trust_domain,
            )?)),
            None => None,
        };
        if let Some(dir) = &settings.data_dir {
            match load_persisted(dir, &id, &settings.trust_domain) {
                Persisted::Usable { creds, trust } => {
                    tracing::info!(%id, dir = %dir.display(), not_after = ?creds.cert_info().not_after, "loaded the workload certificate from the data directory");
                    metrics.set_expiry(creds.cert_info().not_after);
                    return Ok(Identity::from_parts(
                        settings, id, zone_cp_id, creds, trust, metrics,
                    ));
                }
                Persisted::BundleOnly(bundle) => {
                    if anchor.is_none() {
                        anchor = Some(Anchor::Bundle(bundle));
                    }
                }
                Persisted::Nothing => {}
            }
        }
        let anchor = anchor.unwrap_or(Anchor::FirstUse);
        if matches!(anchor, Anchor::FirstUse) {
            tracing::info!(zone_cp = %settings.zone_cp, "no trust bundle yet: trusting the zone's root on first contact");
        }

        let start = tokio::time::Instant::now();
        let mut backoff = Backoff::new();
        let (creds, trust) = loop {
            match bootstrap_once(settings, &id, &zone_cp_id, &anchor).await {
                Ok(pair) => break pair,
                Err(err) if err.is_transient() && start.elapsed() < BOOTSTRAP_PATIENCE => {
                    let pause = backoff.next();
                    tracing::warn!(%err, retry_in = ?pause, "bootstrap failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(err),
            }
        };
        metrics.set_expiry(creds.cert_info().not_after);
        Ok(Identity::from_parts(
            settings, id, zone_cp_id, creds, trust, metrics,
        ))
    }

    fn from_parts(
        settings: &IdentitySettings,
        id: SpiffeId,
        zone_cp_id: SpiffeId,
        creds: CredentialStore,
        trust: TrustStore,
        metrics: IdentityMetrics,
    ) -> Self {
        Identity {
            inner: Arc::new(Inner {
                zone_cp: settings.zone_cp.clone(),
                id,
                zone_cp_id,
                trust_domain: settings.trust_domain.clone(),
                token_file: settings.token_file.clone(),
                token_kind: settings.token_kind,
                data_dir: settings.data_dir.clone(),
                creds,
                trust,
                metrics,
            }),
        }
    }

    /// The certificate and key in use; replaced in place by renewals.
    pub fn creds(&self) -> &CredentialStore {
        &self.inner.creds
    }

    /// The federation's trust bundle; replaced in place when the zone sends a new one.
    pub fn trust(&self) -> &TrustStore {
        &self.inner.trust
    }

    /// This sidecar's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.inner.id
    }

    /// The federation's trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    /// Who the zone control plane must be.
    pub fn zone_cp_id(&self) -> &SpiffeId {
        &self.inner.zone_cp_id
    }

    pub fn metrics(&self) -> &IdentityMetrics {
        &self.inner.metrics
    }

    /// A client config for the zone control plane: presents the current certificate, expects
    /// exactly `zone/ZONE/cp`, ALPN `h2`. Built on the live stores, so it follows renewals.
    pub fn zone_client_config(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let config = strait_trust::tls::client_config(
            &self.inner.creds,
            &self.inner.trust,
            Arc::new(AllowExactly(vec![self.inner.zone_cp_id.clone()])),
            vec![ALPN_H2.to_vec()],
        )?;
        Ok(Arc::new(config))
    }

    /// Renews the certificate now, over mutual TLS with the current one (no token), and swaps
    /// the result into the stores. Counts the outcome in `PREFIX_cert_renewals_total`.
    pub async fn renew(&self) -> Result<(), IdentityError> {
        let result = self.renew_inner().await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.inner
            .metrics
            .renewals
            .with_label_values(&[label])
            .inc();
        result
    }

    async fn renew_inner(&self) -> Result<(), IdentityError> {
        let inner = &self.inner;
        let key = KeyPair::generate()?;
        let tls = self.zone_client_config()?;
        let (reply, _) = sign_certificate(
            &inner.zone_cp,
            tls,
            None,
            pb::SignCertificateRequest {
                csr_pem: key.leaf_csr(&inner.id)?,
                credential: None,
                requested_spiffe_id: inner.id.to_string(),
            },
            &inner.zone_cp_id,
        )
        .await?;
        let current = inner.trust.current();
        let checked = check_reply(&inner.zone_cp, &inner.id, &reply, &current, None)?;
        self.install(checked, &key)
    }

    /// Bootstraps again with the token, verifying the zone against the bundle this sidecar
    /// already has: the way back once the certificate expired.
    async fn rebootstrap(&self) -> Result<(), IdentityError> {
        let inner = &self.inner;
        let token = read_token(&inner.token_file)?;
        let key = KeyPair::generate()?;
        let bundle = TrustBundle::clone(&inner.trust.current());
        let verifier = Arc::new(ZoneVerifier::known(bundle.clone(), &inner.zone_cp_id));
        let tls = no_client_auth_config(verifier.clone())?;
        let (reply, _) = sign_certificate(
            &inner.zone_cp,
            tls,
            Some(verifier.as_ref()),
            pb::SignCertificateRequest {
                csr_pem: key.leaf_csr(&inner.id)?,
                credential: Some(inner.token_kind.credential(token)),
                requested_spiffe_id: inner.id.to_string(),
            },
            &inner.zone_cp_id,
        )
        .await?;
        let checked = check_reply(&inner.zone_cp, &inner.id, &reply, &bundle, None)?;
        self.install(checked, &key)
    }

    /// Swaps a checked reply into the stores and the data directory.
    fn install(&self, checked: CheckedReply, key: &KeyPair) -> Result<(), IdentityError> {
        let inner = &self.inner;
        let key_pem = key.to_pem();
        // Credentials first: the new bundle verified the new chain, and the old bundle shares
        // a root with the new one, so either order leaves every handshake verifiable.
        inner.creds.replace_pem(&checked.chain_pem, &key_pem)?;
        inner.trust.replace(checked.bundle.clone())?;
        let not_after = inner.creds.cert_info().not_after;
        inner.metrics.set_expiry(not_after);
        tracing::info!(id = %inner.id, ?not_after, "workload certificate renewed");
        if let Some(dir) = &inner.data_dir
            && let Err(err) = persist(dir, &key_pem, &checked.chain_pem, &checked.bundle)
        {
            tracing::warn!(%err, "the renewed certificate could not be saved; a restart will bootstrap again");
        }
        Ok(())
    }

    /// Renews at 2/3 of the certificate's life until `shutdown` completes (see the module
    /// docs for failures and expiry).
    pub async fn run_renewal(self, shutdown: impl Future) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new();
        // Set after a failure: the next attempt waits for this instead of 2/3 of life.
        let mut retry_after: Option<Duration> = None;
        loop {
            let info = self.inner.creds.cert_info();
            let now = SystemTime::now();
            let wait = retry_after.unwrap_or_else(|| {
                renew_at(&info)
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                _ = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
            let expired = SystemTime::now() >= info.not_after;
            let result = if expired {
                tracing::warn!(id = %self.inner.id, "the workload certificate expired; bootstrapping again with the token");
                let r = self.rebootstrap().await;
                let label = if r.is_ok() { "success" } else { "failure" };
                self.inner
                    .metrics
                    .renewals
                    .with_label_values(&[label])
                    .inc();
                r
            } else {
                self.renew().await
            };
            match result {
                Ok(()) => {
                    backoff = Backoff::new();
                    retry_after = None;
                }
                Err(err) => {
                    let pause = backoff.next();
                    // Never sleep past the expiry: that moment changes what to try.
                    let until_expiry = info
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    let pause = if expired || until_expiry.is_zero() {
                        pause
                    } else {
                        pause.min(until_expiry + Duration::from_millis(10))
                    };
                    tracing::warn!(%err, retry_in = ?pause, not_after = ?info.not_after, "certificate renewal failed");
                    retry_after = Some(pause);
                }
            }
        }
    }
}

/// When to renew a certificate: two thirds of the way from its issuance to its expiry (see
/// [`strait_trust::rotation::renew_at`], which accounts for the clock-skew backdating).
pub fn renew_at(info: &strait_trust::CertInfo) -> SystemTime {
    strait_trust::rotation::renew_at(info.not_before, info.not_after)
}

// === bootstrap ===

async fn bootstrap_once(
    settings: &IdentitySettings,
    id: &SpiffeId,
    zone_cp_id: &SpiffeId,
    anchor: &Anchor,
) -> Result<(CredentialStore, TrustStore), IdentityError> {
    let token = read_token(&settings.token_file)?;
    let key = KeyPair::generate()?;
    let verifier = Arc::new(match anchor {
        Anchor::Bundle(bundle) => ZoneVerifier::known(bundle.clone(), zone_cp_id),
        Anchor::FirstUse => ZoneVerifier::first_use(&settings.trust_domain, zone_cp_id),
    });
    let tls = no_client_auth_config(verifier.clone())?;
    let (reply, verifier_root) = sign_certificate(
        &settings.zone_cp,
        tls,
        Some(verifier.as_ref()),
        pb::SignCertificateRequest {
            csr_pem: key.leaf_csr(id)?,
            credential: Some(settings.token_kind.credential(token)),
            requested_spiffe_id: id.to_string(),
        },
        zone_cp_id,
    )
    .await?;
    let checked = match anchor {
        Anchor::Bundle(bundle) => check_reply(&settings.zone_cp, id, &reply, bundle, None)?,
        Anchor::FirstUse => {
            let root = verifier_root.ok_or_else(|| IdentityError::BadResponse {
                zone_cp: settings.zone_cp.clone(),
                reason: "no root was recorded from the zone's handshake".to_owned(),
            })?;
            let pinned = TrustBundle::from_der(&settings.trust_domain, [root.clone()])?;
            check_reply(&settings.zone_cp, id, &reply, &pinned, Some(&root))?
        }
    };
    let key_pem = key.to_pem();
    let creds = CredentialStore::from_pem(&checked.chain_pem, &key_pem)?;
    tracing::info!(%id, not_after = ?creds.cert_info().not_after, roots = ?checked.bundle.pins(), "workload certificate issued");
    if let Some(dir) = &settings.data_dir
        && let Err(err) = persist(dir, &key_pem, &checked.chain_pem, &checked.bundle)
    {
        tracing::warn!(%err, "the certificate could not be saved; a restart will bootstrap again");
    }
    Ok((creds, TrustStore::new(checked.bundle)))
}

fn read_token(path: &Path) -> Result<String, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(IdentityError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_owned())
}

fn read_bundle_file(path: &Path, trust_domain: &str) -> Result<TrustBundle, IdentityError> {
    let bundle_err = |source| IdentityError::BundleFile {
        path: path.to_path_buf(),
        source,
    };
    let pem = strait_trust::store::read_cert(path).map_err(bundle_err)?;
    TrustBundle::from_pem(trust_domain, &pem).map_err(bundle_err)
}

/// Calls `SignCertificate`; returns the reply and, for a first-use verifier, the root it
/// accepted. Failures name the zone, and a handshake the verifier refused says why.
async fn sign_certificate(
    zone_cp: &str,
    tls: Arc<rustls::ClientConfig>,
    verifier: Option<&ZoneVerifier>,
    request: pb::SignCertificateRequest,
    expected: &SpiffeId,
) -> Result<(pb::SignCertificateResponse, Option<CertificateDer<'static>>), IdentityError> {
    let channel = strait_proto::transport::channel(zone_cp, tls, CONNECT_TIMEOUT);
    let mut client = pb::identity_client::IdentityClient::new(channel);
    let mut request = tonic::Request::new(request);
    request.set_timeout(CALL_TIMEOUT);
    let result = tokio::time::timeout(
        CALL_TIMEOUT + CONNECT_TIMEOUT,
        client.sign_certificate(request),
    )
    .await;
    let refusal = verifier.and_then(ZoneVerifier::refusal);
    match result {
        Ok(Ok(reply)) => Ok((reply.into_inner(), verifier.and_then(ZoneVerifier::root))),
        _ if refusal.is_some() => Err(IdentityError::UntrustedZone {
            zone_cp: zone_cp.to_owned(),
            expected: expected.to_string(),
            reason: refusal.unwrap_or_default(),
        }),
        Ok(Err(status)) => Err(status_error(zone_cp, &status)),
        Err(_) => Err(IdentityError::Unreachable {
            zone_cp: zone_cp.to_owned(),
            message: format!("no answer within {:?}", CALL_TIMEOUT + CONNECT_TIMEOUT),
        }),
    }
}

/// A failed call as the error a user reads: transport failures are "unreachable", answers
/// from the zone are refusals with its message.
pub(crate) fn status_error(zone_cp: &str, status: &tonic::Status) -> IdentityError {
    use std::error::Error as _;
    // tonic reports connection failures as Unavailable/Unknown with a transport error source.
    let transport = status
        .source()
        .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some())
        || (status.code() == tonic::Code::Unavailable && status.message().contains("transport"))
        || status.code() == tonic::Code::Cancelled;
    if transport {
        let mut message = status.message().to_owned();
        let mut source = status.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        return IdentityError::Unreachable {
            zone_cp: zone_cp.to_owned(),
            message,
        };
    }
    IdentityError::Refused {
        zone_cp: zone_cp.to_owned(),
        code: status.code(),
        message: status.message().to_owned(),
    }
}

/// A reply whose chain is this sidecar's identity and verifies, with the bundle to use.
struct CheckedReply {
    chain_pem: String,
    bundle: TrustBundle,
}

/// Checks a `SignCertificate` reply: the leaf is `id`, the chain verifies against `anchor` (as
/// both a client and a server certificate: the sidecar is both), the returned bundle verifies
/// it too and shares a root with `anchor` (contains `pinned` when trusting on first use).
fn check_reply(
    zone_cp: &str,
    id: &SpiffeId,
    reply: &pb::SignCertificateResponse,
    anchor: &TrustBundle,
    pinned: Option<&CertificateDer<'static>>,
) -> Result<CheckedReply, IdentityError> {
    let bad = |reason: String| IdentityError::BadResponse {
        zone_cp: zone_cp.to_owned(),
        reason,
    };
    if let Some(error) = &reply.error {
        return Err(bad(format!(
            "the reply carries an error: {}",
            error.message
        )));
    }
    let chain = strait_trust::pem::parse_certs(&reply.cert_chain_pem, "returned chain")
        .map_err(|e| bad(e.to_string()))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(bad("the returned chain is empty".to_owned()));
    };
    let bundle = TrustBundle::from_pem(anchor.trust_domain(), &reply.trust_bundle_pem)
        .map_err(|e| bad(format!("the returned trust bundle: {e}")))?;
    let provider = strait_trust::tls::crypto_provider();
    let only_me = AllowExactly(vec![id.clone()]);
    let now = UnixTime::now();
    for (what, against) in [("the trusted roots", anchor), ("its own bundle", &bundle)] {
        for role in [PeerRole::Client, PeerRole::Server] {
            verify_peer(against, leaf, intermediates, now, role, &only_me, &provider).map_err(
                |e| {
                    bad(format!(
                        "the returned certificate does not verify against {what} ({role:?}): {}",
                        describe(&e)
                    ))
                },
            )?;
        }
    }
    match pinned {
        Some(root) if !bundle.roots().contains(root) => {
            return Err(bad(
                "the returned trust bundle does not contain the root the zone presented".to_owned(),
            ));
        }
        Some(_) => {}
        None => {
            if !bundle.roots().iter().any(|r| anchor.roots().contains(r)) {
                return Err(bad(
                    "the returned trust bundle shares no root with the trusted one".to_owned(),
                ));
            }
        }
    }
    Ok(CheckedReply {
        chain_pem: reply.cert_chain_pem.clone(),
        bundle,
    })
}

/// A rustls error with Strait's own refusal text when it carries one.
fn describe(err: &rustls::Error) -> String {
    strait_trust::tls::refusal(err).map_or_else(|| err.to_string(), ToString::to_string)
}

fn no_client_auth_config(
    verifier: Arc<ZoneVerifier>,
) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
    let mut config =
        rustls::ClientConfig::builder_with_provider(strait_trust::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(strait_trust::Error::from)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

// === the zone's certificate on bootstrap ===

/// Verifies the zone control plane on a bootstrap call, against a bundle or by trust on first
/// use, and remembers why it refused (the handshake error tonic reports does not say) and
/// which root it accepted.
#[derive(Debug)]
struct ZoneVerifier {
    mode: VerifyMode,
    expected: AllowExactly,
    provider: Arc<CryptoProvider>,
    refusal: Mutex<Option<String>>,
    root: Mutex<Option<CertificateDer<'static>>>,
}

#[derive(Debug)]
enum VerifyMode {
    Known(SpiffeServerVerifier),
    FirstUse { trust_domain: String },
}

impl ZoneVerifier {
    fn known(bundle: TrustBundle, zone_cp_id: &SpiffeId) -> Self {
        let expected = AllowExactly(vec![zone_cp_id.clone()]);
        Self::new(
            VerifyMode::Known(SpiffeServerVerifier::new(
                TrustStore::new(bundle),
                Arc::new(expected.clone()),
            )),
            expected,
        )
    }

    fn first_use(trust_domain: &str, zone_cp_id: &SpiffeId) -> Self {
        Self::new(
            VerifyMode::FirstUse {
                trust_domain: trust_domain.to_owned(),
            },
            AllowExactly(vec![zone_cp_id.clone()]),
        )
    }

    fn new(mode: VerifyMode, expected: AllowExactly) -> Self {
        ZoneVerifier {
            mode,
            expected,
            provider: strait_trust::tls::crypto_provider(),
            refusal: Mutex::new(None),
            root: Mutex::new(None),
        }
    }

    fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn root(&self) -> Option<CertificateDer<'static>> {
        self.root
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String> {
        match &self.mode {
            VerifyMode::Known(inner) => inner
                .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                .map(|_| ())
                .map_err(|e| describe(&e)),
            VerifyMode::FirstUse { trust_domain } => {
                let root = intermediates.last().ok_or(
                    "its chain has no CA certificates (Strait servers send leaf, intermediate, root)",
                )?;
                check_self_signed(root)?;
                let root = root.clone().into_owned();
                let bundle = TrustBundle::from_der(trust_domain, [root.clone()])
                    .map_err(|e| format!("the last certificate of its chain: {e}"))?;
                verify_peer(
                    &bundle,
                    end_entity,
                    intermediates,
                    now,
                    PeerRole::Server,
                    &self.expected,
                    &self.provider,
                )
                .map_err(|e| describe(&e))?;
                *self.root.lock().unwrap_or_else(PoisonError::into_inner) = Some(root);
                Ok(())
            }
        }
    }
}

/// The last certificate of a first-contact chain must be a root: issuer = subject and signed
/// by its own key.
fn check_self_signed(der: &CertificateDer<'_>) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("the last certificate of its chain does not parse: {e}"))?;
    if cert.issuer() != cert.subject() {
        return Err(
            "its chain does not end at a self-signed root (issuer differs from subject)".to_owned(),
        );
    }
    cert.verify_signature(None)
        .map_err(|e| format!("its chain does not end at a self-signed root (self-signature: {e})"))
}

impl ServerCertVerifier for ZoneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verify(end_entity, intermediates, server_name, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(reason) => {
                tracing::debug!(%reason, "zone control plane certificate refused");
                *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
                Err(CertificateError::ApplicationVerificationFailure.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === data directory ===

enum Persisted {
    /// A certificate for this identity, valid now, with its key and bundle.
    Usable {
        creds: CredentialStore,
        trust: TrustStore,
    },
    /// No usable certificate, but a bundle to verify the zone with.
    BundleOnly(TrustBundle),
    Nothing,
}

/// What an earlier run left in `dir`. Anything unreadable or not matching is logged and
/// ignored: the sidecar bootstraps again.
fn load_persisted(dir: &Path, id: &SpiffeId, trust_domain: &str) -> Persisted {
    let bundle_path = dir.join(BUNDLE_FILE);
    if !bundle_path.exists() {
        return Persisted::Nothing;
    }
    let bundle = match strait_trust::store::read_cert(&bundle_path)
        .and_then(|pem| TrustBundle::from_pem(trust_domain, &pem))
    {
        Ok(bundle) => bundle,
        Err(err) => {
            tracing::warn!(%err, "ignoring the persisted trust bundle");
            return Persisted::Nothing;
        }
    };
    let loaded = (|| -> Result<Option<CredentialStore>, strait_trust::Error> {
        let key = strait_trust::store::read_key(&dir.join(KEY_FILE))?;
        let chain = strait_trust::store::read_cert(&dir.join(CERT_FILE))?;
        let creds = CredentialStore::from_pem(&chain, &key)?;
        let info = creds.cert_info();
        let usable = creds.identity() == *id
            && info.is_valid_at(SystemTime::now())
            && SystemTime::now() < renew_at(&info);
        Ok(usable.then_some(creds))
    })();
    match loaded {
        Ok(Some(creds)) => {
            // The chain must still verify against the bundle (a root may have been removed).
            let certified = creds.certified_key();
            let verifies = certified.cert.split_first().is_some_and(|(leaf, rest)| {
                verify_peer(
                    &bundle,
                    leaf,
                    rest,
                    UnixTime::now(),
                    PeerRole::Client,
                    &AllowExactly(vec![id.clone()]),
                    &strait_trust::tls::crypto_provider(),
                )
                .is_ok()
            });
            if verifies {
                Persisted::Usable {
                    creds,
                    trust: TrustStore::new(bundle),
                }
            } else {
                tracing::info!("the persisted certificate no longer verifies; bootstrapping again");
                Persisted::BundleOnly(bundle)
            }
        }
        Ok(None) => {
            tracing::info!(
                "the persisted certificate is expired, due for renewal or for another identity; bootstrapping again"
            );
            Persisted::BundleOnly(bundle)
        }
        Err(err) => {
            tracing::info!(%err, "no usable persisted certificate; bootstrapping again");
            Persisted::BundleOnly(bundle)
        }
    }
}

fn persist(
    dir: &Path,
    key_pem: &str,
    chain_pem: &str,
    bundle: &TrustBundle,
) -> Result<(), IdentityError> {
    create_private_dir(dir)?;
    // Key first: a crash between the two leaves a pair that does not match, which the next
    // start detects (and bootstraps), never a key some other certificate is paired with.
    strait_trust::store::write_key(&dir.join(KEY_FILE), key_pem)?;
    strait_trust::store::write_cert(&dir.join(CERT_FILE), chain_pem)?;
    strait_trust::store::write_cert(&dir.join(BUNDLE_FILE), &bundle.to_pem())?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    strait_trust::store::create_private_dir(dir).map_err(|source| IdentityError::DataDir {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })
}

// === backoff ===

/// Doubling pauses from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], with up to 25 % jitter so that
/// many sidecars of a restarted zone do not come back in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
        base + jitter
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= BACKOFF_MIN && first <= BACKOFF_MIN.mul_f64(1.25));
        let mut last = first;
        for _ in 0..20 {
            last = b.next();
        }
        assert!(last >= BACKOFF_MAX && last <= BACKOFF_MAX.mul_f64(1.25));
    }

    #[test]
    fn renews_at_two_thirds_of_the_real_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let skew = strait_trust::ca::CLOCK_SKEW_ALLOWANCE;
        let info = |nb: SystemTime, na: SystemTime| strait_trust::CertInfo {
            spiffe_id: None,
            not_before: nb,
            not_after: na,
            is_ca: false,
        };
        // A 12 s certificate issued at t0 (back-dated): renewed 8 s after issuance.
        let short = info(t0 - skew, t0 + Duration::from_secs(12));
        assert_eq!(renew_at(&short), t0 + Duration::from_secs(8));
        // 24 h: 16 h after issuance.
        let day = info(t0 - skew, t0 + Duration::from_secs(24 * 3600));
        assert_eq!(renew_at(&day), t0 + Duration::from_secs(16 * 3600));
        // Not back-dated and shorter than the allowance: plain 2/3 of its life.
        let odd = info(t0, t0 + Duration::from_secs(30));
        assert_eq!(renew_at(&odd), t0 + Duration::from_secs(20));
    }

    #[test]
    fn transient_errors() {
        let unreachable = IdentityError::Unreachable {
            zone_cp: "z".into(),
            message: "m".into(),
        };
        assert!(unreachable.is_transient());
        let refused = IdentityError::Refused {
            zone_cp: "z".into(),
            code: tonic::Code::Unauthenticated,
            message: "bad token".into(),
        };
        assert!(!refused.is_transient());
        let busy = IdentityError::Refused {
            zone_cp: "z".into(),
            code: tonic::Code::Unavailable,
            message: "this zone can not sign right now".into(),
        };
        assert!(busy.is_transient());
    }

    #[test]
    fn self_signed_check() {
        let root =
            strait_trust::RootCa::generate("strait.local", Duration::from_secs(3600)).unwrap();
        assert!(check_self_signed(root.cert_der()).is_ok());
        let key = KeyPair::generate().unwrap();
        let csr = key.intermediate_csr("strait.local", "a").unwrap();
        let inter = root
            .sign_intermediate(&csr, "a", Duration::from_secs(600))
            .unwrap();
        let err = check_self_signed(&inter.chain[0]).unwrap_err();
        assert!(err.contains("self-signed"), "{err}");
    }
}
