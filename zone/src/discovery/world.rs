//! The world: what every sidecar's config is assembled from, compiled once per (coalesced)
//! change, with the per-group configs assembled from it on demand (see the module docs of
//! [`super`] for why).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use strait_policy::PolicySet;
use strait_proto as pb;
use strait_proto::vip::VipCidr;

use crate::federation::FederationView;
use crate::inventory::{Instance, LocalInventory, ServiceKey};

use super::compile::{self, ZoneContext};
use super::{DiscoveryConfig, lock};

/// What every sidecar's config is assembled from, compiled once per (coalesced) change.
pub(super) struct World {
    pub(super) view: Arc<FederationView>,
    pub(super) policies: PolicySet,
    pub(super) inventory: Arc<LocalInventory>,
    pub(super) shared: Arc<Shared>,
    /// When the first change folded into this world happened (for push latency).
    pub(super) changed_at: Instant,
    /// Configs assembled from this world so far, one per group of sidecars that get the
    /// same config; filled by the first stream of each group.
    pub(super) groups: Mutex<HashMap<GroupKey, Arc<Assembled>>>,
}

/// The part of every config that is the same for all sidecars of the zone.
#[derive(Debug, PartialEq)]
pub(super) struct Shared {
    /// Numbers distinct contents: a world whose `services` and `deny_list` equal the previous
    /// world's keeps its `Shared` (and this number), any other gets the next number.
    pub(super) generation: u64,
    pub(super) services: Vec<pb::OutboundService>,
    pub(super) deny_list: Vec<String>,
}

/// Sidecars that get equal configs: a config depends on the sidecar only through its service
/// and app port (the inbound policy) and its subzone (see [`compile::sidecar_config`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupKey {
    service: ServiceKey,
    port: Option<u16>,
    subzone: String,
}

/// One group's config from one world, without `version` and `nonce`.
#[derive(Debug)]
pub(super) struct Assembled {
    /// [`Shared::generation`] of the `services` and `deny_list` in `config`.
    pub(super) generation: u64,
    pub(super) config: pb::SidecarConfig,
}

// === impl Assembled ===

impl Assembled {
    /// Whether `self` and `other` are equal configs: the shared part by its generation, the
    /// rest (small) field by field.
    pub(super) fn same_config(&self, other: &Self) -> bool {
        let (a, b) = (&self.config, &other.config);
        self.generation == other.generation
            && a.zone == b.zone
            && a.locality == b.locality
            && a.trust_domain == b.trust_domain
            && a.inbound == b.inbound
    }
}

// === impl World ===

impl World {
    /// The config of `sidecar`'s group, assembled by the first stream of the group to ask.
    pub(super) fn assembled(&self, config: &DiscoveryConfig, sidecar: &Instance) -> Arc<Assembled> {
        let key = GroupKey {
            service: sidecar.service.clone(),
            port: compile::sidecar_port(sidecar),
            subzone: sidecar.locality.subzone.clone(),
        };
        if let Some(found) = lock(&self.groups).get(&key) {
            return found.clone();
        }
        // Assembled outside the lock so that streams of other groups need not wait; two
        // streams of one group racing here both assemble, and the first insert wins.
        let ctx = ZoneContext {
            zone: &config.zone,
            region: &config.region,
            trust_domain: &config.trust_domain,
            vip_cidr: config.vip_cidr,
            inventory: &self.inventory,
            federation: &self.view,
            policies: &self.policies,
            // Only the per-sidecar part is assembled here; the services carry the gateways.
            local_gateways: &[],
        };
        let assembled = Arc::new(Assembled {
            generation: self.shared.generation,
            config: compile::sidecar_config_with(
                &ctx,
                sidecar,
                self.shared.services.clone(),
                self.shared.deny_list.clone(),
            ),
        });
        lock(&self.groups).entry(key).or_insert(assembled).clone()
    }
}

/// What compiling a world needs besides the changing inputs.
#[derive(Debug, Clone)]
pub(super) struct WorldContext {
    zone: String,
    region: String,
    trust_domain: String,
    vip_cidr: VipCidr,
}

impl From<&DiscoveryConfig> for WorldContext {
    fn from(c: &DiscoveryConfig) -> Self {
        Self {
            zone: c.zone.clone(),
            region: c.region.clone(),
            trust_domain: c.trust_domain.clone(),
            vip_cidr: c.vip_cidr,
        }
    }
}

impl WorldContext {
    /// Compiles a world. `previous` is the world it replaces: when the new world's shared part
    /// is equal, the new world keeps it, generation included.
    pub(super) fn build(
        &self,
        view: Arc<FederationView>,
        inventory: Arc<LocalInventory>,
        changed_at: Instant,
        previous: Option<&World>,
    ) -> World {
        let policies = view.policies();
        let local_gateways = inventory.local_gateway_addresses();
        let services = compile::outbound_services(&ZoneContext {
            zone: &self.zone,
            region: &self.region,
            trust_domain: &self.trust_domain,
            vip_cidr: self.vip_cidr,
            inventory: &inventory,
            federation: &view,
            policies: &policies,
            local_gateways: &local_gateways,
        });
        let deny_list = compile::deny_list(&view);
        let shared = match previous {
            Some(p) if p.shared.services == services && p.shared.deny_list == deny_list => {
                p.shared.clone()
            }
            _ => Arc::new(Shared {
                generation: previous.map_or(1, |p| p.shared.generation + 1),
                services,
                deny_list,
            }),
        };
        World {
            view,
            policies,
            inventory,
            shared,
            changed_at,
            groups: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether every config `next` gives equals the one `current` gives, so that publishing it
/// would wake every stream for nothing: the shared part is the same (same generation) and so
/// are the policies (the rest of a config comes from the server's settings and the sidecar).
pub(super) fn same_configs(current: &World, next: &World) -> bool {
    current.shared.generation == next.shared.generation && current.policies == next.policies
}
