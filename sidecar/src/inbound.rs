//! The inbound side: the sidecar's mutual TLS listener, where other sidecars (directly, or
//! through the east-west gateways, which pass TLS through untouched) reach this instance's
//! app.
//!
//! Per connection:
//!
//! 1. TLS 1.3 handshake with the sidecar's live certificate; the client must present a
//!    workload certificate of the federation (`spiffe://TD/ns/NS/sa/SA`), verified against the
//!    live trust bundle. A plaintext client, or one whose certificate chains to another root,
//!    fails here.
//!
//!    Under `MeshTLS` **PERMISSIVE** (the running config's `InboundPolicy.tls_mode`, read as
//!    each connection arrives) the first byte decides first ([`transport`]): a TLS handshake
//!    record (`0x16`) goes on as above; anything else is a **plaintext** caller from outside
//!    the mesh, sniffed like an outbound connection (HTTP/1.x or HTTP/2 prior knowledge →
//!    HTTP, anything else → TCP) and served with no identity: authorized as an unauthenticated
//!    caller (a `TrafficPermission` rule naming identities never matches it), and any
//!    `x-strait-peer-identity` it sent is removed. Under STRICT (the default) nothing is
//!    peeked. A plaintext HTTP connection still open when the mode goes back to STRICT gets
//!    `403` `plaintext-refused` (and is closed) on its next request.
//! 2. By ALPN: `h2` or `http/1.1` (or none) → HTTP; `strait-tcp` → a byte pipe.
//! 3. HTTP, per request: the inbound `PermissionPolicy` of the running config decides
//!    ([`authorize`]); denied → `403`. Any `x-strait-peer-identity` the caller sent is removed
//!    and replaced with the *verified* caller identity, so the app can trust that header. The
//!    request goes to the app over plain HTTP/1.1 on a pooled connection, and the response is
//!    streamed back. App unreachable → `503` with `x-strait-error: app-unavailable`; the app
//!    failing mid-way → `502` with `x-strait-error: app-error`.
//! 4. TCP: the caller's identity is authorized (rules naming methods or paths never match a
//!    TCP connection), then bytes are copied both ways to the app; denied → closed.
//!
//! Before the first config is accepted the policy is unknown, so the sidecar fails closed:
//! HTTP gets `503` with `x-strait-error: no-config`, TCP is closed.
//!
//! Idle timeout: plaintext connections (PERMISSIVE) that read nothing for
//! [`DEFAULT_IDLE_TIMEOUT`] are closed, as the outbound side closes an app's connections. Mutual
//! TLS connections are not idled out here: they come from client sidecars, which close TCP
//! connections by the service's `Timeout.idle` themselves and keep their pooled HTTP/2
//! connections alive with pings (closing those here would race with requests under way).
//!
//! Metrics: `strait_sidecar_inbound_requests_total{status_class}`,
//! `strait_sidecar_inbound_request_duration_seconds` (to the response headers),
//! `strait_sidecar_inbound_connections` (open), `strait_sidecar_inbound_handshake_failures_total`,
//! `strait_sidecar_inbound_tcp_connections_total{result}`,
//! `strait_sidecar_inbound_plaintext_connections_total{protocol}`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use strait_proto as pb;
use strait_trust::IdentityKind;
use strait_trust::tls::{CredentialStore, PeerIdentity, TrustStore, authorize_fn};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::authz::{InboundAuthz, Reason, TlsMode};
use crate::discovery::Control;
use crate::headers as names;
pub use crate::headers::{ALPN_H2, ALPN_HTTP1, ALPN_TCP, ERROR_HEADER, PEER_IDENTITY_HEADER};
use crate::limits::idle::{self, DEFAULT_IDLE_TIMEOUT, PipeEnd};
use crate::sniff::Sniff;
use crate::status_class::{STATUS_CLASSES, status_class_index};
use crate::to_app::{App, ForwardError};
use crate::{grpc, to_app};

/// The first byte of every TLS connection: the content type of a handshake record.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the local app may take (TCP).
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A client must send request headers within this (HTTP/1.1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections may finish after shutdown before they are cut.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

use crate::to_app::Body;

/// Why the inbound listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("inbound TLS setup: {0}")]
    Tls(#[from] strait_trust::Error),
    #[error("registering the inbound metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

// === metrics ===

/// The inbound side's metrics.
#[derive(Debug, Clone)]
pub struct InboundMetrics {
    pub requests: IntCounterVec,
    /// `requests` of each status class (`status_class_index`), resolved once: a label lookup
    /// hashes and locks on every request.
    requests_by_class: [IntCounter; 5],
    pub duration: Histogram,
    pub connections: IntGauge,
    pub handshake_failures: IntCounter,
    pub tcp: IntCounterVec,
    pub plaintext: IntCounterVec,
}

impl InboundMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_inbound_requests_total",
                "HTTP requests received on the inbound listener, by response status class.",
            ),
            &["status_class"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "strait_sidecar_inbound_request_duration_seconds",
                "Time from an inbound request to its response headers.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )?;
        let connections = IntGauge::with_opts(Opts::new(
            "strait_sidecar_inbound_connections",
            "Open inbound connections (after the TLS handshake, or plaintext under PERMISSIVE).",
        ))?;
        let handshake_failures = IntCounter::with_opts(Opts::new(
            "strait_sidecar_inbound_handshake_failures_total",
            "Inbound connections refused in the TLS handshake (plaintext, unknown root, ...).",
        ))?;
        let tcp = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_inbound_tcp_connections_total",
                "Inbound TCP (ALPN strait-tcp) connections, by outcome.",
            ),
            &["result"],
        )?;
        let plaintext = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_inbound_plaintext_connections_total",
                "Plaintext inbound connections accepted under MeshTLS PERMISSIVE, by protocol.",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(plaintext.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(handshake_failures.clone()))?;
        registry.register(Box::new(tcp.clone()))?;
        let requests_by_class = STATUS_CLASSES.map(|class| requests.with_label_values(&[class]));
        for result in ["forwarded", "denied", "app_unavailable", "no_config"] {
            tcp.with_label_values(&[result]);
        }
        for protocol in ["http", "tcp"] {
            plaintext.with_label_values(&[protocol]);
        }
        Ok(Self {
            requests,
            requests_by_class,
            duration,
            connections,
            handshake_failures,
            tcp,
            plaintext,
        })
    }
}

// === authorization ===

/// What an inbound authorization decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct InboundRequest<'a> {
    /// The caller's verified SPIFFE ID; `None` for a plaintext caller (PERMISSIVE).
    pub caller: Option<&'a str>,
    /// Empty for a TCP connection.
    pub method: &'a str,
    /// Empty for a TCP connection.
    pub path: &'a str,
}

/// The inbound decision for `policy` (this sidecar's `InboundPolicy`): `Ok` to let the
/// request through, `Err(reason)` to refuse it. The rules are [`crate::authz`]'s; no policy
/// allows every caller that passed the handshake (a workload of the federation), and a
/// plaintext caller only under PERMISSIVE.
///
/// Compiles the policy on every call; the listener itself compiles once per config
/// (a private cache keyed by the config).
pub fn authorize(
    policy: Option<&pb::InboundPolicy>,
    request: &InboundRequest<'_>,
) -> Result<(), String> {
    let compiled = InboundAuthz::new(policy).map_err(|e| e.to_string());
    decide(&compiled, request)
}

fn decide(
    authz: &Result<InboundAuthz, String>,
    request: &InboundRequest<'_>,
) -> Result<(), String> {
    let authz = authz
        .as_ref()
        .map_err(|e| format!("the inbound policy cannot be loaded: {e}"))?;
    let decision = authz.decide(request.caller, request.method, request.path);
    if decision.allowed {
        return Ok(());
    }
    let name = |policy: usize| authz.permission.name(policy).to_owned();
    Err(match decision.reason {
        Reason::Rule { policy, rule } => {
            format!(
                "deny rule {rule} of TrafficPermission {} matches",
                name(policy)
            )
        }
        Reason::DefaultDeny { policy } => format!(
            "no rule allows it and TrafficPermission {} denies by default",
            name(policy)
        ),
        Reason::NothingDenies | Reason::NoPolicy => "allowed".to_owned(),
        Reason::PlaintextRefused => "plaintext is refused (STRICT)".to_owned(),
    })
}

/// The running config's inbound policy, compiled once per config (patterns are parsed when a
/// config arrives, not per request).
#[derive(Debug, Default)]
struct AuthzCache {
    inner: Mutex<Option<(Arc<pb::SidecarConfig>, CompiledAuthz)>>,
}

/// A compiled inbound policy, or why it cannot be compiled.
type CompiledAuthz = Arc<Result<InboundAuthz, String>>;

impl AuthzCache {
    fn get(&self, config: &Arc<pb::SidecarConfig>) -> CompiledAuthz {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, authz)) = guard.as_ref()
            && Arc::ptr_eq(cached, config)
        {
            return authz.clone();
        }
        let authz = Arc::new(InboundAuthz::new(config.inbound.as_ref()).map_err(|e| e.to_string()));
        if let Err(err) = authz.as_ref() {
            // The discovery client validates patterns before accepting a config, so this is a
            // config that bypassed it; every request is refused until it is replaced.
            tracing::error!(%err, "the inbound policy cannot be loaded; refusing every caller");
        }
        *guard = Some((config.clone(), authz.clone()));
        authz
    }
}

// === MeshTLS ===

/// How an inbound connection is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The TLS handshake (and, past it, mutual TLS with a verified identity).
    MutualTls,
    /// A plaintext caller without an identity (PERMISSIVE only).
    Plaintext,
}

/// The transport of a connection whose first byte is `first_byte`, under `mode`: STRICT is
/// always mutual TLS (a plaintext client then fails the handshake, as it always has; the
/// listener does not even peek); PERMISSIVE is mutual TLS when the connection opens with a
/// TLS handshake record, plaintext otherwise.
pub fn transport(mode: TlsMode, first_byte: u8) -> Transport {
    if mode.allows_plaintext() && first_byte != TLS_HANDSHAKE_RECORD {
        Transport::Plaintext
    } else {
        Transport::MutualTls
    }
}

// === serving ===

/// What the inbound side needs from the control half: the live credentials and trust, the
/// running config, and its metrics.
#[derive(Debug, Clone)]
pub struct InboundContext {
    pub creds: CredentialStore,
    pub trust: TrustStore,
    pub config: watch::Receiver<Arc<pb::SidecarConfig>>,
    pub metrics: InboundMetrics,
}

impl InboundContext {
    /// Registers the inbound metrics with `registry`.
    pub fn new(
        creds: CredentialStore,
        trust: TrustStore,
        config: watch::Receiver<Arc<pb::SidecarConfig>>,
        registry: &Registry,
    ) -> Result<Self, InboundError> {
        Ok(Self {
            creds,
            trust,
            config,
            metrics: InboundMetrics::new(registry)?,
        })
    }

    /// From a running [`Control`]; the metrics go to its registry.
    pub fn from_control(control: &Control) -> Result<Self, InboundError> {
        Self::new(
            control.creds().clone(),
            control.trust().clone(),
            control.config.clone(),
            &control.registry,
        )
    }
}

/// The inbound TLS config: the live certificate, clients must be workloads of the federation
/// (verified against the live bundle), ALPN `h2`, `http/1.1`, `strait-tcp`.
pub fn server_tls(
    creds: &CredentialStore,
    trust: &TrustStore,
) -> Result<rustls::ServerConfig, InboundError> {
    let workloads_only = authorize_fn(|peer: &PeerIdentity| match peer.id.kind() {
        IdentityKind::Workload { .. } => Ok(()),
        _ => Err("only workloads call a sidecar's inbound listener".to_owned()),
    });
    Ok(strait_trust::tls::server_config(
        creds,
        trust,
        Arc::new(workloads_only),
        vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_TCP.to_vec()],
    )?)
}

/// Serves the inbound listener until `shutdown` completes, forwarding to `app` (`None`: a
/// sidecar without an app answers `503`). After shutdown, open connections get
/// two seconds to finish.
pub async fn serve(
    listener: TcpListener,
    ctx: InboundContext,
    app: Option<SocketAddr>,
    shutdown: impl Future,
) -> Result<(), InboundError> {
    let tls = Arc::new(server_tls(&ctx.creds, &ctx.trust)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let shared = Arc::new(Shared {
        ctx,
        app: app.map(App::new),
        authz: AuthzCache::default(),
        rate_limit: RateLimiter::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(listen = ?listener.local_addr().ok(), ?app, "inbound listener serving");
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let shared = shared.clone();
                    let acceptor = acceptor.clone();
                    let stop = stop_rx.clone();
                    connections.spawn(
                        connection(shared, acceptor, tcp, peer, stop)
                            .instrument(tracing::debug_span!("inbound_conn", %peer)),
                    );
                }
                Err(err) => {
                    tracing::warn!(%err, "inbound accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "closing inbound connections still open after the drain period"
        );
        connections.shutdown().await;
    }
    Ok(())
}

struct Shared {
    ctx: InboundContext,
    /// `None`: a sidecar without an app.
    app: Option<App>,
    authz: AuthzCache,
    rate_limit: RateLimiter,
}

/// The local `RateLimit` of this sidecar's service: one token bucket shared by every caller,
/// rebuilt (full) only when the policy itself changes, so unrelated config pushes do not reset
/// it.
#[derive(Debug, Default)]
struct RateLimiter {
    inner: Mutex<Option<(pb::RateLimitPolicy, Option<crate::ratelimit::TokenBucket>)>>,
}

impl RateLimiter {
    /// `Err(status)` when the request is over the limit.
    fn check(
        &self,
        policy: Option<&pb::RateLimitPolicy>,
        now: std::time::Instant,
    ) -> Result<(), u16> {
        let Some(policy) = policy else { return Ok(()) };
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.as_ref().is_none_or(|(current, _)| current != policy) {
            *guard = Some((
                *policy,
                crate::ratelimit::TokenBucket::from_policy(policy, now),
            ));
        }
        match guard.as_mut().and_then(|(_, bucket)| bucket.as_mut()) {
            Some(bucket) => {
                if bucket.try_acquire(now) {
                    Ok(())
                } else {
                    Err(bucket.status())
                }
            }
            None => Ok(()),
        }
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenConnection(IntGauge);

impl OpenConnection {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn connection(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let metrics = &shared.ctx.metrics;
    // The mode as this connection arrives; STRICT peeks at nothing.
    let mode = TlsMode::from_policy(shared.ctx.config.borrow().inbound.as_ref());
    if mode.allows_plaintext() {
        let mut first = [0_u8; 1];
        // A TLS client speaks first; a plaintext one that waits for the server is TCP.
        match tokio::time::timeout(crate::sniff::SNIFF_TIMEOUT, tcp.peek(&mut first)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {
                if transport(mode, first[0]) == Transport::Plaintext {
                    plaintext(shared, tcp, peer, stop, None).await;
                    return;
                }
            }
            Err(_) => {
                plaintext(shared, tcp, peer, stop, Some(Sniff::Tcp)).await;
                return;
            }
        }
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            metrics.handshake_failures.inc();
            let reason = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .and_then(strait_trust::tls::refusal)
                .map_or_else(|| err.to_string(), ToString::to_string);
            tracing::debug!(%peer, %reason, "inbound TLS handshake refused");
            return;
        }
        Err(_) => {
            metrics.handshake_failures.inc();
            tracing::debug!(%peer, "inbound TLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let caller = match strait_trust::peer_identity(conn.peer_certificates().unwrap_or_default()) {
        Ok(id) => id,
        Err(err) => {
            // The verifier already required a certificate with one SPIFFE ID.
            tracing::warn!(%peer, %err, "verified client without a readable identity");
            return;
        }
    };
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let _open = OpenConnection::new(&metrics.connections);
    let caller = caller.to_string();
    if alpn.as_deref() == Some(ALPN_TCP) {
        // No idle timeout here: the client sidecar applies the service's own.
        tcp_pipe(&shared, tls, Some(&caller), peer, None).await;
        return;
    }
    let h2 = alpn.as_deref() == Some(ALPN_H2);
    serve_http(shared, tls, Some(Arc::from(caller)), peer, stop, None, h2).await;
}

/// A plaintext connection under PERMISSIVE: sniffed (unless `kind` is known already), then
/// served as HTTP or TCP with no caller identity, closed once idle for
/// [`DEFAULT_IDLE_TIMEOUT`].
async fn plaintext(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    kind: Option<Sniff>,
) {
    let kind = match kind {
        Some(kind) => kind,
        None => match crate::sniff::sniff_stream(&tcp).await {
            Some(kind) => kind,
            None => return,
        },
    };
    let metrics = &shared.ctx.metrics;
    let _open = OpenConnection::new(&metrics.connections);
    if kind == Sniff::Http {
        metrics.plaintext.with_label_values(&["http"]).inc();
        tracing::debug!(%peer, "plaintext HTTP connection (PERMISSIVE)");
        let activity = idle::Activity::new();
        let io = idle::Tracked::new(tcp, activity.clone());
        serve_http(shared, io, None, peer, stop, Some(&activity), false).await;
    } else {
        metrics.plaintext.with_label_values(&["tcp"]).inc();
        tracing::debug!(%peer, "plaintext TCP connection (PERMISSIVE)");
        tcp_pipe(&shared, tcp, None, peer, Some(DEFAULT_IDLE_TIMEOUT)).await;
    }
}

/// Serves HTTP/1.1 or HTTP/2 on `io` from `caller` (`None`: plaintext) until the client
/// closes, the listener stops, or (with `idle`) nothing was read for [`DEFAULT_IDLE_TIMEOUT`].
/// `h2`: the TLS handshake settled on HTTP/2 (ALPN `h2`, what client sidecars and gateways
/// always ask for), so the connection is served as HTTP/2 directly: no version sniffing and
/// no upgrade machinery, which HTTP/2 has no use for, on the hot path.
async fn serve_http<IO>(
    shared: Arc<Shared>,
    io: IO,
    caller: Option<Arc<str>>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    idle: Option<&idle::Activity>,
    h2: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service_shared = shared.clone();
    let origin = Arc::new(Origin::new(caller, peer));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = service_shared.clone();
        let origin = origin.clone();
        async move { Ok::<_, Infallible>(handle(&shared, request, &origin).await) }
    });
    let io = TokioIo::new(io);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service);
        drive(conn, peer, stop, idle).await;
        return;
    }
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    // With upgrades: an HTTP/1.1 `Upgrade` (WebSocket) becomes a byte pipe to the app.
    drive(
        builder.serve_connection_with_upgrades(io, service),
        peer,
        stop,
        idle,
    )
    .await;
}

/// Runs one served connection to its end: the client closes, it idles out (with `idle`), or
/// the listener stops; the last two shut it down gracefully, bounded by [`DRAIN_TIMEOUT`].
async fn drive<C>(
    conn: C,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    idle: Option<&idle::Activity>,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let idle = async {
        match idle {
            Some(activity) => idle::silent_for(activity, DEFAULT_IDLE_TIMEOUT).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "inbound connection ended with an error");
            }
        }
        () = idle => {
            tracing::debug!(%peer, "closing an idle inbound connection");
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
            let _ = conn.await;
        }
    }
}

/// Resolves once the stop flag is raised (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Who is at the other end of one HTTP connection, with what each of its requests needs
/// from that, worked out once per connection rather than per request.
struct Origin {
    /// The verified SPIFFE ID; `None` for a plaintext caller.
    caller: Option<Arc<str>>,
    /// `caller` as the value of [`PEER_IDENTITY_HEADER`], or why it cannot be one.
    identity: Option<Result<HeaderValue, String>>,
    /// The TCP peer, for the request's span and log events.
    peer: SocketAddr,
}

impl Origin {
    fn new(caller: Option<Arc<str>>, peer: SocketAddr) -> Self {
        let identity = caller.as_deref().map(|caller| {
            HeaderValue::from_str(caller).map_err(|e| format!("caller identity as a header: {e}"))
        });
        Self {
            caller,
            identity,
            peer,
        }
    }
}

/// One HTTP request: authorize, forward to the app, stream the response back.
async fn handle(shared: &Shared, request: Request<Incoming>, origin: &Origin) -> Response<Body> {
    let start = Instant::now();
    // At debug level: an enabled span formats its fields for the log on every request,
    // logged or not (docs/benchmarks.md "Sidecar"), so the few info events of a request carry
    // its caller themselves.
    let span = tracing::debug_span!(
        "inbound",
        peer = %origin.peer,
        caller = origin.caller.as_deref().unwrap_or("plaintext"),
        method = %request.method(),
        path = request.uri().path(),
        status = tracing::field::Empty,
    );
    let grpc = grpc::is_grpc(request.headers());
    let mut response = forward(shared, request, origin, grpc)
        .instrument(span.clone())
        .await;
    if grpc {
        response = grpc::mesh_error_as_grpc(response);
    }
    let status = response.status();
    span.record("status", status.as_u16());
    let metrics = &shared.ctx.metrics;
    metrics.requests_by_class[status_class_index(status)].inc();
    metrics.duration.observe(start.elapsed().as_secs_f64());
    // As a child of the span without entering it: entering and leaving cost more than an
    // event that is filtered out.
    tracing::debug!(parent: &span, status = status.as_u16(), elapsed = ?start.elapsed(), "inbound request");
    response
}

/// `grpc`: the request is a gRPC call ([`grpc::is_grpc`], decided once by the caller).
async fn forward(
    shared: &Shared,
    request: Request<Incoming>,
    origin: &Origin,
    grpc: bool,
) -> Response<Body> {
    let caller = origin.caller.as_deref();
    let config = shared.ctx.config.borrow().clone();
    if config.version == 0 {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-config",
            "the sidecar has no config from its zone yet\n",
        );
    }
    let authz = shared.authz.get(&config);
    if caller.is_none()
        && !authz
            .as_ref()
            .as_ref()
            .is_ok_and(|a| a.tls_mode.allows_plaintext())
    {
        // A plaintext connection from before the mode went back to STRICT.
        tracing::info!(peer = %origin.peer, path = request.uri().path(), "plaintext request refused: MeshTLS is STRICT");
        let mut response = error_response(
            StatusCode::FORBIDDEN,
            "plaintext-refused",
            "forbidden: this service accepts mutual TLS only (MeshTLS STRICT)\n",
        );
        if request.version() == Version::HTTP_11 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }
    let decision = decide(
        &authz,
        &InboundRequest {
            caller,
            method: request.method().as_str(),
            path: request.uri().path(),
        },
    );
    if let Err(reason) = decision {
        tracing::info!(peer = %origin.peer, caller, method = %request.method(), path = request.uri().path(), %reason, "request denied by TrafficPermission");
        return error_response(
            StatusCode::FORBIDDEN,
            "denied",
            "forbidden: TrafficPermission denies this request\n",
        );
    }
    let limit = config.inbound.as_ref().and_then(|i| i.rate_limit.as_ref());
    if let Err(status) = shared.rate_limit.check(limit, std::time::Instant::now()) {
        return error_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            "rate-limited",
            "too many requests: RateLimit\n",
        );
    }
    let Some(app) = &shared.app else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "app-unavailable",
            "this sidecar has no app\n",
        );
    };
    let declared = config
        .inbound
        .as_ref()
        .map_or(pb::Protocol::Unspecified, |i| i.app_protocol());
    let protocol = to_app::app_protocol(
        request.version(),
        request.headers(),
        grpc,
        caller.is_none(),
        declared,
    );
    match app
        .forward(
            request,
            origin.identity.as_ref(),
            protocol,
            DEFAULT_IDLE_TIMEOUT,
        )
        .await
    {
        Ok(response) => response,
        Err(ForwardError::BadRequest(reason)) => {
            tracing::info!(peer = %origin.peer, caller, %reason, "request refused");
            error_response(StatusCode::BAD_REQUEST, "bad-request", "bad request\n")
        }
        Err(ForwardError::App(err)) if err.is_connect() => {
            tracing::info!(app = %app.addr, %err, caller, "the app is unreachable");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "app-unavailable",
                "the app is not reachable\n",
            )
        }
        Err(ForwardError::App(err)) => {
            tracing::info!(app = %app.addr, %err, caller, "the app failed the request");
            error_response(StatusCode::BAD_GATEWAY, "app-error", "the app failed\n")
        }
    }
}

fn error_response(status: StatusCode, error: &'static str, body: &'static str) -> Response<Body> {
    names::sidecar_error(status, error, Bytes::from_static(body.as_bytes()))
}

/// A TCP connection: authorize the caller (`None`: plaintext), then copy bytes both ways to
/// the app, until both end or (with `idle_timeout`) nothing moved for that long.
async fn tcp_pipe<IO>(
    shared: &Shared,
    mut tls: IO,
    caller: Option<&str>,
    peer: SocketAddr,
    idle_timeout: Option<Duration>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let metrics = &shared.ctx.metrics;
    let shown = caller.unwrap_or("plaintext");
    let config = shared.ctx.config.borrow().clone();
    let outcome = |result: &str| metrics.tcp.with_label_values(&[result]).inc();
    if config.version == 0 {
        outcome("no_config");
        tracing::info!(%peer, caller = shown, "TCP connection closed: no config yet");
        return;
    }
    let request = InboundRequest {
        caller,
        method: "",
        path: "",
    };
    if let Err(reason) = decide(&shared.authz.get(&config), &request) {
        outcome("denied");
        tracing::info!(%peer, caller = shown, %reason, "TCP connection denied by TrafficPermission");
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        return;
    }
    let Some(app) = shared.app.as_ref().map(|app| app.addr) else {
        outcome("app_unavailable");
        return;
    };
    let mut upstream =
        match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app)).await {
            Ok(Ok(s)) => s,
            Ok(Err(err)) => {
                outcome("app_unavailable");
                tracing::info!(%app, %err, "TCP connection closed: the app is unreachable");
                return;
            }
            Err(_) => {
                outcome("app_unavailable");
                tracing::info!(%app, "TCP connection closed: connecting to the app timed out");
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    outcome("forwarded");
    let end = match idle_timeout {
        Some(timeout) => idle::pipe(tls, upstream, timeout).await,
        None => match tokio::io::copy_bidirectional(&mut tls, &mut upstream).await {
            Ok((up, down)) => PipeEnd::Done(up, down),
            Err(err) => PipeEnd::Error(err),
        },
    };
    match end {
        PipeEnd::Done(up, down) => {
            tracing::debug!(%peer, caller = shown, up, down, "TCP connection finished");
        }
        PipeEnd::Error(err) => {
            tracing::debug!(%peer, caller = shown, %err, "TCP connection ended with an error");
        }
        PipeEnd::Idle => tracing::debug!(%peer, caller = shown, "TCP connection closed: idle"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rule(allow: bool, from: &[&str], methods: &[&str], paths: &[&str]) -> pb::PermissionRule {
        pb::PermissionRule {
            allow,
            from: from.iter().map(|s| (*s).to_owned()).collect(),
            methods: methods.iter().map(|s| (*s).to_owned()).collect(),
            path_prefixes: paths.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn req<'a>(caller: &'a str, method: &'a str, path: &'a str) -> InboundRequest<'a> {
        InboundRequest {
            caller: Some(caller),
            method,
            path,
        }
    }

    const WEB: &str = "spiffe://strait.local/ns/frontend/sa/web";
    const BATCH: &str = "spiffe://strait.local/ns/demo/sa/batch";
    const API: &str = "spiffe://strait.local/ns/demo/sa/api";

    #[test]
    fn permission_semantics() {
        assert!(authorize(None, &req(WEB, "GET", "/")).is_ok());
        let inbound = |permission| pb::InboundPolicy {
            tls_mode: 0,
            permissions: vec![permission],
            ..Default::default()
        };
        let policy = inbound(pb::PermissionPolicy {
            default_deny: true,
            rules: vec![
                rule(
                    true,
                    &["spiffe://strait.local/ns/demo/sa/*", WEB],
                    &["GET", "HEAD"],
                    &["/api/"],
                ),
                rule(false, &[BATCH], &[], &[]),
            ],
            ..Default::default()
        });
        let p = Some(&policy);
        assert!(authorize(p, &req(WEB, "GET", "/api/x")).is_ok());
        assert!(authorize(p, &req(API, "HEAD", "/api/")).is_ok());
        assert!(authorize(p, &req(API, "POST", "/api/x")).is_err(), "method");
        assert!(authorize(p, &req(API, "GET", "/other")).is_err(), "path");
        assert!(
            authorize(p, &req(BATCH, "GET", "/api/x")).is_err(),
            "deny wins"
        );
        // TCP: the allow rule names methods and paths, so it cannot match.
        assert!(authorize(p, &req(API, "", "")).is_err());

        let deny_list = inbound(pb::PermissionPolicy {
            default_deny: false,
            rules: vec![rule(false, &[], &[], &["/admin"])],
            ..Default::default()
        });
        let p = Some(&deny_list);
        assert!(authorize(p, &req(WEB, "GET", "/admin/x")).is_err());
        assert!(authorize(p, &req(WEB, "GET", "/")).is_ok());
        assert!(authorize(p, &req(WEB, "", "")).is_ok(), "TCP has no path");

        // A bad pattern fails closed.
        let bad = inbound(pb::PermissionPolicy {
            default_deny: false,
            rules: vec![rule(false, &["nope"], &[], &[])],
            ..Default::default()
        });
        let err = authorize(Some(&bad), &req(WEB, "GET", "/")).unwrap_err();
        assert!(err.contains("cannot be loaded"), "{err}");
    }

    #[test]
    fn permissive_tells_tls_from_plaintext_by_the_first_byte() {
        use Transport::{MutualTls, Plaintext};
        // STRICT: always the handshake, whatever arrives (plaintext then fails it).
        for byte in [TLS_HANDSHAKE_RECORD, b'G', b'P', 0x00, 0x15, 0x17] {
            assert_eq!(transport(TlsMode::Strict, byte), MutualTls, "{byte:#x}");
        }
        // PERMISSIVE: a handshake record is TLS; HTTP, the HTTP/2 preface, anything else is
        // plaintext (TLS alerts or application data never open a connection).
        assert_eq!(
            transport(TlsMode::Permissive, TLS_HANDSHAKE_RECORD),
            MutualTls
        );
        for byte in [b'G', b'P', b'h', 0x00, 0x15, 0x17, 0xff] {
            assert_eq!(transport(TlsMode::Permissive, byte), Plaintext, "{byte:#x}");
        }
    }

    #[test]
    fn plaintext_callers_are_unauthenticated() {
        let inbound = |tls_mode: pb::MeshTlsMode, permission: Option<pb::PermissionPolicy>| {
            pb::InboundPolicy {
                tls_mode: tls_mode as i32,
                permissions: permission.into_iter().collect(),
                ..Default::default()
            }
        };
        let plain = |method, path| InboundRequest {
            caller: None,
            method,
            path,
        };
        // STRICT refuses plaintext before any rule, even with no permission policy.
        let strict = inbound(pb::MeshTlsMode::Strict, None);
        let err = authorize(Some(&strict), &plain("GET", "/")).unwrap_err();
        assert!(err.contains("STRICT"), "{err}");
        assert!(
            authorize(None, &plain("GET", "/")).is_err(),
            "no policy is STRICT"
        );
        // PERMISSIVE without TrafficPermission lets it in, HTTP and TCP.
        let open = inbound(pb::MeshTlsMode::Permissive, None);
        assert!(authorize(Some(&open), &plain("GET", "/")).is_ok());
        assert!(authorize(Some(&open), &plain("", "")).is_ok());
        // A rule naming identities never matches a plaintext caller; default-deny denies it.
        let named = inbound(
            pb::MeshTlsMode::Permissive,
            Some(pb::PermissionPolicy {
                default_deny: true,
                rules: vec![
                    rule(true, &["spiffe://strait.local/ns/demo/sa/*"], &[], &[]),
                    rule(true, &[], &["GET"], &["/public"]),
                ],
                ..Default::default()
            }),
        );
        let p = Some(&named);
        assert!(authorize(p, &plain("GET", "/")).is_err());
        assert!(authorize(p, &plain("", "")).is_err(), "TCP");
        assert!(authorize(p, &req(API, "GET", "/")).is_ok());
        // A rule without `from` matches anyone, plaintext included.
        assert!(authorize(p, &plain("GET", "/public/x")).is_ok());
    }

    #[test]
    fn status_classes() {
        let class = |status| STATUS_CLASSES[status_class_index(status)];
        assert_eq!(class(StatusCode::CONTINUE), "1xx");
        assert_eq!(class(StatusCode::OK), "2xx");
        assert_eq!(class(StatusCode::NOT_MODIFIED), "3xx");
        assert_eq!(class(StatusCode::FORBIDDEN), "4xx");
        assert_eq!(class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
    }
}
