//! `ServiceImport`s: every remote service of the federation, as this cluster sees it.
//!
//! For each service that another zone (not denied) exports and this zone does not (no valid
//! `ServiceExport` of its own), the leader keeps a `ServiceImport` of the same name in the
//! service's namespace: type `ClusterSetIP`, `ips` = the service's VIP in this zone's VIP
//! range (empty until global allocated one), `ports` = the union of the exporting zones'
//! ports, `status.clusters` = those zones. Imports whose service left the federation are
//! deleted.
//!
//! Ownership: every import the zone writes carries `app.kubernetes.io/managed-by: strait`; an
//! import without that label (another MCS implementation's, or a user's) is never updated or
//! deleted, only reported. Writes are server-side apply with field manager `strait-zone`.
//!
//! [`desired`] and [`plan`] are pure; [`apply`] does the IO.

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use strait_proto as pb;
use strait_proto::vip::VipCidr;

use crate::federation::FederationView;
use crate::inventory::ServiceKey;
use crate::kubernetes::crd::{
    ClusterStatus, ServiceImport, ServiceImportSpec, ServiceImportStatus, ServiceImportType,
    ServicePort,
};
use crate::kubernetes::source::object_key;
use crate::kubernetes::status::FIELD_MANAGER;

/// The label that marks what the zone created (and may therefore change and delete).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "strait";

/// What one import should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredImport {
    pub spec: ServiceImportSpec,
    pub status: ServiceImportStatus,
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportAction {
    /// Create or update the import's labels and spec.
    Apply(ServiceImport),
    /// Write the import's `status.clusters`.
    ApplyStatus(ServiceImport),
    /// Delete an import the zone created whose service left the federation.
    Delete(ServiceKey),
}

fn app_protocol(protocol: i32) -> Option<String> {
    match pb::Protocol::try_from(protocol) {
        Ok(pb::Protocol::Http) => Some("http".to_owned()),
        Ok(pb::Protocol::Http2) => Some("kubernetes.io/h2c".to_owned()),
        Ok(pb::Protocol::Grpc) => Some("grpc".to_owned()),
        _ => None,
    }
}

/// The imports this zone should have, by service.
pub fn desired(
    view: &FederationView,
    zone: &str,
    own_exports: &BTreeSet<ServiceKey>,
    vip_cidr: VipCidr,
) -> BTreeMap<ServiceKey, DesiredImport> {
    let mut out: BTreeMap<ServiceKey, DesiredImport> = BTreeMap::new();
    for remote in view.zones() {
        if remote.name == zone || view.is_denied(&remote.name) {
            continue;
        }
        for service in &remote.services {
            let Some(r) = &service.service else { continue };
            let key = ServiceKey {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            };
            if own_exports.contains(&key) {
                continue;
            }
            let entry = out.entry(key).or_insert_with(|| DesiredImport {
                spec: ServiceImportSpec {
                    ports: Vec::new(),
                    ips: view
                        .vip_index(&r.namespace, &r.name)
                        .and_then(|index| vip_cidr.address(index).ok())
                        .map(|ip| vec![ip.to_string()])
                        .unwrap_or_default(),
                    type_: ServiceImportType::ClusterSetIp,
                    session_affinity: Some("None".to_owned()),
                },
                status: ServiceImportStatus::default(),
            });
            for port in &service.ports {
                let Ok(number) = i32::try_from(port.port) else {
                    continue;
                };
                if entry.spec.ports.iter().any(|p| p.port == number) {
                    continue; // the first zone's definition wins (a conflict is on the export)
                }
                entry.spec.ports.push(ServicePort {
                    name: Some(port.name.clone()).filter(|n| !n.is_empty()),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: app_protocol(port.protocol),
                    port: number,
                });
            }
            entry.spec.ports.sort_by_key(|p| p.port);
            entry.status.clusters.push(ClusterStatus {
                cluster: remote.name.clone(),
            });
        }
    }
    for import in out.values_mut() {
        import
            .status
            .clusters
            .sort_by(|a, b| a.cluster.cmp(&b.cluster));
    }
    out
}

/// Whether the zone created `object` (an import, the trust bundle's ConfigMap), and may
/// therefore change or delete it.
pub fn is_managed(object: &impl kube::ResourceExt) -> bool {
    object
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|v| v == MANAGED_BY)
}

/// The object the zone applies for `key`.
pub fn import_object(key: &ServiceKey, desired: &DesiredImport) -> ServiceImport {
    let mut import = ServiceImport::new(&key.name, desired.spec.clone());
    import.metadata.namespace = Some(key.namespace.clone());
    import.metadata.labels = Some(BTreeMap::from([(
        MANAGED_BY_LABEL.to_owned(),
        MANAGED_BY.to_owned(),
    )]));
    import.status = Some(desired.status.clone());
    import
}

/// The writes that take `existing` (every `ServiceImport` in the cluster) to `desired`, and
/// the services whose import is someone else's (left alone).
pub fn plan(
    desired: &BTreeMap<ServiceKey, DesiredImport>,
    existing: &[ServiceImport],
) -> (Vec<ImportAction>, Vec<ServiceKey>) {
    let existing: BTreeMap<ServiceKey, &ServiceImport> = existing
        .iter()
        .filter_map(|i| Some((object_key(&i.metadata)?, i)))
        .collect();
    let mut actions = Vec::new();
    let mut foreign = Vec::new();
    for (key, want) in desired {
        match existing.get(key) {
            Some(current) if !is_managed(*current) => foreign.push(key.clone()),
            Some(current) => {
                if current.spec != want.spec {
                    actions.push(ImportAction::Apply(import_object(key, want)));
                }
                if current.status.clone().unwrap_or_default() != want.status {
                    actions.push(ImportAction::ApplyStatus(import_object(key, want)));
                }
            }
            None => {
                actions.push(ImportAction::Apply(import_object(key, want)));
                actions.push(ImportAction::ApplyStatus(import_object(key, want)));
            }
        }
    }
    for (key, current) in &existing {
        if is_managed(*current) && !desired.contains_key(key) {
            actions.push(ImportAction::Delete(key.clone()));
        }
    }
    (actions, foreign)
}

/// Every `ServiceImport` in the cluster (the plan needs the foreign ones too).
pub async fn list(client: &Client) -> Result<Vec<ServiceImport>, kube::Error> {
    Ok(Api::<ServiceImport>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

/// Sends the writes. One that fails (for example: the namespace does not exist in this
/// cluster) is logged and does not stop the others; returns how many failed.
pub async fn apply(client: &Client, actions: &[ImportAction]) -> usize {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut failed = 0;
    for action in actions {
        let (key, result) = match action {
            ImportAction::Apply(import) | ImportAction::ApplyStatus(import) => {
                let Some(key) = object_key(&import.metadata) else {
                    continue;
                };
                let api: Api<ServiceImport> = Api::namespaced(client.clone(), &key.namespace);
                let result = if matches!(action, ImportAction::Apply(_)) {
                    let mut body = import.clone();
                    body.status = None;
                    api.patch(&key.name, &params, &Patch::Apply(&body)).await
                } else {
                    let body = serde_json::json!({
                        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                        "kind": "ServiceImport",
                        "status": import.status,
                    });
                    api.patch_status(&key.name, &params, &Patch::Apply(&body))
                        .await
                };
                (key, result.map(|_| ()))
            }
            ImportAction::Delete(key) => {
                let api: Api<ServiceImport> = Api::namespaced(client.clone(), &key.namespace);
                let result = match api.delete(&key.name, &DeleteParams::default()).await {
                    Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                    other => other.map(|_| ()),
                };
                (key.clone(), result)
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(namespace = %key.namespace, name = %key.name, action = action.verb(), "ServiceImport written");
            }
            Err(err) => {
                failed += 1;
                tracing::warn!(namespace = %key.namespace, name = %key.name, action = action.verb(), %err, "ServiceImport write failed; retried at the next reconcile");
            }
        }
    }
    failed
}

impl ImportAction {
    fn verb(&self) -> &'static str {
        match self {
            ImportAction::Apply(_) => "apply",
            ImportAction::ApplyStatus(_) => "apply status",
            ImportAction::Delete(_) => "delete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, services: &[(&str, &[u32])]) -> pb::RemoteZone {
        pb::RemoteZone {
            name: name.into(),
            services: services
                .iter()
                .map(|(svc, ports)| pb::ExportedService {
                    service: Some(pb::ServiceRef {
                        namespace: "demo".into(),
                        name: (*svc).into(),
                    }),
                    ports: ports
                        .iter()
                        .map(|p| pb::Port {
                            name: format!("p{p}"),
                            port: *p,
                            protocol: pb::Protocol::Http as i32,
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn view(zones: Vec<pb::RemoteZone>) -> FederationView {
        FederationView::new(pb::FederationSnapshot {
            version: 1,
            zones,
            vips: vec![pb::ServiceVip {
                service: Some(pb::ServiceRef {
                    namespace: "demo".into(),
                    name: "echo".into(),
                }),
                index: 3,
            }],
            ..Default::default()
        })
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    fn cidr() -> VipCidr {
        "240.0.0.0/16".parse().unwrap()
    }

    #[test]
    fn remote_services_become_imports_with_vip_ports_and_clusters() {
        let v = view(vec![
            zone("eu-1", &[("mine", &[80])]),
            zone("us-1", &[("echo", &[80])]),
            zone("ap-1", &[("echo", &[80, 9090]), ("own", &[1])]),
        ]);
        let own = BTreeSet::from([key("own")]);
        let d = desired(&v, "eu-1", &own, cidr());
        assert_eq!(d.keys().collect::<Vec<_>>(), [&key("echo")]);
        let echo = &d[&key("echo")];
        assert_eq!(echo.spec.ips, ["240.0.0.3"]);
        assert_eq!(echo.spec.type_, ServiceImportType::ClusterSetIp);
        let ports: Vec<_> = echo
            .spec
            .ports
            .iter()
            .map(|p| (p.port, p.app_protocol.as_deref()))
            .collect();
        assert_eq!(ports, [(80, Some("http")), (9090, Some("http"))]);
        let clusters: Vec<_> = echo
            .status
            .clusters
            .iter()
            .map(|c| c.cluster.as_str())
            .collect();
        assert_eq!(clusters, ["ap-1", "us-1"]);

        // No VIP yet: the import exists without an IP.
        let mut no_vip = v.clone();
        no_vip.snapshot.vips.clear();
        assert!(
            desired(&no_vip, "eu-1", &own, cidr())[&key("echo")]
                .spec
                .ips
                .is_empty()
        );
        // A denied zone's services are gone.
        let mut denied = v;
        denied.snapshot.deny_list = vec!["us-1".into(), "ap-1".into()];
        assert!(desired(&denied, "eu-1", &own, cidr()).is_empty());
    }

    #[test]
    fn plan_creates_updates_deletes_and_leaves_foreign_imports_alone() {
        let v = view(vec![zone("us-1", &[("echo", &[80]), ("theirs", &[80])])]);
        let d = desired(&v, "eu-1", &BTreeSet::new(), cidr());
        // Nothing yet: create (spec, then status).
        let (actions, foreign) = plan(&d, &[]);
        assert!(foreign.is_empty());
        assert_eq!(actions.len(), 4);
        let ImportAction::Apply(created) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert!(is_managed(created));

        // In place: nothing to do.
        let existing: Vec<ServiceImport> = d.iter().map(|(k, w)| import_object(k, w)).collect();
        assert!(plan(&d, &existing).0.is_empty());

        // Someone else's import of `theirs`, and a stale one of ours.
        let mut existing = vec![import_object(&key("echo"), &d[&key("echo")])];
        let mut foreign_import = import_object(&key("theirs"), &d[&key("theirs")]);
        foreign_import.metadata.labels = None;
        existing.push(foreign_import);
        let mut stale = import_object(&key("gone"), &d[&key("echo")]);
        stale.metadata.name = Some("gone".into());
        existing.push(stale);
        let mut foreign_stale = import_object(&key("other"), &d[&key("echo")]);
        foreign_stale.metadata.name = Some("other".into());
        foreign_stale.metadata.labels = None;
        existing.push(foreign_stale);
        let (actions, foreign) = plan(&d, &existing);
        assert_eq!(foreign, [key("theirs")]);
        assert_eq!(actions, [ImportAction::Delete(key("gone"))]);

        // Ports change: the spec is applied again, the status is unchanged.
        let v2 = view(vec![zone("us-1", &[("echo", &[80, 8443])])]);
        let d2 = desired(&v2, "eu-1", &BTreeSet::new(), cidr());
        let existing = vec![import_object(&key("echo"), &d[&key("echo")])];
        let (actions, _) = plan(&d2, &existing);
        assert_eq!(actions.len(), 1);
        let ImportAction::Apply(updated) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(updated.spec.ports.len(), 2);
    }
}
