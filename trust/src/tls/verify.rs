//! Peer certificate verification for both directions of a handshake: the chain against the
//! trust bundle (webpki, ring algorithms, the handshake's time, the EKU of the peer's role),
//! then Strait's identity rules, then the caller's [`Authorize`] hook.
//!
//! Identity rules, after the chain verifies:
//! - the leaf carries exactly one URI SAN, a SPIFFE ID of the bundle's trust domain;
//! - zone binding: a zone-scoped identity (`zone/Z/cp`, `zone/Z/gateway`) must be issued
//!   directly by the root or by zone Z's own intermediate (URI SAN `zone/Z/ca`), so a
//!   compromised zone cannot mint another zone's identities;
//! - global node and admin identities must be issued directly by the root, so a compromised
//!   zone cannot mint those either;
//! - a zone CA identity (`zone/Z/ca`) is never accepted as a peer;
//! - workload identities may come from any zone's intermediate: a workload keeps its identity
//!   in every zone.
//!
//! SPIFFE certificates carry no DNS names, so the rustls `ServerName` is ignored: the
//! identity check is the authorization hook.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::authorize::{Authorize, PeerIdentity};
use super::stores::TrustStore;
use crate::bundle::{TrustBundle, pin};
use crate::cert_info::{leaf_spiffe_id, parse_x509, uri_sans};
use crate::error::Error;
use crate::spiffe::{IdentityKind, SpiffeId};

/// Which side of the handshake the peer is on; selects the EKU its certificate must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is a TLS client: its certificate needs EKU clientAuth.
    Client,
    /// The peer is a TLS server: its certificate needs EKU serverAuth.
    Server,
}

/// Verifies a peer's chain against `bundle` at `now` and applies the identity rules and
/// `authorizer` (see the module docs). Errors are rustls errors so that the handshake reports
/// them: webpki's verdicts map to the matching [`CertificateError`] variants (`UnknownIssuer`,
/// `ExpiredContext`, `BadSignature`, ...) or, for the others (`EndEntityUsedAsCa`,
/// `PathLenConstraintViolated`, ...), to `CertificateError::Other` whose text names the
/// webpki error; Strait's own refusals are `CertificateError::Other` wrapping an [`Error`].
pub fn verify_peer(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
    authorizer: &dyn Authorize,
    provider: &CryptoProvider,
) -> Result<PeerIdentity, rustls::Error> {
    verify_against(
        bundle.trust_anchors(),
        bundle.trust_domain(),
        end_entity,
        intermediates,
        now,
        role,
        authorizer,
        provider,
    )
}

#[allow(clippy::too_many_arguments)]
fn verify_against(
    anchors: &[TrustAnchor<'_>],
    trust_domain: &str,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
    authorizer: &dyn Authorize,
    provider: &CryptoProvider,
) -> Result<PeerIdentity, rustls::Error> {
    let usage = match role {
        PeerRole::Client => webpki::KeyUsage::client_auth(),
        PeerRole::Server => webpki::KeyUsage::server_auth(),
    };
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    let path = ee
        .verify_for_usage(
            provider.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;

    let id = leaf_spiffe_id(end_entity).map_err(refuse)?;
    if id.trust_domain() != trust_domain {
        return Err(refuse(Error::ForeignTrustDomain {
            id: id.to_string(),
            found: id.trust_domain().to_owned(),
            expected: trust_domain.to_owned(),
        }));
    }
    // The path runs from the leaf upwards: the first intermediate, if any, issued the leaf.
    let issued_by = match path.intermediate_certificates().next() {
        None => IssuedBy::Root,
        Some(ca) => IssuedBy::Intermediate {
            zone: zone_of_ca(ca.der().as_ref(), trust_domain),
        },
    };
    check_zone_binding(&id, &issued_by).map_err(refuse)?;
    let peer = PeerIdentity {
        id,
        issuer_zone: match issued_by {
            IssuedBy::Root => None,
            IssuedBy::Intermediate { zone } => zone,
        },
    };
    authorizer.authorize(&peer).map_err(|reason| {
        refuse(Error::Unauthorized {
            id: peer.id.to_string(),
            reason,
        })
    })?;
    Ok(peer)
}

enum IssuedBy {
    Root,
    /// `zone` is set when the intermediate is a zone CA of this trust domain.
    Intermediate {
        zone: Option<String>,
    },
}

fn zone_of_ca(der: &[u8], trust_domain: &str) -> Option<String> {
    let x509 = parse_x509(der, "issuing CA").ok()?;
    let uris = uri_sans(&x509, "issuing CA").ok()?;
    let [uri] = uris.as_slice() else {
        return None;
    };
    let id: SpiffeId = uri.parse().ok()?;
    match id.kind() {
        IdentityKind::ZoneCa { zone } if id.trust_domain() == trust_domain => Some(zone.to_owned()),
        _ => None,
    }
}

fn check_zone_binding(id: &SpiffeId, issued_by: &IssuedBy) -> Result<(), Error> {
    let issuer = || match issued_by {
        IssuedBy::Root => "the root CA".to_owned(),
        IssuedBy::Intermediate { zone: Some(z) } => format!("the CA of zone {z:?}"),
        IssuedBy::Intermediate { zone: None } => "an intermediate CA without a zone".to_owned(),
    };
    let refuse = |reason| {
        Err(Error::IssuerNotAllowed {
            id: id.to_string(),
            issuer: issuer(),
            reason,
        })
    };
    match (id.kind(), issued_by) {
        (IdentityKind::ZoneCa { .. }, _) => refuse("a zone CA identity is not a peer identity"),
        (IdentityKind::ZoneControlPlane { .. } | IdentityKind::Gateway { .. }, IssuedBy::Root) => {
            Ok(())
        }
        (
            IdentityKind::ZoneControlPlane { zone } | IdentityKind::Gateway { zone },
            IssuedBy::Intermediate {
                zone: Some(issuer_zone),
            },
        ) if zone == issuer_zone => Ok(()),
        (IdentityKind::ZoneControlPlane { .. } | IdentityKind::Gateway { .. }, _) => {
            refuse("a zone identity must be issued by that zone's own CA or by the root")
        }
        (IdentityKind::GlobalNode { .. } | IdentityKind::Admin { .. }, IssuedBy::Root) => Ok(()),
        (IdentityKind::GlobalNode { .. } | IdentityKind::Admin { .. }, _) => {
            refuse("global node and admin identities must be issued by the root CA")
        }
        (IdentityKind::Workload { .. } | IdentityKind::Other, _) => Ok(()),
    }
}

/// Wraps one of our refusals so it travels through rustls with its full text.
fn refuse(e: Error) -> rustls::Error {
    tracing::debug!(error = %e, "refused peer certificate");
    CertificateError::Other(OtherError(Arc::new(e))).into()
}

/// webpki's verdict as the rustls error a caller can match on (as rustls's own verifiers map
/// them).
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    tracing::debug!(error = ?e, "peer certificate chain does not verify");
    let ce = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::InvalidCertValidity => CertificateError::Expired,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertRevoked => CertificateError::Revoked,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        #[allow(deprecated)]
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    ce.into()
}

// === impl HandshakeSignatures ===

/// The handshake-signature half of a rustls certificate verifier, the same in every Strait
/// verifier (these, and the identity client's verifier of its zone): the signature schemes and
/// algorithms of the ring provider. A verifier keeps one and forwards
/// `verify_tls12_signature`, `verify_tls13_signature` and `supported_verify_schemes` to it.
#[derive(Debug, Clone)]
pub struct HandshakeSignatures {
    provider: Arc<CryptoProvider>,
}

impl HandshakeSignatures {
    /// With [`super::crypto_provider`].
    pub fn new() -> Self {
        Self {
            provider: super::crypto_provider(),
        }
    }

    /// The provider whose algorithms verify signatures, for [`verify_peer`] too.
    pub fn provider(&self) -> &CryptoProvider {
        &self.provider
    }

    pub fn verify_tls12(
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

    pub fn verify_tls13(
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

    pub fn supported_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Default for HandshakeSignatures {
    fn default() -> Self {
        Self::new()
    }
}

// === impl SpiffeClientVerifier ===

/// Verifies TLS *clients* (used by servers): requires a client certificate, verifies it
/// against the current [`TrustStore`] bundle, applies the identity rules and the hook.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust: TrustStore,
    authorizer: Arc<dyn Authorize>,
    signatures: HandshakeSignatures,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// Requires a client certificate.
    pub fn new(trust: TrustStore, authorizer: Arc<dyn Authorize>) -> Self {
        SpiffeClientVerifier {
            trust,
            authorizer,
            signatures: HandshakeSignatures::new(),
            mandatory: true,
        }
    }

    /// Accepts clients without a certificate; a certificate that *is* presented is verified
    /// exactly as by [`SpiffeClientVerifier::new`].
    pub fn optional(trust: TrustStore, authorizer: Arc<dyn Authorize>) -> Self {
        SpiffeClientVerifier {
            mandatory: false,
            ..Self::new(trust, authorizer)
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the bundle can change at runtime and this returns a borrow, and Strait
        // clients have exactly one certificate to send anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.trust.current();
        verify_peer(
            &bundle,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
            self.authorizer.as_ref(),
            self.signatures.provider(),
        )?;
        Ok(ClientCertVerified::assertion())
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

// === impl SpiffeServerVerifier ===

#[derive(Debug)]
enum ServerTrust {
    Store(TrustStore),
    /// Joining: no bundle yet, only the pin of the root global serves in its chain.
    Pinned {
        trust_domain: String,
        pin: String,
    },
}

/// Verifies TLS *servers* (used by clients): the chain against the current [`TrustStore`]
/// bundle (or a pinned root while joining), the identity rules and the hook. The rustls
/// `ServerName` is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: ServerTrust,
    authorizer: Arc<dyn Authorize>,
    signatures: HandshakeSignatures,
}

impl SpiffeServerVerifier {
    pub fn new(trust: TrustStore, authorizer: Arc<dyn Authorize>) -> Self {
        SpiffeServerVerifier {
            trust: ServerTrust::Store(trust),
            authorizer,
            signatures: HandshakeSignatures::new(),
        }
    }

    /// Trusts the certificate in the server's chain whose [`pin`] is `pin` as the only trust
    /// anchor. `pin` must already be normalized (see [`crate::bundle::parse_pin`]).
    pub(crate) fn pinned(
        trust_domain: String,
        pin: String,
        authorizer: Arc<dyn Authorize>,
    ) -> Self {
        SpiffeServerVerifier {
            trust: ServerTrust::Pinned { trust_domain, pin },
            authorizer,
            signatures: HandshakeSignatures::new(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            ServerTrust::Store(store) => {
                let bundle = store.current();
                verify_peer(
                    &bundle,
                    end_entity,
                    intermediates,
                    now,
                    PeerRole::Server,
                    self.authorizer.as_ref(),
                    self.signatures.provider(),
                )?;
            }
            ServerTrust::Pinned {
                trust_domain,
                pin: wanted,
            } => {
                let pinned = std::iter::once(end_entity)
                    .chain(intermediates)
                    .find(|c| pin(c) == *wanted)
                    .ok_or_else(|| {
                        refuse(Error::PinMismatch {
                            pin: wanted.clone(),
                        })
                    })?;
                let anchor = webpki::anchor_from_trusted_cert(pinned).map_err(pki_error)?;
                verify_against(
                    &[anchor],
                    trust_domain,
                    end_entity,
                    intermediates,
                    now,
                    PeerRole::Server,
                    self.authorizer.as_ref(),
                    self.signatures.provider(),
                )?;
            }
        }
        Ok(ServerCertVerified::assertion())
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
