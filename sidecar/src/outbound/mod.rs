//! The outbound side: listeners on service VIPs, where the local app's calls enter the mesh.
//!
//! The pure modules decide ([`crate::route`], [`crate::fault`], [`crate::lb`],
//! [`crate::retry`], [`crate::outlier`], and here `attempt`, the tries of a request); the
//! rest moves bytes. By concern:
//!
//! | module | owns |
//! |---|---|
//! | `listeners` | the serve loop, VIP listeners (reconciled) or the capture listener, accept, sniff, dispatch |
//! | `services` | the per-service table: compiled policies, balancers, budgets, limits; config updates |
//! | `http` | HTTP connections and requests: route, fault, admit, prepare, the tries' IO |
//! | `attempt` | the sans-IO attempt machine: picks, overflows, outcomes and `now` in; try, back off or respond out |
//! | `tcp` | TCP connections: connect (with retries) and copy bytes |
//! | `probe` | the prober of ejected targets |
//! | `metrics` | the outbound metrics and per-service request series |
//!
//! - **Listeners**: one per `VIP:port` of every service in the running config that has a
//!   VIP, kept in a manager keyed by that address. A config change binds new addresses and
//!   closes removed ones; connections already accepted are not touched. An address that
//!   cannot be bound is logged and tried again every few seconds.
//! - **Captured** (`--outbound capture:PORT`, [`serve_captured`]): instead of listeners on the
//!   VIPs, one listener on `127.0.0.1:PORT` that traffic capture redirects the app's VIP
//!   connections to; the VIP is read back with `SO_ORIGINAL_DST` and the connection handled
//!   exactly as if it had arrived on that VIP's listener.
//! - **Zone-pinned VIPs**: each VIP of a service's `zone_vips` gets listeners on the service's
//!   ports too, and what arrives there goes to that zone only — this zone's endpoints, or the
//!   remote zone through the gateways ([`crate::lb::Balancer::pick_within`]); retries stay in the zone.
//!   When the zone has nothing healthy the app gets `503` `no-healthy-upstream` (HTTP) or a
//!   closed connection (TCP), never another zone.
//! - **Sniffing**: the first bytes of a connection decide ([`crate::sniff`]): an HTTP/1.x request
//!   line or the HTTP/2 preface → HTTP; anything else (or nothing within
//!   [`SNIFF_TIMEOUT`], for protocols where the server speaks first) → TCP. A port declared
//!   `TCP` skips sniffing.
//! - **HTTP**, per request: the service's `TrafficRoute` picks a subset, `FaultInjection`
//!   may delay or answer it, `CircuitBreaker.maxRequests` bounds the requests in flight, then
//!   each try goes to a target the [`crate::lb::Balancer`] picks (avoiding the targets already tried),
//!   over mutual TLS to the destination sidecar's inbound listener (the endpoint's SPIFFE ID
//!   is required of the server; ALPN `h2`), on one pooled HTTP/2 connection per endpoint.
//!   A target without an open pooled connection needs one: the request waits for it (a place
//!   in `maxPendingRequests`) and the connection takes a place in `maxConnections` for its
//!   life ([`crate::limits::breaker`]). A target over either limit is passed over for another
//!   one; when none is left, `503` `overflow` at once.
//!   Failed tries are retried as [`crate::retry::RetryState`] decides. Request bodies up to
//!   [`MAX_REPLAY_BODY`] are buffered so a retry can replay them; a longer or unsized body
//!   streams, and its request is retried only when it never left (connect failures).
//!   `x-strait-peer-identity` from the app is dropped (only the destination's sidecar sets
//!   it); `x-strait-zone` names this zone.
//! - **Remote zones** ([`crate::lb::Target::Remote`]): through this zone's east-west gateways, with this
//!   sidecar's own mTLS end to end to the destination sidecar ([`crate::pool`]); HTTP on one
//!   pooled HTTP/2 connection per (zone, service, port) inside a tunnel. A gateway's refusal
//!   (`zone-unreachable`, `no-healthy-upstream`, ...) counts as a connect failure, so the retry
//!   moves to the next locality; when nothing answers, the app gets `503` with the refusal's
//!   code in `x-strait-error` and its reason in the body.
//! - **TCP**: a target is picked the same way (connect failures retried on another target),
//!   mutual TLS with ALPN `strait-tcp` (through a tunnel of its own for another zone), then
//!   bytes are copied both ways. Each holds a place in `maxConnections` for its life, and one
//!   in `maxPendingRequests` while it connects; over either, it is closed at once.
//! - **Idle timeout** (`Timeout.idle`, [`crate::limits::idle`], default one hour): a
//!   downstream connection from the app (HTTP or TCP) that read nothing for that long is
//!   closed: TCP at once, both ways; HTTP gracefully (a response under way finishes). The
//!   timeout of the connection's service when it was accepted applies. The pooled upstream
//!   connections are not idled out (the destination's listener or a ping failure closes them;
//!   the pool reopens closed ones).
//!
//! Sidecar-answered errors carry `x-strait-error`: `no-healthy-upstream` (503, nothing can
//! take the request, or no try could connect), `upstream-reset` (502),
//! `upstream-timeout` (504), `request-timeout` (504), `fault-injected`, `overflow` (503,
//! `maxRequests`, `maxConnections`, `maxPendingRequests`), `unknown-service` (503).
//!
//! Timeouts (`Timeout` policy, mesh defaults when absent): connect
//! [`DEFAULT_CONNECT_TIMEOUT`] per connection (TCP and TLS), request
//! [`DEFAULT_REQUEST_TIMEOUT`] from the start of a request to the end of its response, retries
//! included (to the headers only for a streaming response, whose body `stream` bounds when
//! set; see [`crate::deadline`]); `responseHeaders` to the response headers. A port with a
//! policy of its own (`port_policies`) uses it instead of the service's.
//!
//! Metrics: `strait_sidecar_outbound_requests_total{service, zone, code}` (`code` is the
//! status class, `zone` the serving zone: `local` for this zone's endpoints, the zone's name
//! for another zone, `none` when the sidecar answered itself), `strait_sidecar_outbound_request_duration_seconds{service}`,
//! `strait_sidecar_outbound_retries_total{service}`,
//! `strait_sidecar_outbound_ejections_total{service}`, `strait_sidecar_outbound_connections`
//! (open downstream connections), `strait_sidecar_outbound_listeners` (bound),
//! `strait_sidecar_outbound_tcp_connections_total{service, result}`,
//! `strait_sidecar_outbound_overflows_total{service, limit}`.

mod attempt;
mod grpc_calls;
mod http;
mod listeners;
mod metrics;
mod probe;
mod services;
mod tcp;
mod upgrade;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus::Registry;
use strait_proto as pb;
use strait_trust::tls::{CredentialStore, TrustStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::discovery::Control;
use crate::pool::Pool;

pub use self::listeners::original_destination;
pub use self::metrics::OutboundMetrics;
pub use crate::headers::ZONE_HEADER;
// The sniffer lives in `crate::sniff`; these paths stay for its users outside this crate
// (fuzz/, docs/fuzzing.md).
pub use crate::sniff::{SNIFF_TIMEOUT, Sniff, sniff};

/// Connect deadline (TCP and TLS) when no `Timeout` policy sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Request deadline (to the response headers, retries included) when no policy sets one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Request bodies up to this size are buffered so that a retry can send them again.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// How long open connections may finish after shutdown before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the outbound side could not start.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("registering the outbound metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Serves outbound listeners on the VIPs of the running config until `shutdown` completes,
/// following config changes. After shutdown, open connections get two seconds to finish.
pub async fn serve(ctx: OutboundContext, shutdown: impl Future) -> Result<(), OutboundError> {
    listeners::run(ctx, listeners::Listeners::Vips, shutdown).await
}

/// Serves the connections traffic capture redirected to `listener` (`--outbound capture:PORT`,
/// see [`crate::capture`]) until `shutdown` completes, following config changes: each is
/// handled as if it had arrived on a listener bound on the VIP it was meant for, read back with
/// `SO_ORIGINAL_DST`. A connection for an address that is no service's VIP, or one that was not
/// redirected at all, is closed. After shutdown, open connections get the drain period.
pub async fn serve_captured(
    ctx: OutboundContext,
    listener: TcpListener,
    shutdown: impl Future,
) -> Result<(), OutboundError> {
    listeners::run(ctx, listeners::Listeners::Captured(listener), shutdown).await
}

/// What the outbound side needs from the control half.
#[derive(Debug, Clone)]
pub struct OutboundContext {
    pub creds: CredentialStore,
    pub trust: TrustStore,
    pub config: watch::Receiver<Arc<pb::SidecarConfig>>,
    pub metrics: OutboundMetrics,
}

impl OutboundContext {
    /// Registers the outbound metrics with `registry`.
    pub fn new(
        creds: CredentialStore,
        trust: TrustStore,
        config: watch::Receiver<Arc<pb::SidecarConfig>>,
        registry: &Registry,
    ) -> Result<Self, OutboundError> {
        Ok(Self {
            creds,
            trust,
            config,
            metrics: OutboundMetrics::new(registry)?,
        })
    }

    /// From a running [`Control`]; the metrics go to its registry.
    pub fn from_control(control: &Control) -> Result<Self, OutboundError> {
        Self::new(
            control.creds().clone(),
            control.trust().clone(),
            control.config.clone(),
            &control.registry,
        )
    }
}

/// State shared by the listeners and their connections.
struct Shared {
    ctx: OutboundContext,
    table: services::Table,
    pool: Pool,
    /// Held by every open connection; the drain waits until all are gone.
    open: mpsc::Sender<()>,
    stop: watch::Receiver<bool>,
}

impl Shared {
    /// The state of a new outbound side; `open` is held by every connection (the drain waits
    /// for all), `stop` tells connections to finish.
    fn new(ctx: OutboundContext, open: mpsc::Sender<()>, stop: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Shared {
            pool: Pool::new(ctx.creds.clone(), ctx.trust.clone()),
            ctx,
            table: services::Table::default(),
            open,
            stop,
        })
    }

    /// Applies a config version: services (balancers keep their state), bindings, pool.
    fn apply(&self, config: &pb::SidecarConfig) {
        let upstreams = self.table.apply(config, Instant::now());
        self.pool.retain(&upstreams.addresses, &upstreams.zones);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves once the stop flag is raised (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
