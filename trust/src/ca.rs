//! Certificate authorities: the root CA (held by the global control plane), zone intermediate
//! CAs (held by each zone control plane) and the CSR checks both apply before signing.
//!
//! The hierarchy is `root → zone intermediate (pathLen 0) → leaf`; the root may also sign
//! leaves directly (global nodes, admins, and a zone control plane before it has its own CA).
//! Signing always starts from a CSR: the subject keeps its private key.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use crate::bundle::{TrustBundle, pin};
use crate::cert_info::{is_ca, parse_x509, to_system_time, uri_sans};
use crate::error::{Error, Result};
use crate::keys::{KeyPair, uri_san};
use crate::pem::{encode_cert, encode_certs, parse_certs};
use crate::spiffe::{IdentityKind, SpiffeId, validate_trust_domain};

/// Default lifetime of a root CA: 10 years.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a zone intermediate CA: 7 days (renewed at 2/3 of its life).
pub const DEFAULT_INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default lifetime of a workload, gateway or control-plane certificate: 24 hours.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How far `not_before` is set back so that a peer whose clock runs a little behind does not
/// see a freshly issued certificate as not yet valid.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// A certificate issued from a CSR.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The identity in the certificate's URI SAN.
    pub id: SpiffeId,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    /// What the subject sends in its TLS handshake: the certificate first, then every issuer
    /// up to and including the root (see [`crate::tls::pinned_client_config`] for why the
    /// root is included).
    pub chain: Vec<CertificateDer<'static>>,
    /// `chain` as concatenated PEM blocks.
    pub chain_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// What the root and the zone intermediates have in common: a CA certificate and key that sign
/// leaf certificates from CSRs.
pub struct Issuer {
    trust_domain: String,
    /// `None` for the root; the zone for a zone intermediate.
    zone: Option<String>,
    signer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: CertificateDer<'static>,
    /// This CA's certificate, then its issuers up to the root.
    chain: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .field("zone", &self.zone)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

// === impl Issuer ===

impl Issuer {
    /// Loads a CA from its certificate chain (the CA's own certificate first) and key, after
    /// checking that it is a CA allowed to sign and that the key belongs to it.
    fn load(
        chain: Vec<CertificateDer<'static>>,
        key: KeyPair,
        trust_domain: String,
        zone: Option<String>,
        what: &str,
    ) -> Result<Self> {
        let cert = chain.first().cloned().ok_or_else(|| Error::NoCertificate {
            what: what.to_owned(),
        })?;
        let x509 = parse_x509(&cert, what)?;
        if !is_ca(&x509, what)? {
            return Err(Error::NotACa {
                what: what.to_owned(),
            });
        }
        let ku = x509.key_usage().map_err(|e| Error::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("keyUsage: {e}"),
        })?;
        if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(Error::CaCannotSign {
                what: what.to_owned(),
            });
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::KeyMismatch {
                what: what.to_owned(),
            });
        }
        let not_before = to_system_time(x509.validity().not_before.timestamp());
        let not_after = to_system_time(x509.validity().not_after.timestamp());
        let signer = rcgen::Issuer::from_ca_cert_der(&cert, key.into_rcgen()).map_err(|e| {
            Error::InvalidCertificate {
                what: what.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(Issuer {
            trust_domain,
            zone,
            signer,
            cert,
            chain,
            not_before,
            not_after,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// `None` for the root CA, the zone for a zone intermediate.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> String {
        encode_cert(&self.cert)
    }

    /// This CA's certificate followed by its issuers up to the root.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn chain_pem(&self) -> String {
        encode_certs(&self.chain)
    }

    /// The PKCS#8 PEM of the CA key, for [`crate::store::write_key`].
    pub fn key_pem(&self) -> String {
        self.signer.key().serialize_pem()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    fn describe(&self) -> String {
        match &self.zone {
            None => format!("the root CA of {}", self.trust_domain),
            Some(z) => format!("the CA of zone {z:?}"),
        }
    }

    /// Signs a leaf certificate for `authorized`, valid for `validity` from now.
    /// See [`Issuer::sign_leaf_at`].
    pub fn sign_leaf(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        validity: Duration,
    ) -> Result<IssuedCert> {
        self.sign_leaf_at(csr_pem, authorized, validity, SystemTime::now())
    }

    /// Signs a leaf certificate from `csr_pem` for the identity the caller has authorized.
    ///
    /// The CSR must be correctly self-signed with an ECDSA P-256 key, must not ask for a CA,
    /// and must carry exactly one SAN: a URI SAN equal to `authorized`. The caller decides
    /// *who* may have `authorized` (token, TokenReview, mTLS identity); this function makes
    /// sure the certificate says exactly that and nothing more. A zone CA also refuses
    /// identities outside its scope: another zone's identities, global nodes and admins.
    ///
    /// The certificate is CA:false, keyUsage digitalSignature, EKU serverAuth + clientAuth,
    /// carries a random serial and only the URI SAN; it is valid from `now` minus
    /// [`CLOCK_SKEW_ALLOWANCE`] for `validity`, but never beyond the issuer's own `not_after`.
    pub fn sign_leaf_at(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert> {
        self.check_in_domain(authorized)?;
        self.check_scope(authorized)?;
        let csr = parse_csr(csr_pem)?;
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(Error::CsrRequestsCa);
        }
        let requested = single_uri_san(&csr.params.subject_alt_names)?;
        let requested: SpiffeId = requested.parse().map_err(|source| Error::InvalidSpiffeId {
            input: requested.clone(),
            source,
        })?;
        self.check_in_domain(&requested)?;
        if &requested != authorized {
            return Err(Error::CsrIdentityMismatch {
                requested: requested.to_string(),
                authorized: authorized.to_string(),
            });
        }

        let (not_before, not_after) = self.window(now, validity)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // CN is capped at 64 characters (RFC 5280 ub-common-name); it is only there to make
        // `openssl x509 -text` readable, the identity is the URI SAN.
        let id_str = authorized.to_string();
        if id_str.len() <= 64 {
            params
                .distinguished_name
                .push(DnType::CommonName, id_str.clone());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![uri_san(authorized)?];
        self.finish(params, &csr, authorized.clone(), not_before, not_after)
    }

    fn check_in_domain(&self, id: &SpiffeId) -> Result<()> {
        if id.trust_domain() != self.trust_domain {
            return Err(Error::ForeignTrustDomain {
                id: id.to_string(),
                found: id.trust_domain().to_owned(),
                expected: self.trust_domain.clone(),
            });
        }
        Ok(())
    }

    /// The issuing-side half of the zone-binding rule; peers enforce the same rule on
    /// verification (see `tls`), so this is defence in depth against a caller's mistake.
    fn check_scope(&self, id: &SpiffeId) -> Result<()> {
        let refuse = |reason| {
            Err(Error::OutsideIssuerScope {
                issuer: self.describe(),
                id: id.to_string(),
                reason,
            })
        };
        match (id.kind(), self.zone.as_deref()) {
            (IdentityKind::ZoneCa { .. }, _) => {
                refuse("a zone CA identity is only issued as an intermediate CA")
            }
            (
                IdentityKind::ZoneControlPlane { zone } | IdentityKind::Gateway { zone },
                Some(mine),
            ) if zone != mine => refuse("it belongs to another zone"),
            (IdentityKind::GlobalNode { .. } | IdentityKind::Admin { .. }, Some(_)) => {
                refuse("global node and admin identities are issued by the root CA only")
            }
            _ => Ok(()),
        }
    }

    fn window(&self, now: SystemTime, validity: Duration) -> Result<(SystemTime, SystemTime)> {
        let not_before = backdate(now)?;
        // A validity too large to represent is simply capped by the issuer's own end.
        let not_after = now
            .checked_add(validity)
            .map_or(self.not_after, |t| truncate_to_secs(t).min(self.not_after));
        if now > self.not_after || not_after <= not_before {
            return Err(Error::IssuerNotValid {
                what: self.describe(),
            });
        }
        Ok((not_before, not_after))
    }

    fn finish(
        &self,
        mut params: CertificateParams,
        csr: &CertificateSigningRequestParams,
        id: SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert> {
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.signer)
            .map_err(|source| Error::Signing {
                subject: id.to_string(),
                source,
            })?;
        let cert_der = cert.der().clone();
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.push(cert_der.clone());
        chain.extend(self.chain.iter().cloned());
        Ok(IssuedCert {
            id,
            cert_pem: encode_cert(&cert_der),
            chain_pem: encode_certs(&chain),
            cert_der,
            chain,
            not_before,
            not_after,
        })
    }
}

// === impl RootCa ===

/// The federation's root CA: signs zone intermediates and the leaves of global nodes and
/// admins. Its certificate is what [`TrustBundle`]s hold.
#[derive(Debug)]
pub struct RootCa {
    issuer: Issuer,
}

impl RootCa {
    /// Generates a new root for `trust_domain` (a fresh P-256 key, pathLen 1, keyCertSign and
    /// cRLSign), valid for `validity` from now.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self> {
        Self::generate_at(trust_domain, validity, SystemTime::now())
    }

    /// [`RootCa::generate`] with an explicit clock.
    pub fn generate_at(trust_domain: &str, validity: Duration, now: SystemTime) -> Result<Self> {
        check_trust_domain(trust_domain)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Strait");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Strait root CA {}", key_tag(key.public_key_raw())),
        );
        // pathLen 1: root → zone intermediate → leaf, and no deeper.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_offset(backdate(now)?)?;
        let not_after = now.checked_add(validity).ok_or(Error::InvalidValidity {
            reason: format!("{validity:?} from now can not be represented"),
        })?;
        params.not_after = to_offset(truncate_to_secs(not_after))?;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(key.rcgen())
            .map_err(|source| Error::Signing {
                subject: format!("the root CA of {trust_domain}"),
                source,
            })?;
        let der = cert.der().clone();
        let issuer = Issuer::load(vec![der], key, trust_domain.to_owned(), None, "root CA")?;
        Ok(RootCa { issuer })
    }

    /// Loads an operator's own root: the certificate must be a CA allowed to sign
    /// (keyUsage keyCertSign if keyUsage is present), must not have pathLen 0 (it has to sign
    /// zone intermediates), and the key must be the certificate's key. The trust domain is
    /// given because an operator's root need not carry one. The root need not be
    /// self-signed: whatever certificate is loaded here is the federation's trust anchor.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        check_trust_domain(trust_domain)?;
        let what = "root CA certificate";
        let cert = crate::pem::parse_cert(cert_pem, what)?;
        let key = KeyPair::from_pem(key_pem)?;
        {
            let x509 = parse_x509(&cert, what)?;
            if let Ok(Some(bc)) = x509.basic_constraints()
                && bc.value.ca
                && bc.value.path_len_constraint == Some(0)
            {
                return Err(Error::RootPathLenZero {
                    what: what.to_owned(),
                });
            }
        }
        let issuer = Issuer::load(vec![cert], key, trust_domain.to_owned(), None, what)?;
        Ok(RootCa { issuer })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn trust_domain(&self) -> &str {
        &self.issuer.trust_domain
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.issuer.cert
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.cert_pem()
    }

    /// The PKCS#8 PEM of the root key.
    pub fn key_pem(&self) -> String {
        self.issuer.key_pem()
    }

    pub fn not_after(&self) -> SystemTime {
        self.issuer.not_after
    }

    /// `sha256:<hex>` of the root certificate: what join tokens carry.
    pub fn pin(&self) -> String {
        pin(&self.issuer.cert)
    }

    /// A bundle holding just this root.
    pub fn bundle(&self) -> Result<TrustBundle> {
        TrustBundle::from_der(&self.issuer.trust_domain, [self.issuer.cert.clone()])
    }

    /// Signs zone `zone`'s intermediate CA. See [`RootCa::sign_intermediate_at`].
    pub fn sign_intermediate(
        &self,
        csr_pem: &str,
        zone: &str,
        validity: Duration,
    ) -> Result<IssuedCert> {
        self.sign_intermediate_at(csr_pem, zone, validity, SystemTime::now())
    }

    /// Signs zone `zone`'s intermediate CA from its CSR (see [`KeyPair::intermediate_csr`]).
    /// The CSR's only SAN must be the URI `spiffe://TD/zone/ZONE/ca`. The certificate is
    /// CA:true with pathLen 0 (it signs leaves only), keyUsage keyCertSign + cRLSign, carries
    /// that URI SAN, and never outlives the root. `chain` is `[intermediate, root]`: the
    /// `cert_chain_pem` that [`IntermediateCa::from_pem`] expects.
    pub fn sign_intermediate_at(
        &self,
        csr_pem: &str,
        zone: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert> {
        let id = SpiffeId::zone_ca(&self.issuer.trust_domain, zone)?;
        let csr = parse_csr(csr_pem)?;
        let requested = single_uri_san(&csr.params.subject_alt_names)?;
        if requested != id.to_string() {
            return Err(Error::CsrIdentityMismatch {
                requested,
                authorized: id.to_string(),
            });
        }
        let (not_before, not_after) = self.issuer.window(now, validity)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Strait");
        params
            .distinguished_name
            .push(DnType::CommonName, zone_ca_common_name(zone, &csr));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![uri_san(&id)?];
        self.issuer.finish(params, &csr, id, not_before, not_after)
    }

    /// Signs a leaf directly with the root (global nodes, admins). See [`Issuer::sign_leaf_at`].
    pub fn sign_leaf(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        validity: Duration,
    ) -> Result<IssuedCert> {
        self.issuer.sign_leaf(csr_pem, authorized, validity)
    }

    /// [`RootCa::sign_leaf`] with an explicit clock.
    pub fn sign_leaf_at(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert> {
        self.issuer.sign_leaf_at(csr_pem, authorized, validity, now)
    }
}

// === impl IntermediateCa ===

/// A zone's intermediate CA, as the zone control plane holds it: signs the zone's workload,
/// gateway and control-plane certificates.
#[derive(Debug)]
pub struct IntermediateCa {
    issuer: Issuer,
}

impl IntermediateCa {
    /// Loads the intermediate from `cert_chain_pem` (the intermediate first, then its issuers
    /// up to the root, as [`RootCa::sign_intermediate`] returns in `chain_pem`) and its key.
    /// The trust domain and zone come from the intermediate's URI SAN
    /// `spiffe://TD/zone/ZONE/ca`. The chain is not verified against a bundle here: it is
    /// what the zone got from global over mTLS, and peers verify every chain anyway.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Self> {
        let what = "zone intermediate CA certificate";
        let chain = parse_certs(cert_chain_pem, what)?;
        let key = KeyPair::from_pem(key_pem)?;
        let (trust_domain, zone) = {
            let x509 = parse_x509(&chain[0], what)?;
            let uris = uri_sans(&x509, what)?;
            let [uri] = uris.as_slice() else {
                return Err(Error::NotAZoneCa {
                    what: what.to_owned(),
                    reason: format!("it has {} URI SANs", uris.len()),
                });
            };
            let id: SpiffeId = uri.parse().map_err(|e| Error::NotAZoneCa {
                what: what.to_owned(),
                reason: format!("{uri:?}: {e}"),
            })?;
            let IdentityKind::ZoneCa { zone } = id.kind() else {
                return Err(Error::NotAZoneCa {
                    what: what.to_owned(),
                    reason: format!("{id} is not a zone CA identity"),
                });
            };
            (id.trust_domain().to_owned(), zone.to_owned())
        };
        let issuer = Issuer::load(chain, key, trust_domain, Some(zone), what)?;
        Ok(IntermediateCa { issuer })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn zone(&self) -> &str {
        self.issuer.zone.as_deref().unwrap_or_default()
    }

    pub fn trust_domain(&self) -> &str {
        &self.issuer.trust_domain
    }

    pub fn not_after(&self) -> SystemTime {
        self.issuer.not_after
    }

    /// See [`Issuer::sign_leaf_at`].
    pub fn sign_leaf(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        validity: Duration,
    ) -> Result<IssuedCert> {
        self.issuer.sign_leaf(csr_pem, authorized, validity)
    }

    /// [`IntermediateCa::sign_leaf`] with an explicit clock.
    pub fn sign_leaf_at(
        &self,
        csr_pem: &str,
        authorized: &SpiffeId,
        validity: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert> {
        self.issuer.sign_leaf_at(csr_pem, authorized, validity, now)
    }
}

// === helpers ===

fn check_trust_domain(td: &str) -> Result<()> {
    validate_trust_domain(td).map_err(|source| Error::InvalidSpiffeId {
        input: format!("spiffe://{td}"),
        source,
    })
}

/// A short tag derived from a CA's public key, put in its common name. Path building matches
/// issuers by name: if two roots (old and new, during a rotation) or two generations of a zone
/// CA had the same name, a certificate from an untrusted one would be reported as a bad
/// signature from the trusted one instead of as an unknown issuer.
fn key_tag(public_key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(public_key)[..4])
}

fn zone_ca_common_name(zone: &str, csr: &CertificateSigningRequestParams) -> String {
    use rcgen::PublicKeyData;
    let tag = key_tag(csr.public_key.der_bytes());
    let cn = format!("Strait zone {zone} CA {tag}");
    // Zone names are SPIFFE path segments and may exceed CN's 64 characters.
    if cn.len() <= 64 {
        cn
    } else {
        format!("Strait zone CA {tag}")
    }
}

/// Parses and verifies a CSR, and checks it is for an ECDSA P-256 key: the only kind Strait
/// generates, and the only one whose SubjectPublicKeyInfo we can carry over faithfully
/// (rcgen infers the key's algorithm from the CSR's *signature* algorithm).
fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
        Error::CsrUnparsable {
            reason: e.to_string(),
        }
    })?;
    let (_, raw) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| Error::CsrUnparsable {
            reason: e.to_string(),
        })?;
    let spki_alg = &raw.certification_request_info.subject_pki.algorithm;
    let curve = spki_alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki_alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        return Err(Error::CsrUnsupportedKey {
            found: match curve {
                Some(c) => format!("{} with parameters {c}", spki_alg.algorithm),
                None => spki_alg.algorithm.to_id_string(),
            },
        });
    }
    let params = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => Error::CsrBadSignature,
        other => Error::CsrUnparsable {
            reason: other.to_string(),
        },
    })?;
    if params.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(Error::CsrUnsupportedKey {
            found: format!("{:?}", params.public_key.algorithm()),
        });
    }
    Ok(params)
}

/// The CSR's only SAN, which must be a URI.
fn single_uri_san(sans: &[SanType]) -> Result<String> {
    let mut uris = Vec::new();
    for san in sans {
        match san {
            SanType::URI(u) => uris.push(u.as_str().to_owned()),
            other => {
                return Err(Error::CsrUnexpectedSan {
                    found: format!("{other:?}"),
                });
            }
        }
    }
    match <[String; 1]>::try_from(uris) {
        Ok([uri]) => Ok(uri),
        Err(uris) => Err(Error::CsrUriSanCount { count: uris.len() }),
    }
}

/// A random positive 127-bit serial: unpredictable serials are what the CA/B forum asks for,
/// and they keep two certificates issued in the same second apart.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    // Top bit clear keeps the INTEGER positive; the next bit set keeps it 16 bytes long so
    // the DER encoding is minimal without a leading zero.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `now` minus the clock-skew allowance, in whole seconds.
fn backdate(now: SystemTime) -> Result<SystemTime> {
    now.checked_sub(CLOCK_SKEW_ALLOWANCE)
        .map(truncate_to_secs)
        .ok_or(Error::InvalidValidity {
            reason: "the clock is before the representable range".to_owned(),
        })
}

/// For rcgen. `OffsetDateTime::from(SystemTime)` panics out of range (X.509 ends in 9999);
/// a validity from a config file must be an error instead.
fn to_offset(t: SystemTime) -> Result<OffsetDateTime> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|t| (0..=9999).contains(&t.year()))
        .ok_or(Error::InvalidValidity {
            reason: format!("{t:?} is outside the years X.509 can express (0-9999)"),
        })
}

/// X.509 times have whole seconds; truncating here keeps the `not_after` we report equal to
/// the one a parser reads back.
fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
