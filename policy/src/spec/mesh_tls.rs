//! `MeshTLS`: whether a service's (or a whole namespace's) proxies accept plaintext.

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::meta::TargetRef;

/// `spec` of a `MeshTLS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTlsSpec {
    /// Absent: every service of the namespace. A resource naming a service wins over a
    /// namespace-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    pub mode: MeshTlsMode,
}

/// What inbound proxies accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MeshTlsMode {
    /// Mutual TLS only: plaintext connections are refused.
    #[serde(rename = "STRICT")]
    Strict,
    /// Mutual TLS and plaintext, for migrating workloads that are not yet in the mesh.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

impl MeshTlsSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
        }
    }
}
