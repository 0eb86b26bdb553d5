//! The workload identity client that sidecars and east-west gateways share: bootstrap of a
//! certificate from the zone's workload CA with a token, renewal at 2/3 of its life over mutual
//! TLS, the data directory that keeps it across restarts, and the live [`CredentialStore`] and
//! [`TrustStore`] every TLS config of the component is built from.
//!
//! Everything is driven by [`IdentitySettings`] (which identity, which zone, which files, the
//! metric prefix): a sidecar builds them for `spiffe://TD/ns/NAMESPACE/sa/SERVICE`, a gateway
//! for `spiffe://TD/zone/ZONE/gateway`. Both commands take the same flags, [`IdentityArgs`].
//!
//! ```text
//! settings   IdentitySettings, TokenKind, validation
//! args       IdentityArgs: the flags of `strait sidecar run` and `strait gateway run`
//! identity   Identity: the live stores, the zone client config, metrics
//! bootstrap  Identity::bootstrap: token + CSR → SignCertificate, reply checks
//! verifier   the zone's certificate on a bootstrap: bundle or trust on first use
//! renewal    Identity::run_renewal, renew_at, Backoff
//! store      what the data directory holds
//! ```
//!
//! # Bootstrap
//!
//! The component generates its own key (it never leaves the process, or `data_dir` with mode
//! 0600), sends a CSR for its identity and the bootstrap token to `Identity.SignCertificate`,
//! and gets back its chain (leaf, zone intermediate, root) and the federation's trust bundle.
//!
//! # Trusting the zone before having a bundle
//!
//! The zone control plane must be `spiffe://TD/zone/ZONE/cp`, but a first start has nothing to
//! verify that with: the workload token is signed by the root (so the *zone* can check it
//! offline) and carries no pin the client could use. What is trusted then, in this order:
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
//! The trade-off of (3): an attacker who can intercept the *first* connection to the zone can
//! hand the client a certificate of a federation of its own making. It learns the bootstrap
//! token (which only works in the real zone, for this one identity, until it expires; the
//! real zone would issue the attacker that identity's certificate), and the client ends up
//! in the attacker's mesh, not the real one: its traffic never verifies against real peers,
//! so it fails closed rather than leaking real peers' traffic. Every later connection (renewal,
//! discovery, data plane) verifies against the pinned bundle. Where that first-contact risk is
//! not acceptable, pass `bundle_file`.
//!
//! # Renewal
//!
//! [`Identity::run_renewal`] renews at 2/3 of the certificate's life (counted from its
//! issuance, see [`renew_at`]), authenticating with the current certificate over mutual TLS
//! (no token), with a fresh key. The new certificate and bundle are swapped into the stores in
//! place: the next handshake uses them, open connections keep going. A failed renewal is
//! retried with backoff (logged) until the certificate expires; an expired certificate can
//! not authenticate any more, so the client then falls back to the bootstrap token (re-read
//! from its file, verified against the bundle it has).
//!
//! Metrics: `PREFIX_cert_expiry_timestamp_seconds`,
//! `PREFIX_cert_renewals_total{result="success"|"failure"}`, where `PREFIX` is
//! [`IdentitySettings::metrics_prefix`] (`strait_sidecar`, `strait_gateway`).
//!
//! [`CredentialStore`]: strait_trust::tls::CredentialStore
//! [`TrustStore`]: strait_trust::tls::TrustStore

mod args;
mod bootstrap;
mod error;
mod identity;
mod renewal;
pub mod settings;
mod store;
mod verifier;

pub use args::IdentityArgs;
pub use error::IdentityError;
pub use identity::{Identity, IdentityMetrics, IdentityStatus};
pub use renewal::{Backoff, renew_at};
pub use settings::{IdentitySettings, SettingsError, TokenKind};

/// ALPN of the zone's gRPC port.
const ALPN_H2: &[u8] = b"h2";
