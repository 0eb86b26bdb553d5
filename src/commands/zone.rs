//! `strait zone run`: one zone control plane (universal or Kubernetes mode).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use strait_zone::config::{Mode, ZoneConfig};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML config file (fields as in `strait_zone::config::ZoneConfig`); flags override it.
    #[arg(long = "config-file")]
    config_file: Option<PathBuf>,
    /// Zone name (a DNS label; must match the join token).
    #[arg(long)]
    name: Option<String>,
    /// Global control plane nodes (host:port, comma-separated).
    #[arg(long, value_delimiter = ',')]
    global: Vec<String>,
    /// Join token (`strait zone create` prints it); first start only.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Credentials and the persisted federation state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    region: Option<String>,
    /// Range this zone maps service VIP indexes into.
    #[arg(long)]
    vip_cidr: Option<String>,
    /// The federation's trust domain.
    #[arg(long)]
    trust_domain: Option<String>,
    /// gRPC address for sidecars and gateways (Identity, Discovery), TLS.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /ready, /healthz, /config.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// How long a sidecar that disconnected keeps its endpoints (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    registration_grace: Option<Duration>,
    /// Lifetime of the workload certificates this zone signs (e.g. 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    workload_cert_validity: Option<Duration>,
    /// How often to check whether certificates need renewing.
    #[arg(long, value_parser = humantime::parse_duration)]
    renew_check_interval: Option<Duration>,
    /// Serve authoritative DNS (clusterset.local, mesh.local) on this address, UDP and TCP.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// TTL of DNS answers, whole seconds (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    dns_ttl: Option<Duration>,
    /// Inventory source: `universal` (sidecars register) or `kubernetes` (Services,
    /// EndpointSlices, Pods and MCS ServiceExports of the cluster; needs in-cluster
    /// credentials or a kubeconfig).
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Kubernetes mode: the namespace the zone runs in (its leader-election Lease lives there).
    #[arg(long, env = "POD_NAMESPACE")]
    kubernetes_namespace: Option<String>,
    /// Kubernetes mode: this replica's name in the leader-election Lease.
    #[arg(long, env = "POD_NAME")]
    replica: Option<String>,
    /// Kubernetes mode: the leader-election Lease's name.
    #[arg(long)]
    lease_name: Option<String>,
    /// Kubernetes mode: the sidecar's inbound port on every pod (endpoints are podIP:PORT).
    #[arg(long)]
    endpoint_inbound_port: Option<u16>,
    /// Kubernetes mode: the Secret through which the replicas share the zone's credentials
    /// (default strait-zone-credentials; an empty value: none, one replica only).
    #[arg(long)]
    credentials_secret: Option<String>,
    /// Kubernetes mode: serve the sidecar injector (HTTPS admission webhook) on this address.
    #[arg(long, requires_all = ["webhook_cert", "webhook_key", "sidecar_image", "sidecar_zone_cp"])]
    webhook: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM; re-read when it changes).
    #[arg(long)]
    webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long)]
    webhook_key: Option<PathBuf>,
    /// The image the webhook injects (sidecar and init container).
    #[arg(long)]
    sidecar_image: Option<String>,
    /// How injected sidecars reach this zone control plane (host:port of its Service).
    #[arg(long)]
    sidecar_zone_cp: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Universal,
    Kubernetes,
}

impl RunArgs {
    fn config(self) -> anyhow::Result<ZoneConfig> {
        let mut config = match &self.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                ZoneConfig::from_yaml(&text, &path.display().to_string())?
            }
            None => {
                let (Some(name), Some(data_dir)) = (self.name.clone(), self.data_dir.clone())
                else {
                    anyhow::bail!("--name and --data-dir are required (or --config-file)");
                };
                if self.global.is_empty() {
                    anyhow::bail!("--global is required: the address of at least one global node");
                }
                let listen = self
                    .listen
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7500)));
                let admin = self
                    .admin_listen
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7501)));
                ZoneConfig::new(name, self.global.clone(), data_dir, listen, admin)
            }
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        set!(
            name,
            data_dir,
            region,
            trust_domain,
            listen,
            admin_listen,
            registration_grace,
            workload_cert_validity,
            renew_check_interval,
            dns_ttl
        );
        if self.dns.is_some() {
            config.dns = self.dns;
        }
        if self.token_file.is_some() {
            config.token_file = self.token_file;
        }
        if !self.global.is_empty() {
            config.global = self.global;
        }
        if let Some(mode) = self.mode {
            config.mode = match mode {
                ModeArg::Universal => Mode::Universal,
                ModeArg::Kubernetes => Mode::Kubernetes,
            };
        }
        let kubernetes = &mut config.kubernetes;
        if let Some(namespace) = self.kubernetes_namespace {
            kubernetes.namespace = namespace;
        }
        if self.replica.is_some() {
            kubernetes.replica = self.replica;
        }
        if let Some(lease_name) = self.lease_name {
            kubernetes.lease_name = lease_name;
        }
        if let Some(port) = self.endpoint_inbound_port {
            kubernetes.endpoint_inbound_port = port;
        }
        if let Some(secret) = self.credentials_secret {
            kubernetes.credentials_secret = (!secret.is_empty()).then_some(secret);
        }
        if let (Some(listen), Some(cert_file), Some(key_file), Some(sidecar_image), Some(zone_cp)) = (
            self.webhook,
            self.webhook_cert,
            self.webhook_key,
            self.sidecar_image,
            self.sidecar_zone_cp,
        ) {
            config.webhook = Some(strait_zone::config::WebhookSettings {
                listen,
                cert_file,
                key_file,
                sidecar_image,
                sidecar_zone_cp: zone_cp,
            });
        }
        if let Some(cidr) = self.vip_cidr {
            config.vip_cidr = cidr
                .parse()
                .map_err(|e| anyhow::anyhow!("--vip-cidr: {e}"))?;
        }
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    strait_observe::init_tracing("zone");
    let config = args.config()?;
    // Every input is checked before a port is bound or the data directory written.
    strait_zone::credentials::check_join_token(&config)?;
    let grpc = bind_when_free(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let admin = bind_when_free(config.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.admin_listen))?;
    let dns = match config.dns {
        Some(addr) => Some(strait_zone::dns::server::DnsSockets::bind(addr).await?),
        None => None,
    };
    strait_zone::node::run_with_dns(config, grpc, admin, dns, super::global::shutdown_signal())
        .await?;
    Ok(())
}

/// How long a restarted zone waits for its own addresses to be released.
const BIND_PATIENCE: Duration = Duration::from_secs(10);

/// Binds `addr`, waiting up to [`BIND_PATIENCE`] while it is in use: right after a zone
/// control plane is killed and restarted, connections of the old process can keep its port
/// taken for a moment, and a supervisor restarting it at once should not see it fail.
async fn bind_when_free(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
    let mut said = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                if !said {
                    tracing::warn!(%addr, "address in use; waiting for it to be released");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}
