//! Reading certificates: the facts the rest of Strait needs (SPIFFE ID, validity, CA or not)
//! without touching ASN.1 itself.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::error::{Error, Result};
use crate::spiffe::SpiffeId;

/// What Strait needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The certificate's SPIFFE ID if it carries exactly one URI SAN and it is a valid
    /// SPIFFE ID; `None` otherwise (for example an operator's root).
    pub spiffe_id: Option<SpiffeId>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
}

impl CertInfo {
    /// Reads the first certificate of a PEM input.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = crate::pem::parse_cert(pem, "certificate")?;
        Self::from_der(&der)
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let cert = parse_x509(der, "certificate")?;
        let spiffe_id = match uri_sans(&cert, "certificate")?.as_slice() {
            [one] => one.parse().ok(),
            _ => None,
        };
        Ok(CertInfo {
            spiffe_id,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            is_ca: is_ca(&cert, "certificate")?,
        })
    }

    /// Whether `now` lies within `[not_before, not_after]`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// The SPIFFE ID of a leaf: its single URI SAN. Zero or several URI SANs, or one that is not a
/// SPIFFE ID, are errors (the X.509-SVID rules).
pub fn leaf_spiffe_id(der: &[u8]) -> Result<SpiffeId> {
    let cert = parse_x509(der, "peer certificate")?;
    let uris = uri_sans(&cert, "peer certificate")?;
    match uris.as_slice() {
        [uri] => uri.parse().map_err(|source| Error::PeerNotSpiffe {
            uri: uri.clone(),
            source,
        }),
        _ => Err(Error::PeerUriSanCount { count: uris.len() }),
    }
}

pub(crate) fn parse_x509<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| Error::InvalidCertificate {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

/// All URI SANs of a certificate, in order.
pub(crate) fn uri_sans(cert: &X509Certificate<'_>, what: &str) -> Result<Vec<String>> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("subjectAltName: {e}"),
        })?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

pub(crate) fn is_ca(cert: &X509Certificate<'_>, what: &str) -> Result<bool> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| Error::InvalidCertificate {
            what: what.to_owned(),
            reason: format!("basicConstraints: {e}"),
        })?;
    Ok(bc.is_some_and(|ext| ext.value.ca))
}

pub(crate) fn to_system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            CertInfo::from_der(b"\x30\x03\x02\x01"),
            Err(Error::InvalidCertificate { .. })
        ));
        assert!(CertInfo::from_pem("nothing here").is_err());
        assert!(leaf_spiffe_id(&[]).is_err());
    }

    #[test]
    fn negative_timestamps_do_not_panic() {
        assert!(to_system_time(-5) < SystemTime::UNIX_EPOCH);
        assert_eq!(
            to_system_time(10),
            SystemTime::UNIX_EPOCH + Duration::from_secs(10)
        );
    }
}
