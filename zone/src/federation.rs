//! What this zone knows of the federation: the last `FederationSnapshot` global sent, as
//! persisted. Every consumer (discovery, DNS, gateways' deny checks) reads it through a
//! [`FederationWatch`], so a new snapshot reaches them all at once and a global outage changes
//! nothing they see (static stability).

use std::sync::Arc;

use strait_proto as pb;
use tokio::sync::watch;

/// The federation as of one snapshot from global. Cheap to share (`Arc`), never mutated: a new
/// snapshot makes a new view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FederationView {
    pub snapshot: pb::FederationSnapshot,
}

/// Receives every new [`FederationView`]; `borrow()` gives the current one.
pub type FederationWatch = watch::Receiver<Arc<FederationView>>;

impl FederationView {
    pub fn new(snapshot: pb::FederationSnapshot) -> Self {
        Self { snapshot }
    }

    /// Global's revision this view reflects (0: nothing received yet).
    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    pub fn trust_domain(&self) -> &str {
        &self.snapshot.trust_domain
    }

    /// Every zone global knows, including this one (its own entry is global's copy of what this
    /// zone reported).
    pub fn zones(&self) -> &[pb::RemoteZone] {
        &self.snapshot.zones
    }

    pub fn zone(&self, name: &str) -> Option<&pb::RemoteZone> {
        self.snapshot.zones.iter().find(|z| z.name == name)
    }

    /// The stable VIP index global allocated to a service.
    pub fn vip_index(&self, namespace: &str, name: &str) -> Option<u32> {
        self.snapshot
            .vips
            .iter()
            .find(|v| {
                v.service
                    .as_ref()
                    .is_some_and(|s| s.namespace == namespace && s.name == name)
            })
            .map(|v| v.index)
    }

    /// Whether a zone was removed from the federation.
    pub fn is_denied(&self, zone: &str) -> bool {
        self.snapshot.deny_list.iter().any(|z| z == zone)
    }

    /// Whether `service` is drained (taken out through the control plane) in `zone`.
    pub fn is_drained(&self, namespace: &str, name: &str, zone: &str) -> bool {
        self.snapshot.drains.iter().any(|d| {
            d.zone == zone
                && d.service
                    .as_ref()
                    .is_some_and(|s| s.namespace == namespace && s.name == name)
        })
    }

    /// The policies, parsed. Entries global accepted but this build cannot read (a newer kind)
    /// are skipped with a warning rather than failing the whole view.
    pub fn policies(&self) -> strait_policy::PolicySet {
        self.snapshot
            .policies
            .iter()
            .filter_map(|p| match strait_policy::Resource::from_json(&p.json) {
                Ok(resource) => Some(resource),
                Err(err) => {
                    tracing::warn!(kind = %p.kind, namespace = %p.namespace, name = %p.name, %err, "skipping unreadable policy");
                    None
                }
            })
            .collect()
    }
}
