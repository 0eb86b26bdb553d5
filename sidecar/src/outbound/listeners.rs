//! The listeners of the outbound side and the loop that serves them: bound on the VIPs of the
//! running config (reconciled as it changes), or the one listener traffic capture redirects
//! to; each accepted connection is sniffed and handed to [`super::http`] or [`super::tcp`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::probe::probe_ejected;
use super::{DRAIN_TIMEOUT, OutboundContext, OutboundError, Shared, http, stopped, tcp};
use crate::limits::idle;
use crate::sniff::{Sniff, sniff_stream};

/// How often listeners that could not be bound are tried again.
const REBIND_INTERVAL: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Where the app's connections arrive.
pub(super) enum Listeners {
    /// One listener per `VIP:port` of the running config, bound and closed as it changes.
    Vips,
    /// One listener that traffic capture redirects the app's VIP connections to.
    Captured(TcpListener),
}

/// How an accept loop learns the VIP a connection was meant for.
#[derive(Debug, Clone, Copy)]
enum Accept {
    /// The listener's own address.
    Vip(SocketAddr),
    /// `SO_ORIGINAL_DST`; `local` is the capture listener's own address.
    Captured { local: Option<SocketAddr> },
}

/// Serves `listeners` until `shutdown` completes, following config changes. After shutdown,
/// open connections get [`DRAIN_TIMEOUT`] to finish.
pub(super) async fn run(
    ctx: OutboundContext,
    listeners: Listeners,
    shutdown: impl Future,
) -> Result<(), OutboundError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut config = ctx.config.clone();
    let shared = Shared::new(ctx, open_tx, stop_rx);
    let current = config.borrow_and_update().clone();
    shared.apply(&current);
    tokio::spawn(probe_ejected(Arc::downgrade(&shared)));
    let mut bound: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    let captured = match listeners {
        Listeners::Vips => None,
        Listeners::Captured(listener) => {
            shared.ctx.metrics.listeners.set(1);
            let local = listener.local_addr().ok();
            let accept = accept_loop(shared.clone(), listener, Accept::Captured { local });
            Some(tokio::spawn(accept))
        }
    };
    let vips = captured.is_none();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut rebind = tokio::time::interval(REBIND_INTERVAL);
    rebind.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if vips {
            reconcile(&shared, &mut bound).await;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            changed = config.changed() => {
                if changed.is_err() {
                    // The control half is gone; keep serving what runs until shutdown.
                    shutdown.as_mut().await;
                    break;
                }
                let current = config.borrow_and_update().clone();
                shared.apply(&current);
            }
            _ = rebind.tick(), if vips => {}
        }
    }
    for (_, task) in bound.drain() {
        task.abort();
    }
    if let Some(accept) = captured {
        accept.abort();
        let _ = accept.await;
    }
    shared.ctx.metrics.listeners.set(0);
    let _ = stop_tx.send(true);
    drop(shared);
    // Every open connection holds a sender: `recv` returns `None` once all are gone.
    if tokio::time::timeout(DRAIN_TIMEOUT, open_rx.recv())
        .await
        .is_err()
    {
        tracing::info!("closing outbound connections still open after the drain period");
    }
    Ok(())
}

/// Binds the listeners the config wants and closes the ones it no longer does.
async fn reconcile(shared: &Arc<Shared>, listeners: &mut HashMap<SocketAddr, JoinHandle<()>>) {
    let wanted = shared.table.addresses();
    listeners.retain(|addr, task| {
        let keep = wanted.contains(addr) && !task.is_finished();
        if !keep {
            task.abort();
            tracing::info!(%addr, "outbound listener closed");
        }
        keep
    });
    for addr in wanted {
        if listeners.contains_key(&addr) {
            continue;
        }
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "outbound listener bound");
                let task = tokio::spawn(accept_loop(shared.clone(), listener, Accept::Vip(addr)));
                listeners.insert(addr, task);
            }
            Err(err) => {
                tracing::warn!(%addr, %err, "cannot bind an outbound listener; will retry");
            }
        }
    }
    shared
        .ctx
        .metrics
        .listeners
        .set(i64::try_from(listeners.len()).unwrap_or(i64::MAX));
}

/// Accepts connections until aborted; each is served on a task of its own, apart from this
/// loop, so closing the listener leaves it running.
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, accept: Accept) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let (vip, span) = match accept {
                    Accept::Vip(vip) => (vip, tracing::debug_span!("outbound_conn", %peer, %vip)),
                    Accept::Captured { local } => {
                        let Some(vip) = captured_vip(&shared, &tcp, peer, local) else {
                            continue;
                        };
                        let span =
                            tracing::debug_span!("outbound_conn", %peer, %vip, captured = true);
                        (vip, span)
                    }
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(shared.clone(), tcp, vip).instrument(span));
            }
            Err(err) => {
                match accept {
                    Accept::Vip(addr) => tracing::warn!(%addr, %err, "outbound accept failed"),
                    Accept::Captured { .. } => tracing::warn!(%err, "capture accept failed"),
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The VIP a captured connection was meant for; `None` (the connection is closed) when it was
/// not redirected or is for no VIP of the running config.
fn captured_vip(
    shared: &Shared,
    tcp: &TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Option<SocketAddr> {
    let destination = match original_destination(tcp) {
        Ok(destination) if Some(destination) != local => destination,
        Ok(_) => {
            tracing::debug!(%peer, "connection to the capture port was not redirected; closing");
            return None;
        }
        Err(err) => {
            tracing::debug!(%peer, %err, "no original destination; closing");
            return None;
        }
    };
    if !shared.table.is_bound(&destination) {
        tracing::debug!(%peer, %destination, "captured connection for no known VIP; closing");
        return None;
    }
    Some(destination)
}

/// The address a connection was sent to before an iptables `REDIRECT` changed it
/// (`SO_ORIGINAL_DST`, IPv4).
pub fn original_destination(tcp: &TcpStream) -> std::io::Result<SocketAddr> {
    let addr = nix::sys::socket::getsockopt(tcp, nix::sys::socket::sockopt::OriginalDst)?;
    // Both fields are in network byte order.
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenConnection(IntGauge, #[allow(dead_code)] mpsc::Sender<()>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One connection from the app to `vip`: sniffed (unless the port is declared `TCP`), then
/// served as HTTP or proxied as TCP.
async fn connection(shared: Arc<Shared>, tcp: TcpStream, vip: SocketAddr) {
    let metrics = &shared.ctx.metrics;
    metrics.connections.inc();
    let _open = OpenConnection(metrics.connections.clone(), shared.open.clone());
    let Some(destination) = shared.table.destination(&vip) else {
        return;
    };
    let kind = if destination.tcp_only {
        Sniff::Tcp
    } else {
        match sniff_stream(&tcp).await {
            Some(kind) => kind,
            None => return,
        }
    };
    let mut stop = shared.stop.clone();
    let idle_timeout = shared
        .table
        .service(&destination.service)
        .map_or(idle::DEFAULT_IDLE_TIMEOUT, |s| {
            s.policy_for(destination.port).idle_timeout
        });
    if kind == Sniff::Tcp {
        tokio::select! {
            () = tcp::proxy(&shared, tcp, &destination) => {}
            () = stopped(&mut stop) => {
                // TCP has no graceful end: give it the drain period, then cut it.
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            }
        }
        return;
    }
    http::serve_connection(shared, destination, tcp, idle_timeout, stop).await;
}
