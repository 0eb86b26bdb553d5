//! The gateway's Prometheus metrics. Labels are bounded: peer zones come from the config
//! (anything else is `unknown`), directions and outcomes are fixed sets.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use strait_proto::tunnel::{ALL_STATUSES, status_code_name};

/// Tunnels from other zones' gateways, served here.
pub const INBOUND: &str = "inbound";
/// Tunnels from this zone's sidecars, sent to other zones.
pub const OUTBOUND: &str = "outbound";

/// Every metric of a gateway.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    /// `strait_gateway_tunnels_active{direction, peer_zone}`.
    pub tunnels_active: IntGaugeVec,
    /// `strait_gateway_tunnels_total{direction, peer_zone, outcome}`; `outcome` is a tunnel
    /// status code name (`ok`, `no-healthy-upstream`, ...).
    pub tunnels_total: IntCounterVec,
    /// `strait_gateway_tunnel_bytes_total{direction, flow}`; `flow` is `to_destination` or
    /// `to_source`.
    pub bytes: IntCounterVec,
    /// `strait_gateway_quic_handshakes_total{side, result}`.
    pub handshakes: IntCounterVec,
    /// `strait_gateway_quic_0rtt_total{result}`: reconnects that sent 0-RTT data, by whether
    /// the peer accepted it.
    pub zero_rtt: IntCounterVec,
    /// `strait_gateway_stream_open_seconds`: from opening a stream on a peer connection to
    /// its answer to the header.
    pub stream_open: Histogram,
    /// `strait_gateway_peer_connected{peer_zone, peer}`: 1 while the pool has a live
    /// connection to that peer gateway.
    pub peer_connected: IntGaugeVec,
    /// `strait_gateway_inbound_connections`: peer gateways connected to this one.
    pub inbound_connections: IntGauge,
    /// `strait_gateway_config_version`: the version of the config in force.
    pub config_version: IntGauge,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let tunnels_active = IntGaugeVec::new(
            Opts::new(
                "strait_gateway_tunnels_active",
                "Tunnels open now, by direction and peer zone.",
            ),
            &["direction", "peer_zone"],
        )?;
        let tunnels_total = IntCounterVec::new(
            Opts::new(
                "strait_gateway_tunnels_total",
                "Tunnels requested, by direction, peer zone and outcome.",
            ),
            &["direction", "peer_zone", "outcome"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "strait_gateway_tunnel_bytes_total",
                "Bytes carried by finished tunnels, by direction and flow.",
            ),
            &["direction", "flow"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "strait_gateway_quic_handshakes_total",
                "QUIC handshakes with peer gateways, by side and result.",
            ),
            &["side", "result"],
        )?;
        let zero_rtt = IntCounterVec::new(
            Opts::new(
                "strait_gateway_quic_0rtt_total",
                "Resumed QUIC connections that sent 0-RTT data, by whether it was accepted.",
            ),
            &["result"],
        )?;
        let stream_open = Histogram::with_opts(
            HistogramOpts::new(
                "strait_gateway_stream_open_seconds",
                "Time from opening a tunnel stream to the peer gateway's answer.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let peer_connected = IntGaugeVec::new(
            Opts::new(
                "strait_gateway_peer_connected",
                "1 while this gateway holds a live QUIC connection to the peer gateway.",
            ),
            &["peer_zone", "peer"],
        )?;
        let inbound_connections = IntGauge::with_opts(Opts::new(
            "strait_gateway_inbound_connections",
            "QUIC connections from peer gateways open now.",
        ))?;
        let config_version = IntGauge::with_opts(Opts::new(
            "strait_gateway_config_version",
            "Version of the gateway config in force.",
        ))?;
        registry.register(Box::new(tunnels_active.clone()))?;
        registry.register(Box::new(tunnels_total.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(zero_rtt.clone()))?;
        registry.register(Box::new(stream_open.clone()))?;
        registry.register(Box::new(peer_connected.clone()))?;
        registry.register(Box::new(inbound_connections.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        for side in ["client", "server"] {
            for result in ["ok", "error"] {
                handshakes.with_label_values(&[side, result]);
            }
        }
        for result in ["accepted", "rejected"] {
            zero_rtt.with_label_values(&[result]);
        }
        for direction in [INBOUND, OUTBOUND] {
            for flow in ["to_destination", "to_source"] {
                bytes.with_label_values(&[direction, flow]);
            }
        }
        Ok(Self {
            tunnels_active,
            tunnels_total,
            bytes,
            handshakes,
            zero_rtt,
            stream_open,
            peer_connected,
            inbound_connections,
            config_version,
        })
    }

    /// Counts a tunnel's outcome.
    pub fn outcome(&self, direction: &str, peer_zone: &str, status: strait_proto::TunnelStatus) {
        self.tunnels_total
            .with_label_values(&[direction, peer_zone, status_code_name(status)])
            .inc();
    }

    /// Creates the outcome series of a peer zone at zero, so rates work from the first event.
    pub fn touch_zone(&self, peer_zone: &str) {
        for direction in [INBOUND, OUTBOUND] {
            for status in ALL_STATUSES {
                self.tunnels_total.with_label_values(&[
                    direction,
                    peer_zone,
                    status_code_name(status),
                ]);
            }
            self.tunnels_active
                .with_label_values(&[direction, peer_zone]);
        }
    }

    /// Counts the bytes of a finished tunnel.
    pub fn add_bytes(&self, direction: &str, to_destination: u64, to_source: u64) {
        self.bytes
            .with_label_values(&[direction, "to_destination"])
            .inc_by(to_destination);
        self.bytes
            .with_label_values(&[direction, "to_source"])
            .inc_by(to_source);
    }

    /// An active-tunnel gauge increment undone on drop.
    pub fn active(&self, direction: &str, peer_zone: &str) -> ActiveGuard {
        let gauge = self
            .tunnels_active
            .with_label_values(&[direction, peer_zone]);
        gauge.inc();
        ActiveGuard(gauge)
    }
}

/// Decrements its gauge when dropped (however the tunnel ended).
#[derive(Debug)]
pub struct ActiveGuard(IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
