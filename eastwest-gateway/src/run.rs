//! `strait gateway run`: the certificate (bootstrap and renewal, shared with the sidecar),
//! the config stream from the zone, the core on the listeners passed in, and the admin
//! endpoint, until shutdown.
//!
//! `/ready` turns 200 once the gateway has a certificate, a first config and its listeners
//! bound; it stays ready when the zone becomes unreachable later (the last config is kept).

use std::future::Future;
use std::sync::Arc;

use strait_identity::{Identity, IdentityError};
use strait_observe::AdminState;
use strait_proto as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config_client::{self, ConfigSource};
use crate::gateway::{Gateway, GatewayContext, GatewayError};
use crate::settings::{GatewaySettings, SettingsError};

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("gateway certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// Runs a gateway: `quic` (UDP) serves other zones' gateways, `local` (TCP) this zone's
/// sidecars, `admin` the admin endpoint. Returns after `shutdown` completed and everything
/// stopped.
pub async fn run(
    settings: GatewaySettings,
    quic: std::net::UdpSocket,
    local: TcpListener,
    admin: TcpListener,
    shutdown: impl Future,
) -> Result<(), RunError> {
    let settings = settings.resolve()?;
    let registry = prometheus::Registry::new();
    let state = AdminState::new(registry.clone());
    if let Err(err) = state.config.set_from(&settings) {
        tracing::warn!(%err, "cannot render the settings for /config");
    }
    state
        .readiness
        .set_not_ready("getting the gateway certificate");
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(strait_observe::serve(admin, state.clone(), stopped()));

    let identity = Identity::bootstrap(&settings.identity_settings()?, &registry).await?;
    tasks.spawn(identity.clone().run_renewal(stopped()));
    state
        .readiness
        .set_not_ready("waiting for the first config from the zone");

    let (config_tx, config_rx) = watch::channel(Arc::new(pb::GatewayConfig {
        zone: settings.zone.clone(),
        trust_domain: settings.trust_domain.clone(),
        ..Default::default()
    }));
    let gateway = Gateway::bind(
        GatewayContext {
            zone: settings.zone.clone(),
            instance: settings.instance_name(),
            creds: identity.creds().clone(),
            trust: identity.trust().clone(),
            config: config_rx.clone(),
            registry,
        },
        quic,
        local,
    )?;
    let source = ConfigSource {
        zone_cp: settings.zone_cp.clone(),
        tls: identity.zone_client_config().map_err(RunError::Identity)?,
        register: pb::GatewayRegister {
            instance: settings.instance_name(),
            public_address: settings.public_address.clone(),
            local_address: settings.local.to_string(),
        },
        zone: settings.zone.clone(),
    };
    tasks.spawn(config_client::run(source, config_tx, stopped()));
    {
        let readiness = state.readiness.clone();
        let mut first = config_rx;
        let stop = stopped();
        tasks.spawn(async move {
            tokio::select! {
                () = stop => {}
                changed = first.changed() => if changed.is_ok() {
                    // Listeners are bound (Gateway::bind) and the certificate is there.
                    readiness.set_ready();
                    tracing::info!("gateway ready");
                },
            }
        });
    }
    gateway.serve(shutdown).await;
    state.readiness.set_not_ready("stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(strait_proto::transport::DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
    Ok(())
}
