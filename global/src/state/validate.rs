//! Input checks the state machine makes itself, so that no log entry, whoever proposed it,
//! can put a name into the state that would break a SPIFFE ID or a DNS name later.

use super::rejection::Rejection;

/// Checks a zone name: it becomes a DNS label (`SVC.NS.svc.ZONE.mesh.local`) and a SPIFFE
/// path segment (`spiffe://TD/zone/ZONE/cp`), so it must be an RFC 1123 label: 1 to 63
/// lowercase letters, digits and `-`, not starting or ending with `-`.
pub fn validate_zone_name(name: &str) -> Result<(), Rejection> {
    let reason = if strait_proto::names::is_dns_label(name) {
        None
    } else if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > strait_proto::names::MAX_DNS_LABEL {
        Some("must be at most 63 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may only contain lowercase letters, digits and '-'")
    } else {
        Some("must not start or end with '-'")
    };
    match reason {
        Some(reason) => Err(invalid(format!("zone name {name:?}"), reason)),
        None => Ok(()),
    }
}

/// Rejects an empty value.
pub(crate) fn non_empty(field: &str, value: &str) -> Result<(), Rejection> {
    if value.trim().is_empty() {
        Err(invalid(field, "must not be empty"))
    } else {
        Ok(())
    }
}

/// Checks a lowercase-or-uppercase hex SHA-256 digest and returns its bytes.
pub(crate) fn sha256_hex(field: &str, value: &str) -> Result<[u8; 32], Rejection> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| invalid(field, "must be a hex SHA-256 digest (64 hex digits)"))?;
    Ok(out)
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names() {
        for ok in ["a", "zone-1", "eu-west-3a", &"a".repeat(63)] {
            assert_eq!(validate_zone_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a.b",
            "a/b",
            "a b",
            &"a".repeat(64),
            "zoné",
        ] {
            assert!(validate_zone_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_digests() {
        assert!(sha256_hex("h", &"ab".repeat(32)).is_ok());
        assert!(sha256_hex("h", &"AB".repeat(32)).is_ok());
        assert!(sha256_hex("h", &"ab".repeat(31)).is_err());
        assert!(sha256_hex("h", &"zz".repeat(32)).is_err());
    }
}
