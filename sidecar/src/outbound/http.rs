//! HTTP on the outbound side: a sniffed (or declared) HTTP connection from the app is served
//! with hyper, and each request is routed ([`crate::route`]), faulted ([`crate::fault`]),
//! admitted under the service's `CircuitBreaker`, and sent: the [`Attempt`] machine decides the
//! tries, this module does their IO ([`send`], [`try_once`]) and turns the machine's answer
//! into the response the app gets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::attempt::{Action, Answer, Attempt, Tried};
use super::grpc_calls::Ending;
use super::metrics::{NONE, RequestSeries, ZoneLabel};
use super::services::{Destination, REFUSAL_MEMORY, ServicePolicy, ServiceState};
use super::{DRAIN_TIMEOUT, MAX_REPLAY_BODY, Shared, lock, stopped};
use crate::deadline::{self, DeadlineBody};
use crate::h2client::{Outgoing, SendError, Sender};
use crate::headers::{self as names, strip_hop_by_hop};
use crate::lb::{Target, TargetKey};
use crate::limits::breaker::{Overflow, Permit};
use crate::limits::idle;
use crate::outlier::Outcome;
use crate::pool::{Body, ConnPermit, ConnectError, Lookup};
use crate::route::{RequestView, Subset};
use crate::{grpc, to_app};

/// Serves the HTTP requests of one connection from the app until it closes, goes idle for
/// `idle_timeout`, or the outbound side stops.
pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    destination: Arc<Destination>,
    tcp: TcpStream,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        let destination = destination.clone();
        async move {
            let response = handle(&shared, &destination, request).await;
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    // Extended CONNECT (RFC 8441): WebSocket over HTTP/2 from the app (`super::upgrade`).
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let activity = idle::Activity::new();
    let io = idle::Tracked::new(tcp, activity.clone());
    // With upgrades: an HTTP/1.1 `Upgrade` (WebSocket) becomes a byte pipe (`super::upgrade`).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
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

/// One request from the app to `destination`.
async fn handle(
    shared: &Shared,
    destination: &Destination,
    request: Request<Incoming>,
) -> Response<Body> {
    let key = destination.service.as_str();
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
    let service = shared.table.service(key);
    let grpc_call = grpc::is_grpc(request.headers());
    let (response, zone) = route_request(shared, service.as_ref(), destination, request, grpc_call)
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
    if grpc_call {
        // A gRPC client reads the status from `grpc-status`, not from an HTTP 503.
        let response = grpc::mesh_error_as_grpc(response);
        super::grpc_calls::count(&metrics.grpc, key, &zone, response)
    } else {
        response
    }
}

/// Decides and sends one request; returns the response and the label of the zone that
/// answered.
async fn route_request(
    shared: &Shared,
    service: Option<&Arc<ServiceState>>,
    destination: &Destination,
    request: Request<Incoming>,
    grpc_call: bool,
) -> (Response<Body>, ZoneLabel) {
    let port = destination.port;
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
    let zone = shared.table.zone_header();
    let upgrade = if request.version() == Version::HTTP_11 {
        to_app::is_upgrade(request.headers())
    } else {
        super::upgrade::extended_connect(&request).is_some()
    };
    if upgrade {
        // Boxed, as the rare path it is: its state stays out of every request's future.
        return Box::pin(super::upgrade::forward(
            shared,
            service,
            destination,
            request,
            zone,
        ))
        .await;
    }
    let call_deadline = grpc_call
        .then(|| request.headers().get(grpc::TIMEOUT))
        .flatten()
        .and_then(grpc::parse_timeout);
    let (parts, body) = match prepare(request, zone).await {
        Ok(p) => p,
        Err(response) => return (response, NONE),
    };
    let long_lived = grpc_call || matches!(body, RequestBody::Streaming(_));
    let headers_timeout = headers_timeout(&policy, call_deadline, long_lived);
    let sent = send(
        shared,
        service,
        &policy,
        Scope {
            subset: subset.as_ref(),
            pinned: destination.zone.as_deref(),
        },
        port,
        headers_timeout,
        parts,
        body,
        grpc_call,
    );
    let sent = match headers_timeout {
        Some(limit) => tokio::time::timeout(limit, sent).await,
        None => Ok(sent.await),
    };
    match sent {
        Ok((response, zone)) => (bound_body(response, &policy, start), zone),
        Err(_) => (
            error_response(StatusCode::GATEWAY_TIMEOUT, "request-timeout"),
            NONE,
        ),
    }
}

/// How long a request may wait for its response headers (`None`: no limit but the idle
/// timeout): the least of `responseHeaders`, the call's own deadline (`grpc-timeout`) and
/// `request` — the configured one, or else the mesh default, which does not apply to calls
/// that are long-lived by nature (`long_lived`: gRPC, whose streams and deadlines are the
/// application's, and a request whose body streams, an upload a unary deadline would cut).
fn headers_timeout(
    policy: &ServicePolicy,
    call_deadline: Option<Duration>,
    long_lived: bool,
) -> Option<Duration> {
    let request = (policy.request_timeout_set || !long_lived).then_some(policy.request_timeout);
    [request, policy.headers_timeout, call_deadline]
        .into_iter()
        .flatten()
        .min()
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
        // The mesh default holds the headers only: a long download is no unary call.
        policy.request_timeout_set.then_some(policy.request_timeout)
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
        Target::Remote { .. } => match service.remote(target, port, gateway_id) {
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
    // The sidecars speak HTTP/2 between them whatever the apps speak: this says what the
    // app spoke, so that the destination's app gets HTTP/2 too. (An HTTP/1.1 app that sends
    // it itself only asks HTTP/2 of the destination for its own request: not looked for, a
    // lookup saved on every request.)
    if parts.version == Version::HTTP_2 {
        parts.headers.insert(to_app::APP_PROTOCOL, to_app::H2);
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

/// The tries of one request, as the [`Attempt`] machine decides them. The request times out
/// `timeout` from now: the machine answers `request-timeout` rather than back off past it, and
/// the caller holds the whole of it to the same limit. `grpc_call`: the outcome of an answer
/// whose status comes in trailers is recorded for outlier detection when they arrive.
#[allow(clippy::too_many_arguments)]
async fn send(
    shared: &Shared,
    service: &Arc<ServiceState>,
    policy: &ServicePolicy,
    scope: Scope<'_>,
    port: u16,
    timeout: Option<Duration>,
    parts: http::request::Parts,
    mut body: RequestBody,
    grpc_call: bool,
) -> (Response<Body>, ZoneLabel) {
    let metrics = &shared.ctx.metrics;
    let now = Instant::now();
    let mut attempt = Attempt::new(
        parts.method.clone(),
        &policy.retry,
        &service.budget,
        now,
        timeout.and_then(|t| now.checked_add(t)),
    );
    let mut action = Action::Pick;
    loop {
        action = match action {
            Action::Pick => {
                let pick = lock(&service.balancer).pick_within(
                    Instant::now(),
                    &mut rand::rng(),
                    scope.pinned,
                    scope.subset,
                    attempt.tried(),
                );
                attempt.picked(pick)
            }
            Action::Try {
                target,
                per_try_timeout,
            } => {
                // Only a remote target needs it: no copy for this zone's endpoints.
                let gateway_id = match target {
                    Target::Remote { .. } => shared.table.gateway_id(),
                    Target::Endpoint { .. } => String::new(),
                };
                match admit(shared, service, policy, &target, port, &gateway_id) {
                    Err(limit) => attempt.overflowed(limit),
                    Ok(admitted) => {
                        let started = Instant::now();
                        if let Some(key) = attempt.current() {
                            lock(&service.balancer).on_start(key, started);
                        }
                        let try_ = Try {
                            target: &target,
                            port,
                            gateway_id: &gateway_id,
                            per_try_timeout,
                        };
                        let (outcome, mut response) =
                            try_once(shared, service, policy, try_, admitted, &parts, &mut body)
                                .await;
                        let now = Instant::now();
                        if let Some(key) = attempt.current() {
                            let latency = now.duration_since(started);
                            let mut balancer = lock(&service.balancer);
                            if grpc_call && outcome == Outcome::Response(200) {
                                // A gRPC answer with its status still to come: `UNAVAILABLE`
                                // in the trailers is a failure, like a 503.
                                balancer.on_answered(key, now, latency);
                                response =
                                    response.map(|r| outcome_by_trailers(shared, service, key, r));
                            } else if let Some(ejection) =
                                balancer.on_complete(key, now, latency, outcome)
                            {
                                super::metrics::ejected(
                                    &metrics.ejections,
                                    &service.name,
                                    key,
                                    &ejection,
                                );
                            }
                        }
                        let tried = Tried {
                            outcome,
                            response,
                            can_replay: body.can_replay(),
                        };
                        let next = attempt.tried_once(tried, now, &mut rand::rng());
                        if let Action::BackOff { .. } = next {
                            metrics
                                .retries
                                .with_label_values(&[service.name.as_str()])
                                .inc();
                        }
                        next
                    }
                }
            }
            Action::BackOff { until } => {
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                attempt.backed_off(Instant::now())
            }
            Action::Respond(answer) => return respond(shared, service, answer),
        };
    }
}

/// The response the app gets for the machine's answer.
fn respond(
    shared: &Shared,
    service: &ServiceState,
    answer: Answer<Response<Body>>,
) -> (Response<Body>, ZoneLabel) {
    match answer {
        Answer::Response(response, zone) => (response, zone),
        Answer::Failed(outcome, zone) => (failure_response(outcome), zone),
        Answer::Overflow(limit) => (overflow(shared, service, limit), NONE),
        Answer::NoHealthyUpstream => {
            let refusal = lock(&service.last_refusal)
                .as_ref()
                .filter(|(at, _, _)| at.elapsed() < REFUSAL_MEMORY)
                .map(|(_, code, text)| format!("the last gateway refusal was {code}: {text}"))
                .unwrap_or_default();
            (
                error_response_with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-healthy-upstream",
                    &refusal,
                ),
                NONE,
            )
        }
        Answer::RequestTimeout => (
            error_response(StatusCode::GATEWAY_TIMEOUT, "request-timeout"),
            NONE,
        ),
    }
}

/// `response` (to a gRPC call, from `key`) with its outcome recorded for outlier detection
/// when its trailers say it: nothing if the caller goes away first.
fn outcome_by_trailers(
    shared: &Shared,
    service: &Arc<ServiceState>,
    key: &TargetKey,
    response: Response<Body>,
) -> Response<Body> {
    let service = service.clone();
    let key = key.clone();
    let ejections = shared.ctx.metrics.ejections.clone();
    super::grpc_calls::on_end(response, move |ending| {
        let outcome = match ending {
            Ending::Status(code) => Outcome::Grpc(code),
            Ending::Missing => Outcome::Reset,
            Ending::Abandoned => return,
        };
        let ejection = lock(&service.balancer).on_outcome(&key, outcome, Instant::now());
        if let Some(ejection) = ejection {
            super::metrics::ejected(&ejections, &service.name, &key, &ejection);
        }
    })
}

/// Where one try goes.
#[derive(Clone, Copy)]
struct Try<'a> {
    target: &'a Target,
    port: u16,
    /// Who this zone's gateways must be (empty for this zone's endpoints).
    gateway_id: &'a str,
    /// From the request leaving to its response headers.
    per_try_timeout: Option<Duration>,
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
async fn try_once(
    shared: &Shared,
    service: &ServiceState,
    policy: &ServicePolicy,
    try_: Try<'_>,
    admitted: Admitted<'_>,
    parts: &http::request::Parts,
    body: &mut RequestBody,
) -> (Outcome, Option<Response<Body>>) {
    let Try {
        target,
        port,
        gateway_id,
        per_try_timeout,
    } = try_;
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
                    let Some(remote) = service.remote(target, port, gateway_id) else {
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
        forget(shared, target, service, port);
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
    let result = match per_try_timeout {
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
            let outcome = if never_reached_the_app(&parts.headers) {
                Outcome::ConnectFailure
            } else {
                // A trailers-only gRPC answer carries the call's outcome in its headers.
                match grpc::status(&parts.headers) {
                    Some(code) => Outcome::Grpc(code),
                    None => Outcome::Response(parts.status.as_u16()),
                }
            };
            (
                outcome,
                Some(Response::from_parts(
                    parts,
                    body.map_err(Into::into).boxed(),
                )),
            )
        }
        Err(err @ SendError::Closed(_)) => {
            tracing::debug!(?target, %err, "pooled connection unusable");
            forget(shared, target, service, port);
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

/// Whether the destination sidecar answered without passing the request to its app: it has no
/// config yet (a sidecar just restarted) or its app is not listening. Nothing ran, so the try
/// counts as a connect failure: retried on another target whatever the method, and toward
/// ejecting the target.
fn never_reached_the_app(headers: &http::HeaderMap) -> bool {
    headers
        .get(names::ERROR)
        .is_some_and(|e| e == "no-config" || e == "app-unavailable")
}

/// Drops the pooled connection to `target`: it failed.
fn forget(shared: &Shared, target: &Target, service: &ServiceState, port: u16) {
    match target {
        Target::Endpoint { address, .. } => shared.pool.forget(address),
        Target::Remote { .. } => {
            if let Some(remote) = service.remote(target, port, "") {
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
        Outcome::Reset | Outcome::Response(_) | Outcome::Grpc(_) => {
            error_response(StatusCode::BAD_GATEWAY, "upstream-reset")
        }
    }
}

pub(super) fn error_response(status: StatusCode, error: &'static str) -> Response<Body> {
    error_response_with(status, error, "")
}

/// [`error_response`] with a human-readable detail in the body.
fn error_response_with(status: StatusCode, error: &'static str, detail: &str) -> Response<Body> {
    let text = if detail.is_empty() {
        format!("{error}\n")
    } else {
        format!("{error}: {detail}\n")
    };
    names::sidecar_error(status, error, Bytes::from(text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::Method;

    fn upstream_uri(request: Request<()>) -> Result<String, String> {
        let (parts, ()) = request.into_parts();
        upstream_request(&parts).map(|r| r.uri().to_string())
    }

    #[test]
    fn a_sidecar_without_config_or_app_never_ran_the_request() {
        let mut headers = http::HeaderMap::new();
        assert!(!never_reached_the_app(&headers));
        for (error, never) in [
            ("no-config", true),
            ("app-unavailable", true),
            ("app-error", false),
            ("denied", false),
        ] {
            headers.insert(names::ERROR, HeaderValue::from_static(error));
            assert_eq!(never_reached_the_app(&headers), never, "{error}");
        }
    }

    #[test]
    fn long_lived_calls_wait_for_headers_only_as_long_as_configured() {
        use super::super::services::default_policy;
        use crate::outbound::DEFAULT_REQUEST_TIMEOUT;
        let s = Duration::from_secs;
        let mut policy = default_policy();
        // The mesh default: unary calls only.
        assert_eq!(
            headers_timeout(&policy, None, false),
            Some(DEFAULT_REQUEST_TIMEOUT)
        );
        assert_eq!(headers_timeout(&policy, None, true), None);
        // A gRPC call's own deadline holds either way.
        assert_eq!(headers_timeout(&policy, Some(s(2)), true), Some(s(2)));
        assert_eq!(
            headers_timeout(&policy, Some(s(60)), false),
            Some(DEFAULT_REQUEST_TIMEOUT)
        );
        // Configured: for every call; `responseHeaders` and the call's deadline may cut it.
        policy.request_timeout = s(5);
        policy.request_timeout_set = true;
        assert_eq!(headers_timeout(&policy, None, true), Some(s(5)));
        policy.headers_timeout = Some(s(1));
        assert_eq!(headers_timeout(&policy, None, true), Some(s(1)));
        assert_eq!(
            headers_timeout(&policy, Some(Duration::from_millis(300)), true),
            Some(Duration::from_millis(300))
        );
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
}
