//! VIP index allocation: which exported service, and which (service, zone) pair, gets which
//! index.
//!
//! Global hands every exported service a small integer; each zone maps it into its own VIP
//! CIDR, so the same index means the same service everywhere. Every (service, serving zone)
//! pair gets an index of its own too, from the same space: its **zone-pinned VIP**, which
//! routes only to that zone (`SVC.NS.svc.ZONE.mesh.local`). Both kinds follow the same rules:
//!
//! - An index is allocated when the first zone exports the service (a pinned one: when that
//!   zone exports it): the lowest index, starting at 1, that is neither allocated (to a
//!   service or a pair) nor held. Within one command, services are served first, then pairs,
//!   each in key order, so allocation is deterministic.
//! - The index is stable while any zone exports the service (a pinned one: while its zone
//!   does; a disconnected zone's inventory is kept, so a zone going dark does not release
//!   anything).
//! - It is released when no zone exports the service anymore (last zone stopped exporting it,
//!   or was removed); a pinned one when its zone stops exporting the service or is removed. A
//!   released index is then **held** for [`VIP_HOLD_MS`]: nobody else gets it, and if the same
//!   service (the same pair) is exported again within that time it gets the same index back.
//!
//! Why hold released indices: a VIP outlives its allocation in places global does not control —
//! DNS answers cached for their TTL, sidecars whose config lags, long-lived client connections.
//! Handing the index straight to another service would send those clients to the wrong service.
//! And a zone that restarts and briefly reports an empty inventory would otherwise give its
//! services new VIPs. The hold is measured in time (the proposer's `now_ms`), not in revisions,
//! because what it protects against (TTLs, propagation delay) is bounded in time, while the
//! rate of revisions depends on load. Since indices are handed out lowest-first, holding costs
//! only a few indices at the top of the range.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use super::model::HeldVip;
use super::model::ServiceKey;
use super::rejection::Rejection;

/// How long a released VIP index is held back before another service may get it.
pub const VIP_HOLD_MS: u64 = 10 * 60 * 1000;

/// The highest VIP index global hands out.
pub const MAX_VIP_INDEX: u32 = u32::MAX;

/// What a VIP index is allocated to. Services sort before pairs, so a command allocates the
/// services' indices first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum VipOwner {
    /// A service's locality-aware VIP.
    Service(ServiceKey),
    /// A service's VIP pinned to one zone that exports it.
    Pinned { service: ServiceKey, zone: String },
}

impl VipOwner {
    /// The owner a hold was made for.
    fn of_hold(hold: &HeldVip) -> Self {
        match &hold.zone {
            None => VipOwner::Service(hold.service.clone()),
            Some(zone) => VipOwner::Pinned {
                service: hold.service.clone(),
                zone: zone.clone(),
            },
        }
    }

    fn into_hold(self, released_at_ms: u64) -> HeldVip {
        let (service, zone) = match self {
            VipOwner::Service(service) => (service, None),
            VipOwner::Pinned { service, zone } => (service, Some(zone)),
        };
        HeldVip {
            service,
            zone,
            released_at_ms,
        }
    }

    /// For the exhaustion message.
    fn describe(&self) -> String {
        match self {
            VipOwner::Service(service) => service.to_string(),
            VipOwner::Pinned { service, zone } => format!("{service} (pinned to zone {zone:?})"),
        }
    }
}

/// The allocated indices: services' and pairs' (see [`VipOwner`]).
pub(crate) struct Allocations<'a> {
    pub vips: &'a BTreeMap<ServiceKey, u32>,
    pub zone_vips: &'a BTreeMap<(ServiceKey, String), u32>,
}

impl Allocations<'_> {
    fn iter(&self) -> impl Iterator<Item = (VipOwner, u32)> + '_ {
        let services = self
            .vips
            .iter()
            .map(|(service, &index)| (VipOwner::Service(service.clone()), index));
        let pinned = self.zone_vips.iter().map(|((service, zone), &index)| {
            (
                VipOwner::Pinned {
                    service: service.clone(),
                    zone: zone.clone(),
                },
                index,
            )
        });
        services.chain(pinned)
    }

    fn contains(&self, owner: &VipOwner) -> bool {
        match owner {
            VipOwner::Service(service) => self.vips.contains_key(service),
            // Avoids building a tuple key (and cloning) per lookup.
            VipOwner::Pinned { service, zone } => self
                .zone_vips
                .range((service.clone(), zone.clone())..)
                .next()
                .is_some_and(|((s, z), _)| s == service && z == zone),
        }
    }
}

/// The VIP changes that follow from a new set of exported services.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct VipPlan {
    pub allocated: Vec<(ServiceKey, u32)>,
    pub released: Vec<(ServiceKey, u32)>,
    /// Zone-pinned indices: (service, zone, index).
    pub zone_allocated: Vec<(ServiceKey, String, u32)>,
    pub zone_released: Vec<(ServiceKey, String, u32)>,
    /// Holds whose time is up.
    expired_holds: Vec<u32>,
    /// Holds given back to the owner that had them.
    reclaimed_holds: Vec<u32>,
}

impl VipPlan {
    fn push_allocated(&mut self, owner: VipOwner, index: u32) {
        match owner {
            VipOwner::Service(service) => self.allocated.push((service, index)),
            VipOwner::Pinned { service, zone } => self.zone_allocated.push((service, zone, index)),
        }
    }

    fn push_released(&mut self, owner: VipOwner, index: u32) {
        match owner {
            VipOwner::Service(service) => self.released.push((service, index)),
            VipOwner::Pinned { service, zone } => self.zone_released.push((service, zone, index)),
        }
    }
}

/// Works out the VIP changes for `exported`, the services and (service, zone) pairs that
/// exist after the command, without changing anything, so that a command that cannot get an
/// index for every one of them is rejected as a whole.
pub(crate) fn plan(
    allocations: &Allocations<'_>,
    held: &BTreeMap<u32, HeldVip>,
    exported: &BTreeSet<VipOwner>,
    now_ms: u64,
    max_index: u32,
) -> Result<VipPlan, Rejection> {
    let mut plan = VipPlan::default();
    // Indices nobody may get: allocated, held, and about to be held.
    let mut taken: BTreeSet<u32> = BTreeSet::new();

    for (owner, index) in allocations.iter() {
        taken.insert(index);
        if !exported.contains(&owner) {
            plan.push_released(owner, index);
        }
    }

    let mut hold_of: BTreeMap<VipOwner, u32> = BTreeMap::new();
    for (&index, hold) in held {
        // saturating: proposers' clocks differ, and a hold must not end early because the
        // next leader's clock is behind.
        if now_ms.saturating_sub(hold.released_at_ms) >= VIP_HOLD_MS {
            plan.expired_holds.push(index);
        } else {
            taken.insert(index);
            hold_of.entry(VipOwner::of_hold(hold)).or_insert(index);
        }
    }

    for owner in exported {
        if allocations.contains(owner) {
            continue;
        }
        let index = match hold_of.get(owner) {
            Some(&index) => {
                plan.reclaimed_holds.push(index);
                index
            }
            None => {
                let index =
                    lowest_free(&taken, max_index).ok_or_else(|| Rejection::VipSpaceExhausted {
                        service: owner.describe(),
                    })?;
                taken.insert(index);
                index
            }
        };
        plan.push_allocated(owner.clone(), index);
    }
    Ok(plan)
}

/// Applies a plan made by [`plan`] against the same maps and `held`.
pub(crate) fn commit(
    plan: &VipPlan,
    vips: &mut BTreeMap<ServiceKey, u32>,
    zone_vips: &mut BTreeMap<(ServiceKey, String), u32>,
    held: &mut BTreeMap<u32, HeldVip>,
    now_ms: u64,
) {
    for index in plan.expired_holds.iter().chain(&plan.reclaimed_holds) {
        held.remove(index);
    }
    for (service, index) in &plan.released {
        vips.remove(service);
        held.insert(*index, VipOwner::Service(service.clone()).into_hold(now_ms));
    }
    for (service, zone, index) in &plan.zone_released {
        zone_vips.remove(&(service.clone(), zone.clone()));
        let owner = VipOwner::Pinned {
            service: service.clone(),
            zone: zone.clone(),
        };
        held.insert(*index, owner.into_hold(now_ms));
    }
    for (service, index) in &plan.allocated {
        vips.insert(service.clone(), *index);
    }
    for (service, zone, index) in &plan.zone_allocated {
        zone_vips.insert((service.clone(), zone.clone()), *index);
    }
}

/// The lowest index in `1..=max_index` that is not in `taken`.
fn lowest_free(taken: &BTreeSet<u32>, max_index: u32) -> Option<u32> {
    let mut candidate: u32 = 1;
    for &index in taken.range(1..) {
        if index != candidate {
            break;
        }
        candidate = candidate.checked_add(1)?;
    }
    (candidate <= max_index).then_some(candidate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceKey {
        ServiceKey::new("default", name)
    }

    fn set(names: &[&str]) -> BTreeSet<VipOwner> {
        names.iter().map(|n| VipOwner::Service(svc(n))).collect()
    }

    fn pinned(name: &str, zone: &str) -> VipOwner {
        VipOwner::Pinned {
            service: svc(name),
            zone: zone.into(),
        }
    }

    /// The maps a plan runs against, as the state keeps them.
    #[derive(Default)]
    struct Maps {
        vips: BTreeMap<ServiceKey, u32>,
        zone_vips: BTreeMap<(ServiceKey, String), u32>,
        held: BTreeMap<u32, HeldVip>,
    }

    impl Maps {
        fn plan(&self, exported: &BTreeSet<VipOwner>, now_ms: u64, max: u32) -> VipPlan {
            self.try_plan(exported, now_ms, max).unwrap()
        }

        fn try_plan(
            &self,
            exported: &BTreeSet<VipOwner>,
            now_ms: u64,
            max: u32,
        ) -> Result<VipPlan, Rejection> {
            let allocations = Allocations {
                vips: &self.vips,
                zone_vips: &self.zone_vips,
            };
            plan(&allocations, &self.held, exported, now_ms, max)
        }

        fn commit(&mut self, plan: &VipPlan, now_ms: u64) {
            commit(
                plan,
                &mut self.vips,
                &mut self.zone_vips,
                &mut self.held,
                now_ms,
            );
        }

        fn apply(&mut self, exported: &BTreeSet<VipOwner>, now_ms: u64) -> VipPlan {
            let plan = self.plan(exported, now_ms, MAX_VIP_INDEX);
            self.commit(&plan, now_ms);
            plan
        }
    }

    #[test]
    fn lowest_free_fills_gaps_first() {
        let taken: BTreeSet<u32> = [1, 2, 4].into_iter().collect();
        assert_eq!(lowest_free(&taken, 10), Some(3));
        assert_eq!(lowest_free(&BTreeSet::new(), 10), Some(1));
        let full: BTreeSet<u32> = (1..=3).collect();
        assert_eq!(lowest_free(&full, 3), None);
        let top: BTreeSet<u32> = [u32::MAX].into_iter().collect();
        assert_eq!(lowest_free(&top, u32::MAX), Some(1));
    }

    #[test]
    fn exhaustion_rejects_without_partial_allocation() {
        let maps = Maps::default();
        let err = maps.try_plan(&set(&["a", "b", "c"]), 0, 2).unwrap_err();
        assert_eq!(
            err,
            Rejection::VipSpaceExhausted {
                service: "default/c".into()
            }
        );
        let mut exported = set(&["a"]);
        exported.insert(pinned("a", "z1"));
        exported.insert(pinned("a", "z2"));
        let err = maps.try_plan(&exported, 0, 2).unwrap_err();
        assert_eq!(
            err,
            Rejection::VipSpaceExhausted {
                service: "default/a (pinned to zone \"z2\")".into()
            }
        );
    }

    #[test]
    fn hold_expires_then_index_is_reused() {
        let mut maps = Maps::default();
        maps.apply(&set(&["a"]), 0);
        maps.apply(&set(&[]), 1000);
        assert!(maps.vips.is_empty());

        // Within the hold: another service does not get index 1.
        let p = maps.plan(&set(&["b"]), 2000, MAX_VIP_INDEX);
        assert_eq!(p.allocated, vec![(svc("b"), 2)]);

        // After the hold: it does.
        let later = 1000 + VIP_HOLD_MS;
        let p = maps.plan(&set(&["b"]), later, MAX_VIP_INDEX);
        assert_eq!(p.allocated, vec![(svc("b"), 1)]);
        maps.commit(&p, later);
        assert!(maps.held.is_empty());
    }

    #[test]
    fn pinned_indices_share_the_space_services_first() {
        let mut maps = Maps::default();
        let mut exported = set(&["web", "api"]);
        exported.insert(pinned("web", "b"));
        exported.insert(pinned("web", "a"));
        exported.insert(pinned("api", "a"));
        let p = maps.apply(&exported, 0);
        assert_eq!(p.allocated, vec![(svc("api"), 1), (svc("web"), 2)]);
        assert_eq!(
            p.zone_allocated,
            vec![
                (svc("api"), "a".to_owned(), 3),
                (svc("web"), "a".to_owned(), 4),
                (svc("web"), "b".to_owned(), 5),
            ]
        );
        // Stable: the same set allocates and releases nothing.
        let p = maps.apply(&exported, 10);
        assert_eq!(p, VipPlan::default());

        // Zone b stops exporting web: its pinned index is released and held, the service
        // keeps its own.
        exported.remove(&pinned("web", "b"));
        let p = maps.apply(&exported, 1000);
        assert!(p.released.is_empty());
        assert_eq!(p.zone_released, vec![(svc("web"), "b".to_owned(), 5)]);
        assert_eq!(maps.held[&5].zone.as_deref(), Some("b"));
        assert_eq!(maps.vips[&svc("web")], 2);

        // During the hold, a new service (or another pair) does not get 5...
        let mut more = exported.clone();
        more.insert(VipOwner::Service(svc("new")));
        more.insert(pinned("new", "a"));
        let p = maps.plan(&more, 2000, MAX_VIP_INDEX);
        assert_eq!(p.allocated, vec![(svc("new"), 6)]);
        assert_eq!(p.zone_allocated, vec![(svc("new"), "a".to_owned(), 7)]);
        // ...but the pair coming back does, and the service's own hold is not confused with
        // the pair's.
        exported.insert(pinned("web", "b"));
        let p = maps.apply(&exported, 2000);
        assert_eq!(p.zone_allocated, vec![(svc("web"), "b".to_owned(), 5)]);
        assert!(maps.held.is_empty());

        // Every index is distinct across both kinds.
        let all: Vec<u32> = maps
            .vips
            .values()
            .chain(maps.zone_vips.values())
            .copied()
            .collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        assert_eq!(all.len(), distinct.len());
    }

    #[test]
    fn a_pinned_hold_is_not_given_to_the_service() {
        let mut maps = Maps::default();
        let mut exported = set(&["web"]);
        exported.insert(pinned("web", "a"));
        maps.apply(&exported, 0);
        // Everything goes; then only the service returns (say, from a zone with no pinned
        // pair yet in this plan): it gets its own index back, never the pair's.
        maps.apply(&BTreeSet::new(), 1000);
        let p = maps.apply(&set(&["web"]), 2000);
        assert_eq!(p.allocated, vec![(svc("web"), 1)]);
        assert!(maps.held.contains_key(&2));
    }
}
