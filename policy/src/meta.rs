//! The parts every resource shares: metadata, the key that identifies a resource, and the
//! reference to the service a policy applies to.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::kind::Kind;

/// The namespace of a resource whose metadata leaves it out.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The mesh namespace (as Istio's root namespace): a resource here without `targetRef` applies
/// to every service of every namespace, below anything a service's own namespace sets.
pub const MESH_NAMESPACE: &str = "strait-system";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

/// `metadata:` of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// DNS-1123 label, unique per kind and namespace.
    pub name: String,
    /// DNS-1123 label; `default` when left out. Policies apply to services of this namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Free labels for the operator's own selection (`strait get -l`); they do not change what
    /// the policy does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata with a name and namespace and no labels.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
        }
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        c.dns_label("metadata.name", &self.name);
        c.dns_label("metadata.namespace", &self.namespace);
        c.labels("metadata.labels", &self.labels);
    }
}

/// What identifies a resource: applying a resource with the same key replaces the old one.
///
/// Ordered by kind, then namespace, then name; [`crate::PolicySet`] relies on that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// `targetRef:` — the service a policy applies to, in the resource's own namespace.
///
/// A namespace field is deliberately absent: a policy can only affect services of the
/// namespace it lives in, so access to a namespace bounds what a user can change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping like {service: echo}")]
pub struct TargetRef {
    /// The service name (DNS-1123 label).
    pub service: String,
    /// Limit the policy to one port of the service; absent means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl TargetRef {
    /// A reference to every port of `service`.
    pub fn service(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            port: None,
        }
    }

    /// Kinds whose effect is per service, not per port (one balancer and one set of limits
    /// serve every port of a service): a port here could not be enforced, so it is refused.
    pub(crate) fn whole_service_only(&self, path: &str, kind: &str, c: &mut Checker) {
        if self.port.is_some() {
            c.err(
                path,
                format!("a {kind} applies to a whole service (one balancer and one set of limits serve all its ports): remove the port"),
            );
        }
    }

    pub(crate) fn check(&self, path: &str, c: &mut Checker) {
        c.dns_label(&format!("{path}.service"), &self.service);
        if self.port == Some(0) {
            c.err(format!("{path}.port"), "must be between 1 and 65535");
        }
    }
}
