//! rustls configurations for Strait's mutual TLS: SPIFFE peer verification in both
//! directions, live rotation of roots and leaf certificates, and the pinned configuration a
//! zone uses to join.
//!
//! ```text
//! TrustStore  (bundle, replaceable)  ──▶ SpiffeClientVerifier / SpiffeServerVerifier
//! CredentialStore (leaf + key, replaceable) ──▶ ResolvesServerCert / ResolvesClientCert
//! Authorize (caller's hook)           ──▶ called with the verified PeerIdentity
//! ```
//!
//! Policies of every config built here:
//! - TLS 1.3 only (QUIC requires it, and everything in the mesh is ours).
//! - The ring provider, passed explicitly: nothing depends on a process-wide default.
//! - **Session resumption is off** on both sides. A resumed session skips certificate
//!   verification, so with resumption a removed root or a newly denied identity would still
//!   get in until the ticket expires. The exceptions are [`quic_server_config`] and
//!   [`quic_client_config`] (the QUIC gateways, for 0-RTT), whose callers re-check the peer
//!   after the handshake.
//! - The server name given to a client connector is ignored for verification (SPIFFE
//!   certificates have no DNS names); any valid name works, e.g. `"strait"`.

mod authorize;
mod stores;
mod verify;

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;

pub use authorize::{AllowAny, AllowExactly, Authorize, AuthorizeFn, PeerIdentity, authorize_fn};
pub use stores::{CredentialStore, TrustStore};
pub use verify::{
    HandshakeSignatures, PeerRole, SpiffeClientVerifier, SpiffeServerVerifier, verify_peer,
};

use crate::bundle::parse_pin;
use crate::cert_info::leaf_spiffe_id;
use crate::error::{Error, Result};
use crate::spiffe::{SpiffeId, validate_trust_domain};

/// The crypto provider of every Strait TLS config: ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config that **requires** a client certificate. Clients are verified against
/// `trust` (as it is at each handshake), the identity rules (see [`SpiffeClientVerifier`]) and `authorizer`;
/// the server presents whatever `creds` holds at each handshake.
///
/// After the handshake, `peer_identity(conn.peer_certificates())` gives the client's identity.
pub fn server_config(
    creds: &CredentialStore,
    trust: &TrustStore,
    authorizer: Arc<dyn Authorize>,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig> {
    let verifier = Arc::new(SpiffeClientVerifier::new(trust.clone(), authorizer));
    build_server_config(verifier, creds, alpn)
}

/// Like [`server_config`], but a client may also connect **without** a certificate. A
/// certificate that is presented is verified exactly as by [`server_config`] (a bad one is
/// refused in the handshake); an absent one leaves `peer_certificates()` empty.
///
/// Only for a listener that serves the join calls (whose callers have no certificate yet and
/// prove themselves with a join token) next to mTLS APIs: every handler that is not a join
/// call must then require a peer certificate itself, e.g. with [`peer_identity`].
pub fn server_config_optional_client_auth(
    creds: &CredentialStore,
    trust: &TrustStore,
    authorizer: Arc<dyn Authorize>,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig> {
    let verifier = Arc::new(SpiffeClientVerifier::optional(trust.clone(), authorizer));
    build_server_config(verifier, creds, alpn)
}

fn build_server_config(
    verifier: Arc<SpiffeClientVerifier>,
    creds: &CredentialStore,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(creds.clone()));
    config.alpn_protocols = alpn;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config that presents `creds` and verifies the server against `trust`, the
/// identity rules and `authorizer` (typically [`AllowExactly`] the identity it dials).
pub fn client_config(
    creds: &CredentialStore,
    trust: &TrustStore,
    authorizer: Arc<dyn Authorize>,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig> {
    let verifier = Arc::new(SpiffeServerVerifier::new(trust.clone(), authorizer));
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(creds.clone()));
    config.alpn_protocols = alpn;
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Sessions a QUIC server or client keeps for resumption (a gateway talks to a few dozen
/// peers at most; each entry is a few hundred bytes).
const QUIC_SESSION_CACHE: usize = 1024;

/// Like [`server_config`], for QUIC with **resumption and 0-RTT on**: sessions are kept in a
/// stateful in-memory cache (rustls accepts early data only with stateful resumption), and
/// `max_early_data_size` is `u32::MAX`, the value QUIC requires (RFC 9001 §4.6.1).
///
/// rustls accepts 0-RTT together with client authentication: a resumed session restores the
/// client's certificate chain from the cache, so `peer_certificates()` is there from the first
/// flight. It is **not verified again** on resumption (nor is `authorizer` called), so a
/// caller must re-check the peer after the handshake against the trust and authorization in
/// force *now* (for example with [`verify_peer`] on the restored chain) if a root removal or a
/// newly denied identity must take effect on resumed connections too. Early data can be
/// replayed by an attacker who captured it: only accept idempotent openings in it.
pub fn quic_server_config(
    creds: &CredentialStore,
    trust: &TrustStore,
    authorizer: Arc<dyn Authorize>,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig> {
    let mut config = server_config(creds, trust, authorizer, alpn)?;
    config.session_storage = ServerSessionMemoryCache::new(QUIC_SESSION_CACHE);
    config.send_tls13_tickets = 2;
    config.max_early_data_size = u32::MAX;
    Ok(config)
}

/// Like [`client_config`], for QUIC with **resumption and 0-RTT on**: tickets are kept in
/// memory per server name and early data is offered on resumption. A resumed connection does
/// not verify the server's certificate again (see [`quic_server_config`] for what that means).
pub fn quic_client_config(
    creds: &CredentialStore,
    trust: &TrustStore,
    authorizer: Arc<dyn Authorize>,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig> {
    let mut config = client_config(creds, trust, authorizer, alpn)?;
    config.resumption = Resumption::in_memory_sessions(QUIC_SESSION_CACHE);
    config.enable_early_data = true;
    Ok(config)
}

/// A client config for joining (see [`server_config_optional_client_auth`] for the server
/// side): no client certificate and no trust bundle yet, only the pin
/// (`sha256:<hex>`, from the join token) of the federation's root.
///
/// The server is trusted if its presented chain contains a certificate whose [`pin`] equals
/// `pin`; that certificate becomes the only trust anchor, and the leaf is then verified as
/// usual (chain, validity, serverAuth, one SPIFFE ID in `trust_domain`, identity rules) and
/// passed to `expected_server`.
///
/// **Convention:** Strait servers send their chain *including the root* as the last element
/// (that is what [`crate::ca::IssuedCert::chain`] contains), which is what makes this work:
/// the pinned root is in the handshake even though the client has no copy of it.
///
/// [`pin`]: crate::bundle::pin
pub fn pinned_client_config(
    trust_domain: &str,
    pin: &str,
    expected_server: Arc<dyn Authorize>,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig> {
    validate_trust_domain(trust_domain).map_err(|source| Error::InvalidSpiffeId {
        input: format!("spiffe://{trust_domain}"),
        source,
    })?;
    let pin = parse_pin(pin)?;
    let verifier = Arc::new(SpiffeServerVerifier::pinned(
        trust_domain.to_owned(),
        pin,
        expected_server,
    ));
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Strait's own reason for refusing a peer, when a handshake error is one (identity rules,
/// authorization, pin): `rustls` carries it as `CertificateError::Other`, whose `Display`
/// shows only its `Debug` form. Log this error's `Display` instead.
pub fn refusal(err: &rustls::Error) -> Option<&Error> {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<Error>()
        }
        _ => None,
    }
}

/// The SPIFFE ID of a peer from its certificate chain as the TLS library reports it after
/// the handshake (tokio-rustls `conn.peer_certificates()`, quinn's `peer_identity()`
/// downcast to `Vec<CertificateDer>`). It reads the leaf only and does not re-verify: use it
/// on connections made with the configs of this module, which verified the chain.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<SpiffeId> {
    let leaf = certs.first().ok_or(Error::NoPeerCertificate)?;
    leaf_spiffe_id(leaf)
}
