//! PEM helpers: certificate chains in and out. Kept apart so every module reads PEM the same
//! way and reports the same errors.

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// Parses every `CERTIFICATE` block of `pem`, in order. `what` names the input in errors.
/// Fails if there is none.
pub fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidPem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses exactly the first `CERTIFICATE` block of `pem`.
pub fn parse_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    let mut certs = parse_certs(pem, what)?;
    Ok(certs.swap_remove(0))
}

/// Encodes one certificate as a PEM block.
pub fn encode_cert(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so each chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Encodes a chain as concatenated PEM blocks, in order.
pub fn encode_certs<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs.into_iter().map(|c| encode_cert(c)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let der = CertificateDer::from((0u8..=255).cycle().take(1000).collect::<Vec<_>>());
        let pem = encode_certs([&der, &der]);
        let back = parse_certs(&pem, "test").unwrap();
        assert_eq!(back, vec![der.clone(), der]);
        assert!(matches!(
            parse_certs("hello", "x"),
            Err(Error::NoCertificate { .. })
        ));
        assert!(matches!(
            parse_certs(
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                "x"
            ),
            Err(Error::InvalidPem { .. })
        ));
    }
}
