//! [`PolicySet`]: every applied resource, and the effective policies of one service.
//!
//! Pure data: the zone control plane keeps one, updated from the sync stream, and the policy
//! compiler asks it what applies to each service.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::kind::Kind;
use crate::meta::{MESH_NAMESPACE, ResourceKey};
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

/// How widely a resource applies, from least to most specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// No `targetRef`, in [`MESH_NAMESPACE`]: every service of every namespace.
    Mesh,
    /// No `targetRef`: every service of the resource's namespace.
    Namespace,
    /// `targetRef: {service}`: every port of one service.
    Service,
    /// `targetRef: {service, port}`: one port of one service.
    Port,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Mesh => "mesh",
            Scope::Namespace => "namespace",
            Scope::Service => "service",
            Scope::Port => "port",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource that applies to a service, its key (for status and errors) and how specifically
/// it targets the service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied<'a, T> {
    pub key: &'a ResourceKey,
    pub spec: &'a T,
    pub scope: Scope,
}

/// A resource that targets the service but lost to another of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shadowed<'a> {
    pub key: &'a ResourceKey,
    pub scope: Scope,
    /// The resource that applies instead.
    pub by: &'a ResourceKey,
    pub by_scope: Scope,
}

impl Shadowed<'_> {
    /// Why it lost, in words for `strait apply` and `strait describe`.
    pub fn reason(&self) -> String {
        if self.by_scope > self.scope {
            format!(
                "{} is more specific ({} scope beats {} scope)",
                self.by, self.by_scope, self.scope
            )
        } else {
            format!(
                "{} has the same ({}) scope and its name sorts first",
                self.by, self.by_scope
            )
        }
    }
}

/// The effective policies of one service (or one of its ports).
///
/// `TrafficPermission`s **combine**: every one that applies (mesh, namespace, service and port
/// scope) is listed and evaluated together by [`decide_permissions`]. For every other kind at
/// most one resource applies: the most specific (port, then service, then namespace, then
/// mesh scope); among equally specific ones, the one whose name sorts first (byte order). The
/// choice depends only on the set's content, never on the order things were applied, so every
/// zone computes the same answer. The losers are listed in `shadowed`, with the winner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServicePolicies<'a> {
    pub traffic_route: Option<Applied<'a, TrafficRouteSpec>>,
    pub retry: Option<Applied<'a, RetrySpec>>,
    pub timeout: Option<Applied<'a, TimeoutSpec>>,
    pub circuit_breaker: Option<Applied<'a, CircuitBreakerSpec>>,
    pub fault_injection: Option<Applied<'a, FaultInjectionSpec>>,
    pub rate_limit: Option<Applied<'a, RateLimitSpec>>,
    /// Every `TrafficPermission` that applies, from the widest scope to the narrowest, then by
    /// namespace and name.
    pub traffic_permissions: Vec<Applied<'a, TrafficPermissionSpec>>,
    pub locality_failover: Option<Applied<'a, LocalityFailoverSpec>>,
    pub mesh_tls: Option<Applied<'a, MeshTlsSpec>>,
    /// Resources that target the service but lost to another of the same kind, by key.
    pub shadowed: Vec<Shadowed<'a>>,
}

impl ServicePolicies<'_> {
    /// Every resource that applies (permissions included), with its scope, in key order.
    pub fn applied(&self) -> Vec<(&ResourceKey, Scope)> {
        let mut out: Vec<(&ResourceKey, Scope)> = Vec::new();
        macro_rules! one {
            ($($field:ident),*) => {
                $(if let Some(a) = &self.$field { out.push((a.key, a.scope)); })*
            };
        }
        one!(
            traffic_route,
            retry,
            timeout,
            circuit_breaker,
            fault_injection,
            rate_limit,
            locality_failover,
            mesh_tls
        );
        out.extend(self.traffic_permissions.iter().map(|a| (a.key, a.scope)));
        out.sort();
        out
    }
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
        // Keys iterate in kind, namespace, name order, so keeping the first of the highest
        // specificity picks the name that sorts first (the mesh namespace's resources compete
        // only at mesh scope, below everything of the service's own namespace).
        let mut best: BTreeMap<Kind, (Scope, &ResourceKey, &Resource)> = BTreeMap::new();
        let mut losers: Vec<(Kind, &ResourceKey, Scope)> = Vec::new();
        let mut permissions = Vec::new();
        for (key, resource) in &self.resources {
            let Some(scope) = scope_for(key, &resource.spec, namespace, service, port) else {
                continue;
            };
            if let Spec::TrafficPermission(spec) = &resource.spec {
                permissions.push(Applied { key, spec, scope });
                continue;
            }
            match best.get(&key.kind) {
                Some(&(current, loser, _)) if scope > current => {
                    losers.push((key.kind, loser, current));
                    best.insert(key.kind, (scope, key, resource));
                }
                Some(_) => losers.push((key.kind, key, scope)),
                None => {
                    best.insert(key.kind, (scope, key, resource));
                }
            }
        }
        permissions.sort_by(|a, b| (a.scope, a.key).cmp(&(b.scope, b.key)));
        let mut shadowed: Vec<Shadowed<'_>> = losers
            .into_iter()
            .filter_map(|(kind, key, scope)| {
                let &(by_scope, by, _) = best.get(&kind)?;
                Some(Shadowed {
                    key,
                    scope,
                    by,
                    by_scope,
                })
            })
            .collect();
        shadowed.sort_by(|a, b| a.key.cmp(b.key));
        let mut out = ServicePolicies {
            shadowed,
            traffic_permissions: permissions,
            ..ServicePolicies::default()
        };
        for (_, (scope, key, resource)) in best {
            match &resource.spec {
                Spec::TrafficRoute(spec) => out.traffic_route = Some(Applied { key, spec, scope }),
                Spec::Retry(spec) => out.retry = Some(Applied { key, spec, scope }),
                Spec::Timeout(spec) => out.timeout = Some(Applied { key, spec, scope }),
                Spec::CircuitBreaker(spec) => {
                    out.circuit_breaker = Some(Applied { key, spec, scope });
                }
                Spec::FaultInjection(spec) => {
                    out.fault_injection = Some(Applied { key, spec, scope });
                }
                Spec::RateLimit(spec) => out.rate_limit = Some(Applied { key, spec, scope }),
                // Collected above: permissions combine, none is chosen.
                Spec::TrafficPermission(_) => {}
                Spec::LocalityFailover(spec) => {
                    out.locality_failover = Some(Applied { key, spec, scope });
                }
                Spec::MeshTls(spec) => out.mesh_tls = Some(Applied { key, spec, scope }),
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

/// The scope at which the resource `key` applies to `service` (and `port`) of `namespace`;
/// `None` when it does not apply.
///
/// A resource without `targetRef` covers its namespace, or every namespace when it lives in
/// [`MESH_NAMESPACE`]. `for_service` (`port` `None`) leaves port-scoped resources out.
pub fn scope_for(
    key: &ResourceKey,
    spec: &Spec,
    namespace: &str,
    service: &str,
    port: Option<u16>,
) -> Option<Scope> {
    match spec.target_ref() {
        None if key.namespace == namespace => Some(Scope::Namespace),
        None if key.namespace == MESH_NAMESPACE => Some(Scope::Mesh),
        None => None,
        Some(_) if key.namespace != namespace => None,
        Some(t) if t.service != service => None,
        Some(t) => match (t.port, port) {
            (None, _) => Some(Scope::Service),
            (Some(p), Some(q)) if p == q => Some(Scope::Port),
            _ => None,
        },
    }
}
