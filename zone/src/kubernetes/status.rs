//! `ServiceExport` status: whether each export works, written by the leader.
//!
//! Two conditions, as the MCS API defines them:
//!
//! - `Valid`: `True` (reason `Exported`) when the Service exists, is not `ExternalName` and
//!   has a TCP port; else `False` with the reason ([`validate_export`]).
//! - `Conflict` (valid exports only): `True` (reason `PortConflict`) when another zone of the
//!   federation exports the same service with different ports (numbers or protocols), naming
//!   the zones; else `False` (`NoConflict`). The export still works: each zone's endpoints
//!   are reached on the ports it exports, but clients of a port another zone lacks fail over
//!   badly, which is what the user needs to see.
//!
//! [`plan`] is pure (cached exports + federation view + now → the status patches to send);
//! [`apply`] sends them. A condition's `lastTransitionTime` moves only when its status does.

use std::collections::BTreeMap;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use strait_proto as pb;

use crate::federation::FederationView;
use crate::inventory::ServiceKey;
use crate::kubernetes::crd::{CONDITION_CONFLICT, CONDITION_VALID, Condition, ServiceExport};
use crate::kubernetes::source::{ClusterState, object_key, validate_export};

/// The field manager of everything the zone writes.
pub const FIELD_MANAGER: &str = "strait-zone";

/// One export's new conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub export: ServiceKey,
    pub conditions: Vec<Condition>,
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        last_transition_time: None,
        reason: Some(reason.to_owned()),
        message: Some(message),
    }
}

/// The ports a port set is compared by: number and protocol (names are cosmetic).
fn port_shape(ports: &[pb::Port]) -> Vec<(u32, i32)> {
    let mut shape: Vec<(u32, i32)> = ports.iter().map(|p| (p.port, p.protocol)).collect();
    shape.sort_unstable();
    shape.dedup();
    shape
}

fn describe(shape: &[(u32, i32)]) -> String {
    let ports: Vec<String> = shape
        .iter()
        .map(|(port, protocol)| {
            let name = pb::Protocol::try_from(*protocol)
                .map(|p| p.as_str_name().trim_start_matches("PROTOCOL_").to_owned())
                .unwrap_or_else(|_| protocol.to_string());
            format!("{port}/{name}")
        })
        .collect();
    format!("[{}]", ports.join(", "))
}

/// The other zones (not denied) that export `key` with ports shaped differently from `ours`,
/// with their ports.
pub fn conflicting_zones(
    view: &FederationView,
    zone: &str,
    key: &ServiceKey,
    ours: &[pb::Port],
) -> Vec<(String, Vec<(u32, i32)>)> {
    let ours = port_shape(ours);
    view.zones()
        .iter()
        .filter(|z| z.name != zone && !view.is_denied(&z.name))
        .filter_map(|z| {
            let service = z.services.iter().find(|s| {
                s.service
                    .as_ref()
                    .is_some_and(|r| r.namespace == key.namespace && r.name == key.name)
            })?;
            let theirs = port_shape(&service.ports);
            (theirs != ours).then(|| (z.name.clone(), theirs))
        })
        .collect()
}

/// The conditions an export should have now (without transition times).
pub fn desired_conditions(
    state: &ClusterState,
    view: &FederationView,
    zone: &str,
    key: &ServiceKey,
) -> Vec<Condition> {
    match validate_export(state.service(key)) {
        Err(invalid) => vec![condition(
            CONDITION_VALID,
            false,
            invalid.reason,
            invalid.message,
        )],
        Ok(ports) => {
            let valid = condition(
                CONDITION_VALID,
                true,
                "Exported",
                format!(
                    "exported to the federation by zone {zone} on ports {}",
                    describe(&port_shape(&ports))
                ),
            );
            let conflicts = conflicting_zones(view, zone, key, &ports);
            let conflict = if conflicts.is_empty() {
                condition(
                    CONDITION_CONFLICT,
                    false,
                    "NoConflict",
                    "every zone that exports this service exports the same ports".to_owned(),
                )
            } else {
                let others: Vec<String> = conflicts
                    .iter()
                    .map(|(z, shape)| format!("zone {z} exports {}", describe(shape)))
                    .collect();
                condition(
                    CONDITION_CONFLICT,
                    true,
                    "PortConflict",
                    format!(
                        "this zone exports {} but {}",
                        describe(&port_shape(&ports)),
                        others.join("; ")
                    ),
                )
            };
            vec![valid, conflict]
        }
    }
}

/// Whether two condition lists say the same, transition times aside.
fn same(a: &[Condition], b: &[Condition]) -> bool {
    let strip = |c: &Condition| Condition {
        last_transition_time: None,
        ..c.clone()
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| strip(x) == strip(y))
}

/// The status patches due: every export whose conditions differ from what they should be.
/// `now` (RFC 3339) stamps conditions whose status changed; others keep their time.
pub fn plan(
    state: &ClusterState,
    view: &FederationView,
    zone: &str,
    now: &str,
) -> Vec<StatusUpdate> {
    let mut updates = Vec::new();
    let exports: BTreeMap<ServiceKey, &ServiceExport> = state
        .exports
        .iter()
        .filter_map(|e| Some((object_key(&e.metadata)?, e.as_ref())))
        .collect();
    for (key, export) in exports {
        let current = export
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let desired = desired_conditions(state, view, zone, &key);
        if same(&current, &desired) {
            continue;
        }
        let conditions = desired
            .into_iter()
            .map(|mut c| {
                let previous = current.iter().find(|p| p.type_ == c.type_);
                c.last_transition_time = match previous {
                    Some(p) if p.status == c.status => p.last_transition_time.clone(),
                    _ => Some(now.to_owned()),
                };
                c
            })
            .collect();
        updates.push(StatusUpdate {
            export: key,
            conditions,
        });
    }
    updates
}

/// Sends the patches (a JSON merge patch of `status.conditions` each, on the status
/// subresource). An export deleted meanwhile is skipped; other failures stop and are returned
/// (the next reconcile plans again).
pub async fn apply(client: &Client, updates: &[StatusUpdate]) -> Result<(), kube::Error> {
    for update in updates {
        let api: Api<ServiceExport> = Api::namespaced(client.clone(), &update.export.namespace);
        let patch = serde_json::json!({"status": {"conditions": update.conditions}});
        match api
            .patch_status(
                &update.export.name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %update.export.namespace, name = %update.export.name, conditions = ?update.conditions.iter().map(|c| (&c.type_, &c.status)).collect::<Vec<_>>(), "ServiceExport status updated");
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kubernetes::source::tests::{export, service};
    use serde_json::json;

    pub(crate) fn remote_zone(name: &str, services: &[(&str, &str, &[u32])]) -> pb::RemoteZone {
        pb::RemoteZone {
            name: name.into(),
            region: "us".into(),
            connected: true,
            services: services
                .iter()
                .map(|(ns, svc, ports)| pb::ExportedService {
                    service: Some(pb::ServiceRef {
                        namespace: (*ns).into(),
                        name: (*svc).into(),
                    }),
                    ports: ports
                        .iter()
                        .map(|p| pb::Port {
                            name: "http".into(),
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

    fn state() -> ClusterState {
        ClusterState {
            services: vec![Arc::new(service(
                "demo",
                "echo",
                json!([{"name": "http", "port": 80, "appProtocol": "http"}]),
            ))],
            exports: vec![
                Arc::new(export("demo", "echo")),
                Arc::new(export("demo", "missing")),
            ],
            ..ClusterState::default()
        }
    }

    fn view(zones: Vec<pb::RemoteZone>) -> FederationView {
        FederationView::new(pb::FederationSnapshot {
            version: 1,
            zones,
            ..Default::default()
        })
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    #[test]
    fn valid_invalid_and_conflicting_exports() {
        let agreeing = view(vec![
            remote_zone("eu-1", &[("demo", "echo", &[80])]),
            remote_zone("us-1", &[("demo", "echo", &[80])]),
        ]);
        let c = desired_conditions(&state(), &agreeing, "eu-1", &key("echo"));
        let summary: Vec<_> = c
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                ("Valid", "True", Some("Exported")),
                ("Conflict", "False", Some("NoConflict"))
            ]
        );

        let c = desired_conditions(&state(), &agreeing, "eu-1", &key("missing"));
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].status.as_str(), c[0].reason.as_deref()),
            ("False", Some("ServiceNotFound"))
        );

        // us-1 exports 8080 too; our own entry in the view never conflicts with us.
        let conflicting = view(vec![
            remote_zone("eu-1", &[("demo", "echo", &[81])]),
            remote_zone("us-1", &[("demo", "echo", &[80, 8080])]),
            remote_zone("ap-1", &[("demo", "other", &[1])]),
        ]);
        let c = desired_conditions(&state(), &conflicting, "eu-1", &key("echo"));
        assert_eq!(c[1].type_, "Conflict");
        assert_eq!(c[1].status, "True");
        assert_eq!(c[1].reason.as_deref(), Some("PortConflict"));
        let message = c[1].message.as_deref().unwrap();
        assert!(
            message.contains("us-1 exports [80/HTTP, 8080/HTTP]"),
            "{message}"
        );
        assert!(!message.contains("ap-1"), "{message}");

        // A denied zone is not part of the federation any more.
        let mut denied = conflicting.clone();
        denied.snapshot.deny_list.push("us-1".into());
        let c = desired_conditions(&state(), &denied, "eu-1", &key("echo"));
        assert_eq!(c[1].status, "False");
    }

    #[test]
    fn plan_patches_only_changes_and_keeps_transition_times() {
        let v = view(vec![]);
        let updates = plan(&state(), &v, "eu-1", "2025-01-01T00:00:00Z");
        assert_eq!(updates.len(), 2);
        assert!(updates.iter().all(|u| {
            u.conditions
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some("2025-01-01T00:00:00Z"))
        }));

        // Once written, nothing more to do.
        let mut written = state();
        for (e, u) in written.exports.iter_mut().zip(&updates) {
            Arc::make_mut(e).status = Some(crate::kubernetes::crd::ServiceExportStatus {
                conditions: u.conditions.clone(),
            });
        }
        assert!(plan(&written, &v, "eu-1", "2025-01-02T00:00:00Z").is_empty());

        // A conflict appears: only Conflict gets a new transition time.
        let conflicting = view(vec![remote_zone("us-1", &[("demo", "echo", &[8080])])]);
        let updates = plan(&written, &conflicting, "eu-1", "2025-01-03T00:00:00Z");
        assert_eq!(updates.len(), 1);
        let times: Vec<_> = updates[0]
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.last_transition_time.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            times,
            [
                ("Valid", "True", Some("2025-01-01T00:00:00Z")),
                ("Conflict", "True", Some("2025-01-03T00:00:00Z"))
            ]
        );
    }
}
