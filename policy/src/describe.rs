//! What applies to a service, for people: `strait describe` (which resources apply to a service
//! and port, which are overridden and why) and the warnings `strait apply` prints (a resource
//! that is overridden, overrides another, or cannot apply yet).
//!
//! Pure: the caller passes the policies and a [`ServiceCatalog`] of the services the federation
//! knows, with their ports.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::kind::Kind;
use crate::meta::{MESH_NAMESPACE, ResourceKey};
use crate::set::{PolicySet, Scope, ServicePolicies};
use crate::spec::{Action, Spec};

/// The services the federation knows (exported by some zone), with their ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCatalog {
    services: BTreeMap<(String, String), BTreeSet<u16>>,
}

impl ServiceCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service (or more ports of one already added).
    pub fn add(&mut self, namespace: &str, name: &str, ports: impl IntoIterator<Item = u16>) {
        self.services
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .extend(ports);
    }

    /// The ports of a service; `None` when no zone exports it.
    pub fn ports(&self, namespace: &str, name: &str) -> Option<&BTreeSet<u16>> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The services of `namespace` (every namespace for the mesh namespace), by name.
    fn in_scope<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.services
            .keys()
            .filter(move |(ns, _)| namespace == MESH_NAMESPACE || ns == namespace)
            .map(|(ns, name)| (ns.as_str(), name.as_str()))
    }
}

/// One resource in a [`Description`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Described {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub scope: Scope,
    pub status: Status,
    /// For [`Status::Overridden`]: the resource that applies instead, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overridden_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether a resource is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The one resource of its kind that applies.
    Applies,
    /// A `TrafficPermission`: evaluated together with every other one that applies.
    Combined,
    /// Lost to another resource of its kind.
    Overridden,
}

/// What applies to one service (and port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Description {
    pub namespace: String,
    pub service: String,
    /// `None`: the service as a whole (port-scoped resources left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Applying resources first, then overridden ones; by kind, then key.
    pub resources: Vec<Described>,
}

/// Which resources apply to `service` of `namespace` (on `port`), and which are overridden.
pub fn describe(set: &PolicySet, namespace: &str, service: &str, port: Option<u16>) -> Description {
    let policies = match port {
        Some(port) => set.for_port(namespace, service, port),
        None => set.for_service(namespace, service),
    };
    let described = |key: &ResourceKey, scope: Scope, status: Status| Described {
        kind: key.kind,
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        scope,
        status,
        overridden_by: None,
        reason: None,
    };
    let mut resources: Vec<Described> = policies
        .applied()
        .into_iter()
        .map(|(key, scope)| {
            let status = if key.kind == Kind::TrafficPermission {
                Status::Combined
            } else {
                Status::Applies
            };
            described(key, scope, status)
        })
        .collect();
    resources.extend(policies.shadowed.iter().map(|s| Described {
        overridden_by: Some(s.by.to_string()),
        reason: Some(s.reason()),
        ..described(s.key, s.scope, Status::Overridden)
    }));
    resources.sort_by(|a, b| {
        (
            a.status == Status::Overridden,
            a.kind,
            &a.namespace,
            &a.name,
        )
            .cmp(&(
                b.status == Status::Overridden,
                b.kind,
                &b.namespace,
                &b.name,
            ))
    });
    Description {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        port,
        resources,
    }
}

/// Warnings about the resources `applied` (already in `set`): overridden by or overriding
/// another resource on a service the catalog knows, aimed at a service or port that does not
/// exist (yet), or a `TrafficPermission` that cannot change any decision. Sorted, each once.
pub fn apply_warnings(
    set: &PolicySet,
    applied: &[ResourceKey],
    catalog: &ServiceCatalog,
) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for key in applied {
        let Some(resource) = set.get(key) else {
            continue;
        };
        let targets: Vec<(&str, &str)> = match resource.spec.target_ref() {
            Some(t) => match catalog.ports(&key.namespace, &t.service) {
                None => {
                    out.insert(format!(
                        "{key}: no zone exports service {}/{} yet; it applies once one does",
                        key.namespace, t.service
                    ));
                    continue;
                }
                Some(ports) => {
                    if let Some(port) = t.port
                        && !ports.is_empty()
                        && !ports.contains(&port)
                    {
                        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                        out.insert(format!(
                            "{key}: service {}/{} has no port {port} (its ports: {}); it applies to nothing until the service has that port",
                            key.namespace,
                            t.service,
                            list.join(", ")
                        ));
                        continue;
                    }
                    vec![(key.namespace.as_str(), t.service.as_str())]
                }
            },
            None => {
                let targets: Vec<(&str, &str)> = catalog.in_scope(&key.namespace).collect();
                if targets.is_empty() {
                    out.insert(format!(
                        "{key}: no zone exports a service in {} yet; it applies once one does",
                        if key.namespace == MESH_NAMESPACE {
                            "the mesh".to_owned()
                        } else {
                            format!("namespace {}", key.namespace)
                        }
                    ));
                }
                targets
            }
        };
        for (namespace, service) in targets {
            let ports: Vec<Option<u16>> = match catalog.ports(namespace, service) {
                Some(ports) if !ports.is_empty() => ports.iter().map(|p| Some(*p)).collect(),
                _ => vec![None],
            };
            for port in ports {
                let policies = match port {
                    Some(port) => set.for_port(namespace, service, port),
                    None => set.for_service(namespace, service),
                };
                let at = match port {
                    Some(port) => format!("{namespace}/{service}:{port}"),
                    None => format!("{namespace}/{service}"),
                };
                service_warnings(key, &resource.spec, &policies, &at, &mut out);
            }
        }
    }
    out.into_iter().collect()
}

/// The warnings about `key` on one service port (`at`).
fn service_warnings(
    key: &ResourceKey,
    spec: &Spec,
    policies: &ServicePolicies<'_>,
    at: &str,
    out: &mut BTreeSet<String>,
) {
    for shadowed in &policies.shadowed {
        if shadowed.key == key {
            out.insert(format!(
                "{key} is overridden on {at} by {}: {}",
                shadowed.by,
                shadowed.reason()
            ));
        } else if shadowed.by == key {
            out.insert(format!("{key} overrides {} on {at}", shadowed.key));
        }
    }
    if let Spec::TrafficPermission(p) = spec {
        let only_allows =
            p.default_action == Action::Allow && p.rules.iter().all(|r| r.action == Action::Allow);
        let some_default_deny = policies
            .traffic_permissions
            .iter()
            .any(|a| a.spec.default_action == Action::Deny);
        if only_allows && !some_default_deny {
            out.insert(format!(
                "{key} changes nothing on {at}: it only allows, and no TrafficPermission with defaultAction: deny applies there, so every request stays allowed (set defaultAction: deny to make it an allow-list)"
            ));
        }
    }
}
