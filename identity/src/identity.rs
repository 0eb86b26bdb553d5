//! [`Identity`]: a component's live identity (the stores its TLS configs are built from, who
//! it is, who its zone must be) and its [`IdentityMetrics`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{Gauge, IntCounterVec, Opts, Registry};
use strait_trust::SpiffeId;
use strait_trust::tls::{AllowExactly, CredentialStore, TrustStore};

use crate::error::IdentityError;
use crate::settings::{IdentitySettings, TokenKind};

/// The live identity: cheap to clone, clones share the stores. Made by
/// [`Identity::bootstrap`], kept fresh by [`Identity::run_renewal`].
#[derive(Clone)]
pub struct Identity {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) zone_cp: String,
    pub(crate) id: SpiffeId,
    pub(crate) zone_cp_id: SpiffeId,
    pub(crate) trust_domain: String,
    pub(crate) token_file: PathBuf,
    pub(crate) token_kind: TokenKind,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) creds: CredentialStore,
    pub(crate) trust: TrustStore,
    pub(crate) metrics: IdentityMetrics,
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

impl Identity {
    pub(crate) fn from_parts(
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

    /// This component's SPIFFE ID.
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

    /// Who this is and the certificate it holds now, for an admin endpoint's `/config`.
    pub fn status(&self) -> IdentityStatus {
        let info = self.inner.creds.cert_info();
        IdentityStatus {
            spiffe_id: self.inner.id.to_string(),
            not_before_unix: unix_seconds(info.not_before),
            not_after_unix: unix_seconds(info.not_after),
            trust_roots: self.inner.trust.current().pins(),
        }
    }

    /// A client config for the zone control plane: presents the current certificate, expects
    /// exactly `zone/ZONE/cp`, ALPN `h2`. Built on the live stores, so it follows renewals.
    pub fn zone_client_config(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let config = strait_trust::tls::client_config(
            &self.inner.creds,
            &self.inner.trust,
            Arc::new(AllowExactly(vec![self.inner.zone_cp_id.clone()])),
            vec![crate::ALPN_H2.to_vec()],
        )?;
        Ok(Arc::new(config))
    }
}

/// What [`Identity::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IdentityStatus {
    pub spiffe_id: String,
    /// The current certificate's validity, in Unix seconds.
    pub not_before_unix: u64,
    pub not_after_unix: u64,
    /// The pins (SHA-256) of the trusted roots.
    pub trust_roots: Vec<String>,
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// === IdentityMetrics ===

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

    pub(crate) fn set_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.expiry.set(secs);
    }

    /// Counts one renewal (or re-bootstrap after expiry) by its outcome.
    pub(crate) fn count_renewal(&self, ok: bool) {
        let label = if ok { "success" } else { "failure" };
        self.renewals.with_label_values(&[label]).inc();
    }
}
