//! `strait-eastwest-gateway`: the east-west gateway. It carries cross-zone traffic between
//! sidecars of different zones without ever seeing it in clear: the sidecars' own mutual TLS
//! runs end to end through two gateways.
//!
//! ```text
//! sidecar ──HTTP/2 CONNECT, mTLS──▶ gateway (zone a) ══QUIC, mTLS══▶ gateway (zone b) ──TCP──▶ sidecar
//!          (one connection,          [`local`]          (one connection   [`inbound`]    (its inbound
//!           a stream per tunnel)                         per gateway pair,                mTLS port)
//!                                                        a stream per tunnel)
//! ```
//!
//! Modules, one job each:
//! - [`select`], [`state`]: the pure decisions (endpoint and replica choice, timeouts,
//!   authority parsing; which peers, services and zones are allowed), unit-tested without IO;
//! - [`quic`]: QUIC transport and TLS settings, 0-RTT, peer re-verification;
//! - [`peers`]: the pool of connections to other zones' gateways and opening tunnels on it;
//! - [`inbound`]: tunnels from peer gateways, to this zone's endpoints;
//! - [`local`]: the CONNECT server for this zone's sidecars;
//! - [`config_client`]: the config stream from the zone control plane;
//! - [`metrics`]: Prometheus metrics;
//! - [`gateway`]: the core, driven by a `watch` of the config (tests drive it directly);
//! - [`run`]: everything wired for `strait gateway run`; [`settings`]: its settings.
//!
//! The wire constants and the tunnel header framing are in `strait_proto::tunnel`, shared
//! with the sidecar. See `docs/gateway.md` for the protocol, failure codes and security model.
//!
//! The gateway's certificate (bootstrap and renewal from the zone) is `strait_identity`'s,
//! the same client sidecars use.

pub mod config_client;
pub mod gateway;
pub mod inbound;
pub mod local;
pub mod metrics;
pub mod peers;
pub mod quic;
pub mod run;
pub mod select;
pub mod settings;
pub mod state;

pub use gateway::{Gateway, GatewayContext, GatewayError};
pub use run::{RunError, run};
pub use settings::GatewaySettings;
