//! `strait gateway run`: the east-west gateway of one zone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use strait_eastwest_gateway::GatewaySettings;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The zone control plane's gRPC address.
    #[arg(long)]
    zone_cp: String,
    /// The zone this gateway serves.
    #[arg(long)]
    zone: String,
    /// Bootstrap token (`strait token workload --zone Z --service gateway`).
    #[arg(long)]
    token_file: PathBuf,
    /// UDP address of the QUIC listener for other zones' gateways.
    #[arg(long)]
    quic: SocketAddr,
    /// TCP address of the HTTP/2 CONNECT listener for this zone's sidecars.
    #[arg(long)]
    local: SocketAddr,
    /// Where other zones reach the QUIC listener (host:port).
    #[arg(long)]
    public_address: String,
    /// HTTP address for /metrics, /ready, /config.
    #[arg(long)]
    admin: SocketAddr,
    /// Replica name (default gateway-ZONE-<random>).
    #[arg(long)]
    instance: Option<String>,
    /// Where to keep the certificate across restarts.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Trust bundle to verify the zone with (recommended; otherwise trust on first use).
    #[arg(long)]
    bundle_file: Option<PathBuf>,
    #[arg(long)]
    trust_domain: Option<String>,
}

impl RunArgs {
    fn settings(self) -> anyhow::Result<GatewaySettings> {
        let mut s = GatewaySettings::new(
            self.zone_cp,
            self.zone,
            self.token_file,
            self.quic,
            self.local,
            self.public_address,
            self.admin,
        );
        s.instance = self.instance;
        s.data_dir = self.data_dir;
        s.bundle_file = self.bundle_file;
        if let Some(td) = self.trust_domain {
            s.trust_domain = td;
        }
        Ok(s.resolve()?)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    strait_observe::init_tracing("gateway");
    let settings = args.settings()?;
    // Every input is checked before a port is bound or the data directory written.
    strait_trust::preflight::workload_token_file(&settings.token_file)?;
    if let Some(bundle) = &settings.bundle_file {
        strait_trust::preflight::bundle_file(bundle, &settings.trust_domain)?;
    }
    let quic = std::net::UdpSocket::bind(settings.quic)
        .with_context(|| format!("binding {} (UDP)", settings.quic))?;
    let local = tokio::net::TcpListener::bind(settings.local)
        .await
        .with_context(|| format!("binding {}", settings.local))?;
    let admin = tokio::net::TcpListener::bind(settings.admin)
        .await
        .with_context(|| format!("binding {}", settings.admin))?;
    strait_eastwest_gateway::run(
        settings,
        quic,
        local,
        admin,
        super::global::shutdown_signal(),
    )
    .await?;
    Ok(())
}
