//! Configuration of a zone control plane: typed, validated once at start (errors name the
//! field), dumped at the admin `/config` endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_proto::names;
use strait_proto::vip::VipCidr;

/// Everything `strait zone run` needs. Read from flags or a YAML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ZoneConfig {
    /// The zone's name, as given to `strait zone create NAME` (the join token is bound to it).
    pub name: String,
    /// Region of this zone (locality of its workloads unless they say otherwise).
    #[serde(default = "default_region")]
    pub region: String,
    /// Global nodes' gRPC addresses (`host:port`), tried in order; the addresses global
    /// returns at join are tried after these.
    pub global: Vec<String>,
    /// The join token (`strait zone create` output). Needed on the first start only: later
    /// starts load the credentials from `data_dir`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Credentials (`zone.json`, `tls/`) and the state database (`state/`), mode 0700.
    pub data_dir: PathBuf,
    /// gRPC listener for sidecars and gateways: Identity and Discovery, over TLS.
    pub listen: SocketAddr,
    /// HTTP listener for `/metrics`, `/ready`, `/healthz` and `/config`.
    pub admin_listen: SocketAddr,
    /// The range this zone maps service VIPs into (`base + index`).
    #[serde(default = "default_vip_cidr", with = "vip_cidr_serde")]
    pub vip_cidr: VipCidr,
    /// The federation's trust domain: checked against global's certificate when joining.
    /// After the join, the trust domain global returned (recorded in `zone.json`) is used.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// After a restart, how long registrations restored from disk are kept (and the zone
    /// refrains from reporting a smaller inventory to global) while sidecars reconnect.
    #[serde(default = "default_registration_grace", with = "humantime_serde")]
    pub registration_grace: Duration,
    /// Lifetime of the workload and gateway certificates this zone signs.
    #[serde(default = "default_workload_cert_validity", with = "humantime_serde")]
    pub workload_cert_validity: Duration,
    /// How often the zone checks whether its intermediate CA or its own certificate is due
    /// for renewal (at 2/3 of its life).
    #[serde(default = "default_renew_check_interval", with = "humantime_serde")]
    pub renew_check_interval: Duration,
    /// Where the authoritative DNS server listens, UDP and TCP (`clusterset.local`,
    /// `mesh.local`); none serves no DNS.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    /// TTL of every DNS answer, and of negative answers.
    #[serde(default = "default_dns_ttl", with = "humantime_serde")]
    pub dns_ttl: Duration,
    /// Where the zone's inventory comes from: sidecar registrations (`universal`) or the
    /// Kubernetes API (`kubernetes`).
    #[serde(default)]
    pub mode: Mode,
    /// Settings of Kubernetes mode; ignored in universal mode.
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
    /// The sidecar injector (Kubernetes mode): an HTTPS mutating admission webhook for pods;
    /// none serves no webhook.
    #[serde(default)]
    pub webhook: Option<WebhookSettings>,
}

/// The sidecar injector's listener and what it injects (see
/// [`crate::kubernetes::webhook`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct WebhookSettings {
    /// HTTPS listener the API server calls.
    pub listen: SocketAddr,
    /// Its certificate chain and key (PEM), re-read when they change.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The image of the injected sidecar and init container.
    pub sidecar_image: String,
    /// How injected sidecars reach this zone control plane (`host:port`, its Service).
    pub sidecar_zone_cp: String,
}

impl WebhookSettings {
    fn validate(&self, mode: Mode) -> Result<(), ConfigError> {
        if mode != Mode::Kubernetes {
            return Err(invalid(
                "webhook",
                "the sidecar injector needs mode: kubernetes",
            ));
        }
        if self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            return Err(invalid(
                "webhook.cert_file",
                "the webhook needs a certificate and a key",
            ));
        }
        if self.sidecar_image.trim().is_empty() {
            return Err(invalid("webhook.sidecar_image", "must not be empty"));
        }
        let port_ok = self
            .sidecar_zone_cp
            .rsplit_once(':')
            .is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
        if !port_ok {
            return Err(invalid(
                "webhook.sidecar_zone_cp",
                format!("{:?} is not host:port", self.sidecar_zone_cp),
            ));
        }
        Ok(())
    }
}

/// Where a zone's inventory comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Sidecars register the instances they serve over the discovery stream.
    #[default]
    Universal,
    /// Services, EndpointSlices, Pods and MCS `ServiceExport`s of the cluster the zone runs
    /// in; remote services are written back as `ServiceImport`s (see
    /// [`crate::kubernetes`]).
    Kubernetes,
}

/// Kubernetes mode (`mode: kubernetes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct KubernetesSettings {
    /// The namespace the zone control plane runs in (its leader-election Lease lives there).
    pub namespace: String,
    /// Name of the `coordination.k8s.io/v1` Lease the replicas elect their leader on; only
    /// the leader writes `ServiceExport` status and `ServiceImport`s.
    pub lease_name: String,
    /// This replica's name in the Lease (the pod name); none: a random one per start.
    pub replica: Option<String>,
    /// How long a leader's Lease holds without renewal before another replica takes over.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// How often the leader renews (and the others check) the Lease.
    #[serde(with = "humantime_serde")]
    pub lease_renew_interval: Duration,
    /// The port of an endpoint's sidecar inbound listener (mTLS): other sidecars and the
    /// gateway reach a pod at `podIP:PORT`.
    pub endpoint_inbound_port: u16,
    /// The Secret (in `namespace`) through which the replicas share the zone's credentials:
    /// the Lease holder joins and publishes them, the others take them from there (see
    /// [`crate::kubernetes::credentials`]). `null`: each replica keeps its own in its data
    /// directory, which works for one replica only.
    pub credentials_secret: Option<String>,
}

/// The inbound port of the injected sidecar.
pub const DEFAULT_ENDPOINT_INBOUND_PORT: u16 = 15008;

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            namespace: "strait-system".to_owned(),
            lease_name: "strait-zone-leader".to_owned(),
            replica: None,
            lease_duration: Duration::from_secs(15),
            lease_renew_interval: Duration::from_secs(5),
            endpoint_inbound_port: DEFAULT_ENDPOINT_INBOUND_PORT,
            credentials_secret: Some("strait-zone-credentials".to_owned()),
        }
    }
}

fn default_region() -> String {
    "default".to_owned()
}

/// The VIP range of a zone unless configured otherwise.
#[allow(clippy::expect_used)] // a constant, checked by the unit tests
pub fn default_vip_cidr() -> VipCidr {
    DEFAULT_VIP_CIDR
        .parse()
        .expect("DEFAULT_VIP_CIDR is a valid CIDR")
}

/// The VIP range of the first zone on a laptop; `strait up` gives further zones
/// `127.241.0.0/16`, `127.242.0.0/16`, ...
pub const DEFAULT_VIP_CIDR: &str = "127.240.0.0/16";

fn default_trust_domain() -> String {
    strait_trust::DEFAULT_TRUST_DOMAIN.to_owned()
}

fn default_registration_grace() -> Duration {
    Duration::from_secs(10)
}

fn default_workload_cert_validity() -> Duration {
    strait_trust::ca::DEFAULT_LEAF_VALIDITY
}

fn default_renew_check_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_dns_ttl() -> Duration {
    crate::dns::DEFAULT_TTL
}

/// `VipCidr` has no serde support of its own; it is written as its `a.b.c.d/len` text.
mod vip_cidr_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use strait_proto::vip::VipCidr;

    pub fn serialize<S: Serializer>(cidr: &VipCidr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(cidr)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VipCidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A configuration that cannot work, with the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid zone config: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

impl ZoneConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(
        name: impl Into<String>,
        global: Vec<String>,
        data_dir: PathBuf,
        listen: SocketAddr,
        admin_listen: SocketAddr,
    ) -> Self {
        Self {
            name: name.into(),
            region: default_region(),
            global,
            token_file: None,
            data_dir,
            listen,
            admin_listen,
            vip_cidr: default_vip_cidr(),
            trust_domain: default_trust_domain(),
            registration_grace: default_registration_grace(),
            workload_cert_validity: default_workload_cert_validity(),
            renew_check_interval: default_renew_check_interval(),
            dns: None,
            dns_ttl: default_dns_ttl(),
            mode: Mode::default(),
            kubernetes: KubernetesSettings::default(),
            webhook: None,
        }
    }

    /// Parses a YAML config file's text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| invalid("(file)", format!("{source}: {e}")))
    }

    /// Checks everything that can be checked before touching the disk or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_zone_name(&self.name).map_err(|reason| invalid("name", reason))?;
        if self.region.trim().is_empty() {
            return Err(invalid("region", "must not be empty"));
        }
        strait_trust::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        if self.global.is_empty() {
            return Err(invalid(
                "global",
                "at least one global node address (host:port) is needed",
            ));
        }
        for addr in &self.global {
            let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !valid {
                return Err(invalid(
                    "global",
                    format!("{addr:?} is not a host:port address"),
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(invalid("admin_listen", "must differ from listen"));
        }
        if self.registration_grace > Duration::from_secs(3600) {
            return Err(invalid("registration_grace", "must be at most 1h"));
        }
        // Short lifetimes are for renewal tests; below 10 s a renewal at 2/3 of life would race
        // the clock-skew allowance.
        if self.workload_cert_validity < Duration::from_secs(10) {
            return Err(invalid("workload_cert_validity", "must be at least 10s"));
        }
        if self.renew_check_interval.is_zero() {
            return Err(invalid("renew_check_interval", "must be above zero"));
        }
        if let Some(dns) = self.dns
            && dns.port() != 0
            && (dns == self.listen || dns == self.admin_listen)
        {
            return Err(invalid("dns", "must differ from listen and admin_listen"));
        }
        // Whole seconds: DNS TTLs have no finer unit. A day is far beyond any use: a stale
        // answer would outlive a service that moved.
        if self.dns_ttl.subsec_nanos() != 0 || self.dns_ttl > Duration::from_secs(86_400) {
            return Err(invalid("dns_ttl", "must be whole seconds, at most 1d"));
        }
        if self.mode == Mode::Kubernetes {
            self.kubernetes.validate()?;
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate(self.mode)?;
        }
        Ok(())
    }
}

impl KubernetesSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_dns_label(&self.namespace)
            .map_err(|reason| invalid("kubernetes.namespace", reason))?;
        if self.lease_name.is_empty() || self.lease_name.len() > 253 {
            return Err(invalid(
                "kubernetes.lease_name",
                "must be 1 to 253 characters",
            ));
        }
        if self.replica.as_ref().is_some_and(String::is_empty) {
            return Err(invalid("kubernetes.replica", "must not be empty"));
        }
        // Whole seconds: the Lease stores `leaseDurationSeconds`.
        if self.lease_duration < Duration::from_secs(2) || self.lease_duration.subsec_nanos() != 0 {
            return Err(invalid(
                "kubernetes.lease_duration",
                "must be whole seconds, at least 2s",
            ));
        }
        // A leader must get several renewals in before its Lease runs out.
        if self.lease_renew_interval.is_zero()
            || self.lease_renew_interval * 2 > self.lease_duration
        {
            return Err(invalid(
                "kubernetes.lease_renew_interval",
                "must be above zero and at most half of lease_duration",
            ));
        }
        if self.endpoint_inbound_port == 0 {
            return Err(invalid("kubernetes.endpoint_inbound_port", "must not be 0"));
        }
        if let Some(secret) = &self.credentials_secret {
            validate_dns_subdomain(secret)
                .map_err(|reason| invalid("kubernetes.credentials_secret", reason))?;
        }
        Ok(())
    }
}

/// A Kubernetes namespace name (RFC 1123 label).
fn validate_dns_label(name: &str) -> Result<(), String> {
    if names::is_dns_label(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

/// An object name (RFC 1123 subdomain): DNS labels joined by dots, at most 253 characters.
fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > names::MAX_DNS_NAME
        || name.split('.').any(|l| validate_dns_label(l).is_err())
    {
        return Err(format!(
            "{name:?} is not a Kubernetes object name (DNS labels joined by '.', at most 253)"
        ));
    }
    Ok(())
}

/// A zone name: what `spiffe://TD/zone/NAME/cp` and DNS labels (`SVC.NS.svc.NAME.mesh.local`)
/// accept — lowercase letters, digits and `-`, starting with a letter, at most 63 characters.
pub fn validate_zone_name(name: &str) -> Result<(), String> {
    if names::is_rfc1035_label(name) {
        Ok(())
    } else if name.is_empty() {
        Err("must not be empty".to_owned())
    } else if name.len() > names::MAX_DNS_LABEL {
        Err(format!("{name:?} is longer than 63 characters"))
    } else {
        Err(format!(
            "{name:?} must be lowercase letters, digits and '-', start with a letter and not end with '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ZoneConfig {
        ZoneConfig::new(
            "eu-1",
            vec!["127.0.0.1:7400".into()],
            "/tmp/zone".into(),
            "127.0.0.1:7500".parse().unwrap(),
            "127.0.0.1:7501".parse().unwrap(),
        )
    }

    #[test]
    fn default_cidr_parses() {
        assert_eq!(default_vip_cidr().to_string(), "127.240.0.0/16");
        assert!(config().validate().is_ok());
    }

    #[test]
    fn yaml_with_defaults_and_unknown_fields() {
        let yaml = "name: a\nglobal: [\"127.0.0.1:7400\"]\ndata_dir: /tmp/a\nlisten: 127.0.0.1:1\nadmin_listen: 127.0.0.1:2\nvip_cidr: 127.241.0.0/16\nregistration_grace: 3s\n";
        let c = ZoneConfig::from_yaml(yaml, "zone.yaml").unwrap();
        assert_eq!(c.region, "default");
        assert_eq!(c.vip_cidr.to_string(), "127.241.0.0/16");
        assert_eq!(c.registration_grace, Duration::from_secs(3));
        assert_eq!(c.trust_domain, "strait.local");
        assert_eq!((c.dns, c.dns_ttl), (None, Duration::from_secs(5)));
        c.validate().unwrap();
        let dns = ZoneConfig::from_yaml(&format!("{yaml}dns: 127.0.0.1:5353\ndns_ttl: 30s\n"), "z")
            .unwrap();
        assert_eq!(dns.dns, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(dns.dns_ttl, Duration::from_secs(30));

        let err = ZoneConfig::from_yaml(&format!("{yaml}bogus: 1\n"), "zone.yaml").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = ZoneConfig::from_yaml(&yaml.replace("127.241.0.0/16", "127.241.0.1/16"), "z")
            .unwrap_err();
        assert!(err.to_string().contains("host bits"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = config();
        c.name = "EU_1".into();
        assert_eq!(c.validate().unwrap_err().field, "name");
        let mut c = config();
        c.global = vec![];
        assert_eq!(c.validate().unwrap_err().field, "global");
        let mut c = config();
        c.global = vec!["nohost".into()];
        assert_eq!(c.validate().unwrap_err().field, "global");
        let mut c = config();
        c.admin_listen = c.listen;
        assert_eq!(c.validate().unwrap_err().field, "admin_listen");
        let mut c = config();
        c.trust_domain = "Bad Domain".into();
        assert_eq!(c.validate().unwrap_err().field, "trust_domain");
        let mut c = config();
        c.renew_check_interval = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "renew_check_interval");
        let mut c = config();
        c.dns = Some(c.listen);
        assert_eq!(c.validate().unwrap_err().field, "dns");
        let mut c = config();
        c.dns_ttl = Duration::from_millis(1500);
        assert_eq!(c.validate().unwrap_err().field, "dns_ttl");
    }

    #[test]
    fn kubernetes_mode_settings() {
        let yaml = "name: a\nglobal: [\"g:7400\"]\ndata_dir: /d\nlisten: 0.0.0.0:7500\nadmin_listen: 0.0.0.0:7501\nmode: kubernetes\nkubernetes:\n  namespace: mesh\n  endpoint_inbound_port: 15006\n";
        let c = ZoneConfig::from_yaml(yaml, "z").unwrap();
        assert_eq!(c.mode, Mode::Kubernetes);
        assert_eq!(c.kubernetes.namespace, "mesh");
        assert_eq!(c.kubernetes.endpoint_inbound_port, 15006);
        assert_eq!(c.kubernetes.lease_name, "strait-zone-leader");
        assert_eq!(c.kubernetes.lease_duration, Duration::from_secs(15));
        assert_eq!(
            c.kubernetes.credentials_secret.as_deref(),
            Some("strait-zone-credentials")
        );
        c.validate().unwrap();
        assert_eq!(config().mode, Mode::Universal);

        let mut c = config();
        c.mode = Mode::Kubernetes;
        c.kubernetes.namespace = "Bad_NS".into();
        assert_eq!(c.validate().unwrap_err().field, "kubernetes.namespace");
        let mut c = config();
        c.mode = Mode::Kubernetes;
        c.kubernetes.lease_renew_interval = Duration::from_secs(10);
        assert_eq!(
            c.validate().unwrap_err().field,
            "kubernetes.lease_renew_interval"
        );
        // Universal mode does not look at the Kubernetes settings.
        let mut c = config();
        c.kubernetes.endpoint_inbound_port = 0;
        c.validate().unwrap();
        c.mode = Mode::Kubernetes;
        assert_eq!(
            c.validate().unwrap_err().field,
            "kubernetes.endpoint_inbound_port"
        );
        let mut c = config();
        c.mode = Mode::Kubernetes;
        c.kubernetes.credentials_secret = Some("Not/A_Name".into());
        assert_eq!(
            c.validate().unwrap_err().field,
            "kubernetes.credentials_secret"
        );
        let c = ZoneConfig::from_yaml(&format!("{yaml}  credentials_secret: null\n"), "z").unwrap();
        assert_eq!(c.kubernetes.credentials_secret, None);
        let err = ZoneConfig::from_yaml(&format!("{yaml}  bogus: 1\n"), "z").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
