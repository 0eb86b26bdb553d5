//! The name rules both ends of the wire share: what a zone, namespace, service, instance or
//! address may look like, and how long it may be.
//!
//! One home, so that a name one component accepts is never one another refuses (a sidecar's
//! settings, the zone's `Register` check, global's admin API, the policy checker, the gateway's
//! tunnel authority all ask these predicates). They only answer yes or no: each caller wraps
//! them with its own error, which names its own field in its own words.
//!
//! Pure functions, no allocation.

/// The longest DNS label (RFC 1035 §2.3.4): every name segment that can end up in
/// `SVC.NS.svc.clusterset.local`, a SPIFFE path or a Kubernetes object name.
pub const MAX_DNS_LABEL: usize = 63;

/// The longest DNS name (RFC 1035 §2.3.4; a Kubernetes object name, RFC 1123 subdomain).
pub const MAX_DNS_NAME: usize = 253;

/// The longest instance name a sidecar or gateway may register (a pod name is a DNS name).
pub const MAX_INSTANCE_NAME: usize = MAX_DNS_NAME;

/// The longest `host:port`: a DNS name, IPv6 brackets, `:` and five port digits.
pub const MAX_HOST_PORT: usize = MAX_DNS_NAME + 8;

/// An RFC 1123 label, as Kubernetes requires of namespace and service names: 1 to 63 of
/// lowercase letters, digits and `-`, not starting or ending with `-` (a digit may start it).
pub fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_DNS_LABEL
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// An RFC 1035 label: [`is_dns_label`] that also starts with a letter (what a zone name must
/// be, and what sidecars and gateways accept for their zone and service).
pub fn is_rfc1035_label(value: &str) -> bool {
    is_dns_label(value) && value.starts_with(|c: char| c.is_ascii_lowercase())
}

/// An instance name: 1 to [`MAX_INSTANCE_NAME`] of ASCII letters, digits, `-`, `_` and `.`
/// (pod names, host names, `NAME-RANDOM` of `strait up`).
pub fn is_instance_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_INSTANCE_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `host:port` with a non-empty host free of whitespace and control characters and a non-zero
/// port. The host is not resolved or parsed further: a DNS name follows its target at every
/// connect, and `[::1]` is a host. No length bound: callers that store what a peer sent also
/// check [`MAX_HOST_PORT`].
pub fn is_host_port(value: &str) -> bool {
    value.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            && port.parse::<u16>().is_ok_and(|p| p != 0)
    })
}

/// A byte a SPIFFE trust domain may hold: lowercase letters, digits, `.`, `-` and `_`
/// (`strait-trust` parses SPIFFE IDs with the same set; anything else would make IDs it
/// refuses).
pub fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "echo", "echo-v2", "0abc", "demo-1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok:?}");
        }
        for bad in ["", "-a", "a-", "Echo", "a.b", "a_b", "é", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn rfc1035_labels_start_with_a_letter() {
        for ok in ["a", "a-1", "eu-west-3a", &"a".repeat(63)] {
            assert!(is_rfc1035_label(ok), "{ok:?}");
        }
        for bad in ["", "1a", "0abc", "a-", "-a", "A", &"a".repeat(64)] {
            assert!(!is_rfc1035_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn instance_names() {
        assert!(is_instance_name("echo-7f9c.v1_a"));
        assert!(is_instance_name("Echo-1"));
        assert!(is_instance_name(&"a".repeat(MAX_INSTANCE_NAME)));
        for bad in ["", "a/b", "a b", "a:b", &"a".repeat(MAX_INSTANCE_NAME + 1)] {
            assert!(!is_instance_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn host_ports() {
        for ok in [
            "127.0.0.1:8443",
            "[::1]:7500",
            "echo.demo.svc:8443",
            "h:65535",
        ] {
            assert!(is_host_port(ok), "{ok:?}");
        }
        for bad in [
            "",
            "127.0.0.1",
            ":80",
            "host:0",
            "host:http",
            "a b:80",
            "h:65536",
        ] {
            assert!(!is_host_port(bad), "{bad:?}");
        }
    }

    #[test]
    fn trust_domain_bytes() {
        assert!("strait.local".bytes().all(is_trust_domain_byte));
        assert!("a-b_c.0".bytes().all(is_trust_domain_byte));
        for bad in ["Strait.local", "a b", "a:1", "a@b", "a/b"] {
            assert!(!bad.bytes().all(is_trust_domain_byte), "{bad:?}");
        }
    }

    #[test]
    fn bounds_are_the_ones_peers_were_held_to() {
        // Discovery has always refused a longer `inbound_address` and instance name; a
        // change here changes what a zone accepts from its sidecars.
        assert_eq!(MAX_HOST_PORT, 261);
        assert_eq!(MAX_INSTANCE_NAME, 253);
        assert_eq!(MAX_DNS_LABEL, 63);
    }
}
