//! The outbound side's metrics: the registered families, and each service's per-request series
//! resolved once (so the hot path does no label lookup for this zone's answers).

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::lb::TargetKey;
use crate::outlier::Ejection;
use crate::status_class::{STATUS_CLASSES, status_class_index};

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
    /// gRPC calls by how they ended (`grpc-status` class).
    pub grpc: IntCounterVec,
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
        let grpc = IntCounterVec::new(
            Opts::new(
                "strait_sidecar_outbound_grpc_calls_total",
                "gRPC calls from the local app, by service, serving zone and grpc-status class \
                 (ok, client-error, server-error; none: the call ended without a status).",
            ),
            &["service", "zone", "class"],
        )?;
        registry.register(Box::new(grpc.clone()))?;
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
            grpc,
        })
    }
}

/// One service's series of the per-request metrics, each resolved on its first use (so
/// /metrics lists exactly the series that saw a request, as with a lookup per request): a
/// label lookup hashes the labels and takes a lock, on every request.
#[derive(Debug, Default)]
pub(super) struct RequestSeries {
    duration: OnceLock<Histogram>,
    /// `requests{zone="local"}` by status class.
    local: [OnceLock<IntCounter>; 5],
    /// `requests{zone="none"}` by status class.
    none: [OnceLock<IntCounter>; 5],
}

impl RequestSeries {
    /// Counts a request of `service` answered by `zone` with `status` after `elapsed`.
    pub(super) fn record(
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

/// The `zone` label of a request: `local`, a remote zone's name (bounded by the federation's
/// size), or `none` when the sidecar answered itself.
pub(super) type ZoneLabel = Cow<'static, str>;
pub(super) const LOCAL_ZONE: &str = "local";
pub(super) const NONE_ZONE: &str = "none";
pub(super) const NONE: ZoneLabel = Cow::Borrowed(NONE_ZONE);

pub(super) fn zone_label(target: &TargetKey) -> ZoneLabel {
    match target {
        TargetKey::Endpoint(_) => Cow::Borrowed(LOCAL_ZONE),
        TargetKey::Zone(zone) => Cow::Owned(zone.clone()),
    }
}

/// Counts and logs that outlier detection ejected `key`, a target of `service`.
pub(super) fn ejected(
    ejections: &IntCounterVec,
    service: &str,
    key: &TargetKey,
    ejection: &Ejection,
) {
    ejections.with_label_values(&[service]).inc();
    tracing::info!(service, target = ?key, times = ejection.times, cause = ?ejection.cause, "target ejected");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
