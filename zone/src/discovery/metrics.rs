//! The discovery server's Prometheus metrics (listed in the module docs of [`super`]).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts};

#[derive(Debug, Clone)]
pub(super) struct Metrics {
    pub(super) registry: prometheus::Registry,
    pub(super) connected: IntGauge,
    pub(super) gateways: IntGauge,
    pub(super) pushes: IntCounter,
    pub(super) nacks: IntCounter,
    pub(super) latency: Histogram,
    pub(super) expired: IntCounter,
}

impl Metrics {
    pub(super) fn new() -> prometheus::Result<Self> {
        let registry = prometheus::Registry::new();
        let connected = IntGauge::with_opts(Opts::new(
            "strait_zone_sidecars_connected",
            "Sidecars with an open discovery stream.",
        ))?;
        let pushes = IntCounter::with_opts(Opts::new(
            "strait_zone_config_pushes_total",
            "Sidecar configs pushed (each a new version for one sidecar).",
        ))?;
        let nacks = IntCounter::with_opts(Opts::new(
            "strait_zone_config_nacks_total",
            "Sidecar configs rejected by the sidecar.",
        ))?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "strait_zone_config_push_latency_seconds",
                "Time from a change (or a registration) to the sidecar's ACK of the config carrying it.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let gateways = IntGauge::with_opts(Opts::new(
            "strait_zone_gateways_connected",
            "East-west gateways of this zone with an open gateway stream.",
        ))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(gateways.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(nacks.clone()))?;
        let expired = IntCounter::with_opts(Opts::new(
            "strait_zone_instances_expired_total",
            "Instances removed because their sidecar did not come back within the registration grace.",
        ))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(expired.clone()))?;
        Ok(Self {
            registry,
            connected,
            gateways,
            pushes,
            nacks,
            latency,
            expired,
        })
    }
}
