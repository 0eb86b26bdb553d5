//! The gateway's core, without a control plane: given its credentials, a
//! `watch::Receiver<Arc<GatewayConfig>>` and two bound sockets, it serves peer gateways (QUIC)
//! and local sidecars (HTTP/2 CONNECT) and keeps its pool of peer connections in line with the
//! config. Tests drive it directly; [`crate::run`] wires it to the zone control plane.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Registry;
use strait_proto as pb;
use strait_proto::tunnel::ALPN_H2;
use strait_trust::tls::{CredentialStore, TrustStore, authorize_fn};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::GatewayMetrics;
use crate::peers::PeerPool;
use crate::quic::{self, QuicError};
use crate::state::ConfigView;
use crate::{inbound, local};

/// How long a stopping gateway lets peers see its connections close.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("building the sidecar-facing TLS config: {0}")]
    Tls(#[from] strait_trust::Error),
    #[error("registering the gateway metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("reading a listener's address: {0}")]
    Io(#[from] std::io::Error),
}

/// What the core needs besides its sockets.
#[derive(Debug)]
pub struct GatewayContext {
    /// This gateway's zone.
    pub zone: String,
    /// This replica's name (reported in `x-strait-served-by-instance` is the *endpoint's*
    /// instance; this one names the gateway in logs).
    pub instance: String,
    /// The `zone/ZONE/gateway` certificate, live (renewals swap it in place).
    pub creds: CredentialStore,
    /// The federation's trust bundle, live.
    pub trust: TrustStore,
    /// The config from the zone control plane (or a test).
    pub config: watch::Receiver<Arc<pb::GatewayConfig>>,
    /// Where the metrics are registered.
    pub registry: Registry,
}

/// State shared by the parts of a running gateway.
#[derive(Debug)]
pub(crate) struct Shared {
    pub zone: String,
    pub trust: TrustStore,
    pub metrics: GatewayMetrics,
    pub view: watch::Receiver<Arc<ConfigView>>,
    pub pool: PeerPool,
    /// Tunnels open per endpoint address (least-active choice).
    pub endpoint_load: Mutex<HashMap<String, usize>>,
    /// Connections from peer gateways, by connection id: (zone, connection).
    pub inbound: Mutex<HashMap<usize, (String, quinn::Connection)>>,
}

/// A gateway bound to its sockets, ready to [`serve`](Gateway::serve).
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    local: TcpListener,
    local_tls: Arc<rustls::ServerConfig>,
    config: watch::Receiver<Arc<pb::GatewayConfig>>,
    view_tx: watch::Sender<Arc<ConfigView>>,
    instance: String,
}

impl Gateway {
    /// Sets the gateway up on `quic` (UDP, for peer gateways) and `local` (TCP, for this
    /// zone's sidecars), both bound by the caller.
    pub fn bind(
        ctx: GatewayContext,
        quic_socket: std::net::UdpSocket,
        local: TcpListener,
    ) -> Result<Self, GatewayError> {
        let metrics = GatewayMetrics::new(&ctx.registry)?;
        let first = ConfigView::new(&ctx.zone, &ctx.config.borrow());
        metrics.config_version.set(version_gauge(first.version));
        let (view_tx, view_rx) = watch::channel(Arc::new(first));

        let peer_view = view_rx.clone();
        let server = quic::server_config(
            &ctx.creds,
            &ctx.trust,
            Arc::new(authorize_fn(move |peer: &strait_trust::PeerIdentity| {
                inbound::peer_allowed(&peer_view, peer)
            })),
        )?;
        let endpoint = quic::endpoint(quic_socket, server)?;
        let local_tls = strait_trust::server_config(
            &ctx.creds,
            &ctx.trust,
            Arc::new(authorize_fn(local::workload_only)),
            vec![ALPN_H2.to_vec()],
        )?;
        let trust_domain = ctx.trust.trust_domain();
        let pool = PeerPool::new(
            endpoint.clone(),
            trust_domain,
            ctx.creds.clone(),
            ctx.trust.clone(),
            metrics.clone(),
        );
        pool.reconcile(&view_rx.borrow());
        let shared = Arc::new(Shared {
            zone: ctx.zone,
            trust: ctx.trust,
            metrics,
            view: view_rx,
            pool,
            endpoint_load: Mutex::new(HashMap::new()),
            inbound: Mutex::new(HashMap::new()),
        });
        Ok(Self {
            shared,
            endpoint,
            local,
            local_tls: Arc::new(local_tls),
            config: ctx.config,
            view_tx,
            instance: ctx.instance,
        })
    }

    /// The QUIC address peers dial.
    pub fn quic_addr(&self) -> Result<SocketAddr, GatewayError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The TCP address sidecars dial.
    pub fn local_addr(&self) -> Result<SocketAddr, GatewayError> {
        Ok(self.local.local_addr()?)
    }

    /// Serves until `shutdown`; then closes every QUIC connection (peers see it at once) and
    /// cuts the sidecars' connections.
    pub async fn serve(self, shutdown: impl Future) {
        let Gateway {
            shared,
            endpoint,
            local,
            local_tls,
            mut config,
            view_tx,
            instance,
        } = self;
        tracing::info!(zone = %shared.zone, %instance, quic = ?endpoint.local_addr().ok(), local = ?local.local_addr().ok(), "gateway serving");
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(inbound::serve(endpoint.clone(), shared.clone(), stopped()));
        tasks.spawn(local::serve(local, local_tls, shared.clone(), stopped()));
        {
            let shared = shared.clone();
            let stop = stopped();
            tasks.spawn(async move {
                let mut stop = std::pin::pin!(stop);
                loop {
                    tokio::select! {
                        () = &mut stop => return,
                        changed = config.changed() => if changed.is_err() {
                            // The config source is gone: keep the last config (static
                            // stability) until shutdown.
                            stop.await;
                            return;
                        },
                    }
                    let view = Arc::new(ConfigView::new(&shared.zone, &config.borrow_and_update()));
                    tracing::info!(
                        version = view.version,
                        zones = view.zones.len(),
                        services = view.services.len(),
                        denied = view.deny.len(),
                        "gateway config applied"
                    );
                    shared
                        .metrics
                        .config_version
                        .set(version_gauge(view.version));
                    view_tx.send_replace(view.clone());
                    shared.pool.reconcile(&view);
                    inbound::enforce(&shared);
                }
            });
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        shared.pool.close_all();
        endpoint.close(quinn::VarInt::from_u32(0), b"gateway stopping");
        let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
        tasks.shutdown().await;
        tracing::info!(zone = %shared.zone, "gateway stopped");
    }
}

fn version_gauge(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}
