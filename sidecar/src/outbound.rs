//! The outbound side: listeners on service VIPs, where the local app's calls enter the mesh.
//!
//! The pure modules decide ([`crate::route`], [`crate::fault`], [`crate::lb`],
//! [`crate::retry`], [`crate::outlier`]); this module moves bytes.
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
//!   remote zone through the gateways ([`Balancer::pick_within`]); retries stay in the zone.
//!   When the zone has nothing healthy the app gets `503` `no-healthy-upstream` (HTTP) or a
//!   closed connection (TCP), never another zone.
//! - **Sniffing**: the first bytes of a connection decide ([`sniff`]): an HTTP/1.x request
//!   line or the HTTP/2 preface → HTTP; anything else (or nothing within
//!   [`SNIFF_TIMEOUT`], for protocols where the server speaks first) → TCP. A port declared
//!   `TCP` skips sniffing.
//! - **HTTP**, per request: the service's `TrafficRoute` picks a subset, `FaultInjection`
//!   may delay or answer it, `CircuitBreaker.maxRequests` bounds the requests in flight, then
//!   each try goes to a target the [`Balancer`] picks (avoiding the targets already tried),
//!   over mutual TLS to the destination sidecar's inbound listener (the endpoint's SPIFFE ID
//!   is required of the server; ALPN `h2`), on one pooled HTTP/2 connection per endpoint.
//!   A target without an open pooled connection needs one: the request waits for it (a place
//!   in `maxPendingRequests`) and the connection takes a place in `maxConnections` for its
//!   life ([`crate::limits::breaker`]). A target over either limit is passed over for another
//!   one; when none is left, `503` `overflow` at once.
//!   Failed tries are retried as [`RetryState`] decides. Request bodies up to
//!   [`MAX_REPLAY_BODY`] are buffered so a retry can replay them; a longer or unsized body
//!   streams, and its request is retried only when it never left (connect failures).
//!   `x-strait-peer-identity` from the app is dropped (only the destination's sidecar sets
//!   it); `x-strait-zone` names this zone.
//! - **Remote zones** ([`Target::Remote`]): through this zone's east-west gateways, with this
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

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use strait_proto as pb;
use strait_trust::SpiffeId;
use strait_trust::tls::{CredentialStore, TrustStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::deadline::{self, DeadlineBody};
use crate::discovery::Control;
use crate::fault::FaultInjector;
use crate::h2client::{Outgoing, SendError, Sender};
use crate::headers::{self as names, strip_hop_by_hop};
use crate::inbound::ALPN_TCP;
use crate::lb::{Balancer, BalancerConfig, Target};
use crate::limits::breaker::{self, Counter, Overflow, Permit};
use crate::limits::idle::{self, PipeEnd};
use crate::outlier::Outcome;
use crate::pool::{Body, ConnPermit, ConnectError, Lookup, Pool, Remote};
use crate::retry::{Budget, RetryConfig, RetryDecision, RetryState};
use crate::route::{RequestView, RouteTable, Subset};

/// Connect deadline (TCP and TLS) when no `Timeout` policy sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Request deadline (to the response headers, retries included) when no policy sets one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Request bodies up to this size are buffered so that a retry can send them again.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;
/// How long a connection may stay silent before it is taken as TCP.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);
/// The header naming the caller's zone on the way out.
pub const ZONE_HEADER: &str = "x-strait-zone";

/// How often endpoints ejected for connect failures are probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe (TCP + TLS + HTTP/2 handshake) may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often listeners that could not be bound are tried again.
const REBIND_INTERVAL: Duration = Duration::from_secs(2);
/// How long open connections may finish after shutdown before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Why the outbound side could not start.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("registering the outbound metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

// === sniffing ===

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    Http,
    Tcp,
    /// Too few bytes to tell yet.
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Classifies a connection by its first bytes: an HTTP/1.x method and a space, or the
/// HTTP/2 connection preface, is HTTP; a prefix of one of them needs more bytes; anything
/// else is TCP.
pub fn sniff(bytes: &[u8]) -> Sniff {
    if bytes.is_empty() {
        return Sniff::NeedMore;
    }
    let mut need_more = false;
    for pattern in METHODS.iter().copied().chain([H2_PREFACE]) {
        let n = bytes.len().min(pattern.len());
        if bytes[..n] == pattern[..n] {
            if n == pattern.len() {
                return Sniff::Http;
            }
            need_more = true;
        }
    }
    if need_more {
        Sniff::NeedMore
    } else {
        Sniff::Tcp
    }
}

// === metrics ===

/// The outbound side's metrics.
#[derive(Debug, Clone)]
pub struct OutboundMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub retries: IntCounterVec,
    pub ejections: IntCounterVec,
    pub connections: IntGauge,
    pub listeners: IntGauge,
    pub tcp: IntCounterVec,
    pub overflows: IntCounterVec,
}

impl OutboundMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_outbound_requests_total",
                "HTTP requests from the local app, by service, serving zone and status class.",
            ),
            &["service", "zone", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "strait_sidecar_outbound_request_duration_seconds",
                "Time from an outbound request to its response headers, retries included.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["service"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_outbound_retries_total",
                "Retries of outbound requests and TCP connects.",
            ),
            &["service"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_outbound_ejections_total",
                "Targets ejected by outlier detection.",
            ),
            &["service"],
        )?;
        let connections = IntGauge::with_opts(Opts::new(
            "strait_sidecar_outbound_connections",
            "Open connections from the local app on outbound listeners.",
        ))?;
        let listeners = IntGauge::with_opts(Opts::new(
            "strait_sidecar_outbound_listeners",
            "Outbound listeners bound on service VIPs.",
        ))?;
        let tcp = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_outbound_tcp_connections_total",
                "Outbound TCP connections, by service and outcome.",
            ),
            &["service", "result"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(listeners.clone()))?;
        let overflows = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_outbound_overflows_total",
                "Requests and TCP connections refused by a CircuitBreaker limit, by service and \
                 limit (max_requests, max_connections, max_pending_requests).",
            ),
            &["service", "limit"],
        )?;
        registry.register(Box::new(tcp.clone()))?;
        registry.register(Box::new(overflows.clone()))?;
        Ok(Self {
            requests,
            duration,
            retries,
            ejections,
            connections,
            listeners,
            tcp,
            overflows,
        })
    }
}

/// The `class` label of the request metrics, both sides.
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`STATUS_CLASSES`] of `status`'s class.
pub(crate) fn status_class_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One service's series of the per-request metrics, each resolved on its first use (so
/// /metrics lists exactly the series that saw a request, as with a lookup per request): a
/// label lookup hashes the labels and takes a lock, on every request.
#[derive(Debug, Default)]
struct RequestSeries {
    duration: OnceLock<Histogram>,
    /// `requests{zone="local"}` by status class.
    local: [OnceLock<IntCounter>; 5],
    /// `requests{zone="none"}` by status class.
    none: [OnceLock<IntCounter>; 5],
}

impl RequestSeries {
    /// Counts a request of `service` answered by `zone` with `status` after `elapsed`.
    fn record(
        &self,
        metrics: &OutboundMetrics,
        service: &str,
        zone: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let class = status_class_index(status);
        let resolve = || {
            metrics
                .requests
                .with_label_values(&[service, zone, STATUS_CLASSES[class]])
        };
        // Other zones' names are few but not known here: looked up each time.
        match zone {
            LOCAL_ZONE => self.local[class].get_or_init(resolve).inc(),
            NONE_ZONE => self.none[class].get_or_init(resolve).inc(),
            _ => resolve().inc(),
        }
        self.duration
            .get_or_init(|| metrics.duration.with_label_values(&[service]))
            .observe(elapsed.as_secs_f64());
    }
}

// === context ===

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

// === per-service state ===

/// The compiled client-side policy of one service.
#[derive(Debug)]
struct ServicePolicy {
    routes: RouteTable,
    fault: Option<FaultInjector>,
    retry: RetryConfig,
    connect_timeout: Duration,
    /// To the end of a unary response (to the headers of a streaming one).
    request_timeout: Duration,
    /// To the response headers (`responseHeaders`), when set.
    headers_timeout: Option<Duration>,
    /// To the end of a streaming response (`stream`), when set.
    stream_timeout: Option<Duration>,
    /// Downstream connections silent this long are closed.
    idle_timeout: Duration,
    max_requests: Option<u32>,
    max_connections: Option<u32>,
    max_pending: Option<u32>,
}

impl ServicePolicy {
    fn compile(policy: Option<&pb::RoutePolicy>) -> Result<Self, String> {
        let timeout = policy.and_then(|p| p.timeout.as_ref());
        let breaker = policy.and_then(|p| p.circuit_breaker.as_ref());
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        Ok(Self {
            routes: RouteTable::from_policy(policy).map_err(|e| e.to_string())?,
            fault: FaultInjector::from_policy(policy).map_err(|e| e.to_string())?,
            retry: RetryConfig::from_policy(policy.and_then(|p| p.retry.as_ref())),
            connect_timeout: ms(timeout.map_or(0, |t| t.connect_ms), DEFAULT_CONNECT_TIMEOUT),
            request_timeout: ms(timeout.map_or(0, |t| t.request_ms), DEFAULT_REQUEST_TIMEOUT),
            headers_timeout: timeout
                .map(|t| t.response_headers_ms)
                .filter(|ms| *ms != 0)
                .map(Duration::from_millis),
            stream_timeout: timeout
                .map(|t| t.stream_ms)
                .filter(|ms| *ms != 0)
                .map(Duration::from_millis),
            idle_timeout: idle::from_policy_ms(timeout.map_or(0, |t| t.idle_ms)),
            max_requests: breaker.and_then(|c| breaker::limit(c.max_requests)),
            max_connections: breaker.and_then(|c| breaker::limit(c.max_connections)),
            max_pending: breaker.and_then(|c| breaker::limit(c.max_pending_requests)),
        })
    }
}

/// One outbound service: its balancer, budget and policy, shared by every connection.
#[derive(Debug)]
struct ServiceState {
    /// `namespace/name`, the metrics label.
    name: String,
    balancer: Mutex<Balancer>,
    budget: Mutex<Budget>,
    /// The policy of the service as a whole.
    policy: RwLock<Arc<ServicePolicy>>,
    /// Ports whose own policy differs (a resource names the port).
    port_policies: RwLock<HashMap<u16, Arc<ServicePolicy>>>,
    /// Requests in flight (`maxRequests`).
    in_flight: Counter,
    /// Upstream connections open (`maxConnections`): pooled HTTP/2 connections and tunnels,
    /// TCP connections.
    connections: Arc<Counter>,
    /// Requests and TCP connections waiting for an upstream connection
    /// (`maxPendingRequests`).
    pending: Counter,
    /// The last refusal a gateway gave for this service (when, `x-strait-error` code, text):
    /// when every target is ejected, the sidecar's own 503 says what the remote side said.
    last_refusal: Mutex<Option<(Instant, &'static str, String)>>,
    /// The port probes of ejected remote zones open their tunnel to (the first one).
    probe_port: AtomicU32,
    series: RequestSeries,
}

/// How long a gateway's refusal explains a `no-healthy-upstream`.
const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn service_key(service: &pb::OutboundService) -> String {
    service.service.as_ref().map_or_else(
        || "unknown".to_owned(),
        |s| format!("{}/{}", s.namespace, s.name),
    )
}

/// Where a bound listener sends its connections.
#[derive(Debug, Clone)]
struct Binding {
    service: String,
    port: u16,
    tcp_only: bool,
    /// The zone a zone-pinned VIP routes to; `None` for the locality-aware VIP.
    zone: Option<String>,
}

/// State shared by the listeners and their connections.
struct Shared {
    ctx: OutboundContext,
    /// This zone's name as the value of [`ZONE_HEADER`], made once per config (`None`: not a
    /// valid header value, so not sent).
    zone_header: RwLock<Option<HeaderValue>>,
    /// Who this zone's gateways must be (`spiffe://TD/zone/ZONE/gateway`).
    gateway_id: RwLock<String>,
    services: RwLock<HashMap<String, Arc<ServiceState>>>,
    bindings: RwLock<HashMap<SocketAddr, Binding>>,
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
            zone_header: RwLock::new(None),
            gateway_id: RwLock::new(String::new()),
            services: RwLock::default(),
            bindings: RwLock::default(),
            open,
            stop,
        })
    }

    fn service(&self, key: &str) -> Option<Arc<ServiceState>> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Applies a config version: services (balancers keep their state), bindings, pool.
    fn apply(&self, config: &pb::SidecarConfig) {
        *self
            .zone_header
            .write()
            .unwrap_or_else(PoisonError::into_inner) = HeaderValue::from_str(&config.zone).ok();
        if let Ok(id) = SpiffeId::gateway(&config.trust_domain, &config.zone) {
            *self
                .gateway_id
                .write()
                .unwrap_or_else(PoisonError::into_inner) = id.to_string();
        }
        let now = Instant::now();
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut seen = HashSet::new();
        let mut bindings = HashMap::new();
        let mut addresses = HashSet::new();
        let mut zones = HashSet::new();
        for service in &config.services {
            let key = service_key(service);
            seen.insert(key.clone());
            let policy = match compile_policies(service) {
                Ok(p) => Some(p),
                Err(err) => {
                    // The discovery client validated this already; keep what runs.
                    tracing::error!(service = %key, %err, "outbound policy cannot be loaded");
                    None
                }
            };
            let balancer_config = BalancerConfig::from_policy(service.policy.as_ref());
            match services.get(&key) {
                Some(state) => {
                    lock(&state.balancer).update(&service.localities, balancer_config);
                    if let Some((policy, ports)) = policy {
                        *state.policy.write().unwrap_or_else(PoisonError::into_inner) =
                            Arc::new(policy);
                        *state
                            .port_policies
                            .write()
                            .unwrap_or_else(PoisonError::into_inner) = ports;
                    }
                }
                None => {
                    let (policy, port_policies) =
                        policy.unwrap_or_else(|| (default_policy(), HashMap::new()));
                    let policy = Arc::new(policy);
                    services.insert(
                        key.clone(),
                        Arc::new(ServiceState {
                            name: key.clone(),
                            balancer: Mutex::new(Balancer::for_service(service)),
                            budget: Mutex::new(Budget::from_config(&policy.retry, now)),
                            policy: RwLock::new(policy),
                            port_policies: RwLock::new(port_policies),
                            in_flight: Counter::default(),
                            connections: Arc::default(),
                            pending: Counter::default(),
                            last_refusal: Mutex::new(None),
                            probe_port: AtomicU32::new(0),
                            series: RequestSeries::default(),
                        }),
                    );
                }
            }
            if let (Some(state), Some(port)) = (services.get(&key), service.ports.first()) {
                state.probe_port.store(port.port, Ordering::Relaxed);
            }
            for group in &service.localities {
                addresses.extend(group.endpoints.iter().map(|e| e.address.clone()));
                addresses.extend(group.local_gateways.iter().cloned());
                zones.insert(group.zone.clone());
            }
            let pinned = service
                .zone_vips
                .iter()
                .map(|(zone, vip)| (vip, Some(zone)));
            for (vip, zone) in std::iter::once((&service.vip, None)).chain(pinned) {
                let Ok(vip) = vip.parse::<IpAddr>() else {
                    continue;
                };
                for port in &service.ports {
                    let Ok(number) = u16::try_from(port.port) else {
                        continue;
                    };
                    bindings.insert(
                        SocketAddr::new(vip, number),
                        Binding {
                            service: key.clone(),
                            port: number,
                            tcp_only: port.protocol == pb::Protocol::Tcp as i32,
                            zone: zone.cloned(),
                        },
                    );
                }
            }
        }
        services.retain(|k, _| seen.contains(k));
        drop(services);
        *self
            .bindings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = bindings;
        self.pool.retain(&addresses, &zones);
    }
}

impl ServiceState {
    /// The policy of requests to `port`: the port's own, or the service's.
    fn policy_for(&self, port: u16) -> Arc<ServicePolicy> {
        let ports = self
            .port_policies
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match ports.get(&port) {
            Some(policy) => policy.clone(),
            None => self
                .policy
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// The service's policy and its ports' own, or the first error.
fn compile_policies(
    service: &pb::OutboundService,
) -> Result<(ServicePolicy, HashMap<u16, Arc<ServicePolicy>>), String> {
    let whole = ServicePolicy::compile(service.policy.as_ref())?;
    let mut ports = HashMap::new();
    for (port, policy) in &service.port_policies {
        let number = u16::try_from(*port).map_err(|_| format!("port {port}"))?;
        let compiled = ServicePolicy::compile(Some(policy))
            .map_err(|e| format!("port_policies[{port}]: {e}"))?;
        ports.insert(number, Arc::new(compiled));
    }
    Ok((whole, ports))
}

/// Every default: what a new service runs when its policy cannot be loaded.
fn default_policy() -> ServicePolicy {
    ServicePolicy {
        routes: RouteTable::default(),
        fault: None,
        retry: RetryConfig::default(),
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        headers_timeout: None,
        stream_timeout: None,
        idle_timeout: idle::DEFAULT_IDLE_TIMEOUT,
        max_requests: None,
        max_connections: None,
        max_pending: None,
    }
}

// === serving ===

/// Serves outbound listeners on the VIPs of the running config until `shutdown` completes,
/// following config changes. After shutdown, open connections get two seconds to finish.
pub async fn serve(ctx: OutboundContext, shutdown: impl Future) -> Result<(), OutboundError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut config = ctx.config.clone();
    let shared = Shared::new(ctx, open_tx, stop_rx);
    let mut listeners: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut rebind = tokio::time::interval(REBIND_INTERVAL);
    rebind.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let current = config.borrow_and_update().clone();
    shared.apply(&current);
    tokio::spawn(probe_ejected(Arc::downgrade(&shared)));
    loop {
        reconcile(&shared, &mut listeners).await;
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
            _ = rebind.tick() => {}
        }
    }
    for (_, task) in listeners.drain() {
        task.abort();
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

// === traffic capture ===

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
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut config = ctx.config.clone();
    let shared = Shared::new(ctx, open_tx, stop_rx);
    let current = config.borrow_and_update().clone();
    shared.apply(&current);
    tokio::spawn(probe_ejected(Arc::downgrade(&shared)));
    shared.ctx.metrics.listeners.set(1);
    let accept = tokio::spawn(capture_accept_loop(shared.clone(), listener));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            changed = config.changed() => {
                if changed.is_err() {
                    shutdown.as_mut().await;
                    break;
                }
                let current = config.borrow_and_update().clone();
                shared.apply(&current);
            }
        }
    }
    accept.abort();
    let _ = accept.await;
    shared.ctx.metrics.listeners.set(0);
    let _ = stop_tx.send(true);
    drop(shared);
    if tokio::time::timeout(DRAIN_TIMEOUT, open_rx.recv())
        .await
        .is_err()
    {
        tracing::info!("closing outbound connections still open after the drain period");
    }
    Ok(())
}

async fn capture_accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let local = listener.local_addr().ok();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let destination = match original_destination(&tcp) {
                    Ok(destination) if Some(destination) != local => destination,
                    Ok(_) => {
                        tracing::debug!(%peer, "connection to the capture port was not redirected; closing");
                        continue;
                    }
                    Err(err) => {
                        tracing::debug!(%peer, %err, "no original destination; closing");
                        continue;
                    }
                };
                let known = shared
                    .bindings
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(&destination);
                if !known {
                    tracing::debug!(%peer, %destination, "captured connection for no known VIP; closing");
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(shared.clone(), tcp, destination).instrument(
                    tracing::debug_span!("outbound_conn", %peer, vip = %destination, captured = true),
                ));
            }
            Err(err) => {
                tracing::warn!(%err, "capture accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// The address a connection was sent to before an iptables `REDIRECT` changed it
/// (`SO_ORIGINAL_DST`, IPv4).
pub fn original_destination(tcp: &TcpStream) -> std::io::Result<SocketAddr> {
    let addr = nix::sys::socket::getsockopt(tcp, nix::sys::socket::sockopt::OriginalDst)?;
    // Both fields are in network byte order.
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
}

/// Tries to connect to this zone's endpoints that were ejected for connect failures, every
/// [`PROBE_INTERVAL`], and puts back the ones that answer (the pooled connection the probe
/// opened serves the next request). Without it a restarted instance would wait out its whole
/// ejection (30 s and more) before it gets traffic again. Ends when the outbound side is gone.
async fn probe_ejected(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let services: Vec<Arc<ServiceState>> = shared
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let gateway_id = shared
            .gateway_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for service in services {
            let candidates = lock(&service.balancer).probe_candidates(Instant::now());
            let port = u16::try_from(service.probe_port.load(Ordering::Relaxed)).unwrap_or(0);
            let max_connections = service
                .policy
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .max_connections;
            // The connection a probe opens stays pooled for requests: it counts.
            let permit = || ConnPermit::Later(service.connections.clone(), max_connections);
            for target in candidates {
                let reached = match &target {
                    Target::Endpoint {
                        address, spiffe_id, ..
                    } => shared
                        .pool
                        .sender(address, spiffe_id, PROBE_TIMEOUT, permit())
                        .await
                        .is_ok(),
                    Target::Remote { .. } => {
                        match remote(&target, &service.name, port, &gateway_id) {
                            Some(remote) => shared
                                .pool
                                .remote_sender(&remote, PROBE_TIMEOUT, permit())
                                .await
                                .is_ok(),
                            None => false,
                        }
                    }
                };
                if reached && lock(&service.balancer).reinstate(&target.key(), Instant::now()) {
                    tracing::info!(service = %service.name, target = ?target.key(), "ejected target answers again; reinstated");
                }
            }
        }
    }
}

/// Binds the listeners the config wants and closes the ones it no longer does.
async fn reconcile(shared: &Arc<Shared>, listeners: &mut HashMap<SocketAddr, JoinHandle<()>>) {
    let wanted: HashSet<SocketAddr> = shared
        .bindings
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .copied()
        .collect();
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
                let task = tokio::spawn(accept_loop(shared.clone(), listener, addr));
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

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, addr: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                // Spawned apart from this loop: closing the listener leaves it running.
                tokio::spawn(
                    connection(shared, tcp, addr)
                        .instrument(tracing::debug_span!("outbound_conn", %peer, vip = %addr)),
                );
            }
            Err(err) => {
                tracing::warn!(%addr, %err, "outbound accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenConnection(IntGauge, #[allow(dead_code)] mpsc::Sender<()>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream, vip: SocketAddr) {
    let metrics = &shared.ctx.metrics;
    metrics.connections.inc();
    let _open = OpenConnection(metrics.connections.clone(), shared.open.clone());
    let Some(binding) = shared
        .bindings
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&vip)
        .cloned()
    else {
        return;
    };
    let kind = if binding.tcp_only {
        Sniff::Tcp
    } else {
        match sniff_stream(&tcp).await {
            Some(kind) => kind,
            None => return,
        }
    };
    let mut stop = shared.stop.clone();
    let idle_timeout = shared
        .service(&binding.service)
        .map_or(idle::DEFAULT_IDLE_TIMEOUT, |s| {
            s.policy_for(binding.port).idle_timeout
        });
    if kind == Sniff::Tcp {
        tokio::select! {
            () = tcp_proxy(&shared, tcp, &binding.service, binding.port, binding.zone.as_deref()) => {}
            () = stopped(&mut stop) => {
                // TCP has no graceful end: give it the drain period, then cut it.
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            }
        }
        return;
    }
    let service_shared = shared.clone();
    let key: Arc<str> = Arc::from(binding.service.as_str());
    let port = binding.port;
    let pinned: Option<Arc<str>> = binding.zone.as_deref().map(Arc::from);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = service_shared.clone();
        let key = key.clone();
        let pinned = pinned.clone();
        async move {
            let response = handle(&shared, &key, port, pinned.as_deref(), request).await;
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let activity = idle::Activity::new();
    let io = idle::Tracked::new(tcp, activity.clone());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%err, "outbound connection ended with an error");
            }
        }
        () = idle::silent_for(&activity, idle_timeout) => {
            // Graceful: an idle HTTP/1.1 connection closes at once, a response under way
            // (or an HTTP/2 stream) finishes first.
            tracing::debug!(?idle_timeout, "closing an idle outbound connection");
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
                }
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

/// Resolves once the stop flag is raised (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Peeks at the first bytes until [`sniff`] can tell, or [`SNIFF_TIMEOUT`] passes (TCP).
/// `None` when the client closed without sending anything.
pub(crate) async fn sniff_stream(tcp: &TcpStream) -> Option<Sniff> {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0_u8; 24];
    loop {
        let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await;
        match peeked {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Err(_) => return Some(Sniff::Tcp),
            Ok(Ok(n)) => match sniff(&buf[..n]) {
                Sniff::NeedMore => {
                    if tokio::time::Instant::now() >= deadline {
                        return Some(Sniff::Tcp);
                    }
                    // The bytes so far stay readable, so `peek` would return at once: wait.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                decided => return Some(decided),
            },
        }
    }
}

// === HTTP ===

/// What a request carries from one try to the next.
enum RequestBody {
    /// Buffered: every try sends it.
    Replayable(Bytes),
    /// Streaming: only the first try that reaches a server gets it.
    Streaming(Option<Incoming>),
}

impl RequestBody {
    fn take(&mut self) -> Option<Outgoing> {
        match self {
            RequestBody::Replayable(bytes) if bytes.is_empty() => Some(Outgoing::Empty),
            RequestBody::Replayable(bytes) => Some(Outgoing::Full(bytes.clone())),
            RequestBody::Streaming(body) => body.take().map(Outgoing::Stream),
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            RequestBody::Replayable(_) => true,
            RequestBody::Streaming(body) => body.is_some(),
        }
    }
}

/// `pinned`: the zone of a zone-pinned VIP, the only one that may serve the request.
async fn handle(
    shared: &Shared,
    key: &str,
    port: u16,
    pinned: Option<&str>,
    request: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    // At debug level, like the inbound one: the few info events of a request name their
    // service themselves.
    let span = tracing::debug_span!(
        "outbound",
        service = key,
        method = %request.method(),
        path = request.uri().path(),
        status = tracing::field::Empty,
        zone = tracing::field::Empty,
    );
    let service = shared.service(key);
    let (response, zone) = route_request(shared, service.as_deref(), port, pinned, request)
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.record("status", status.as_u16());
    span.record("zone", zone.as_ref());
    let metrics = &shared.ctx.metrics;
    match &service {
        Some(service) => {
            service
                .series
                .record(metrics, key, &zone, status, start.elapsed());
        }
        None => RequestSeries::default().record(metrics, key, &zone, status, start.elapsed()),
    }
    // As a child of the span without entering it: entering and leaving cost more than an
    // event that is filtered out.
    tracing::debug!(parent: &span, elapsed = ?start.elapsed(), "outbound request");
    response
}

/// Decides and sends one request; returns the response and the label of the zone that
/// answered.
async fn route_request(
    shared: &Shared,
    service: Option<&ServiceState>,
    port: u16,
    pinned: Option<&str>,
    request: Request<Incoming>,
) -> (Response<Body>, ZoneLabel) {
    let Some(service) = service else {
        return (
            error_response(StatusCode::SERVICE_UNAVAILABLE, "unknown-service"),
            NONE,
        );
    };
    let start = tokio::time::Instant::now();
    let policy = service.policy_for(port);
    let (subset, fault) = {
        let view = RequestView {
            method: request.method(),
            path: request.uri().path(),
            headers: request.headers(),
        };
        let mut rng = rand::rng();
        let subset = policy.routes.select(&view, &mut rng).subset.cloned();
        let fault = policy.fault.as_ref().map(|f| f.decide(&view, &mut rng));
        (subset, fault.unwrap_or_default())
    };
    if let Some(delay) = fault.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = fault.abort {
        return (error_response(status, "fault-injected"), NONE);
    }
    let Some(_in_flight) = service.in_flight.acquire(policy.max_requests) else {
        return (overflow(shared, service, Overflow::Requests), NONE);
    };
    let zone = shared
        .zone_header
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let (parts, body) = match prepare(request, zone).await {
        Ok(p) => p,
        Err(response) => return (response, NONE),
    };
    // Until the headers, `request` (and `responseHeaders`) hold whatever the response will be.
    let headers_timeout = policy
        .headers_timeout
        .map_or(policy.request_timeout, |h| h.min(policy.request_timeout));
    match tokio::time::timeout(
        headers_timeout,
        send_with_retries(
            shared,
            service,
            &policy,
            Scope {
                subset: subset.as_ref(),
                pinned,
            },
            port,
            parts,
            body,
        ),
    )
    .await
    {
        Ok((response, zone)) => (bound_body(response, &policy, start), zone),
        Err(_) => (
            error_response(StatusCode::GATEWAY_TIMEOUT, "request-timeout"),
            NONE,
        ),
    }
}

/// The response with its body held to the `Timeout` (see [`crate::deadline`]): the request's
/// start plus `request` for a unary response, plus `stream` (if set) for a streaming one.
fn bound_body(
    response: Response<Body>,
    policy: &ServicePolicy,
    start: tokio::time::Instant,
) -> Response<Body> {
    let limit = if deadline::is_stream(response.status(), response.headers()) {
        policy.stream_timeout
    } else {
        Some(policy.request_timeout)
    };
    match limit {
        Some(limit) if !response.body().is_end_stream() => {
            response.map(|body| DeadlineBody::new(body, start + limit, limit).boxed())
        }
        _ => response,
    }
}

/// The `503` `overflow` answer for a request a `CircuitBreaker` limit refused, counted.
fn overflow(shared: &Shared, service: &ServiceState, limit: Overflow) -> Response<Body> {
    shared
        .ctx
        .metrics
        .overflows
        .with_label_values(&[service.name.as_str(), limit.label()])
        .inc();
    tracing::debug!(limit = limit.label(), "circuit breaker overflow");
    error_response(StatusCode::SERVICE_UNAVAILABLE, "overflow")
}

/// How a try gets its connection: decided before it starts, so a target over a limit is
/// passed over without counting as a try.
enum Admitted<'a> {
    /// An open pooled connection: no wait, no new connection.
    Open(Sender),
    /// The try waits for a connection (a place in `maxPendingRequests`, held until the
    /// connection is ready); a new one takes `permit`.
    Wait {
        pending: Permit<'a>,
        permit: ConnPermit,
    },
}

/// Admits a try to `target` under the service's `CircuitBreaker` limits, or says which one it
/// is over.
fn admit<'a>(
    shared: &Shared,
    service: &'a ServiceState,
    policy: &ServicePolicy,
    target: &Target,
    port: u16,
    gateway_id: &str,
) -> Result<Admitted<'a>, Overflow> {
    let lookup = match target {
        Target::Endpoint {
            address, spiffe_id, ..
        } => shared.pool.open_sender(address, spiffe_id),
        Target::Remote { .. } => match remote(target, &service.name, port, gateway_id) {
            Some(remote) => shared.pool.open_remote_sender(&remote),
            None => Lookup::Vacant,
        },
    };
    let busy = match lookup {
        Lookup::Open(sender) => return Ok(Admitted::Open(sender)),
        Lookup::Busy => true,
        Lookup::Vacant => false,
    };
    let pending = service
        .pending
        .acquire(policy.max_pending)
        .ok_or(Overflow::Pending)?;
    let permit = if busy {
        // A connect is under way: this request most likely shares it, and takes a place
        // only if it ends up connecting itself.
        ConnPermit::Later(service.connections.clone(), policy.max_connections)
    } else {
        ConnPermit::Held(
            service
                .connections
                .acquire_owned(policy.max_connections)
                .ok_or(Overflow::Connections)?,
        )
    };
    Ok(Admitted::Wait { pending, permit })
}

/// Headers as they leave: hop-by-hop and a spoofed peer identity removed, the zone added;
/// a small body buffered.
async fn prepare(
    request: Request<Incoming>,
    zone: Option<HeaderValue>,
) -> Result<(http::request::Parts, RequestBody), Response<Body>> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(names::PEER_IDENTITY);
    if let Some(zone) = zone {
        parts.headers.insert(names::ZONE, zone);
    }
    let small = body.is_end_stream()
        || body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_REPLAY_BODY as u64);
    let body = if small {
        match body.collect().await {
            Ok(collected) => RequestBody::Replayable(collected.to_bytes()),
            Err(err) => {
                tracing::debug!(%err, "reading the request body failed");
                return Err(error_response(StatusCode::BAD_REQUEST, "bad-request"));
            }
        }
    } else {
        RequestBody::Streaming(Some(body))
    };
    Ok((parts, body))
}

/// The upstream request of one try: absolute URI (HTTP/2 needs `:scheme` and
/// `:authority`), the authority from `Host` when the app sent one.
fn upstream_request(parts: &http::request::Parts) -> Result<Request<()>, String> {
    let invalid = |e: http::Error| format!("cannot build the upstream URI: {e}");
    let authority = match parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(host) => Authority::try_from(host).map_err(|e| invalid(e.into()))?,
        None => parts
            .uri
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("service.invalid")),
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(crate::headers::path_and_query(&parts.uri));
    let uri = Uri::from_parts(uri).map_err(|e| invalid(e.into()))?;
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers.clone();
    request.headers_mut().remove(header::HOST);
    Ok(request)
}

/// Which targets a request's tries may go to.
#[derive(Clone, Copy)]
struct Scope<'a> {
    /// The route's subset of this zone's endpoints.
    subset: Option<&'a Subset>,
    /// The zone of a zone-pinned VIP: the only zone that may serve the request.
    pinned: Option<&'a str>,
}

/// The tries of one request.
async fn send_with_retries(
    shared: &Shared,
    service: &ServiceState,
    policy: &ServicePolicy,
    scope: Scope<'_>,
    port: u16,
    parts: http::request::Parts,
    mut body: RequestBody,
) -> (Response<Body>, ZoneLabel) {
    let metrics = &shared.ctx.metrics;
    let mut state = RetryState::new(
        parts.method.clone(),
        &mut lock(&service.budget),
        Instant::now(),
    );
    // What the last failed try answered, for when no target is left to try.
    let mut last_failure: Option<(Response<Body>, ZoneLabel)> = None;
    // The CircuitBreaker limit that passed over a target, for when no target is left, and
    // the targets passed over (the balancer offers tried targets again when it has nothing
    // else: one of these offered again means every target left is over a limit).
    let mut overflowed: Option<Overflow> = None;
    let mut passed_over: Vec<crate::lb::TargetKey> = Vec::new();
    loop {
        let target = lock(&service.balancer).pick_within(
            Instant::now(),
            &mut rand::rng(),
            scope.pinned,
            scope.subset,
            state.tried(),
        );
        let Some(target) = target else {
            if let Some(failure) = last_failure {
                return failure;
            }
            if let Some(limit) = overflowed {
                return (overflow(shared, service, limit), NONE);
            }
            let refusal = lock(&service.last_refusal)
                .as_ref()
                .filter(|(at, _, _)| at.elapsed() < REFUSAL_MEMORY)
                .map(|(_, code, text)| format!("the last gateway refusal was {code}: {text}"))
                .unwrap_or_default();
            return (
                error_response_with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-healthy-upstream",
                    &refusal,
                ),
                NONE,
            );
        };
        let key = target.key();
        if let Some(limit) = overflowed
            && passed_over.contains(&key)
        {
            return last_failure.unwrap_or_else(|| (overflow(shared, service, limit), NONE));
        }
        state.on_try(key.clone());
        // Only a remote target needs it: no copy for this zone's endpoints.
        let gateway_id = match target {
            Target::Remote { .. } => shared
                .gateway_id
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            Target::Endpoint { .. } => String::new(),
        };
        let admitted = match admit(shared, service, policy, &target, port, &gateway_id) {
            Ok(admitted) => admitted,
            Err(limit) => {
                // Not a try: no balancer, outlier or retry accounting; another target with an
                // open connection may still take the request.
                tracing::debug!(target = ?key, limit = limit.label(), "target over a circuit breaker limit");
                overflowed = Some(limit);
                passed_over.push(key);
                continue;
            }
        };
        let started = Instant::now();
        lock(&service.balancer).on_start(&key, started);
        let (outcome, response) = try_once(
            shared,
            policy,
            &target,
            service,
            port,
            &gateway_id,
            admitted,
            &parts,
            &mut body,
        )
        .await;
        let now = Instant::now();
        let ejection =
            lock(&service.balancer).on_complete(&key, now, now.duration_since(started), outcome);
        if let Some(ejection) = ejection {
            metrics
                .ejections
                .with_label_values(&[service.name.as_str()])
                .inc();
            tracing::info!(service = %service.name, target = ?key, times = ejection.times, cause = ?ejection.cause, "target ejected");
        }
        let zone = zone_label(&target);
        let response = match response {
            Some(response) if outcome.is_success() => return (response, zone),
            other => other,
        };
        // A streaming body that left cannot be sent again.
        let replayable = outcome == Outcome::ConnectFailure || body.can_replay();
        let decision = if replayable {
            state.on_failure(
                &policy.retry,
                &mut lock(&service.budget),
                outcome,
                now,
                &mut rand::rng(),
            )
        } else {
            RetryDecision::Stop(crate::retry::StopReason::NotRetriable)
        };
        match decision {
            RetryDecision::RetryAfter(backoff) => {
                metrics
                    .retries
                    .with_label_values(&[service.name.as_str()])
                    .inc();
                tracing::debug!(target = ?key, ?outcome, ?backoff, "retrying");
                last_failure = Some(match response {
                    Some(response) => (response, zone),
                    None => (failure_response(outcome), zone),
                });
                tokio::time::sleep(backoff).await;
            }
            RetryDecision::Stop(reason) => {
                tracing::debug!(target = ?key, ?outcome, ?reason, "not retried");
                return match response {
                    Some(response) => (response, zone),
                    None => (failure_response(outcome), zone),
                };
            }
        }
    }
}

/// The `zone` label of a request: `local`, a remote zone's name (bounded by the federation's
/// size), or `none` when the sidecar answered itself.
type ZoneLabel = Cow<'static, str>;
const LOCAL_ZONE: &str = "local";
const NONE_ZONE: &str = "none";
const NONE: ZoneLabel = Cow::Borrowed(NONE_ZONE);

fn zone_label(target: &Target) -> ZoneLabel {
    match target {
        Target::Endpoint { .. } => Cow::Borrowed(LOCAL_ZONE),
        Target::Remote { zone, .. } => Cow::Owned(zone.clone()),
    }
}

/// The remote side of a [`Target::Remote`] for `service` (`namespace/name`) on `port`.
fn remote<'a>(
    target: &'a Target,
    service: &'a str,
    port: u16,
    gateway_id: &'a str,
) -> Option<Remote<'a>> {
    let Target::Remote {
        zone,
        gateways,
        identities,
        subset,
    } = target
    else {
        return None;
    };
    let (namespace, name) = service.split_once('/')?;
    Some(Remote {
        zone,
        namespace,
        name,
        port,
        identities,
        gateways,
        gateway_id,
        subset: subset.as_deref(),
    })
}

/// The answer for a try that could not connect: a gateway's refusal is shown to the app (it
/// says why another zone could not serve); anything else leaves the final answer to the
/// retry loop.
fn connect_failure(err: &ConnectError) -> (Outcome, Option<Response<Body>>) {
    match err {
        ConnectError::Refused { .. } | ConnectError::NoGateway => (
            Outcome::ConnectFailure,
            Some(error_response_with(
                StatusCode::SERVICE_UNAVAILABLE,
                err.error_code(),
                &err.to_string(),
            )),
        ),
        _ => (Outcome::ConnectFailure, None),
    }
}

/// One try: connect (pooled, as `admitted` says), send, wait for the response headers.
#[allow(clippy::too_many_arguments)]
async fn try_once(
    shared: &Shared,
    policy: &ServicePolicy,
    target: &Target,
    service: &ServiceState,
    port: u16,
    gateway_id: &str,
    admitted: Admitted<'_>,
    parts: &http::request::Parts,
    body: &mut RequestBody,
) -> (Outcome, Option<Response<Body>>) {
    let name = service.name.as_str();
    let (sender, pending) = match admitted {
        Admitted::Open(sender) => (Ok(sender), None),
        Admitted::Wait { pending, permit } => {
            let sender = match target {
                Target::Endpoint {
                    address, spiffe_id, ..
                } => {
                    shared
                        .pool
                        .sender(address, spiffe_id, policy.connect_timeout, permit)
                        .await
                }
                Target::Remote { .. } => {
                    let Some(remote) = remote(target, name, port, gateway_id) else {
                        return (Outcome::ConnectFailure, None);
                    };
                    shared
                        .pool
                        .remote_sender(&remote, policy.connect_timeout, permit)
                        .await
                }
            };
            (sender, Some(pending))
        }
    };
    let mut sender = match sender {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(?target, %err, "connect failed");
            if let ConnectError::Refused { .. } = err {
                *lock(&service.last_refusal) =
                    Some((Instant::now(), err.error_code(), err.to_string()));
            }
            return connect_failure(&err);
        }
    };
    if sender.ready().await.is_err() {
        forget(shared, target, name, port);
        return (Outcome::ConnectFailure, None);
    }
    // Connected: no longer waiting.
    drop(pending);
    let Some(request_body) = body.take() else {
        return (Outcome::Reset, None);
    };
    let request = match upstream_request(parts) {
        Ok(r) => r,
        Err(reason) => {
            tracing::info!(service = name, %reason, "request refused");
            return (
                Outcome::Response(400),
                Some(error_response(StatusCode::BAD_REQUEST, "bad-request")),
            );
        }
    };
    let send = sender.send(request, request_body);
    let result = match policy.retry.per_try_timeout {
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(r) => r,
            Err(_) => return (Outcome::Timeout, None),
        },
        None => send.await,
    };
    match result {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let status = parts.status.as_u16();
            (
                Outcome::Response(status),
                Some(Response::from_parts(
                    parts,
                    body.map_err(Into::into).boxed(),
                )),
            )
        }
        Err(err @ SendError::Closed(_)) => {
            tracing::debug!(?target, %err, "pooled connection unusable");
            forget(shared, target, name, port);
            (Outcome::ConnectFailure, None)
        }
        // Never processed: like a connect failure, it may go to another target.
        Err(err @ SendError::Refused(_)) => {
            tracing::debug!(?target, %err, "upstream refused the stream");
            (Outcome::ConnectFailure, None)
        }
        Err(err @ SendError::Failed(_)) => {
            tracing::debug!(?target, %err, "upstream reset");
            (Outcome::Reset, None)
        }
    }
}

/// Drops the pooled connection to `target`: it failed.
fn forget(shared: &Shared, target: &Target, service: &str, port: u16) {
    match target {
        Target::Endpoint { address, .. } => shared.pool.forget(address),
        Target::Remote { .. } => {
            if let Some(remote) = remote(target, service, port, "") {
                shared.pool.forget_remote(&remote);
            }
        }
    }
}

fn failure_response(outcome: Outcome) -> Response<Body> {
    match outcome {
        // Every try failed to connect: nothing could take the request.
        Outcome::ConnectFailure => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "no-healthy-upstream")
        }
        Outcome::Timeout => error_response(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
        Outcome::Reset | Outcome::Response(_) => {
            error_response(StatusCode::BAD_GATEWAY, "upstream-reset")
        }
    }
}

fn error_response(status: StatusCode, error: &'static str) -> Response<Body> {
    error_response_with(status, error, "")
}

/// [`error_response`] with a human-readable detail in the body.
fn error_response_with(status: StatusCode, error: &'static str, detail: &str) -> Response<Body> {
    let text = if detail.is_empty() {
        format!("{error}\n")
    } else {
        format!("{error}: {detail}\n")
    };
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(names::ERROR, HeaderValue::from_static(error));
    response
}

// === TCP ===

/// The upstream side of a proxied TCP connection: direct or through a tunnel.
trait Upstream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Upstream for T {}

/// `pinned`: the zone of a zone-pinned VIP, the only one that may serve the connection.
async fn tcp_proxy(
    shared: &Shared,
    downstream: TcpStream,
    key: &str,
    port: u16,
    pinned: Option<&str>,
) {
    let metrics = &shared.ctx.metrics;
    let outcome = |result: &str| metrics.tcp.with_label_values(&[key, result]).inc();
    let Some(service) = shared.service(key) else {
        outcome("unknown_service");
        return;
    };
    let policy = service.policy_for(port);
    // CircuitBreaker: the upstream connection is held for the proxied connection's life; the
    // pending place while it connects (tries included). Over either: closed at once.
    let over = |limit: Overflow| {
        outcome("overflow");
        metrics
            .overflows
            .with_label_values(&[service.name.as_str(), limit.label()])
            .inc();
    };
    let Some(pending) = service.pending.acquire(policy.max_pending) else {
        over(Overflow::Pending);
        return;
    };
    let Some(_connection) = service.connections.acquire(policy.max_connections) else {
        over(Overflow::Connections);
        return;
    };
    // The method only matters for response-based conditions; a TCP connect has none.
    let mut state = RetryState::new(Method::CONNECT, &mut lock(&service.budget), Instant::now());
    let upstream = loop {
        let target = lock(&service.balancer).pick_within(
            Instant::now(),
            &mut rand::rng(),
            pinned,
            None,
            state.tried(),
        );
        let Some(target) = target else {
            outcome("no_healthy_upstream");
            return;
        };
        let key = target.key();
        state.on_try(key.clone());
        let started = Instant::now();
        lock(&service.balancer).on_start(&key, started);
        let connected: Result<Box<dyn Upstream>, ConnectError> = match &target {
            Target::Endpoint {
                address, spiffe_id, ..
            } => shared
                .pool
                .connect(address, spiffe_id, ALPN_TCP, policy.connect_timeout)
                .await
                .map(|s| Box::new(s) as Box<dyn Upstream>),
            Target::Remote { .. } => {
                let gateway_id = shared
                    .gateway_id
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                match remote(&target, &service.name, port, &gateway_id) {
                    Some(remote) => shared
                        .pool
                        .connect_remote(&remote, ALPN_TCP, policy.connect_timeout)
                        .await
                        .map(|s| Box::new(s) as Box<dyn Upstream>),
                    None => Err(ConnectError::NoGateway),
                }
            }
        };
        let connected = connected
            .map_err(|err| tracing::debug!(?target, %err, "TCP connect failed"))
            .ok();
        let now = Instant::now();
        let result = if connected.is_some() {
            Outcome::Response(200)
        } else {
            Outcome::ConnectFailure
        };
        if lock(&service.balancer)
            .on_complete(&key, now, now.duration_since(started), result)
            .is_some()
        {
            metrics
                .ejections
                .with_label_values(&[service.name.as_str()])
                .inc();
        }
        if let Some(stream) = connected {
            break stream;
        }
        let decision = state.on_failure(
            &policy.retry,
            &mut lock(&service.budget),
            result,
            now,
            &mut rand::rng(),
        );
        match decision {
            RetryDecision::RetryAfter(backoff) => {
                metrics
                    .retries
                    .with_label_values(&[service.name.as_str()])
                    .inc();
                tokio::time::sleep(backoff).await;
            }
            RetryDecision::Stop(_) => {
                outcome("connect_failure");
                return;
            }
        }
    };
    drop(pending);
    outcome("forwarded");
    match idle::pipe(downstream, upstream, policy.idle_timeout).await {
        PipeEnd::Done(up, down) => {
            tracing::debug!(service = key, up, down, "TCP connection finished");
        }
        PipeEnd::Error(err) => {
            tracing::debug!(service = key, %err, "TCP connection ended with an error");
        }
        PipeEnd::Idle => tracing::debug!(
            service = key,
            idle = ?policy.idle_timeout,
            "TCP connection closed: idle"
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_http_from_tcp() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http);
        assert_eq!(sniff(b"POST /x HTTP/1.0\r\n"), Sniff::Http);
        assert_eq!(sniff(b"OPTIONS * HTTP/1.1"), Sniff::Http);
        assert_eq!(sniff(H2_PREFACE), Sniff::Http);
        assert_eq!(sniff(b"GE"), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HT"), Sniff::NeedMore);
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"GETX"), Sniff::Tcp);
        assert_eq!(sniff(b"get / HTTP/1.1"), Sniff::Tcp);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniff::Tcp);
        assert_eq!(sniff(b"hello tcp\n"), Sniff::Tcp);
        assert_eq!(sniff(b"PRI * HTTP/1.1"), Sniff::Tcp);
    }

    #[test]
    fn policy_defaults_and_overrides() {
        let default = ServicePolicy::compile(None).unwrap();
        assert_eq!(default.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(default.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(default.max_requests, None);
        assert_eq!((default.max_connections, default.max_pending), (None, None));
        assert_eq!(default.idle_timeout, Duration::from_secs(3600));
        let service = pb::OutboundService {
            policy: Some(pb::RoutePolicy {
                timeout: Some(pb::TimeoutPolicy {
                    connect_ms: 250,
                    request_ms: 0,
                    idle_ms: 0,
                    ..Default::default()
                }),
                circuit_breaker: Some(pb::CircuitBreakerPolicy {
                    max_requests: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = ServicePolicy::compile(service.policy.as_ref()).unwrap();
        assert_eq!(p.connect_timeout, Duration::from_millis(250));
        assert_eq!(p.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(p.max_requests, Some(7));
        assert_eq!((p.max_connections, p.max_pending), (None, None));
        assert_eq!(p.idle_timeout, idle::DEFAULT_IDLE_TIMEOUT);

        let service = pb::OutboundService {
            policy: Some(pb::RoutePolicy {
                timeout: Some(pb::TimeoutPolicy {
                    idle_ms: 90_000,
                    ..Default::default()
                }),
                circuit_breaker: Some(pb::CircuitBreakerPolicy {
                    max_connections: 3,
                    max_pending_requests: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = ServicePolicy::compile(service.policy.as_ref()).unwrap();
        assert_eq!(p.idle_timeout, Duration::from_secs(90));
        assert_eq!(p.max_requests, None);
        assert_eq!((p.max_connections, p.max_pending), (Some(3), Some(2)));
    }

    fn upstream_uri(request: Request<()>) -> Result<String, String> {
        let (parts, ()) = request.into_parts();
        upstream_request(&parts).map(|r| r.uri().to_string())
    }

    #[test]
    fn upstream_requests_carry_an_absolute_uri_from_host() {
        let (parts, ()) = Request::get("/a/b?x=1")
            .header("host", "svc.demo:8080")
            .header("x-app", "1")
            .body(())
            .unwrap()
            .into_parts();
        let up = upstream_request(&parts).unwrap();
        assert_eq!(up.uri().to_string(), "http://svc.demo:8080/a/b?x=1");
        assert_eq!(up.method(), Method::GET);
        assert!(!up.headers().contains_key(header::HOST));
        assert_eq!(up.headers()["x-app"], "1");
        // Without `Host`: the request's own authority, else a placeholder.
        let other = Request::get("http://other:1/p").body(()).unwrap();
        assert_eq!(upstream_uri(other).unwrap(), "http://other:1/p");
        let bare = Request::get("/").body(()).unwrap();
        assert_eq!(upstream_uri(bare).unwrap(), "http://service.invalid/");
        // A `Host` that is no authority is refused, not sent on.
        let bad = Request::get("/").header("host", "a b").body(()).unwrap();
        assert!(upstream_uri(bad).is_err());
    }

    #[test]
    fn request_series_count_by_zone_and_class() {
        let registry = Registry::new();
        let metrics = OutboundMetrics::new(&registry).unwrap();
        let series = RequestSeries::default();
        let ms = Duration::from_millis(1);
        series.record(&metrics, "demo/a", LOCAL_ZONE, StatusCode::OK, ms);
        series.record(&metrics, "demo/a", LOCAL_ZONE, StatusCode::OK, ms);
        series.record(&metrics, "demo/a", NONE_ZONE, StatusCode::BAD_GATEWAY, ms);
        series.record(&metrics, "demo/a", "b", StatusCode::NOT_FOUND, ms);
        let count = |zone: &str, code: &str| {
            metrics
                .requests
                .with_label_values(&["demo/a", zone, code])
                .get()
        };
        assert_eq!(count(LOCAL_ZONE, "2xx"), 2);
        assert_eq!(count(NONE_ZONE, "5xx"), 1);
        assert_eq!(count("b", "4xx"), 1);
        let duration = metrics.duration.with_label_values(&["demo/a"]);
        assert_eq!(duration.get_sample_count(), 4);
        // Only the series that saw a request exist (plus the ones the lookups above made).
        let families = registry.gather();
        let requests = families
            .iter()
            .find(|f| f.name() == "strait_sidecar_outbound_requests_total")
            .unwrap();
        assert_eq!(requests.get_metric().len(), 3);
    }
}
