//! `strait gateway run`: the east-west gateway of one zone.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use strait_eastwest_gateway::GatewaySettings;
use strait_identity::IdentityArgs;

#[derive(Debug, Args)]
pub struct RunArgs {
    // --zone-cp, --zone, --token-file (`strait token workload --zone Z --service gateway`),
    // --trust-domain, --bundle-file, --data-dir.
    #[command(flatten)]
    identity: IdentityArgs,
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
}

impl RunArgs {
    fn settings(self) -> anyhow::Result<GatewaySettings> {
        let IdentityArgs {
            zone_cp,
            zone,
            token_file,
            trust_domain,
            bundle_file,
            data_dir,
        } = self.identity;
        let mut s = GatewaySettings::new(
            zone_cp,
            zone,
            token_file,
            self.quic,
            self.local,
            self.public_address,
            self.admin,
        );
        s.instance = self.instance;
        s.trust_domain = trust_domain;
        s.data_dir = data_dir;
        s.bundle_file = bundle_file;
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
