//! The zone control plane's certificate on a bootstrap call ([`ZoneVerifier`]): against a
//! bundle, or by trust on first use (see the crate docs). The handshake-signature half is
//! `strait_trust`'s, shared with every other Strait verifier.

use std::sync::{Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use strait_trust::tls::{
    AllowExactly, HandshakeSignatures, PeerRole, SpiffeServerVerifier, TrustStore, verify_peer,
};
use strait_trust::{SpiffeId, TrustBundle};

/// Verifies the zone control plane on a bootstrap call, against a bundle or by trust on first
/// use, and remembers why it refused (the handshake error tonic reports does not say) and
/// which root it accepted.
#[derive(Debug)]
pub(crate) struct ZoneVerifier {
    mode: VerifyMode,
    expected: AllowExactly,
    signatures: HandshakeSignatures,
    refusal: Mutex<Option<String>>,
    root: Mutex<Option<CertificateDer<'static>>>,
}

#[derive(Debug)]
enum VerifyMode {
    Known(SpiffeServerVerifier),
    FirstUse { trust_domain: String },
}

impl ZoneVerifier {
    pub(crate) fn known(bundle: TrustBundle, zone_cp_id: &SpiffeId) -> Self {
        let expected = AllowExactly(vec![zone_cp_id.clone()]);
        Self::new(
            VerifyMode::Known(SpiffeServerVerifier::new(
                TrustStore::new(bundle),
                Arc::new(expected.clone()),
            )),
            expected,
        )
    }

    pub(crate) fn first_use(trust_domain: &str, zone_cp_id: &SpiffeId) -> Self {
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
            signatures: HandshakeSignatures::new(),
            refusal: Mutex::new(None),
            root: Mutex::new(None),
        }
    }

    /// Why the last handshake was refused, if it was.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The root a first-use handshake accepted.
    pub(crate) fn root(&self) -> Option<CertificateDer<'static>> {
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
                    self.signatures.provider(),
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

/// A rustls error with Strait's own refusal text when it carries one.
pub(crate) fn describe(err: &rustls::Error) -> String {
    strait_trust::tls::refusal(err).map_or_else(|| err.to_string(), ToString::to_string)
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
        self.signatures.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use strait_trust::KeyPair;

    use super::*;

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
