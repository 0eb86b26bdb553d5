//! Checks on what a sidecar or a gateway registers, so that a peer cannot make the zone store
//! and forward malformed names or arbitrary amounts of data.

use strait_proto::names::{self, MAX_HOST_PORT, MAX_INSTANCE_NAME};
use tonic::Status;

/// Bounds on what a sidecar may register, so that a peer cannot make the zone store and
/// forward arbitrary amounts of data.
const MAX_LABELS: usize = 64;
const MAX_LABEL_BYTES: usize = 317;
pub(super) const MAX_PORTS: usize = 64;

/// Namespaces and service names become DNS labels (`SVC.NS.svc.clusterset.local`).
pub(super) fn check_dns_label(field: &str, value: &str) -> Result<(), Status> {
    if names::is_dns_label(value) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: {value:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')"
        )))
    }
}

pub(super) fn check_instance_name(value: &str) -> Result<(), Status> {
    if names::is_instance_name(value) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "Register.instance: {value:?} must be 1-{MAX_INSTANCE_NAME} of letters, digits, '-', '_', '.'"
        )))
    }
}

/// `host:port`, where other sidecars and the local gateway reach the instance.
pub(crate) fn check_address(value: &str) -> Result<(), Status> {
    if value.len() <= MAX_HOST_PORT && names::is_host_port(value) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "Register.inbound_address: {value:?} is not host:port"
        )))
    }
}

pub(super) fn check_labels(
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), Status> {
    if labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!(
            "Register.labels: at most {MAX_LABELS} labels"
        )));
    }
    if let Some((k, _)) = labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES)
    {
        return Err(Status::invalid_argument(format!(
            "Register.labels: key {k:?} or its value is empty or longer than {MAX_LABEL_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        assert!(check_address("127.0.0.1:8443").is_ok());
        assert!(check_address("[::1]:8443").is_ok());
        assert!(check_address("echo.demo.svc:8443").is_ok());
        for bad in ["", "127.0.0.1", ":80", "host:0", "host:http", "a b:80"] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_dns_label("f", "demo-1").is_ok());
        for bad in ["", "Demo", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(check_dns_label("f", bad).is_err(), "{bad:?}");
        }
        assert!(check_instance_name("echo-7f9c.v1_a").is_ok());
        assert!(check_instance_name("").is_err());
        assert!(check_instance_name("a/b").is_err());
    }
}
