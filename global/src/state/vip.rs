//! VIP index allocation: which exported service gets which index.
//!
//! Global hands every exported service a small integer; each zone maps it into its own VIP
//! CIDR, so the same index means the same service everywhere. The rules:
//!
//! - A service gets an index when the first zone exports it: the lowest index, starting at 1,
//!   that is neither allocated nor held.
//! - The index is stable while any zone exports the service (a disconnected zone's inventory is
//!   kept, so a zone going dark does not release anything).
//! - It is released when no zone exports the service anymore (last zone stopped exporting it,
//!   or was removed). A released index is then **held** for [`VIP_HOLD_MS`]: nobody else gets
//!   it, and if the same service is exported again within that time it gets the same index back.
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

/// The VIP changes that follow from a new set of exported services.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct VipPlan {
    pub allocated: Vec<(ServiceKey, u32)>,
    pub released: Vec<(ServiceKey, u32)>,
    /// Holds whose time is up.
    expired_holds: Vec<u32>,
    /// Holds given back to the service that had them.
    reclaimed_holds: Vec<u32>,
}

/// Works out the VIP changes for `exported`, the services that some zone exports after the
/// command, without changing anything, so that a command that cannot get an index for every
/// service is rejected as a whole.
pub(crate) fn plan(
    vips: &BTreeMap<ServiceKey, u32>,
    held: &BTreeMap<u32, HeldVip>,
    exported: &BTreeSet<ServiceKey>,
    now_ms: u64,
    max_index: u32,
) -> Result<VipPlan, Rejection> {
    let mut plan = VipPlan::default();
    // Indices nobody may get: allocated, held, and about to be held.
    let mut taken: BTreeSet<u32> = vips.values().copied().collect();

    for (service, &index) in vips {
        if !exported.contains(service) {
            plan.released.push((service.clone(), index));
        }
    }

    let mut hold_of: BTreeMap<&ServiceKey, u32> = BTreeMap::new();
    for (&index, hold) in held {
        // saturating: proposers' clocks differ, and a hold must not end early because the
        // next leader's clock is behind.
        if now_ms.saturating_sub(hold.released_at_ms) >= VIP_HOLD_MS {
            plan.expired_holds.push(index);
        } else {
            taken.insert(index);
            hold_of.entry(&hold.service).or_insert(index);
        }
    }

    for service in exported {
        if vips.contains_key(service) {
            continue;
        }
        let index = match hold_of.get(service) {
            Some(&index) => {
                plan.reclaimed_holds.push(index);
                index
            }
            None => {
                let index =
                    lowest_free(&taken, max_index).ok_or_else(|| Rejection::VipSpaceExhausted {
                        service: service.to_string(),
                    })?;
                taken.insert(index);
                index
            }
        };
        plan.allocated.push((service.clone(), index));
    }
    Ok(plan)
}

/// Applies a plan made by [`plan`] against the same `vips` and `held`.
pub(crate) fn commit(
    plan: &VipPlan,
    vips: &mut BTreeMap<ServiceKey, u32>,
    held: &mut BTreeMap<u32, HeldVip>,
    now_ms: u64,
) {
    for index in plan.expired_holds.iter().chain(&plan.reclaimed_holds) {
        held.remove(index);
    }
    for (service, index) in &plan.released {
        vips.remove(service);
        held.insert(
            *index,
            HeldVip {
                service: service.clone(),
                released_at_ms: now_ms,
            },
        );
    }
    for (service, index) in &plan.allocated {
        vips.insert(service.clone(), *index);
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

    fn set(names: &[&str]) -> BTreeSet<ServiceKey> {
        names.iter().map(|n| svc(n)).collect()
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
        let vips = BTreeMap::new();
        let held = BTreeMap::new();
        let err = plan(&vips, &held, &set(&["a", "b", "c"]), 0, 2).unwrap_err();
        assert_eq!(
            err,
            Rejection::VipSpaceExhausted {
                service: "default/c".into()
            }
        );
    }

    #[test]
    fn hold_expires_then_index_is_reused() {
        let mut vips = BTreeMap::new();
        let mut held = BTreeMap::new();
        let p = plan(&vips, &held, &set(&["a"]), 0, MAX_VIP_INDEX).unwrap();
        commit(&p, &mut vips, &mut held, 0);
        let p = plan(&vips, &held, &set(&[]), 1000, MAX_VIP_INDEX).unwrap();
        commit(&p, &mut vips, &mut held, 1000);
        assert!(vips.is_empty());

        // Within the hold: another service does not get index 1.
        let p = plan(&vips, &held, &set(&["b"]), 2000, MAX_VIP_INDEX).unwrap();
        assert_eq!(p.allocated, vec![(svc("b"), 2)]);

        // After the hold: it does.
        let later = 1000 + VIP_HOLD_MS;
        let p = plan(&vips, &held, &set(&["b"]), later, MAX_VIP_INDEX).unwrap();
        assert_eq!(p.allocated, vec![(svc("b"), 1)]);
        commit(&p, &mut vips, &mut held, later);
        assert!(held.is_empty());
    }
}
