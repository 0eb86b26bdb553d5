//! The Multi-Cluster Services API resources (`multicluster.x-k8s.io/v1alpha1`, KEP-1645) the
//! zone reads and writes, shaped as upstream's `sigs.k8s.io/mcs-api` CRDs so that the same
//! objects work with any MCS implementation's CRDs installed:
//!
//! - [`ServiceExport`]: a user creates one next to a Service (same name and namespace) to
//!   export it; it has no spec, and the zone writes its `status.conditions`;
//! - [`ServiceImport`]: the zone creates one per remote service, with the service's VIP and
//!   ports, for tools that look for MCS imports (the data plane does not need it: sidecars
//!   get their listeners from discovery, clients resolve `SVC.NS.svc.clusterset.local`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of both resources.
pub const GROUP: &str = "multicluster.x-k8s.io";

/// `ServiceExport` has no spec: its existence exports the Service of the same name.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    no_spec,
    status = "ServiceExportStatus",
    derive = "PartialEq"
)]
pub struct ServiceExportFields {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A `metav1.Condition`, as upstream's `ServiceExportStatus.conditions` holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Valid` or `Conflict` (see [`CONDITION_VALID`], [`CONDITION_CONFLICT`]).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// RFC 3339, when `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// CamelCase, machine-readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The export is (or is not) usable: its Service exists and has TCP ports.
pub const CONDITION_VALID: &str = "Valid";
/// Another zone exports the same service with different ports.
pub const CONDITION_CONFLICT: &str = "Conflict";

/// A remote service, as this cluster sees it.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// The VIP(s) clients reach the service on; empty for `Headless`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
}

/// `ClusterSetIP` (one VIP for the service across the clusterset) or `Headless`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceImportType {
    #[default]
    #[serde(rename = "ClusterSetIP")]
    ClusterSetIp,
    Headless,
}

/// A port of a `ServiceImport`, as upstream's (`core/v1` `ServicePort` without node ports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (the mesh carries TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    pub port: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportStatus {
    /// The clusters (zones) that export the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub cluster: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn service_export_reads_upstream_objects() {
        // As the API server returns one: no spec at all.
        let json = serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceExport",
            "metadata": {"name": "echo", "namespace": "demo"},
            "status": {"conditions": [{"type": "Valid", "status": "True",
                "lastTransitionTime": "2025-01-01T00:00:00Z", "reason": "Exported"}]}
        });
        let export: ServiceExport = serde_json::from_value(json).unwrap();
        assert_eq!(export.metadata.name.as_deref(), Some("echo"));
        let status = export.status.unwrap();
        assert_eq!(status.conditions[0].type_, CONDITION_VALID);
        assert_eq!(
            ServiceExport::api_version(&()),
            "multicluster.x-k8s.io/v1alpha1"
        );
        assert_eq!(ServiceExport::plural(&()), "serviceexports");
    }

    #[test]
    fn service_import_has_the_upstream_shape() {
        let mut import = ServiceImport::new(
            "echo",
            ServiceImportSpec {
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                    port: 8080,
                }],
                ips: vec!["240.0.0.3".into()],
                type_: ServiceImportType::ClusterSetIp,
                session_affinity: Some("None".into()),
            },
        );
        import.metadata.namespace = Some("demo".into());
        let json = serde_json::to_value(&import).unwrap();
        assert_eq!(json["kind"], "ServiceImport");
        assert_eq!(json["spec"]["type"], "ClusterSetIP");
        assert_eq!(json["spec"]["ips"][0], "240.0.0.3");
        assert_eq!(json["spec"]["ports"][0]["port"], 8080);
        assert_eq!(json["spec"]["sessionAffinity"], "None");
        let back: ServiceImport = serde_json::from_value(json).unwrap();
        assert_eq!(back, import);
    }
}
