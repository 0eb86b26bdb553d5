//! `strait sidecar run` and `strait demo-app`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use strait_sidecar::config::{OutboundMode, SidecarSettings};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The zone control plane's gRPC address.
    #[arg(long)]
    zone_cp: String,
    /// The zone this sidecar runs in.
    #[arg(long)]
    zone: String,
    /// Bootstrap token (`strait token workload`).
    #[arg(long)]
    token_file: PathBuf,
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
    /// mTLS listener other sidecars and gateways reach this instance on.
    #[arg(long)]
    inbound: SocketAddr,
    /// HTTP address for /metrics, /ready, /config.
    #[arg(long)]
    admin: SocketAddr,
    /// Endpoint labels, `k=v,k=v`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// `vips`: listen on the zone's service VIPs; `none`: inbound only.
    #[arg(long, default_value = "vips")]
    outbound: String,
    #[arg(long)]
    trust_domain: Option<String>,
    /// Trust bundle to verify the zone with (recommended; otherwise trust on first use).
    #[arg(long)]
    bundle_file: Option<PathBuf>,
    /// Where to keep the certificate across restarts.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl RunArgs {
    fn settings(self) -> anyhow::Result<SidecarSettings> {
        let mut s = SidecarSettings::new(
            self.zone_cp,
            self.zone,
            self.token_file,
            self.namespace,
            self.service,
            self.inbound,
            self.admin,
        );
        s.instance = self.instance;
        s.app = self.app;
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
        if let Some(td) = self.trust_domain {
            s.trust_domain = td;
        }
        s.bundle_file = self.bundle_file;
        s.data_dir = self.data_dir;
        Ok(s.resolve()?)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    strait_observe::init_tracing("sidecar");
    let settings = args.settings()?;
    let inbound = tokio::net::TcpListener::bind(settings.inbound)
        .await
        .with_context(|| format!("binding {}", settings.inbound))?;
    let admin = tokio::net::TcpListener::bind(settings.admin)
        .await
        .with_context(|| format!("binding {}", settings.admin))?;
    strait_sidecar::run::run(settings, inbound, admin, super::global::shutdown_signal()).await?;
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
