//! [`IdentitySettings`]: who to be, where the zone is, and where the token, bundle and data
//! directory live; validated with errors that name the field. Plus the two address and name
//! rules the components' own settings share with them.

use std::path::PathBuf;

use strait_proto as pb;
use strait_proto::names;
use strait_trust::SpiffeId;

/// What [`Identity::bootstrap`](crate::Identity::bootstrap) needs. Built from a component's own
/// settings (the sidecar's `SidecarSettings::identity_settings`, the gateway's
/// `GatewaySettings::identity_settings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// The zone control plane's gRPC address (`host:port`).
    pub zone_cp: String,
    /// The zone; the control plane must be `spiffe://TD/zone/ZONE/cp`.
    pub zone: String,
    pub trust_domain: String,
    /// The bootstrap token, read only when there is no usable certificate.
    pub token_file: PathBuf,
    /// What `token_file` holds: a Strait bootstrap token, or (Kubernetes) the pod's projected
    /// service-account token, which the zone checks with a TokenReview.
    pub token_kind: TokenKind,
    /// Where the key, certificate and bundle are kept across restarts.
    pub data_dir: Option<PathBuf>,
    /// The federation's trust bundle to verify the zone with on first contact.
    pub bundle_file: Option<PathBuf>,
    /// The identity to ask for (a workload's, or `zone/ZONE/gateway`).
    pub id: SpiffeId,
    /// Prefix of the identity metrics: `strait_sidecar`, `strait_gateway`.
    pub metrics_prefix: &'static str,
}

/// What a token file holds, and so which credential it is sent as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A Strait bootstrap token (`strait token workload`).
    #[default]
    Bootstrap,
    /// A Kubernetes projected service-account token (audience `strait`), re-read at every
    /// bootstrap because the kubelet rotates it.
    ServiceAccount,
}

impl TokenKind {
    pub(crate) fn credential(self, token: String) -> pb::sign_certificate_request::Credential {
        use pb::sign_certificate_request::Credential;
        match self {
            TokenKind::Bootstrap => Credential::BootstrapToken(token),
            TokenKind::ServiceAccount => Credential::ServiceAccountToken(token),
        }
    }
}

impl std::str::FromStr for TokenKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bootstrap" => Ok(TokenKind::Bootstrap),
            "service-account" | "service_account" => Ok(TokenKind::ServiceAccount),
            other => Err(format!(
                "{other:?} is not a token kind: use bootstrap or service-account"
            )),
        }
    }
}

/// A setting that cannot work, with the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identity settings: {field}: {reason}")]
pub struct SettingsError {
    pub field: &'static str,
    pub reason: String,
}

impl IdentitySettings {
    /// Checks what can be checked without the disk or the network; errors name the field.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field: &'static str, reason: String| SettingsError { field, reason };
        check_host_port(&self.zone_cp).map_err(|r| invalid("zone_cp", r))?;
        check_dns_label(&self.zone).map_err(|r| invalid("zone", r))?;
        strait_trust::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        if self.token_file.as_os_str().is_empty() {
            return Err(invalid("token_file", "must not be empty".to_owned()));
        }
        if self.id.trust_domain() != self.trust_domain {
            return Err(invalid(
                "trust_domain",
                format!("{} is not in trust domain {:?}", self.id, self.trust_domain),
            ));
        }
        for (field, path) in [
            ("data_dir", &self.data_dir),
            ("bundle_file", &self.bundle_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(field, "must not be empty when given".to_owned()));
            }
        }
        Ok(())
    }

    /// `spiffe://TD/zone/ZONE/cp`: who the zone control plane must be.
    pub fn zone_cp_id(&self) -> Result<SpiffeId, SettingsError> {
        SpiffeId::zone_cp(&self.trust_domain, &self.zone).map_err(|e| SettingsError {
            field: "zone",
            reason: e.to_string(),
        })
    }
}

/// A DNS label: lowercase letters, digits and `-`, starting with a letter, not ending with `-`,
/// at most 63 characters (what the zone accepts for zones, namespaces and services).
pub fn check_dns_label(value: &str) -> Result<(), String> {
    if names::is_rfc1035_label(value) {
        Ok(())
    } else if value.is_empty() {
        Err("must not be empty".to_owned())
    } else if value.len() > names::MAX_DNS_LABEL {
        Err(format!("{value:?} is longer than 63 characters"))
    } else {
        Err(format!(
            "{value:?} must be lowercase letters, digits and '-', start with a letter and not end with '-'"
        ))
    }
}

/// `host:port` with a non-zero port (a DNS name follows its target at every connect).
pub fn check_host_port(value: &str) -> Result<(), String> {
    if names::is_host_port(value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a host:port address"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn settings() -> IdentitySettings {
        IdentitySettings {
            zone_cp: "zone.example:7500".into(),
            zone: "eu-1".into(),
            trust_domain: "strait.local".into(),
            token_file: "/tmp/token".into(),
            token_kind: TokenKind::Bootstrap,
            data_dir: None,
            bundle_file: None,
            id: SpiffeId::workload("strait.local", "demo", "echo").unwrap(),
            metrics_prefix: "strait_sidecar",
        }
    }

    #[test]
    fn errors_name_the_field() {
        settings().validate().unwrap();
        assert_eq!(
            settings().zone_cp_id().unwrap().to_string(),
            "spiffe://strait.local/zone/eu-1/cp"
        );
        let field = |f: &dyn Fn(&mut IdentitySettings)| {
            let mut s = settings();
            f(&mut s);
            s.validate().unwrap_err().field
        };
        assert_eq!(field(&|s| s.zone_cp = "nohost".into()), "zone_cp");
        assert_eq!(field(&|s| s.zone_cp = "h:0".into()), "zone_cp");
        assert_eq!(field(&|s| s.zone = "EU".into()), "zone");
        assert_eq!(field(&|s| s.zone = "-x".into()), "zone");
        assert_eq!(field(&|s| s.trust_domain = "Bad TD".into()), "trust_domain");
        // Another trust domain than the identity's.
        assert_eq!(
            field(&|s| s.trust_domain = "other.td".into()),
            "trust_domain"
        );
        assert_eq!(field(&|s| s.token_file = PathBuf::new()), "token_file");
        assert_eq!(field(&|s| s.data_dir = Some(PathBuf::new())), "data_dir");
        assert_eq!(
            field(&|s| s.bundle_file = Some(PathBuf::new())),
            "bundle_file"
        );
    }

    #[test]
    fn token_kinds() {
        assert_eq!("bootstrap".parse(), Ok(TokenKind::Bootstrap));
        assert_eq!("service-account".parse(), Ok(TokenKind::ServiceAccount));
        assert_eq!("service_account".parse(), Ok(TokenKind::ServiceAccount));
        let err = "jwt".parse::<TokenKind>().unwrap_err();
        assert!(err.contains("service-account"), "{err}");
    }

    #[test]
    fn names_and_addresses() {
        assert!(check_dns_label("a-1").is_ok());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_label("a-").is_err());
        assert!(check_dns_label("1a").is_err());
        assert!(check_host_port("[::1]:7500").is_ok());
        assert!(check_host_port(":7500").is_err());
        assert!(check_host_port("h:x").is_err());
        assert!(check_host_port("a b:1").is_err());
    }
}
