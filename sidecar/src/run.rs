//! `strait sidecar run`: the whole sidecar on listeners passed in — the control half
//! (identity, discovery, app probe), the inbound listener, the admin endpoint and, with
//! `outbound: vips` (or `capture:PORT`), the outbound listeners — until shutdown.
//!
//! On shutdown every part stops accepting, open connections get a bounded drain period, and
//! the control half's background tasks are stopped.

use std::future::Future;
use std::pin::Pin;

use strait_proto::transport::DRAIN_TIMEOUT;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminSources};
use crate::config::{OutboundMode, SidecarSettings};
use crate::discovery::{self, ControlError, ControlOptions};
use crate::inbound::{self, InboundContext, InboundError};
use crate::outbound::{self, OutboundContext, OutboundError};

/// Why the sidecar could not run.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar control: {0}")]
    Control(#[from] ControlError),
    #[error(transparent)]
    Inbound(#[from] InboundError),
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    #[error("binding the capture listener {addr}: {source}")]
    CaptureListener {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("a sidecar task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A shutdown signal of any type, boxed (see [`run_boxed`]).
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// [`run`] behind one concrete (non-generic) function, for the `strait` binary.
///
/// Generic functions, and every `async fn` body (a closure type), are compiled in the crate
/// that instantiates them. Awaited from the binary, [`run`] and everything under it (each
/// task, hyper and h2 instantiated for the sidecar's types) were compiled into the `strait`
/// crate, mixed with the code of every other command: a sidecar touched pages all over that
/// crate's 10 MB of code, and the kernel maps up to 64 KiB of the executable around each page
/// touched, all of it counted in the sidecar's resident memory. Boxed here, the future's
/// `poll` is instantiated by this function, so the sidecar's code is compiled in this crate
/// and laid out together. `inline(never)` keeps it that way.
#[inline(never)]
pub fn run_boxed(
    settings: SidecarSettings,
    inbound: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> Pin<Box<dyn Future<Output = Result<(), SidecarError>> + Send>> {
    Box::pin(run(settings, inbound, admin, shutdown))
}

/// Runs the sidecar: `inbound` is its mutual TLS listener (registered with the zone as
/// `settings.inbound`), `admin` its admin endpoint. Returns once `shutdown` completed and
/// everything drained (each part at most its drain period, then what is left is cut).
pub async fn run(
    settings: SidecarSettings,
    inbound: TcpListener,
    admin: TcpListener,
    shutdown: impl Future,
) -> Result<(), SidecarError> {
    // Bound before anything starts, so a port in use fails the start cleanly.
    let capture = match settings.outbound {
        OutboundMode::Capture(port) => {
            // Loopback only: iptables `REDIRECT` in `OUTPUT` sends to 127.0.0.1.
            let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SidecarError::CaptureListener { addr, source })?;
            Some(listener)
        }
        OutboundMode::Vips | OutboundMode::None => None,
    };
    let control = discovery::start_control_with(settings, ControlOptions::default()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let inbound_ctx = InboundContext::from_control(&control)?;
    let app = control.settings.app;
    let mut tasks = tokio::task::JoinSet::new();
    {
        let stop = stopping();
        tasks.spawn(async move {
            inbound::serve(inbound, inbound_ctx, app, stop)
                .await
                .map_err(SidecarError::from)
        });
    }
    {
        let sources = AdminSources::from_control(&control);
        let stop = stopping();
        tasks.spawn(async move {
            admin::serve(admin, sources, stop).await;
            Ok(())
        });
    }
    if control.settings.outbound == OutboundMode::Vips {
        let ctx = OutboundContext::from_control(&control)?;
        let stop = stopping();
        tasks.spawn(async move { outbound::serve(ctx, stop).await.map_err(SidecarError::from) });
    }
    if let Some(listener) = capture {
        let ctx = OutboundContext::from_control(&control)?;
        let stop = stopping();
        tasks.spawn(async move {
            outbound::serve_captured(ctx, listener, stop)
                .await
                .map_err(SidecarError::from)
        });
    }
    tracing::info!(outbound = ?control.settings.outbound, "sidecar running");

    let mut shutdown = std::pin::pin!(shutdown);
    // A part that ends on its own before shutdown is a failure of the whole sidecar.
    let early = tokio::select! {
        _ = &mut shutdown => None,
        Some(done) = tasks.join_next() => Some(done),
    };
    let _ = stop_tx.send(true);
    let mut result = match early {
        Some(Ok(Err(err))) => Err(err),
        Some(Err(err)) => Err(SidecarError::Task(err)),
        Some(Ok(Ok(()))) | None => Ok(()),
    };
    // Each part drains on its own within its period; this bounds the whole.
    let drained = strait_proto::transport::serve_with_drain(
        async {
            while let Some(done) = tasks.join_next().await {
                if let Ok(Err(err)) = done {
                    tracing::warn!(%err, "sidecar part failed while stopping");
                }
            }
            Ok::<(), SidecarError>(())
        },
        async {},
        DRAIN_TIMEOUT.saturating_mul(2),
    )
    .await;
    if let Err(err) = drained
        && result.is_ok()
    {
        result = Err(err);
    }
    tasks.shutdown().await;
    control.stop().await;
    tracing::info!("sidecar stopped");
    result
}
