//! `Retry`, `Timeout` and `CircuitBreaker`: the client-side failure handling of calls to a
//! service.

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::duration::HumanDuration;
use crate::meta::TargetRef;

/// The most retries a policy may ask for: beyond this, retries amplify an outage more than
/// they hide one.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// `spec` of a `Retry`.
///
/// Connect failures are retried for every request (nothing reached the server); the
/// response-based conditions only for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE,
/// TRACE), because retrying a POST could run it twice. Retries go to another endpoint, or
/// another locality, when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    /// Absent: every service of the namespace (or of the mesh, in the mesh namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Retries after the first try (1..=10).
    pub attempts: u32,
    /// Deadline of each try; absent means only the `Timeout` request deadline applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<HumanDuration>,
    /// What is retried; defaults to connect-failure, reset and gateway-error.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Statuses retried by `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub budget: RetryBudget,
}

/// A condition under which a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// The connection could not be made (refused, timed out, TLS failed).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503 or 504: the failure was in front of the application.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The connection was reset or closed before a response.
    #[serde(rename = "reset")]
    Reset,
    /// A status listed in `retriableStatusCodes`.
    #[serde(rename = "retriable-status-codes")]
    RetriableStatusCodes,
    /// A gRPC call ended with `UNAVAILABLE` before any response message.
    #[serde(rename = "unavailable")]
    GrpcUnavailable,
    /// A gRPC call ended with `CANCELLED` before any response message.
    #[serde(rename = "cancelled")]
    GrpcCancelled,
    /// A gRPC call ended with `DEADLINE_EXCEEDED` before any response message.
    #[serde(rename = "deadline-exceeded")]
    GrpcDeadlineExceeded,
    /// A gRPC call ended with `RESOURCE_EXHAUSTED` before any response message.
    #[serde(rename = "resource-exhausted")]
    GrpcResourceExhausted,
    /// A gRPC call ended with `INTERNAL` before any response message.
    #[serde(rename = "internal")]
    GrpcInternal,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]
}

/// Exponential backoff with full jitter between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    /// First interval; doubles each retry. Default 25ms.
    #[serde(default = "default_backoff_base")]
    pub base: HumanDuration,
    /// Cap on the interval; absent means 10 × base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<HumanDuration>,
}

fn default_backoff_base() -> HumanDuration {
    HumanDuration::from_millis(25)
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: None,
        }
    }
}

impl Backoff {
    /// The cap in force: `max`, or 10 × `base` when absent.
    pub fn effective_max(&self) -> HumanDuration {
        self.max
            .unwrap_or(HumanDuration(self.base.get().saturating_mul(10)))
    }
}

/// Bounds retries to a share of regular traffic, so retries cannot turn a partial outage into
/// a full one (Linkerd's and Finagle's retry budget).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed, as a percentage of requests over the last 10 seconds. Default 20.
    #[serde(default = "default_budget_percent")]
    pub percent: f64,
    /// Retries always allowed per second, so low-traffic services can retry at all. Default 10.
    #[serde(default = "default_min_retries")]
    pub min_retries_per_second: u32,
}

fn default_budget_percent() -> f64 {
    20.0
}

fn default_min_retries() -> u32 {
    10
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_retries_per_second: default_min_retries(),
        }
    }
}

impl RetrySpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
        }
        if !(1..=MAX_RETRY_ATTEMPTS).contains(&self.attempts) {
            c.err(
                "spec.attempts",
                format!(
                    "must be between 1 and {MAX_RETRY_ATTEMPTS}, got {}",
                    self.attempts
                ),
            );
        }
        if let Some(d) = self.per_try_timeout {
            c.duration("spec.perTryTimeout", d);
        }
        if self.retry_on.is_empty() {
            c.err(
                "spec.retryOn",
                "must list at least one condition (leave it out for the default)",
            );
        }
        let wants_codes = self.retry_on.contains(&RetryOn::RetriableStatusCodes);
        if wants_codes && self.retriable_status_codes.is_empty() {
            c.err(
                "spec.retriableStatusCodes",
                "must not be empty when retryOn lists retriable-status-codes",
            );
        }
        if !wants_codes && !self.retriable_status_codes.is_empty() {
            // Otherwise the list would be silently ignored.
            c.err(
                "spec.retriableStatusCodes",
                "has no effect unless retryOn lists retriable-status-codes",
            );
        }
        for (i, code) in self.retriable_status_codes.iter().enumerate() {
            c.status(&format!("spec.retriableStatusCodes[{i}]"), *code, 100..=599);
        }
        c.duration("spec.backoff.base", self.backoff.base);
        if let Some(max) = self.backoff.max {
            c.duration("spec.backoff.max", max);
            if max < self.backoff.base {
                c.err(
                    "spec.backoff.max",
                    format!(
                        "{max} is shorter than spec.backoff.base ({})",
                        self.backoff.base
                    ),
                );
            }
        }
        c.percent("spec.budget.percent", self.budget.percent);
    }
}

/// `spec` of a `Timeout`. Absent fields keep the mesh default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutSpec {
    /// Absent: every service of the namespace (or of the mesh, in the mesh namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Time to establish a connection (TCP and TLS) to an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<HumanDuration>,
    /// Time from the request's start until the end of the whole response, retries included.
    /// A streaming response (a `text/event-stream` or gRPC response, or an upgrade) is held to
    /// it only until its headers; [`TimeoutSpec::stream`] bounds the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HumanDuration>,
    /// Time from the request's start until the response headers, retries included, for every
    /// response (streams too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HumanDuration>,
    /// Time from the request's start until the end of a streaming response; absent: streams
    /// have no total deadline (only `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<HumanDuration>,
    /// A connection or stream with no bytes in either direction for this long is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<HumanDuration>,
}

impl TimeoutSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
        }
        let fields = [
            ("spec.connect", self.connect),
            ("spec.request", self.request),
            ("spec.responseHeaders", self.response_headers),
            ("spec.stream", self.stream),
            ("spec.idle", self.idle),
        ];
        if fields.iter().all(|(_, d)| d.is_none()) {
            c.err(
                "spec",
                "set at least one of connect, request, responseHeaders, stream or idle",
            );
        }
        for (path, d) in fields {
            if let Some(d) = d {
                c.duration(path, d);
            }
        }
    }
}

/// `spec` of a `CircuitBreaker`: limits on concurrent work sent to the service and passive
/// outlier detection of its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// Absent: every service of the namespace (or of the mesh, in the mesh namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Connections open to the service's endpoints, from one proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection; beyond it requests fail at once with 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the service, from one proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Ejects an endpoint that keeps failing, for a while that grows each time it is ejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint; 0 turns this check off. Default 5.
    #[serde(rename = "consecutive5xx", default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive connect failures that eject an endpoint; 0 turns this check off. Default 5.
    #[serde(default = "default_consecutive")]
    pub consecutive_connect_failures: u32,
    /// How often ejections are reviewed. Default 10s.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Ejection time for the first ejection, multiplied by the number of ejections. Default 30s.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: HumanDuration,
    /// Most of the service's endpoints ejected at once, in percent. Default 50: a broken half
    /// can be taken out while the other half always keeps serving.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_percent: f64,
}

fn default_consecutive() -> u32 {
    5
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}

fn default_base_ejection() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_max_ejection() -> f64 {
    50.0
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: default_consecutive(),
            consecutive_connect_failures: default_consecutive(),
            interval: default_interval(),
            base_ejection_time: default_base_ejection(),
            max_ejection_percent: default_max_ejection(),
        }
    }
}

impl CircuitBreakerSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
            t.whole_service_only("spec.targetRef.port", "CircuitBreaker", c);
        }
        if self.max_connections.is_none()
            && self.max_pending_requests.is_none()
            && self.max_requests.is_none()
            && self.outlier_detection.is_none()
        {
            c.err(
                "spec",
                "set at least one of maxConnections, maxPendingRequests, maxRequests or outlierDetection",
            );
        }
        // A limit of 0 would refuse every request: that is a deny policy, not a breaker.
        for (path, v) in [
            ("spec.maxConnections", self.max_connections),
            ("spec.maxPendingRequests", self.max_pending_requests),
            ("spec.maxRequests", self.max_requests),
        ] {
            if let Some(v) = v {
                c.at_least(path, v.into(), 1);
            }
        }
        if let Some(od) = &self.outlier_detection {
            if od.consecutive_5xx == 0 && od.consecutive_connect_failures == 0 {
                c.err(
                    "spec.outlierDetection",
                    "consecutive5xx and consecutiveConnectFailures are both 0, so nothing is ever ejected: leave out outlierDetection instead",
                );
            }
            c.duration("spec.outlierDetection.interval", od.interval);
            c.duration(
                "spec.outlierDetection.baseEjectionTime",
                od.base_ejection_time,
            );
            c.percent(
                "spec.outlierDetection.maxEjectionPercent",
                od.max_ejection_percent,
            );
        }
    }
}
