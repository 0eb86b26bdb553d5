//! Client TLS as Strait's peers speak it (TLS 1.3, the server's SPIFFE identity checked
//! against the federation's trust), with or without a client certificate: a test plays a
//! sidecar that has one, or a caller that has none yet (bootstrap) or should be refused.

use std::sync::Arc;

use strait_trust::tls::{Authorize, CredentialStore, SpiffeServerVerifier, TrustStore};

/// A client config that verifies the server against `trust` and `expect`, offering `alpn`,
/// presenting `creds` or, with `None`, no certificate.
pub fn client_config(
    creds: Option<&CredentialStore>,
    trust: &TrustStore,
    expect: Arc<dyn Authorize>,
    alpn: Vec<Vec<u8>>,
) -> rustls::ClientConfig {
    if let Some(creds) = creds {
        return strait_trust::tls::client_config(creds, trust, expect, alpn).unwrap();
    }
    let verifier = Arc::new(SpiffeServerVerifier::new(trust.clone(), expect));
    let mut config =
        rustls::ClientConfig::builder_with_provider(strait_trust::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
    config.alpn_protocols = alpn;
    config
}
