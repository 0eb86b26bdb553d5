//! What the CLI shows of the Admin API's replies (through [`crate::admin_client`]): the JSON
//! values of `-o json|yaml` and the rows of the tables. Pure; the binary prints them.

use serde_json::{Value, json};
use strait_proto as pb;

/// A table to print: column names and one row of cells per item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

/// Unix milliseconds as RFC 3339, `None` for 0 (never).
pub fn rfc3339(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    let secs = ms / 1000;
    let nanos = u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .replace_nanosecond(nanos)
        .ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A global node's role as `strait status` names it.
pub fn role_name(role: i32) -> &'static str {
    match pb::NodeRole::try_from(role).unwrap_or(pb::NodeRole::Unspecified) {
        pb::NodeRole::Leader => "leader",
        pb::NodeRole::Follower => "follower",
        pb::NodeRole::Learner => "learner",
        pb::NodeRole::Candidate => "candidate",
        pb::NodeRole::Unreachable | pb::NodeRole::Unspecified => "unreachable",
    }
}

pub fn zone_json(z: &pb::Zone) -> Value {
    json!({
        "name": z.name,
        "region": z.region,
        "labels": z.labels,
        "removed": z.removed,
        "connected": z.connected,
        "last_seen": rfc3339(z.last_seen_unix_ms),
        "created": rfc3339(z.created_unix_ms),
    })
}

/// `strait status -o json`: the trust domain, the global nodes and leader, the zones that are
/// not removed.
pub fn status_json(status: &pb::ClusterStatusResponse) -> Value {
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id, "address": n.address, "admin_address": n.admin_address,
                "role": role_name(n.role), "term": n.term,
                "commit_index": n.commit_index, "applied_index": n.applied_index,
            })
        })
        .collect();
    let zones: Vec<_> = status
        .zones
        .iter()
        .filter(|z| !z.removed)
        .map(zone_json)
        .collect();
    let leader = (status.leader_id != 0).then_some(status.leader_id);
    json!({
        "trust_domain": status.trust_domain,
        "global": {"leader": leader, "term": status.term, "nodes": nodes},
        "zones": zones,
    })
}

/// The global nodes of `strait status`.
pub fn node_table(nodes: &[pb::NodeStatus]) -> Table {
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.address.clone(),
                role_name(n.role).to_owned(),
                n.term.to_string(),
                n.commit_index.to_string(),
                n.applied_index.to_string(),
            ]
        })
        .collect();
    Table {
        header: &["ID", "ADDRESS", "ROLE", "TERM", "LOG INDEX", "APPLIED"],
        rows,
    }
}

/// Zones with their connection (`strait status`, `strait zone list`).
pub fn zone_table(zones: &[pb::Zone]) -> Table {
    let rows = zones
        .iter()
        .map(|z| {
            vec![
                z.name.clone(),
                z.region.clone(),
                if z.removed {
                    "removed".into()
                } else if z.connected {
                    "connected".into()
                } else {
                    "disconnected".into()
                },
                rfc3339(z.last_seen_unix_ms).unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    Table {
        header: &["NAME", "REGION", "STATUS", "LAST SEEN"],
        rows,
    }
}

/// `strait services -o json`.
pub fn services_json(services: &[pb::ServiceStatus]) -> Value {
    let services: Vec<_> = services
        .iter()
        .map(|s| {
            let service = s.service.clone().unwrap_or_default();
            json!({
                "name": service.name,
                "namespace": service.namespace,
                "vip_index": s.vip_index,
                "vips": s.vips,
                "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port})).collect::<Vec<_>>(),
                "zones": s.zones.iter().map(|z| json!({
                    "zone": z.zone, "healthy": z.healthy, "total": z.total,
                    "drained": z.drained, "stale": z.stale,
                    "pinned_vip_index": z.pinned_vip_index,
                    "pinned_vips": z.pinned_vips,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!(services)
}

/// `strait services`: zones as `ZONE(HEALTHY/TOTAL)`, VIPs as `ZONE=VIP` sorted.
pub fn services_table(services: &[pb::ServiceStatus]) -> Table {
    let rows = services
        .iter()
        .map(|s| {
            let service = s.service.clone().unwrap_or_default();
            let zones: Vec<String> = s
                .zones
                .iter()
                .map(|z| format!("{}({}/{})", z.zone, z.healthy, z.total))
                .collect();
            let mut vips: Vec<String> = s
                .vips
                .iter()
                .map(|(zone, vip)| format!("{zone}={vip}"))
                .collect();
            vips.sort();
            vec![
                service.namespace,
                service.name,
                zones.join(" "),
                vips.join(" "),
            ]
        })
        .collect();
    Table {
        header: &["NAMESPACE", "NAME", "ZONES (HEALTHY/TOTAL)", "VIPS"],
        rows,
    }
}

/// `strait get`: the stored policy resources.
pub fn policy_table(resources: &[pb::PolicyResource]) -> Table {
    let rows = resources
        .iter()
        .map(|r| {
            vec![
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.revision.to_string(),
            ]
        })
        .collect();
    Table {
        header: &["KIND", "NAMESPACE", "NAME", "REVISION"],
        rows,
    }
}

/// `strait describe`: per port, each policy that applies and whether it is in force or
/// overridden (by which resource, and why).
pub fn description_table(descriptions: &[strait_policy::Description]) -> Table {
    let rows = descriptions
        .iter()
        .flat_map(|d| {
            let port = d.port.map_or_else(|| "*".to_owned(), |p| p.to_string());
            d.resources.iter().map(move |r| {
                let status = match (&r.overridden_by, &r.reason) {
                    (Some(by), Some(reason)) => format!("overridden by {by}: {reason}"),
                    _ => serde_json::to_value(r.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                };
                vec![
                    port.clone(),
                    r.kind.as_str().to_owned(),
                    format!("{}/{}", r.namespace, r.name),
                    r.scope.as_str().to_owned(),
                    status,
                ]
            })
        })
        .collect();
    Table {
        header: &["PORT", "KIND", "RESOURCE", "SCOPE", "STATUS"],
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_zero_is_never() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(-5), None);
        assert_eq!(rfc3339(1_000).as_deref(), Some("1970-01-01T00:00:01Z"));
        assert_eq!(
            rfc3339(1_700_000_000_123).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
    }

    #[test]
    fn roles_are_named_and_unknown_ones_are_unreachable() {
        assert_eq!(role_name(pb::NodeRole::Leader as i32), "leader");
        assert_eq!(role_name(pb::NodeRole::Follower as i32), "follower");
        assert_eq!(role_name(pb::NodeRole::Unspecified as i32), "unreachable");
        assert_eq!(role_name(99), "unreachable");
    }

    fn zone(name: &str, removed: bool, connected: bool, last_seen: i64) -> pb::Zone {
        pb::Zone {
            name: name.into(),
            region: "r1".into(),
            removed,
            connected,
            last_seen_unix_ms: last_seen,
            ..Default::default()
        }
    }

    #[test]
    fn status_shows_the_leader_and_only_zones_not_removed() {
        let status = pb::ClusterStatusResponse {
            nodes: vec![pb::NodeStatus {
                id: 1,
                address: "127.0.0.1:7400".into(),
                role: pb::NodeRole::Leader as i32,
                term: 3,
                commit_index: 10,
                applied_index: 9,
                ..Default::default()
            }],
            leader_id: 1,
            term: 3,
            zones: vec![zone("a", false, true, 1_000), zone("old", true, false, 0)],
            trust_domain: "strait.local".into(),
        };
        let value = status_json(&status);
        assert_eq!(value["global"]["leader"], 1);
        assert_eq!(value["global"]["nodes"][0]["role"], "leader");
        assert_eq!(value["zones"].as_array().map(Vec::len), Some(1));
        assert_eq!(value["zones"][0]["last_seen"], "1970-01-01T00:00:01Z");
        assert_eq!(value["zones"][0]["created"], Value::Null);
        let no_leader = pb::ClusterStatusResponse {
            leader_id: 0,
            ..status.clone()
        };
        assert_eq!(status_json(&no_leader)["global"]["leader"], Value::Null);
        assert_eq!(
            node_table(&status.nodes).rows,
            [["1", "127.0.0.1:7400", "leader", "3", "10", "9"]]
        );
    }

    #[test]
    fn zone_rows_say_removed_connected_or_disconnected() {
        let table = zone_table(&[
            zone("a", false, true, 1_000),
            zone("b", false, false, 0),
            zone("c", true, true, 0),
        ]);
        assert_eq!(table.header, ["NAME", "REGION", "STATUS", "LAST SEEN"]);
        assert_eq!(
            table.rows,
            [
                ["a", "r1", "connected", "1970-01-01T00:00:01Z"],
                ["b", "r1", "disconnected", "never"],
                ["c", "r1", "removed", "never"],
            ]
        );
    }

    #[test]
    fn services_list_zones_and_sorted_vips() {
        let service = pb::ServiceStatus {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            vip_index: 1,
            vips: [("b", "127.241.0.1"), ("a", "127.240.0.1")]
                .into_iter()
                .map(|(z, v)| (z.to_owned(), v.to_owned()))
                .collect(),
            zones: vec![pb::ServiceZone {
                zone: "a".into(),
                healthy: 1,
                total: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            services_table(std::slice::from_ref(&service)).rows,
            [["demo", "echo", "a(1/2)", "a=127.240.0.1 b=127.241.0.1"]]
        );
        let value = services_json(&[service]);
        assert_eq!(value[0]["name"], "echo");
        assert_eq!(value[0]["vips"]["b"], "127.241.0.1");
        assert_eq!(value[0]["zones"][0]["healthy"], 1);
    }

    #[test]
    fn descriptions_are_rows_per_port_with_the_override_and_its_reason() {
        use strait_policy::{Description, Kind, Scope, describe::Described, describe::Status};
        let described = |name: &str, status, overridden_by: Option<&str>| Described {
            kind: Kind::Retry,
            namespace: "demo".into(),
            name: name.into(),
            scope: Scope::Service,
            status,
            overridden_by: overridden_by.map(str::to_owned),
            reason: overridden_by.map(|_| "more specific".to_owned()),
        };
        let description = |port| Description {
            namespace: "demo".into(),
            service: "echo".into(),
            port,
            resources: vec![
                described("r1", Status::Applies, None),
                described("r2", Status::Overridden, Some("Retry demo/r1")),
            ],
        };
        let table = description_table(&[description(Some(8080)), description(None)]);
        assert_eq!(
            table.header,
            ["PORT", "KIND", "RESOURCE", "SCOPE", "STATUS"]
        );
        assert_eq!(table.rows.len(), 4);
        assert_eq!(
            table.rows[0],
            ["8080", "Retry", "demo/r1", "service", "applies"]
        );
        assert_eq!(
            table.rows[1][4],
            "overridden by Retry demo/r1: more specific"
        );
        assert_eq!(table.rows[2][0], "*");
    }
}
