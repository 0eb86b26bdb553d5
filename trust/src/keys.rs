//! Key pairs and certificate signing requests. Every party generates its own ECDSA P-256 key
//! and sends only a CSR: private keys never travel.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};
use crate::spiffe::SpiffeId;

/// A private key with its public half (ECDSA P-256 when generated here; an operator's root
/// key loaded from PEM may be any PKCS#8 key `rcgen` can sign with).
pub struct KeyPair {
    inner: rcgen::KeyPair,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even in debug logs.
        f.debug_struct("KeyPair")
            .field("algorithm", self.inner.algorithm())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generates a fresh ECDSA P-256 key pair.
    pub fn generate() -> Result<Self> {
        let inner = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(Error::KeyGeneration)?;
        Ok(KeyPair { inner })
    }

    /// Loads a PKCS#8 (`PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let inner =
            rcgen::KeyPair::from_pem(pem).map_err(|e| Error::InvalidPrivateKey(e.to_string()))?;
        Ok(KeyPair { inner })
    }

    /// The PKCS#8 PEM of the private key. Store it with [`crate::store::write_key`].
    pub fn to_pem(&self) -> String {
        self.inner.serialize_pem()
    }

    /// The PKCS#8 DER, as rustls wants it.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.inner.serialize_der()))
    }

    /// The raw public key (for EC keys the uncompressed point), as it appears in the
    /// subjectPublicKey BIT STRING of a certificate.
    pub fn public_key_raw(&self) -> &[u8] {
        self.inner.public_key_raw()
    }

    /// A CSR for a leaf certificate carrying `id` as its only URI SAN.
    pub fn leaf_csr(&self, id: &SpiffeId) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(id)?];
        self.csr(params, &id.to_string())
    }

    /// A CSR for zone `zone`'s intermediate CA (URI SAN `spiffe://TD/zone/ZONE/ca`).
    pub fn intermediate_csr(&self, trust_domain: &str, zone: &str) -> Result<String> {
        let id = SpiffeId::zone_ca(trust_domain, zone)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Strait zone {zone} CA request"));
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.subject_alt_names = vec![uri_san(&id)?];
        self.csr(params, &id.to_string())
    }

    fn csr(&self, params: CertificateParams, what: &str) -> Result<String> {
        let csr_err = |source| Error::CsrCreation {
            what: what.to_owned(),
            source,
        };
        params
            .serialize_request(&self.inner)
            .and_then(|csr| csr.pem())
            .map_err(csr_err)
    }

    pub(crate) fn rcgen(&self) -> &rcgen::KeyPair {
        &self.inner
    }

    pub(crate) fn into_rcgen(self) -> rcgen::KeyPair {
        self.inner
    }
}

pub(crate) fn uri_san(id: &SpiffeId) -> Result<SanType> {
    // A validated SPIFFE ID is ASCII, so this only fails on a bug; still no panic.
    let uri = id.to_string();
    rcgen::string::Ia5String::try_from(uri.clone())
        .map(SanType::URI)
        .map_err(|e| Error::CsrCreation {
            what: uri,
            source: e,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pem_roundtrip_keeps_the_key() {
        let k = KeyPair::generate().unwrap();
        let pem = k.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = KeyPair::from_pem(&pem).unwrap();
        assert_eq!(back.public_key_raw(), k.public_key_raw());
        assert!(!format!("{k:?}").contains(&pem[30..60]));
    }

    #[test]
    fn garbage_key_is_an_error() {
        assert!(matches!(
            KeyPair::from_pem("not a key"),
            Err(Error::InvalidPrivateKey(_))
        ));
    }

    #[test]
    fn leaf_csr_carries_the_id() {
        let k = KeyPair::generate().unwrap();
        let id = SpiffeId::workload("strait.local", "ns1", "sa1").unwrap();
        let csr = k.leaf_csr(&id).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert_eq!(parsed.params.subject_alt_names, vec![uri_san(&id).unwrap()]);
        assert!(matches!(parsed.params.is_ca, IsCa::NoCa));
    }
}
