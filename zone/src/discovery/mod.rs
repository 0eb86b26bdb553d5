//! Sidecar discovery (`strait.v1.Discovery`): sidecars register the instance they serve and
//! receive their full, versioned config, pushed again whenever it changes; they ACK or NACK
//! each version.
//!
//! - [`compile`]: the pure compiler, inventory + federation view + policies → `SidecarConfig`;
//! - [`registry`]: the pure registry of this zone's instances, with the grace period that keeps
//!   an endpoint through a sidecar reconnect or a control plane restart;
//! - the gRPC server that ties them to streams, the clock and the store, in one file per
//!   concern: `server` (the service, caller checks, shared state), `stream` (one sidecar's
//!   stream), `gateways` (one gateway's stream), `world` (the compiled world and the group
//!   configs assembled from it), `tasks` (background tasks: recompiles, grace expiry,
//!   persistence), `validate` (bounds on what a peer registers), `metrics`;
//! - this module: the public settings and status types.
//!
//! # Flow
//!
//! ```text
//! streams ──Register/Health/end──▶ Registry ──▶ InventoryWatch (returned by `new`: the sync
//!                                     │                      client reports it to global)
//!                 store ◀─persist─────┘ (background task, also expires graces)
//! InventoryWatch + FederationWatch ──(coalesced 20 ms)──▶ World: outbound services compiled
//!                                                          once per change, for everyone
//! World ──▶ each stream: its group's config (services + its inbound policy), assembled once
//!          per world for all sidecars of the same service and subzone; pushed when different
//!          from the last one it pushed, with `version` + 1 and a fresh nonce
//! ```
//!
//! Compiling the outbound services once per change (they do not depend on the sidecar) and
//! coalescing bursts keeps a change in front of 1,000 sidecars at one compile, one assembly
//! per group and 1,000 copies to send, not one compile per sidecar per event. The outbound
//! services (tens of KB with hundreds of endpoints) are never compared per stream: the world
//! task compares them once with the previous world's and numbers each distinct content
//! (`world::Shared::generation`), so a stream tells "unchanged" from two numbers and its small
//! per-sidecar part. A change that alters no config (a snapshot that only moved global's
//! version) does not wake the streams at all.
//!
//! # Who may register what
//!
//! Callers present a workload certificate (`spiffe://TD/ns/NS/sa/SA`), and may only register
//! instances of services in their own namespace `NS`. The certificate's identity, never the
//! message, becomes the endpoint's SPIFFE ID.
//!
//! # Metrics
//!
//! The server creates its own [`prometheus::Registry`] ([`DiscoveryServer::metrics`]) for the
//! node to expose or merge: `strait_zone_sidecars_connected`,
//! `strait_zone_config_pushes_total`, `strait_zone_config_nacks_total`,
//! `strait_zone_config_push_latency_seconds` (from the change, or the registration, to the
//! sidecar's ACK), `strait_zone_instances_expired_total` (instances removed because their
//! sidecar did not come back within the grace).

pub mod compile;
pub mod gateways;
mod metrics;
pub mod registry;
mod server;
mod stream;
mod tasks;
mod validate;
mod world;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use strait_proto::vip::VipCidr;

use crate::inventory::ServiceKey;
use crate::store::StoreError;

pub use self::server::DiscoveryServer;
pub(crate) use self::validate::check_address;

/// Store key of the persisted registry.
pub const REGISTRY_KEY: &str = "discovery/registry";

/// The discovery server's settings.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// This zone's name.
    pub zone: String,
    /// This zone's region.
    pub region: String,
    /// The federation's trust domain: callers must hold a workload identity in it.
    pub trust_domain: String,
    /// Where this zone maps service VIP indexes.
    pub vip_cidr: VipCidr,
    /// How long an instance stays after its stream ended (or after a restart, until its
    /// sidecar registers again).
    pub registration_grace: Duration,
}

/// What can stop the discovery server from starting.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the persisted discovery registry: {0}")]
    Store(#[from] StoreError),
    #[error("cannot register the discovery metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// One connected sidecar, as [`DiscoveryServer::sidecars`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarStatus {
    pub service: ServiceKey,
    pub instance: String,
    pub identity: String,
    /// The last version pushed to it.
    pub pushed_version: u64,
    /// The last version it accepted (0: none yet on this stream).
    pub acked_version: u64,
    /// The last rejection (version, reason), if any.
    pub last_nack: Option<(u64, String)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way that
    // matters more than stopping discovery would.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
