//! TCP on the outbound side (and the upstream connections of HTTP upgrades, [`connect`]): a connection from the app that is not HTTP (sniffed, or a port
//! declared `TCP`) gets an upstream connection to a target the balancer picks, mutual TLS with
//! ALPN `strait-tcp` (through a tunnel of its own for another zone), with connect failures
//! retried on another target as the [`Attempt`] machine decides; then bytes are copied both
//! ways until either side closes or the connection goes idle.

use std::convert::Infallible;
use std::time::Instant;

use http::Method;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::attempt::{Action, Attempt, Tried};
use super::services::{Destination, ServicePolicy, ServiceState};
use super::{Shared, lock};
use crate::headers::ALPN_TCP;
use crate::lb::Target;
use crate::limits::breaker::Overflow;
use crate::limits::idle::{self, PipeEnd};
use crate::outlier::Outcome;
use crate::pool::ConnectError;

/// The upstream side of a proxied connection: direct or through a tunnel.
pub(super) trait Upstream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Upstream for T {}

/// Proxies `downstream` to `destination` (within its zone if the VIP is zone-pinned).
pub(super) async fn proxy(shared: &Shared, downstream: TcpStream, destination: &Destination) {
    let key = destination.service.as_str();
    let port = destination.port;
    let metrics = &shared.ctx.metrics;
    let outcome = |result: &str| metrics.tcp.with_label_values(&[key, result]).inc();
    let Some(service) = shared.table.service(key) else {
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
    let upstream = match connect(shared, &service, &policy, destination, ALPN_TCP).await {
        Ok((upstream, _)) => upstream,
        Err(NotConnected::NoHealthyUpstream) => {
            outcome("no_healthy_upstream");
            return;
        }
        Err(NotConnected::Failed) => {
            outcome("connect_failure");
            return;
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

/// Why no upstream connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotConnected {
    /// Nothing to try (first, or after failed tries).
    NoHealthyUpstream,
    /// The tries failed and the machine stopped.
    Failed,
}

/// An upstream connection of its own (not pooled) to a target of `destination`, mutual TLS
/// with `alpn` (through a tunnel of its own for another zone), connect failures retried on
/// another target as the [`Attempt`] machine decides; with the target that took it.
pub(super) async fn connect(
    shared: &Shared,
    service: &ServiceState,
    policy: &ServicePolicy,
    destination: &Destination,
    alpn: &'static [u8],
) -> Result<(Box<dyn Upstream>, Target), NotConnected> {
    let port = destination.port;
    let pinned = destination.zone.as_deref();
    let metrics = &shared.ctx.metrics;
    // The method only matters for response-based conditions; a TCP connect has none. No
    // request deadline: only the connect timeout bounds each try.
    let mut attempt: Attempt<'_, Infallible> = Attempt::new(
        Method::CONNECT,
        &policy.retry,
        &service.budget,
        Instant::now(),
        None,
    );
    let mut action = Action::Pick;
    loop {
        action = match action {
            Action::Pick => {
                let target = lock(&service.balancer).pick_within(
                    Instant::now(),
                    &mut rand::rng(),
                    pinned,
                    None,
                    attempt.tried(),
                );
                // Nothing to try (first or after failed tries): no healthy upstream.
                if target.is_none() {
                    return Err(NotConnected::NoHealthyUpstream);
                }
                attempt.picked(target)
            }
            Action::Try { target, .. } => {
                let started = Instant::now();
                if let Some(key) = attempt.current() {
                    lock(&service.balancer).on_start(key, started);
                }
                let connected: Result<Box<dyn Upstream>, ConnectError> = match &target {
                    Target::Endpoint {
                        address, spiffe_id, ..
                    } => shared
                        .pool
                        .connect(address, spiffe_id, alpn, policy.connect_timeout)
                        .await
                        .map(|s| Box::new(s) as Box<dyn Upstream>),
                    Target::Remote { .. } => {
                        let gateway_id = shared.table.gateway_id();
                        match service.remote(&target, port, &gateway_id) {
                            Some(remote) => shared
                                .pool
                                .connect_remote(&remote, alpn, policy.connect_timeout)
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
                if let Some(key) = attempt.current()
                    && let Some(ejection) = lock(&service.balancer).on_complete(
                        key,
                        now,
                        now.duration_since(started),
                        result,
                    )
                {
                    super::metrics::ejected(&metrics.ejections, &service.name, key, &ejection);
                }
                if let Some(stream) = connected {
                    return Ok((stream, target));
                }
                let tried = Tried {
                    outcome: result,
                    response: None,
                    can_replay: true,
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
            Action::BackOff { until } => {
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                attempt.backed_off(Instant::now())
            }
            Action::Respond(_) => return Err(NotConnected::Failed),
        };
    }
}
