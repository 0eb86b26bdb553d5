//! `LocalityFailover`: where a service's traffic goes when the local zone cannot serve it.

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::meta::TargetRef;

/// `spec` of a `LocalityFailover`.
///
/// The caller's own zone always comes first. Then the entries of `order`, each one priority
/// level: a `zone` entry is that zone, a `region` entry is every zone of that region not
/// listed before it. Zones named nowhere come last, all at one level. Traffic spills to the
/// next level as the healthy share of the current one, times `overprovisioningFactor`, drops
/// below 100% (Envoy's priority levels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityFailoverSpec {
    /// Absent: every service of the namespace (or of the mesh, in the mesh namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    pub order: Vec<Locality>,
    /// In percent, 100..=1000. Default 140: a level keeps all its traffic until fewer than
    /// 1/1.4 (about 71%) of its endpoints are healthy.
    #[serde(default = "default_overprovisioning")]
    pub overprovisioning_factor: u32,
}

fn default_overprovisioning() -> u32 {
    140
}

/// One entry of a failover order: `{zone: NAME}` or `{region: NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "LocalityRepr", into = "LocalityRepr")]
pub enum Locality {
    Zone(String),
    Region(String),
}

#[derive(Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like {zone: zone-b} or {region: eu-west}"
)]
struct LocalityRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
}

impl TryFrom<LocalityRepr> for Locality {
    type Error = &'static str;
    fn try_from(r: LocalityRepr) -> Result<Self, Self::Error> {
        match (r.zone, r.region) {
            (Some(z), None) => Ok(Locality::Zone(z)),
            (None, Some(r)) => Ok(Locality::Region(r)),
            _ => Err("set exactly one of zone or region"),
        }
    }
}

impl From<Locality> for LocalityRepr {
    fn from(l: Locality) -> Self {
        match l {
            Locality::Zone(z) => LocalityRepr {
                zone: Some(z),
                region: None,
            },
            Locality::Region(r) => LocalityRepr {
                zone: None,
                region: Some(r),
            },
        }
    }
}

impl LocalityFailoverSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
            t.whole_service_only("spec.targetRef.port", "LocalityFailover", c);
        }
        if self.order.is_empty() {
            c.err("spec.order", "must list at least one zone or region");
        }
        for (i, l) in self.order.iter().enumerate() {
            let (field, name) = match l {
                Locality::Zone(z) => ("zone", z),
                Locality::Region(r) => ("region", r),
            };
            c.dns_label(&format!("spec.order[{i}].{field}"), name);
            if let Some(j) = self.order[..i].iter().position(|o| o == l) {
                c.err(
                    format!("spec.order[{i}]"),
                    format!("{field} {name:?} is already listed at spec.order[{j}]"),
                );
            }
        }
        if !(100..=1000).contains(&self.overprovisioning_factor) {
            c.err(
                "spec.overprovisioningFactor",
                format!(
                    "must be a percentage between 100 and 1000, got {}",
                    self.overprovisioning_factor
                ),
            );
        }
    }
}
