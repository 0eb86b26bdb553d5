//! The sidecar's own settings ([`SidecarSettings`]): typed, validated once at start with errors
//! that name the field, and dumped at the admin `/config` endpoint.
//!
//! They mirror the command line
//! `strait sidecar run --zone-cp ADDR --zone Z --token-file F --service S --namespace NS
//! [--app ADDR] --inbound ADDR --admin ADDR [--labels k=v,...] [--outbound vips|none|capture:PORT]
//! [--data-dir DIR] [--bundle-file F]`, and the same as YAML.
//!
//! (The type is not called `SidecarConfig`: that name belongs to the config the zone pushes,
//! `strait_proto::SidecarConfig`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
// The address and name rules the identity settings apply too.
pub(crate) use strait_identity::settings::{check_dns_label, check_host_port};
use strait_identity::{IdentitySettings, TokenKind};

/// Everything `strait sidecar run` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SidecarSettings {
    /// The zone control plane's gRPC address (`host:port`): Identity and Discovery, over TLS.
    pub zone_cp: String,
    /// The zone this sidecar runs in; the zone control plane must prove it is
    /// `spiffe://TD/zone/ZONE/cp`.
    pub zone: String,
    /// The federation's trust domain.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The bootstrap token (`strait token workload ...`). Read only when the sidecar has no
    /// usable certificate (first start, or a certificate that expired).
    pub token_file: PathBuf,
    /// What `token_file` holds: `bootstrap` (default) or, on Kubernetes, `service_account`
    /// (the pod's projected token, checked by the zone with a TokenReview).
    #[serde(default)]
    pub token_kind: TokenKind,
    /// The service this sidecar serves; also its service account
    /// (`spiffe://TD/ns/NAMESPACE/sa/SERVICE`).
    pub service: String,
    pub namespace: String,
    /// This instance's name in the zone's inventory; `SERVICE-<random>` when unset (see
    /// [`SidecarSettings::resolve`]).
    #[serde(default)]
    pub instance: Option<String>,
    /// The local app (plain HTTP/1.1 or TCP). `None` for a client-only sidecar.
    #[serde(default)]
    pub app: Option<SocketAddr>,
    /// The protocol the app speaks on its port, registered with the zone: `http` (HTTP/1.1, and
    /// HTTP/2 to callers that speak it), `http2` or `grpc` (HTTP/2 whatever the caller spoke),
    /// `tcp` (bytes).
    #[serde(default)]
    pub app_protocol: AppProtocol,
    /// The mutual TLS listener other sidecars and gateways reach this instance on. Registered
    /// with the zone as the instance's address.
    pub inbound: SocketAddr,
    /// HTTP listener for `/metrics`, `/ready`, `/healthz` and `/config`.
    pub admin: SocketAddr,
    /// Labels of this instance (subsets in routes select on them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether the sidecar binds outbound listeners on service VIPs.
    #[serde(default)]
    pub outbound: OutboundMode,
    /// Where the key, certificate and trust bundle are kept across restarts (mode 0700). Without
    /// it every start bootstraps again with the token.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The federation's trust bundle (PEM). When given, the zone control plane must chain to
    /// it on the first contact; without it the first contact is trust on first use (see
    /// [`strait_identity`]).
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
}

/// Whether a sidecar listens on VIPs for its app's outbound calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundMode {
    /// Outbound listeners on every service VIP (the zone's loopback range on a laptop).
    #[default]
    Vips,
    /// No outbound listeners: a sidecar that only receives.
    None,
    /// One listener on `127.0.0.1:PORT` for connections that traffic capture
    /// (`strait sidecar init`) redirected there; the VIP each was meant for is read back from
    /// the connection (`SO_ORIGINAL_DST`). For pods, where VIPs are not local addresses.
    Capture(u16),
}

impl std::str::FromStr for OutboundMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vips" => Ok(OutboundMode::Vips),
            "none" => Ok(OutboundMode::None),
            "capture" => Ok(OutboundMode::Capture(crate::capture::DEFAULT_OUTBOUND_PORT)),
            other => match other.strip_prefix("capture:").map(str::parse::<u16>) {
                Some(Ok(port)) if port != 0 => Ok(OutboundMode::Capture(port)),
                _ => Err(format!(
                    "{other:?} is not an outbound mode: use vips, none or capture[:PORT]"
                )),
            },
        }
    }
}

/// The declared protocol of the app's port (what Kubernetes says with `appProtocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl AppProtocol {
    pub fn to_proto(self) -> strait_proto::Protocol {
        match self {
            AppProtocol::Http => strait_proto::Protocol::Http,
            AppProtocol::Http2 => strait_proto::Protocol::Http2,
            AppProtocol::Grpc => strait_proto::Protocol::Grpc,
            AppProtocol::Tcp => strait_proto::Protocol::Tcp,
        }
    }

    /// The port name registered with it (`http`, `http2`, `grpc`, `tcp`): other zones' DNS SRV
    /// records and Kubernetes conventions (`grpc-…`) read it.
    pub fn port_name(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for AppProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(AppProtocol::Http),
            "http2" | "h2c" => Ok(AppProtocol::Http2),
            "grpc" => Ok(AppProtocol::Grpc),
            "tcp" => Ok(AppProtocol::Tcp),
            other => Err(format!(
                "{other:?} is not an app protocol: use http, http2, grpc or tcp"
            )),
        }
    }
}

fn default_trust_domain() -> String {
    strait_trust::DEFAULT_TRUST_DOMAIN.to_owned()
}

/// A setting that cannot work, with the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sidecar settings: {field}: {reason}")]
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

/// Most labels a sidecar may register (the zone's own limit).
const MAX_LABELS: usize = 64;
/// Longest label key or value in bytes (the zone's own limit).
const MAX_LABEL_BYTES: usize = 317;
/// Longest instance name (the zone's own limit).
const MAX_INSTANCE_NAME: usize = 253;

impl SidecarSettings {
    /// Settings with defaults for everything but the essentials.
    pub fn new(
        zone_cp: impl Into<String>,
        zone: impl Into<String>,
        token_file: PathBuf,
        namespace: impl Into<String>,
        service: impl Into<String>,
        inbound: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        Self {
            zone_cp: zone_cp.into(),
            zone: zone.into(),
            trust_domain: default_trust_domain(),
            token_file,
            token_kind: TokenKind::default(),
            service: service.into(),
            namespace: namespace.into(),
            instance: None,
            app: None,
            app_protocol: AppProtocol::default(),
            inbound,
            admin,
            labels: BTreeMap::new(),
            outbound: OutboundMode::default(),
            data_dir: None,
            bundle_file: None,
        }
    }

    /// Parses a YAML settings file's text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, SettingsError> {
        serde_saphyr::from_str(text).map_err(|e| invalid("(file)", format!("{source}: {e}")))
    }

    /// Checks everything that can be checked without the disk or the network.
    pub fn validate(&self) -> Result<(), SettingsError> {
        check_host_port(&self.zone_cp).map_err(|reason| invalid("zone_cp", reason))?;
        check_dns_label(&self.zone).map_err(|reason| invalid("zone", reason))?;
        strait_trust::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        if self.token_file.as_os_str().is_empty() {
            return Err(invalid("token_file", "must not be empty"));
        }
        check_dns_label(&self.service).map_err(|reason| invalid("service", reason))?;
        check_dns_label(&self.namespace).map_err(|reason| invalid("namespace", reason))?;
        if let Some(instance) = &self.instance {
            check_instance(instance).map_err(|reason| invalid("instance", reason))?;
        }
        if self.inbound.port() == 0 {
            // The port is registered with the zone: other sidecars must be able to dial it.
            return Err(invalid(
                "inbound",
                "needs a fixed port: it is the address other sidecars dial",
            ));
        }
        if self.inbound.ip().is_unspecified() {
            return Err(invalid(
                "inbound",
                "needs a concrete IP (not 0.0.0.0 or ::): it is registered with the zone as the \
                 address other sidecars dial",
            ));
        }
        if let Some(app) = self.app {
            if app.port() == 0 {
                return Err(invalid("app", "needs a port"));
            }
            if app == self.inbound {
                return Err(invalid("app", "must differ from inbound"));
            }
        }
        if self.admin == self.inbound {
            return Err(invalid("admin", "must differ from inbound"));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(invalid("labels", format!("at most {MAX_LABELS} labels")));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES {
                return Err(invalid(
                    "labels",
                    format!(
                        "key {k:?} or its value is empty or longer than {MAX_LABEL_BYTES} bytes"
                    ),
                ));
            }
        }
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid("data_dir", "must not be empty when given"));
        }
        if self
            .bundle_file
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid("bundle_file", "must not be empty when given"));
        }
        Ok(())
    }

    /// Validates and fills what has a computed default (the instance name).
    pub fn resolve(mut self) -> Result<Self, SettingsError> {
        self.validate()?;
        if self.instance.is_none() {
            self.instance = Some(format!("{}-{:08x}", self.service, rand::random::<u32>()));
        }
        Ok(self)
    }

    /// The instance name ([`SidecarSettings::resolve`] fills it; the service name until then).
    pub fn instance_name(&self) -> &str {
        self.instance.as_deref().unwrap_or(&self.service)
    }

    /// `spiffe://TD/ns/NAMESPACE/sa/SERVICE`: the identity this sidecar asks for.
    pub fn spiffe_id(&self) -> Result<strait_trust::SpiffeId, SettingsError> {
        strait_trust::SpiffeId::workload(&self.trust_domain, &self.namespace, &self.service)
            .map_err(|e| invalid("service", e.to_string()))
    }

    /// `spiffe://TD/zone/ZONE/cp`: who the zone control plane must be.
    pub fn zone_cp_id(&self) -> Result<strait_trust::SpiffeId, SettingsError> {
        strait_trust::SpiffeId::zone_cp(&self.trust_domain, &self.zone)
            .map_err(|e| invalid("zone", e.to_string()))
    }

    /// What [`Identity::bootstrap`](strait_identity::Identity::bootstrap) needs for this
    /// sidecar: its workload identity, metrics prefixed `strait_sidecar`. Validates first.
    pub fn identity_settings(&self) -> Result<IdentitySettings, SettingsError> {
        self.validate()?;
        Ok(IdentitySettings {
            zone_cp: self.zone_cp.clone(),
            zone: self.zone.clone(),
            trust_domain: self.trust_domain.clone(),
            token_file: self.token_file.clone(),
            token_kind: self.token_kind,
            data_dir: self.data_dir.clone(),
            bundle_file: self.bundle_file.clone(),
            id: self.spiffe_id()?,
            metrics_prefix: "strait_sidecar",
        })
    }
}

fn check_instance(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_INSTANCE_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} must be 1-{MAX_INSTANCE_NAME} of letters, digits, '-', '_', '.'"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn settings() -> SidecarSettings {
        SidecarSettings::new(
            "127.0.0.1:7500",
            "eu-1",
            "/tmp/token".into(),
            "demo",
            "echo",
            "127.0.0.1:15006".parse().unwrap(),
            "127.0.0.1:15000".parse().unwrap(),
        )
    }

    #[test]
    fn defaults_and_resolve() {
        let s = settings().resolve().unwrap();
        assert_eq!(s.trust_domain, "strait.local");
        assert_eq!(s.outbound, OutboundMode::Vips);
        let instance = s.instance.clone().unwrap();
        assert!(instance.starts_with("echo-"), "{instance}");
        assert_eq!(s.instance_name(), instance);
        assert_eq!(
            s.spiffe_id().unwrap().to_string(),
            "spiffe://strait.local/ns/demo/sa/echo"
        );
        assert_eq!(
            s.zone_cp_id().unwrap().to_string(),
            "spiffe://strait.local/zone/eu-1/cp"
        );
        // A given instance is kept.
        let mut s = settings();
        s.instance = Some("echo-1".into());
        assert_eq!(s.resolve().unwrap().instance_name(), "echo-1");
    }

    #[test]
    fn yaml_with_defaults_and_unknown_fields() {
        let yaml = "zone_cp: zone.example:7500\nzone: a\ntoken_file: /t\nservice: echo\nnamespace: demo\napp: 127.0.0.1:8080\ninbound: 127.0.0.1:15006\nadmin: 127.0.0.1:15000\nlabels: {version: v1}\noutbound: none\n";
        let s = SidecarSettings::from_yaml(yaml, "sidecar.yaml").unwrap();
        assert_eq!(s.outbound, OutboundMode::None);
        assert_eq!(s.app, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(s.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(s.data_dir, None);
        s.validate().unwrap();

        let err =
            SidecarSettings::from_yaml(&format!("{yaml}bogus: 1\n"), "sidecar.yaml").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = SidecarSettings::from_yaml(&yaml.replace("none", "all"), "s").unwrap_err();
        assert!(err.to_string().contains("outbound") || err.to_string().contains("all"));
        assert_eq!("none".parse::<OutboundMode>(), Ok(OutboundMode::None));
        assert!("all".parse::<OutboundMode>().is_err());
        assert_eq!(
            "capture:15101".parse::<OutboundMode>(),
            Ok(OutboundMode::Capture(15101))
        );
        assert_eq!(
            "capture".parse::<OutboundMode>(),
            Ok(OutboundMode::Capture(15001))
        );
        assert!("capture:0".parse::<OutboundMode>().is_err());
        let s = SidecarSettings::from_yaml(
            &yaml.replace("outbound: none", "outbound: {capture: 15001}"),
            "s",
        )
        .unwrap();
        assert_eq!(s.outbound, OutboundMode::Capture(15001));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |f: &dyn Fn(&mut SidecarSettings)| {
            let mut s = settings();
            f(&mut s);
            s.validate().unwrap_err().field
        };
        assert_eq!(field(&|s| s.zone_cp = "nohost".into()), "zone_cp");
        assert_eq!(field(&|s| s.zone_cp = "h:0".into()), "zone_cp");
        assert_eq!(field(&|s| s.zone = "EU".into()), "zone");
        assert_eq!(field(&|s| s.trust_domain = "Bad TD".into()), "trust_domain");
        assert_eq!(field(&|s| s.token_file = PathBuf::new()), "token_file");
        assert_eq!(field(&|s| s.service = "a/b".into()), "service");
        assert_eq!(field(&|s| s.namespace = String::new()), "namespace");
        assert_eq!(field(&|s| s.instance = Some("a b".into())), "instance");
        assert_eq!(
            field(&|s| s.inbound = "127.0.0.1:0".parse().unwrap()),
            "inbound"
        );
        assert_eq!(
            field(&|s| s.inbound = "0.0.0.0:15006".parse().unwrap()),
            "inbound"
        );
        assert_eq!(field(&|s| s.app = Some(s.inbound)), "app");
        assert_eq!(field(&|s| s.admin = s.inbound), "admin");
        assert_eq!(
            field(&|s| {
                s.labels.insert(String::new(), "x".into());
            }),
            "labels"
        );
        assert_eq!(field(&|s| s.data_dir = Some(PathBuf::new())), "data_dir");
        let err = settings()
            .resolve()
            .map(|_| ())
            .and_then(|()| {
                let mut s = settings();
                s.zone = "-x".into();
                s.validate()
            })
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid sidecar settings: zone:"),
            "{err}"
        );
    }
}
