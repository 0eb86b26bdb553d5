//! This zone's east-west gateways on the discovery server (`Discovery.GatewayStream`).
//!
//! A gateway (`spiffe://TD/zone/ZONE/gateway` of this zone, nothing else) registers its
//! public QUIC address and its local HTTP/2 CONNECT address, and receives its
//! [`pb::GatewayConfig`] whenever that changes. The registration goes into the same registry as
//! workload instances (see [`crate::inventory::gateway_key`]), so a gateway that reconnects, or
//! a control plane that restarts under it, keeps its place for the registration grace: other
//! zones never see this zone's way in disappear for a blip.
//!
//! From the registry, the gateways reach two places: the zone's inventory report (other zones
//! learn the public addresses through global) and this zone's sidecar configs (the local
//! addresses become `local_gateways` of every remote locality group).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use strait_proto as pb;
use strait_trust::{IdentityKind, SpiffeId};
use tokio::sync::mpsc;
use tonic::Status;

use super::compile;
use super::registry::ConnId;
use super::server::Inner;
use super::validate::{check_address, check_instance_name};
use super::world::World;
use crate::federation::FederationView;
use crate::inventory::{Instance, LocalInventory, ServiceKey, gateway_key};

/// The gateway config this zone gives its gateways, without `version`. Pure.
pub fn gateway_config(
    zone: &str,
    trust_domain: &str,
    inventory: &LocalInventory,
    view: &FederationView,
) -> pb::GatewayConfig {
    let services = inventory
        .instances
        .iter()
        .filter(|(_, instances)| !instances.is_empty())
        .map(|(key, instances)| {
            let mut ports: Vec<pb::Port> = Vec::new();
            for port in instances.values().flat_map(|i| &i.ports) {
                if !ports.iter().any(|p| p.port == port.port) {
                    ports.push(port.clone());
                }
            }
            ports.sort_by_key(|p| p.port);
            pb::GatewayService {
                service: Some(pb::ServiceRef {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                }),
                ports,
                endpoints: instances.values().map(Instance::endpoint).collect(),
                drained: view.is_drained(&key.namespace, &key.name, zone),
            }
        })
        .collect();
    let mut zones: Vec<pb::GatewayPeerZone> = view
        .zones()
        .iter()
        .filter(|z| !z.name.is_empty() && z.name != zone && !view.is_denied(&z.name))
        .map(|z| pb::GatewayPeerZone {
            name: z.name.clone(),
            region: z.region.clone(),
            gateways: z.gateways.clone(),
        })
        .collect();
    zones.sort_by(|a, b| a.name.cmp(&b.name));
    zones.dedup_by(|a, b| a.name == b.name);
    pb::GatewayConfig {
        version: 0,
        zone: zone.to_owned(),
        trust_domain: trust_domain.to_owned(),
        services,
        zones,
        deny_list: compile::deny_list(view),
    }
}

/// The caller must be this zone's gateway.
pub(super) fn authorize(id: &SpiffeId, zone: &str, trust_domain: &str) -> Result<(), Status> {
    if id.trust_domain() != trust_domain {
        return Err(Status::permission_denied(format!(
            "{id} is not in trust domain {trust_domain}"
        )));
    }
    match id.kind() {
        IdentityKind::Gateway { zone: z } if z == zone => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "{id} is not spiffe://{trust_domain}/zone/{zone}/gateway: only this zone's gateways register here"
        ))),
    }
}

/// The registry entry a `GatewayRegister` describes.
pub(super) fn instance(
    register: pb::GatewayRegister,
    locality: pb::Locality,
    identity: &SpiffeId,
) -> Result<Instance, Status> {
    check_instance_name(&register.instance)?;
    check_address(&register.public_address)
        .map_err(|s| Status::invalid_argument(format!("public_address: {}", s.message())))?;
    check_address(&register.local_address)
        .map_err(|s| Status::invalid_argument(format!("local_address: {}", s.message())))?;
    Ok(Instance::gateway(
        register.instance,
        locality,
        register.local_address,
        register.public_address,
        identity.to_string(),
    ))
}

/// Starts the gateway's grace however its stream ends.
struct GatewayGuard {
    inner: Arc<Inner>,
    conn: ConnId,
    instance: String,
}

impl Drop for GatewayGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let key: ServiceKey = gateway_key();
        self.inner.mutate(|r| {
            r.disconnect(self.conn, &key, &self.instance, now);
            ((), false)
        });
        self.inner.metrics.gateways.dec();
        tracing::info!("gateway stream ended; it stays for the registration grace");
    }
}

pub(super) type GatewaySender = mpsc::Sender<Result<pb::GatewayConfig, Status>>;

/// Pushes the gateway its config whenever it changes, until the stream or the server ends.
pub(super) async fn run(inner: Arc<Inner>, conn: ConnId, instance: String, tx: GatewaySender) {
    inner.metrics.gateways.inc();
    let _guard = GatewayGuard {
        inner: inner.clone(),
        conn,
        instance,
    };
    let mut worlds = inner.world.clone();
    let mut version = 0_u64;
    let mut last: Option<pb::GatewayConfig> = None;
    loop {
        let world: Arc<World> = worlds.borrow_and_update().clone();
        let config = gateway_config(
            &inner.config.zone,
            &inner.config.trust_domain,
            &world.inventory,
            &world.view,
        );
        if last.as_ref() != Some(&config) {
            version += 1;
            let mut stamped = config.clone();
            stamped.version = version;
            if tx.send(Ok(stamped)).await.is_err() {
                return;
            }
            tracing::debug!(version, "gateway config pushed");
            last = Some(config);
        }
        tokio::select! {
            changed = worlds.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// Registers the gateway for stream `conn`.
pub(super) fn register(inner: &Inner, instance: Instance) -> Result<ConnId, Status> {
    let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    inner
        .mutate(|r| {
            let result = r.register(conn, instance);
            let changed = result == Ok(true);
            (result, changed)
        })
        .map_err(|err| Status::already_exists(err.to_string()))?;
    Ok(conn)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn view(zones: Vec<pb::RemoteZone>, denied: &[&str]) -> FederationView {
        FederationView::new(pb::FederationSnapshot {
            zones,
            deny_list: denied.iter().map(|z| (*z).to_owned()).collect(),
            trust_domain: "strait.local".into(),
            ..Default::default()
        })
    }

    fn remote(name: &str, gateway: &str) -> pb::RemoteZone {
        pb::RemoteZone {
            name: name.into(),
            region: "r1".into(),
            gateways: vec![pb::GatewayEndpoint {
                address: gateway.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn echo(name: &str, healthy: bool) -> Instance {
        Instance {
            service: ServiceKey {
                namespace: "demo".into(),
                name: "echo".into(),
            },
            instance: name.into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: pb::Protocol::Http as i32,
            }],
            labels: BTreeMap::new(),
            locality: pb::Locality::default(),
            inbound_address: format!("127.0.0.1:{}", if healthy { 1 } else { 2 }),
            identity: "spiffe://strait.local/ns/demo/sa/echo".into(),
            healthy,
        }
    }

    #[test]
    fn the_config_lists_local_endpoints_and_other_undenied_zones() {
        let mut inventory = LocalInventory::default();
        let key = echo("x", true).service;
        let instances = inventory.instances.entry(key).or_default();
        instances.insert("v1".into(), echo("v1", true));
        instances.insert("v2".into(), echo("v2", false));
        let view = view(
            vec![
                remote("a", "127.0.0.1:9"),
                remote("b", "127.0.0.2:9"),
                remote("c", "127.0.0.3:9"),
            ],
            &["c"],
        );
        let config = gateway_config("a", "strait.local", &inventory, &view);
        assert_eq!(config.zone, "a");
        assert_eq!(config.services.len(), 1);
        let echo = &config.services[0];
        assert_eq!(echo.endpoints.len(), 2);
        assert_eq!(echo.endpoints.iter().filter(|e| e.healthy).count(), 1);
        assert_eq!(echo.ports.len(), 1);
        assert!(!echo.drained);
        // This zone and the denied zone are not peers; the denied zone is on the deny list.
        let names: Vec<&str> = config.zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(config.zones[0].gateways[0].address, "127.0.0.2:9");
        assert_eq!(config.deny_list, ["c"]);
    }

    #[test]
    fn only_this_zones_gateway_may_register() {
        let ok: SpiffeId = "spiffe://strait.local/zone/a/gateway".parse().unwrap();
        assert!(authorize(&ok, "a", "strait.local").is_ok());
        for other in [
            "spiffe://strait.local/zone/b/gateway",
            "spiffe://strait.local/zone/a/cp",
            "spiffe://strait.local/ns/demo/sa/echo",
            "spiffe://other.local/zone/a/gateway",
        ] {
            let id: SpiffeId = other.parse().unwrap();
            assert_eq!(
                authorize(&id, "a", "strait.local").unwrap_err().code(),
                tonic::Code::PermissionDenied,
                "{other}"
            );
        }
    }

    #[test]
    fn registrations_are_checked() {
        let id: SpiffeId = "spiffe://strait.local/zone/a/gateway".parse().unwrap();
        let good = pb::GatewayRegister {
            instance: "gateway-a-1".into(),
            public_address: "127.0.0.1:15443".into(),
            local_address: "127.0.0.1:15008".into(),
        };
        let gw = instance(good.clone(), pb::Locality::default(), &id).unwrap();
        assert_eq!(gw.public_address(), "127.0.0.1:15443");
        assert_eq!(gw.inbound_address, "127.0.0.1:15008");
        assert_eq!(gw.service, gateway_key());
        let bad = pb::GatewayRegister {
            public_address: "no-port".into(),
            ..good.clone()
        };
        assert!(instance(bad, pb::Locality::default(), &id).is_err());
        let bad = pb::GatewayRegister {
            instance: "bad name!".into(),
            ..good
        };
        assert!(instance(bad, pb::Locality::default(), &id).is_err());
    }
}
