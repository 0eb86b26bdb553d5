//! The trust bundle: the root certificates a trust domain's peers verify against. It holds
//! several roots so that a root can be rotated without downtime (add the new root everywhere,
//! reissue, then remove the old one). Also the certificate pin used to authenticate global
//! before a zone has any trust at all.

use rustls_pki_types::{CertificateDer, TrustAnchor};
use sha2::{Digest, Sha256};

use crate::cert_info::{is_ca, parse_x509};
use crate::error::{Error, Result};
use crate::pem::{encode_certs, parse_certs};
use crate::spiffe::validate_trust_domain;

const PIN_PREFIX: &str = "sha256:";

/// `sha256:<lowercase hex of SHA-256 over the certificate's DER>`, like kubeadm's discovery
/// token CA cert hash but over the whole certificate.
pub fn pin(cert: &[u8]) -> String {
    format!("{PIN_PREFIX}{}", hex::encode(Sha256::digest(cert)))
}

/// Checks that `pin` has the form [`pin`] produces, and normalizes hex to lowercase.
pub fn parse_pin(pin: &str) -> Result<String> {
    let invalid = || Error::InvalidPin {
        pin: pin.to_owned(),
    };
    let hex_part = pin.strip_prefix(PIN_PREFIX).ok_or_else(invalid)?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    Ok(format!("{PIN_PREFIX}{}", hex_part.to_ascii_lowercase()))
}

/// The root certificates of one trust domain. Order is kept (oldest first), duplicates are
/// dropped, and every root is checked to be a CA certificate usable as a trust anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
    /// Parsed once when a root is added: verification happens on every handshake.
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// A bundle of `roots` (DER) for `trust_domain`. At least one root is required.
    pub fn from_der(
        trust_domain: &str,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self> {
        validate_trust_domain(trust_domain).map_err(|source| Error::InvalidSpiffeId {
            input: format!("spiffe://{trust_domain}"),
            source,
        })?;
        let mut bundle = TrustBundle {
            trust_domain: trust_domain.to_owned(),
            roots: Vec::new(),
            anchors: Vec::new(),
        };
        for root in roots {
            bundle.add(root)?;
        }
        if bundle.roots.is_empty() {
            return Err(Error::EmptyBundle);
        }
        Ok(bundle)
    }

    /// A bundle from concatenated PEM `CERTIFICATE` blocks.
    pub fn from_pem(trust_domain: &str, pem: &str) -> Result<Self> {
        Self::from_der(trust_domain, parse_certs(pem, "trust bundle")?)
    }

    /// All roots as concatenated PEM blocks.
    pub fn to_pem(&self) -> String {
        encode_certs(&self.roots)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Adds a root. Returns `false` if it was already present.
    pub fn add(&mut self, root: CertificateDer<'static>) -> Result<bool> {
        if self.roots.contains(&root) {
            return Ok(false);
        }
        let what = format!("root {}", pin(&root));
        let x509 = parse_x509(&root, &what)?;
        if !is_ca(&x509, &what)? {
            return Err(Error::BadTrustAnchor {
                what,
                reason: "it is not a CA certificate".to_owned(),
            });
        }
        let anchor = webpki::anchor_from_trusted_cert(&root)
            .map_err(|e| Error::BadTrustAnchor {
                what,
                reason: e.to_string(),
            })?
            .to_owned();
        self.roots.push(root);
        self.anchors.push(anchor);
        Ok(true)
    }

    /// Adds every root of a PEM input; returns how many were new.
    pub fn add_pem(&mut self, pem: &str) -> Result<usize> {
        let mut added = 0;
        for root in parse_certs(pem, "trust bundle")? {
            added += usize::from(self.add(root)?);
        }
        Ok(added)
    }

    /// Removes a root. Returns `false` if it was not present. Removing the last root is
    /// refused: an empty bundle would make every peer unverifiable.
    pub fn remove(&mut self, root: &[u8]) -> Result<bool> {
        match self.roots.iter().position(|r| r.as_ref() == root) {
            Some(_) if self.roots.len() == 1 => Err(Error::EmptyBundle),
            Some(i) => {
                self.roots.remove(i);
                self.anchors.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes the root with this pin (see [`pin`]).
    pub fn remove_pin(&mut self, pin_str: &str) -> Result<bool> {
        let wanted = parse_pin(pin_str)?;
        match self.roots.iter().find(|r| pin(r) == wanted).cloned() {
            Some(root) => self.remove(&root),
            None => Ok(false),
        }
    }

    /// Whether a root with this pin is in the bundle. A malformed pin is simply not contained.
    pub fn contains_pin(&self, pin_str: &str) -> bool {
        match parse_pin(pin_str) {
            Ok(wanted) => self.roots.iter().any(|r| pin(r) == wanted),
            Err(_) => false,
        }
    }

    /// The pins of all roots, in order.
    pub fn pins(&self) -> Vec<String> {
        self.roots.iter().map(|r| pin(r)).collect()
    }

    /// The roots as webpki trust anchors.
    pub fn trust_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ca::RootCa;
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn pin_format() {
        let p = pin(b"hello");
        assert_eq!(
            p,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            parse_pin(&p.to_uppercase().replace("SHA256", "sha256")).unwrap(),
            p
        );
        assert!(parse_pin("sha256:abc").is_err());
        assert!(
            parse_pin("md5:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
                .is_err()
        );
    }

    #[test]
    fn add_remove_dedupe_pem_roundtrip() {
        let r1 = RootCa::generate("strait.local", DAY).unwrap();
        let r2 = RootCa::generate("strait.local", DAY).unwrap();
        let mut b = r1.bundle().unwrap();
        assert!(!b.add(r1.cert_der().clone()).unwrap(), "duplicate ignored");
        assert!(b.add(r2.cert_der().clone()).unwrap());
        assert_eq!(b.len(), 2);
        assert!(b.contains_pin(&r1.pin()) && b.contains_pin(&r2.pin()));
        assert_eq!(b.pins(), vec![r1.pin(), r2.pin()]);

        let back = TrustBundle::from_pem("strait.local", &b.to_pem()).unwrap();
        assert_eq!(back, b);
        let mut dup = back.clone();
        assert_eq!(dup.add_pem(&b.to_pem()).unwrap(), 0);

        assert!(b.remove_pin(&r1.pin()).unwrap());
        assert!(!b.contains_pin(&r1.pin()));
        assert!(!b.remove(r1.cert_der()).unwrap());
        assert!(matches!(b.remove(r2.cert_der()), Err(Error::EmptyBundle)));
        assert_eq!(b.trust_anchors().len(), 1);
    }

    #[test]
    fn refuses_non_ca_and_garbage() {
        let root = RootCa::generate("strait.local", DAY).unwrap();
        let key = crate::keys::KeyPair::generate().unwrap();
        let id = crate::SpiffeId::global_node("strait.local", "g0").unwrap();
        let leaf = root
            .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, DAY)
            .unwrap();
        let mut b = root.bundle().unwrap();
        assert!(matches!(
            b.add(leaf.cert_der.clone()),
            Err(Error::BadTrustAnchor { .. })
        ));
        assert!(b.add(CertificateDer::from(vec![1, 2, 3])).is_err());
        assert!(matches!(
            TrustBundle::from_der("strait.local", []),
            Err(Error::EmptyBundle)
        ));
        assert!(TrustBundle::from_pem("strait.local", "junk").is_err());
        assert!(!b.contains_pin("not a pin"));
    }
}
