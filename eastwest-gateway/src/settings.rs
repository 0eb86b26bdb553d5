//! The gateway's own settings ([`GatewaySettings`]): typed, validated once at start with
//! errors that name the field, and dumped at the admin `/config` endpoint.
//!
//! They mirror `strait gateway run --zone-cp ADDR --zone Z --token-file F --quic ADDR --local
//! ADDR --public-address ADDR --admin ADDR [--instance NAME] [--data-dir D] [--bundle-file F]
//! [--trust-domain TD]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strait_identity::IdentitySettings;
use strait_proto::names::is_host_port;
use strait_trust::SpiffeId;

use crate::select::is_dns_label;

/// Everything `strait gateway run` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct GatewaySettings {
    /// The zone control plane's gRPC address (`host:port`).
    pub zone_cp: String,
    /// The zone this gateway serves.
    pub zone: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The bootstrap token (`strait token workload --zone Z --service gateway`).
    pub token_file: PathBuf,
    /// This replica's name; `gateway-ZONE-<random>` when unset.
    #[serde(default)]
    pub instance: Option<String>,
    /// UDP address of the QUIC listener for other zones' gateways.
    pub quic: SocketAddr,
    /// TCP address of the HTTP/2 CONNECT listener for this zone's sidecars.
    pub local: SocketAddr,
    /// Where other zones reach the QUIC listener (`host:port`), reported to the zone.
    pub public_address: String,
    /// HTTP listener for `/metrics`, `/ready`, `/healthz`, `/config`.
    pub admin: SocketAddr,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
}

fn default_trust_domain() -> String {
    strait_trust::DEFAULT_TRUST_DOMAIN.to_owned()
}

/// A setting that cannot work, with the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway settings: {field}: {reason}")]
pub struct SettingsError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        reason: reason.into(),
    }
}

impl GatewaySettings {
    /// Settings with defaults for everything optional.
    pub fn new(
        zone_cp: impl Into<String>,
        zone: impl Into<String>,
        token_file: PathBuf,
        quic: SocketAddr,
        local: SocketAddr,
        public_address: impl Into<String>,
        admin: SocketAddr,
    ) -> Self {
        Self {
            zone_cp: zone_cp.into(),
            zone: zone.into(),
            trust_domain: default_trust_domain(),
            token_file,
            instance: None,
            quic,
            local,
            public_address: public_address.into(),
            admin,
            data_dir: None,
            bundle_file: None,
        }
    }

    /// Checks everything that can be checked without the disk or the network.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !is_host_port(&self.zone_cp) {
            return Err(invalid(
                "zone_cp",
                format!("{:?} is not host:port", self.zone_cp),
            ));
        }
        if !is_dns_label(&self.zone) {
            return Err(invalid(
                "zone",
                format!("{:?} is not a DNS label", self.zone),
            ));
        }
        strait_trust::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        if self.token_file.as_os_str().is_empty() {
            return Err(invalid("token_file", "must not be empty"));
        }
        if let Some(instance) = &self.instance {
            let ok = !instance.is_empty()
                && instance.len() <= 253
                && instance
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(invalid(
                    "instance",
                    format!("{instance:?} must be 1-253 of letters, digits, '-', '_', '.'"),
                ));
            }
        }
        if !is_host_port(&self.public_address) {
            return Err(invalid(
                "public_address",
                format!("{:?} is not host:port", self.public_address),
            ));
        }
        if self.local.port() == 0 {
            return Err(invalid(
                "local",
                "needs a fixed port: it is the address sidecars dial",
            ));
        }
        if self.admin == self.local {
            return Err(invalid("admin", "must differ from local"));
        }
        for (field, path) in [
            ("data_dir", &self.data_dir),
            ("bundle_file", &self.bundle_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(field, "must not be empty when given"));
            }
        }
        Ok(())
    }

    /// Validates and fills the instance name.
    pub fn resolve(mut self) -> Result<Self, SettingsError> {
        self.validate()?;
        if self.instance.is_none() {
            self.instance = Some(format!(
                "gateway-{}-{:08x}",
                self.zone,
                rand::random::<u32>()
            ));
        }
        Ok(self)
    }

    pub fn instance_name(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(|| format!("gateway-{}", self.zone))
    }

    /// `spiffe://TD/zone/ZONE/gateway`.
    pub fn spiffe_id(&self) -> Result<SpiffeId, SettingsError> {
        SpiffeId::gateway(&self.trust_domain, &self.zone)
            .map_err(|e| invalid("zone", e.to_string()))
    }

    /// What the shared identity code needs: the gateway identity, metrics prefixed
    /// `strait_gateway`.
    pub fn identity_settings(&self) -> Result<IdentitySettings, SettingsError> {
        Ok(IdentitySettings {
            zone_cp: self.zone_cp.clone(),
            zone: self.zone.clone(),
            trust_domain: self.trust_domain.clone(),
            token_file: self.token_file.clone(),
            token_kind: Default::default(),
            data_dir: self.data_dir.clone(),
            bundle_file: self.bundle_file.clone(),
            id: self.spiffe_id()?,
            metrics_prefix: "strait_gateway",
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn settings() -> GatewaySettings {
        GatewaySettings::new(
            "127.0.0.1:7500",
            "a",
            "/tmp/token".into(),
            "127.0.0.1:15443".parse().unwrap(),
            "127.0.0.1:15008".parse().unwrap(),
            "127.0.0.1:15443",
            "127.0.0.1:15009".parse().unwrap(),
        )
    }

    #[test]
    fn resolves_and_names_fields() {
        let s = settings().resolve().unwrap();
        assert!(s.instance_name().starts_with("gateway-a-"));
        let id = s.identity_settings().unwrap();
        assert_eq!(id.id.to_string(), "spiffe://strait.local/zone/a/gateway");
        assert_eq!(id.metrics_prefix, "strait_gateway");
        let field = |f: &dyn Fn(&mut GatewaySettings)| {
            let mut s = settings();
            f(&mut s);
            s.validate().unwrap_err().field
        };
        assert_eq!(field(&|s| s.zone_cp = "x".into()), "zone_cp");
        assert_eq!(field(&|s| s.zone = "A".into()), "zone");
        assert_eq!(field(&|s| s.public_address = "h".into()), "public_address");
        assert_eq!(
            field(&|s| s.local = "127.0.0.1:0".parse().unwrap()),
            "local"
        );
        assert_eq!(field(&|s| s.admin = s.local), "admin");
        assert_eq!(field(&|s| s.instance = Some("a b".into())), "instance");
        assert_eq!(field(&|s| s.token_file = PathBuf::new()), "token_file");
    }
}
