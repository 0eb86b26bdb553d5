//! The pool of QUIC connections to other zones' gateways, and opening a tunnel over it.
//!
//! One long-lived connection per peer gateway, kept by a background task per peer that dials
//! as soon as the peer appears in the config, watches the connection, and redials with
//! backoff after a loss. Tunnels never wait for a reconnect: a peer that failed recently is
//! skipped ([`crate::select::order_replicas`]); only a peer's very first dial is awaited,
//! bounded by [`FIRST_DIAL_WAIT`]. A stream that does not open within its budget
//! ([`crate::select::open_timeout`]) marks the peer down (its connection is closed, so the
//! background task redials) and the next replica is tried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream};
use strait_proto as pb;
use strait_proto::TunnelStatus;
use strait_proto::tunnel::{encode_frame, read_frame};
use strait_trust::tls::{CredentialStore, PeerRole, TrustStore};
use strait_trust::{AllowExactly, SpiffeId};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::metrics::GatewayMetrics;
use crate::quic;
use crate::select::{self, Attempt, ReplicaState};
use crate::state::{ConfigView, Refusal};

/// How long a tunnel waits for a peer's first dial.
pub const FIRST_DIAL_WAIT: Duration = Duration::from_secs(2);
/// A connection that lived this long counts as healthy: after its loss the peer is redialed
/// at once rather than with backoff.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(2);
/// How long one dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// QUIC application close codes.
const CLOSE_REMOVED: u32 = 1;
const CLOSE_UNRESPONSIVE: u32 = 2;
const CLOSE_UNTRUSTED: u32 = 3;

/// What a peer's connection is now.
#[derive(Debug, Clone)]
enum PeerConn {
    /// The first dial has not finished.
    Dialing,
    /// `confirmed` turns true once the handshake completed (a 0-RTT connection is usable
    /// before that; its RTT estimate is not).
    Up(Connection, Arc<AtomicBool>),
    /// Lost or never reached; the background task is redialing.
    Down,
}

#[derive(Debug)]
struct Peer {
    zone: String,
    address: String,
    state: watch::Sender<PeerConn>,
    /// Tunnels open on this peer (spreads load over replicas).
    active: AtomicUsize,
    /// Set when a tunnel found the connection unresponsive: its loss counts as a failure.
    suspect: AtomicBool,
    task: Mutex<Option<AbortHandle>>,
}

impl Peer {
    fn replica_state(&self) -> ReplicaState {
        match &*self.state.borrow() {
            PeerConn::Up(..) => ReplicaState::Up {
                active: self.active.load(Ordering::Relaxed),
            },
            PeerConn::Dialing => ReplicaState::Dialing,
            PeerConn::Down => ReplicaState::Down,
        }
    }

    /// Takes `conn` out of service if it is still the current one.
    fn mark_down(&self, conn: &Connection, why: &str) {
        let current = matches!(&*self.state.borrow(), PeerConn::Up(c, _) if c.stable_id() == conn.stable_id());
        self.suspect.store(true, Ordering::Relaxed);
        if current {
            tracing::warn!(peer = %self.address, zone = %self.zone, why, "peer gateway marked down");
            self.state.send_replace(PeerConn::Down);
        }
        conn.close(quinn::VarInt::from_u32(CLOSE_UNRESPONSIVE), why.as_bytes());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        if let PeerConn::Up(conn, _) = &*self.state.borrow() {
            conn.close(
                quinn::VarInt::from_u32(CLOSE_REMOVED),
                b"removed from the config",
            );
        }
    }
}

/// An open tunnel stream to a peer gateway, with its answer to the header.
#[derive(Debug)]
pub struct OpenTunnel {
    pub send: SendStream,
    pub recv: RecvStream,
    pub response: pb::TunnelResponse,
    /// Decrements the peer's active count when the tunnel ends.
    pub guard: TunnelGuard,
}

/// Counts a tunnel on its peer while alive.
#[derive(Debug)]
pub struct TunnelGuard(Arc<Peer>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PeerPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    endpoint: quinn::Endpoint,
    trust_domain: String,
    creds: CredentialStore,
    trust: TrustStore,
    metrics: GatewayMetrics,
    /// Peer address → peer.
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    /// Peer zone → client config (holds the zone's resumption tickets).
    clients: Mutex<HashMap<String, quinn::ClientConfig>>,
}

impl PeerPool {
    pub fn new(
        endpoint: quinn::Endpoint,
        trust_domain: String,
        creds: CredentialStore,
        trust: TrustStore,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                endpoint,
                trust_domain,
                creds,
                trust,
                metrics,
                peers: Mutex::new(HashMap::new()),
                clients: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Brings the set of peers in line with `view`: new gateways start dialing, removed (or
    /// denied) ones are closed.
    pub fn reconcile(&self, view: &ConfigView) {
        let mut wanted: HashMap<String, String> = HashMap::new();
        for (zone, gateways) in &view.zones {
            for g in gateways {
                if !g.address.is_empty() {
                    wanted.insert(g.address.clone(), zone.clone());
                }
            }
        }
        let mut peers = self.peers();
        peers.retain(|address, peer| {
            let keep = wanted.get(address) == Some(&peer.zone);
            if !keep {
                tracing::info!(peer = %address, zone = %peer.zone, "peer gateway removed from the config");
                self.inner
                    .metrics
                    .peer_connected
                    .with_label_values(&[&peer.zone, address])
                    .set(0);
            }
            keep
        });
        for (address, zone) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = peers.entry(address) {
                let peer = self.start_peer(&zone, slot.key());
                slot.insert(peer);
            }
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Peer>>> {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn start_peer(&self, zone: &str, address: &str) -> Arc<Peer> {
        self.inner.metrics.touch_zone(zone);
        let (state, _) = watch::channel(PeerConn::Dialing);
        let peer = Arc::new(Peer {
            zone: zone.to_owned(),
            address: address.to_owned(),
            state,
            active: AtomicUsize::new(0),
            suspect: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        // The task holds only a weak reference: dropping the peer from the map ends it.
        let task = tokio::spawn(maintain(self.clone(), Arc::downgrade(&peer)));
        *peer.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        peer
    }

    fn client_config(&self, zone: &str) -> Result<quinn::ClientConfig, String> {
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(zone) {
            return Ok(c.clone());
        }
        let id = SpiffeId::gateway(&self.inner.trust_domain, zone).map_err(|e| e.to_string())?;
        let config = quic::client_config(&self.inner.creds, &self.inner.trust, &id)
            .map_err(|e| e.to_string())?;
        clients.insert(zone.to_owned(), config.clone());
        Ok(config)
    }

    /// Dials `peer` once. A resumed session sends 0-RTT data at once (the connection is
    /// usable before the handshake completes); otherwise waits for the handshake.
    async fn dial(&self, peer: &Peer) -> Result<Dialed, String> {
        let config = self.client_config(&peer.zone)?;
        let addr = quic::resolve(&peer.address)
            .await
            .map_err(|e| e.to_string())?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(config, addr, &quic::server_name(&peer.zone, &peer.address))
            .map_err(|e| e.to_string())?;
        let metrics = &self.inner.metrics;
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let metrics = metrics.clone();
                let trust = self.inner.trust.clone();
                let expected = SpiffeId::gateway(&self.inner.trust_domain, &peer.zone)
                    .map_err(|e| e.to_string())?;
                let watched = conn.clone();
                let address = peer.address.clone();
                let confirmed = Arc::new(AtomicBool::new(false));
                let flag = confirmed.clone();
                // The handshake finishes in the background; check the outcome then.
                let handshake = tokio::spawn(async move {
                    let accepted = accepted.await;
                    if watched.close_reason().is_some() {
                        metrics
                            .handshakes
                            .with_label_values(&["client", "error"])
                            .inc();
                        return false;
                    }
                    flag.store(true, Ordering::Relaxed);
                    metrics
                        .handshakes
                        .with_label_values(&["client", "ok"])
                        .inc();
                    let label = if accepted { "accepted" } else { "rejected" };
                    metrics.zero_rtt.with_label_values(&[label]).inc();
                    tracing::debug!(peer = %address, zero_rtt = label, "resumed QUIC connection");
                    if let Err(reason) = check_server(&watched, &trust, &expected) {
                        tracing::warn!(peer = %address, %reason, "peer gateway refused after resumption");
                        watched.close(quinn::VarInt::from_u32(CLOSE_UNTRUSTED), reason.as_bytes());
                        return false;
                    }
                    true
                });
                Ok(Dialed {
                    conn,
                    confirmed,
                    handshake: Some(handshake),
                })
            }
            Err(connecting) => match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
                Ok(Ok(conn)) => {
                    metrics
                        .handshakes
                        .with_label_values(&["client", "ok"])
                        .inc();
                    Ok(Dialed {
                        conn,
                        confirmed: Arc::new(AtomicBool::new(true)),
                        handshake: None,
                    })
                }
                Ok(Err(err)) => {
                    metrics
                        .handshakes
                        .with_label_values(&["client", "error"])
                        .inc();
                    Err(err.to_string())
                }
                Err(_) => {
                    metrics
                        .handshakes
                        .with_label_values(&["client", "error"])
                        .inc();
                    Err(format!("no handshake within {DIAL_TIMEOUT:?}"))
                }
            },
        }
    }

    /// Opens a tunnel to one of `gateways` (all of zone `zone`) carrying `header`. A refusal
    /// by the remote gateway is returned as an [`OpenTunnel`] with its response; `Err` means
    /// no replica answered (`zone-unreachable`).
    pub async fn open(
        &self,
        zone: &str,
        gateways: &[pb::GatewayEndpoint],
        header: &pb::TunnelHeader,
    ) -> Result<OpenTunnel, Refusal> {
        let frame = encode_frame(header)
            .map_err(|e| Refusal::new(TunnelStatus::BadHeader, e.to_string()))?;
        let replicas: Vec<Arc<Peer>> = {
            let peers = self.peers();
            gateways
                .iter()
                .filter_map(|g| peers.get(&g.address).cloned())
                .collect()
        };
        let states: Vec<ReplicaState> = replicas.iter().map(|p| p.replica_state()).collect();
        let order = select::order_replicas(&states, &mut rand::rng());
        let mut failures: Vec<String> = Vec::new();
        for attempt in order {
            let (index, wait) = match attempt {
                Attempt::Use(i) => (i, false),
                Attempt::AwaitFirstDial(i) => (i, true),
            };
            let Some(peer) = replicas.get(index) else {
                continue;
            };
            let conn = if wait {
                first_dial(peer).await
            } else {
                match &*peer.state.borrow() {
                    PeerConn::Up(c, confirmed) => {
                        Some((c.clone(), confirmed.load(Ordering::Relaxed)))
                    }
                    _ => None,
                }
            };
            let Some((conn, confirmed)) = conn else {
                failures.push(format!("{}: not connected", peer.address));
                continue;
            };
            // One retry on the same connection when 0-RTT data was rejected: the connection
            // itself is fine, the stream just has to be opened again in 1-RTT.
            let mut result = self.open_on(&conn, confirmed, &frame).await;
            if matches!(&result, Err(OpenError::ZeroRttRejected)) {
                result = self.open_on(&conn, true, &frame).await;
            }
            match result {
                Ok((send, recv, response)) => {
                    peer.active.fetch_add(1, Ordering::Relaxed);
                    return Ok(OpenTunnel {
                        send,
                        recv,
                        response,
                        guard: TunnelGuard(peer.clone()),
                    });
                }
                Err(err) => {
                    let why = err.to_string();
                    peer.mark_down(&conn, &why);
                    failures.push(format!("{}: {why}", peer.address));
                }
            }
        }
        let reason = if replicas.is_empty() {
            format!("zone {zone} has no gateway known to this gateway")
        } else if failures.is_empty() {
            format!(
                "all {} gateways of zone {zone} are down (reconnecting)",
                replicas.len()
            )
        } else {
            format!(
                "no gateway of zone {zone} answered: {}",
                failures.join("; ")
            )
        };
        Err(Refusal::new(TunnelStatus::ZoneUnreachable, reason))
    }

    async fn open_on(
        &self,
        conn: &Connection,
        confirmed: bool,
        frame: &[u8],
    ) -> Result<(SendStream, RecvStream, pb::TunnelResponse), OpenError> {
        // Before the handshake completes quinn's RTT is its initial guess (333 ms), which
        // would stretch the budget past what fail-fast allows: use the base budget then.
        let rtt = if confirmed {
            conn.rtt()
        } else {
            Duration::ZERO
        };
        let budget = select::open_timeout(rtt);
        let started = Instant::now();
        let opened = tokio::time::timeout(budget, async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(OpenError::from_conn)?;
            send.write_all(frame).await.map_err(|e| match e {
                quinn::WriteError::ZeroRttRejected => OpenError::ZeroRttRejected,
                other => OpenError::Stream(other.to_string()),
            })?;
            let response: pb::TunnelResponse = read_frame(&mut recv).await.map_err(|e| {
                if let strait_proto::tunnel::FrameError::Io(io) = &e
                    && matches!(
                        io.get_ref()
                            .and_then(|r| r.downcast_ref::<quinn::ReadError>()),
                        Some(quinn::ReadError::ZeroRttRejected)
                    )
                {
                    return OpenError::ZeroRttRejected;
                }
                OpenError::Stream(e.to_string())
            })?;
            Ok((send, recv, response))
        })
        .await
        .map_err(|_| OpenError::Timeout(budget))??;
        self.inner
            .metrics
            .stream_open
            .observe(started.elapsed().as_secs_f64());
        Ok(opened)
    }

    /// Whether the pool holds a live connection to `address` (for tests and readiness).
    pub fn is_connected(&self, address: &str) -> bool {
        self.peers()
            .get(address)
            .is_some_and(|p| matches!(&*p.state.borrow(), PeerConn::Up(..)))
    }

    /// Closes every peer connection (shutdown).
    pub fn close_all(&self) {
        self.peers().clear();
    }
}

/// A dialed connection; `handshake` (0-RTT only) resolves to whether the handshake
/// completed and the server verified.
struct Dialed {
    conn: Connection,
    confirmed: Arc<AtomicBool>,
    handshake: Option<tokio::task::JoinHandle<bool>>,
}

/// Why a stream could not be opened on a connection.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection is gone: {0}")]
    Connection(String),
    #[error("the stream failed: {0}")]
    Stream(String),
    #[error("0-RTT data was rejected")]
    ZeroRttRejected,
}

impl OpenError {
    fn from_conn(err: quinn::ConnectionError) -> Self {
        OpenError::Connection(err.to_string())
    }
}

/// Waits (bounded) for a peer's first dial; the connection if it came up.
async fn first_dial(peer: &Peer) -> Option<(Connection, bool)> {
    let mut rx = peer.state.subscribe();
    let outcome = tokio::time::timeout(
        FIRST_DIAL_WAIT,
        rx.wait_for(|s| !matches!(s, PeerConn::Dialing)),
    )
    .await;
    match outcome {
        Ok(Ok(state)) => match &*state {
            PeerConn::Up(c, confirmed) => Some((c.clone(), confirmed.load(Ordering::Relaxed))),
            _ => None,
        },
        _ => None,
    }
}

/// A server's certificate, re-verified after a resumed handshake.
fn check_server(conn: &Connection, trust: &TrustStore, expected: &SpiffeId) -> Result<(), String> {
    let chain = quic::peer_chain(conn).ok_or("the peer presented no certificate")?;
    quic::reverify_peer(
        &chain,
        trust,
        PeerRole::Server,
        &AllowExactly(vec![expected.clone()]),
    )
    .map(|_| ())
}

/// Keeps one connection to a peer: dial, watch, redial with backoff. Ends when the peer is
/// dropped from the pool.
async fn maintain(pool: PeerPool, peer: std::sync::Weak<Peer>) {
    let mut failures: u32 = 0;
    loop {
        let Some(p) = peer.upgrade() else { return };
        let dialed = pool.dial(&p).await;
        let gauge = pool
            .inner
            .metrics
            .peer_connected
            .with_label_values(&[&p.zone, &p.address]);
        let dialed = match dialed {
            // After a failure the peer is suspect: a 0-RTT connection is only put in service
            // once its handshake completed, so tunnels do not wait on a peer that is still dead.
            Ok(Dialed {
                conn,
                confirmed,
                handshake: Some(handshake),
            }) if failures > 0 => match handshake.await {
                Ok(true) => Ok((conn, confirmed)),
                _ => Err(conn
                    .close_reason()
                    .map_or_else(|| "handshake failed".to_owned(), |r| r.to_string())),
            },
            Ok(d) => Ok((d.conn, d.confirmed)),
            Err(err) => Err(err),
        };
        match dialed {
            Ok((conn, confirmed)) => {
                let connected_at = Instant::now();
                tracing::info!(peer = %p.address, zone = %p.zone, rtt = ?conn.rtt(), "connected to peer gateway");
                p.suspect.store(false, Ordering::Relaxed);
                p.state.send_replace(PeerConn::Up(conn.clone(), confirmed));
                gauge.set(1);
                let address = p.address.clone();
                let zone = p.zone.clone();
                // Do not keep the peer alive while waiting.
                drop(p);
                let reason = conn.closed().await;
                gauge.set(0);
                tracing::warn!(peer = %address, %zone, %reason, "connection to peer gateway lost");
                let Some(p) = peer.upgrade() else { return };
                let current = matches!(&*p.state.borrow(), PeerConn::Up(c, _) if c.stable_id() == conn.stable_id());
                if current {
                    p.state.send_replace(PeerConn::Down);
                }
                // A connection that timed out went quiet: the peer is likely dead, so the
                // next dial's 0-RTT connection waits for its handshake before tunnels use it
                // (they would otherwise wait for a peer that cannot answer). A peer that closed
                // (a restart, a deny) is redialed with 0-RTT in service at once.
                let suspect = p.suspect.swap(false, Ordering::Relaxed)
                    || matches!(reason, quinn::ConnectionError::TimedOut);
                drop(p);
                // A connection that lived long was healthy: redial at once. One that died
                // young (refused after a resumed handshake, a flapping peer) backs off.
                if connected_at.elapsed() >= HEALTHY_CONNECTION && !suspect {
                    failures = 0;
                } else {
                    backoff(&mut failures).await;
                }
            }
            Err(err) => {
                gauge.set(0);
                if failures == 0 {
                    tracing::warn!(peer = %p.address, zone = %p.zone, %err, "cannot reach peer gateway");
                } else {
                    tracing::debug!(peer = %p.address, zone = %p.zone, %err, "cannot reach peer gateway");
                }
                p.state.send_replace(PeerConn::Down);
                drop(p);
                backoff(&mut failures).await;
            }
        }
    }
}

/// Sleeps the reconnect backoff for the `failures`-th failure (with jitter) and counts it.
async fn backoff(failures: &mut u32) {
    let pause = select::reconnect_backoff(*failures);
    let jitter = pause.mul_f64(rand::random::<f64>() * 0.25);
    *failures = failures.saturating_add(1);
    tokio::time::sleep(pause + jitter).await;
}
