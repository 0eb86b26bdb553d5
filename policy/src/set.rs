//! [`PolicySet`]: every applied resource, and the effective policies of one service.
//!
//! Pure data: the zone control plane keeps one, updated from the sync stream, and the policy
//! compiler asks it what applies to each service.

use std::collections::BTreeMap;

use crate::kind::Kind;
use crate::meta::ResourceKey;
use crate::resource::Resource;
use crate::spec::{
    CircuitBreakerSpec, FaultInjectionSpec, LocalityFailoverSpec, MeshTlsSpec, RateLimitSpec,
    RetrySpec, Spec, TimeoutSpec, TrafficPermissionSpec, TrafficRouteSpec,
};

/// Resources keyed by (kind, namespace, name); iteration is in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySet {
    resources: BTreeMap<ResourceKey, Resource>,
}

/// The resource of one kind that applies to a service, and its key (for status and errors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied<'a, T> {
    pub key: &'a ResourceKey,
    pub spec: &'a T,
}

/// The effective policies of one service (or one of its ports): at most one resource of each
/// kind.
///
/// When several resources of a kind target the service, the most specific wins (a resource
/// naming the port, then one naming the service, then for `MeshTLS` a namespace-wide one);
/// among equally specific ones, the one whose name sorts first (byte order) wins. The choice
/// depends only on the set's content, never on the order things were applied, so every zone
/// computes the same answer. The losers are listed in `shadowed` so tools can warn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServicePolicies<'a> {
    pub traffic_route: Option<Applied<'a, TrafficRouteSpec>>,
    pub retry: Option<Applied<'a, RetrySpec>>,
    pub timeout: Option<Applied<'a, TimeoutSpec>>,
    pub circuit_breaker: Option<Applied<'a, CircuitBreakerSpec>>,
    pub fault_injection: Option<Applied<'a, FaultInjectionSpec>>,
    pub rate_limit: Option<Applied<'a, RateLimitSpec>>,
    pub traffic_permission: Option<Applied<'a, TrafficPermissionSpec>>,
    pub locality_failover: Option<Applied<'a, LocalityFailoverSpec>>,
    pub mesh_tls: Option<Applied<'a, MeshTlsSpec>>,
    /// Resources that target the service but lost to another of the same kind.
    pub shadowed: Vec<&'a ResourceKey>,
}

impl PolicySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a resource; returns the one it replaced.
    pub fn insert(&mut self, resource: Resource) -> Option<Resource> {
        self.resources.insert(resource.key(), resource)
    }

    pub fn remove(&mut self, key: &ResourceKey) -> Option<Resource> {
        self.resources.remove(key)
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.resources.get(key)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Every resource, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    /// The resources of one kind in one namespace, in name order.
    pub fn of_kind<'a>(
        &'a self,
        kind: Kind,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources
            .iter()
            .filter(move |(k, _)| k.kind == kind && k.namespace == namespace)
            .map(|(_, r)| r)
    }

    /// The policies of a service as a whole: resources that name a port are left out (see
    /// [`PolicySet::for_port`]).
    pub fn for_service(&self, namespace: &str, service: &str) -> ServicePolicies<'_> {
        self.select(namespace, service, None)
    }

    /// The policies of one port of a service: a resource naming this port wins over one for
    /// the whole service.
    pub fn for_port(&self, namespace: &str, service: &str, port: u16) -> ServicePolicies<'_> {
        self.select(namespace, service, Some(port))
    }

    fn select(&self, namespace: &str, service: &str, port: Option<u16>) -> ServicePolicies<'_> {
        // Keys iterate in name order within a kind and namespace, so keeping the first of the
        // highest specificity picks the name that sorts first.
        let mut best: BTreeMap<Kind, (u8, &ResourceKey, &Resource)> = BTreeMap::new();
        let mut shadowed = Vec::new();
        for (key, resource) in &self.resources {
            if key.namespace != namespace {
                continue;
            }
            let Some(rank) = specificity(&resource.spec, service, port) else {
                continue;
            };
            match best.get(&key.kind) {
                Some(&(current, loser, _)) if rank > current => {
                    shadowed.push(loser);
                    best.insert(key.kind, (rank, key, resource));
                }
                Some(_) => shadowed.push(key),
                None => {
                    best.insert(key.kind, (rank, key, resource));
                }
            }
        }
        shadowed.sort();
        let mut out = ServicePolicies {
            shadowed,
            ..ServicePolicies::default()
        };
        for (_, (_, key, resource)) in best {
            match &resource.spec {
                Spec::TrafficRoute(spec) => out.traffic_route = Some(Applied { key, spec }),
                Spec::Retry(spec) => out.retry = Some(Applied { key, spec }),
                Spec::Timeout(spec) => out.timeout = Some(Applied { key, spec }),
                Spec::CircuitBreaker(spec) => out.circuit_breaker = Some(Applied { key, spec }),
                Spec::FaultInjection(spec) => out.fault_injection = Some(Applied { key, spec }),
                Spec::RateLimit(spec) => out.rate_limit = Some(Applied { key, spec }),
                Spec::TrafficPermission(spec) => {
                    out.traffic_permission = Some(Applied { key, spec });
                }
                Spec::LocalityFailover(spec) => {
                    out.locality_failover = Some(Applied { key, spec });
                }
                Spec::MeshTls(spec) => out.mesh_tls = Some(Applied { key, spec }),
            }
        }
        out
    }
}

impl FromIterator<Resource> for PolicySet {
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Self {
        let mut set = PolicySet::new();
        set.extend(iter);
        set
    }
}

impl Extend<Resource> for PolicySet {
    fn extend<I: IntoIterator<Item = Resource>>(&mut self, iter: I) {
        for r in iter {
            self.insert(r);
        }
    }
}

/// How specifically a spec targets `service` (and `port`): 2 names the port, 1 the service,
/// 0 the whole namespace; `None` when it does not apply.
fn specificity(spec: &Spec, service: &str, port: Option<u16>) -> Option<u8> {
    match spec.target_ref() {
        None => Some(0),
        Some(t) if t.service != service => None,
        Some(t) => match (t.port, port) {
            (None, _) => Some(1),
            (Some(p), Some(q)) if p == q => Some(2),
            _ => None,
        },
    }
}
