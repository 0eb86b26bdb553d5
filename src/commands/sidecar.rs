//! `strait sidecar run`, `strait sidecar init` (traffic capture) and `strait demo-app`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use strait_identity::IdentityArgs;
use strait_sidecar::config::{OutboundMode, SidecarSettings};

#[derive(Debug, Args)]
pub struct RunArgs {
    // --zone-cp, --zone, --token-file, --trust-domain, --bundle-file, --data-dir.
    #[command(flatten)]
    identity: IdentityArgs,
    /// What `--token-file` holds: `bootstrap`, or `service-account` for the pod's projected
    /// service-account token (audience `strait`; Kubernetes: checked by the zone with a
    /// TokenReview).
    #[arg(long, default_value = "bootstrap")]
    token_kind: String,
    #[arg(long)]
    service: String,
    #[arg(long)]
    namespace: String,
    /// Instance name (default SERVICE-<random>).
    #[arg(long)]
    instance: Option<String>,
    /// The local app (omit for a client-only sidecar).
    #[arg(long)]
    app: Option<SocketAddr>,
    /// What the app speaks on its port: `http` (HTTP/1.1; HTTP/2 to callers that speak it),
    /// `http2` or `grpc` (HTTP/2 always), `tcp`.
    #[arg(long, default_value = "http")]
    app_protocol: String,
    /// mTLS listener other sidecars and gateways reach this instance on.
    #[arg(long)]
    inbound: SocketAddr,
    /// HTTP address for /metrics, /ready, /config.
    #[arg(long)]
    admin: SocketAddr,
    /// Endpoint labels, `k=v,k=v`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// `vips`: listen on the zone's service VIPs; `none`: inbound only; `capture:PORT`: accept
    /// the app's VIP connections redirected by `strait sidecar init` on 127.0.0.1:PORT.
    #[arg(long, default_value = "vips")]
    outbound: String,
}

impl RunArgs {
    fn settings(self) -> anyhow::Result<SidecarSettings> {
        let IdentityArgs {
            zone_cp,
            zone,
            token_file,
            trust_domain,
            bundle_file,
            data_dir,
        } = self.identity;
        let mut s = SidecarSettings::new(
            zone_cp,
            zone,
            token_file,
            self.namespace,
            self.service,
            self.inbound,
            self.admin,
        );
        s.instance = self.instance;
        s.token_kind = self
            .token_kind
            .parse()
            .map_err(|e| anyhow::anyhow!("--token-kind: {e}"))?;
        s.app = self.app;
        s.app_protocol = self
            .app_protocol
            .parse()
            .map_err(|e| anyhow::anyhow!("--app-protocol: {e}"))?;
        s.labels = self
            .labels
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .context("--labels takes k=v pairs")
            })
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        s.outbound = self
            .outbound
            .parse::<OutboundMode>()
            .map_err(|e| anyhow::anyhow!("--outbound: {e}"))?;
        s.trust_domain = trust_domain;
        s.bundle_file = bundle_file;
        s.data_dir = data_dir;
        Ok(s.resolve()?)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    strait_observe::init_tracing("sidecar");
    let settings = args.settings()?;
    // Every input is checked before a port is bound or the data directory written.
    match settings.token_kind {
        strait_identity::TokenKind::Bootstrap => {
            strait_trust::preflight::workload_token_file(&settings.token_file)?
        }
        strait_identity::TokenKind::ServiceAccount => {
            strait_trust::preflight::opaque_token_file(&settings.token_file)?
        }
    }
    if let Some(bundle) = &settings.bundle_file {
        strait_trust::preflight::bundle_file(bundle, &settings.trust_domain)?;
    }
    let inbound = tokio::net::TcpListener::bind(settings.inbound)
        .await
        .with_context(|| format!("binding {}", settings.inbound))?;
    let admin = tokio::net::TcpListener::bind(settings.admin)
        .await
        .with_context(|| format!("binding {}", settings.admin))?;
    // Boxed: the sidecar is then compiled in its own crate, not instantiated here among every
    // other command's code (resident memory; see `run_boxed`).
    let shutdown = Box::pin(super::global::shutdown_signal());
    strait_sidecar::run::run_boxed(settings, inbound, admin, shutdown).await?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// VIP ranges whose TCP traffic goes to the sidecar's outbound port (comma-separated).
    #[arg(long, value_delimiter = ',')]
    vip_cidr: Vec<String>,
    /// App ports whose incoming TCP goes to the sidecar's mTLS inbound port (comma-separated).
    #[arg(long, value_delimiter = ',')]
    inbound_ports: Vec<u16>,
    /// The uid the sidecar runs as: its own traffic is never captured.
    #[arg(long)]
    proxy_uid: u32,
    /// Also exclude this gid.
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Where the sidecar accepts redirected outbound connections (`--outbound capture:PORT`).
    #[arg(long, default_value_t = strait_sidecar::capture::DEFAULT_OUTBOUND_PORT)]
    outbound_port: u16,
    /// The sidecar's mutual TLS inbound port.
    #[arg(long, default_value_t = strait_sidecar::capture::DEFAULT_INBOUND_PORT)]
    inbound_port: u16,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// The iptables program to run.
    #[arg(long, default_value = "iptables")]
    iptables: String,
}

/// `strait sidecar init`: installs the traffic-capture rules in this network namespace (the
/// pod's init container, with NET_ADMIN), or prints them with `--dry-run`.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    use strait_sidecar::capture::{self, CaptureSpec, Cidr};
    let mut spec = CaptureSpec::new(args.proxy_uid);
    spec.vip_cidrs = args
        .vip_cidr
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| c.parse::<Cidr>())
        .collect::<Result<_, _>>()?;
    spec.inbound_ports = args.inbound_ports;
    spec.proxy_gid = args.proxy_gid;
    spec.outbound_port = args.outbound_port;
    spec.inbound_port = args.inbound_port;
    let rules = capture::plan(&spec)?;
    for rule in &rules {
        println!("{}", rule.shell(&args.iptables));
        if args.dry_run {
            continue;
        }
        let out = std::process::Command::new(&args.iptables)
            .args(&rule.args)
            .output()
            .with_context(|| format!("running {}", args.iptables))?;
        if !out.status.success() && !rule.may_fail {
            anyhow::bail!(
                "`{}` failed ({}): {}",
                rule.shell(&args.iptables),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    if !args.dry_run {
        eprintln!(
            "traffic capture installed: {} VIP range(s) -> 127.0.0.1:{}, {} inbound port(s) -> {}; uid {} excluded",
            spec.vip_cidrs.len(),
            spec.outbound_port,
            spec.inbound_ports.len(),
            spec.inbound_port,
            spec.proxy_uid
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct DemoAppArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    service: String,
    #[arg(long)]
    zone: String,
    /// Instance name shown in answers (default SERVICE-ZONE).
    #[arg(long)]
    instance: Option<String>,
}

pub async fn demo_app(args: DemoAppArgs) -> anyhow::Result<()> {
    strait_observe::init_tracing("demo-app");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let instance = args
        .instance
        .unwrap_or_else(|| format!("{}-{}", args.service, args.zone));
    strait_sidecar::demo_app::run_demo_app(
        listener,
        args.service,
        args.zone,
        instance,
        super::global::shutdown_signal(),
    )
    .await;
    Ok(())
}
