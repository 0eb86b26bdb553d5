//! Tests of the discovery server's pieces together: the inventory it composes, the worlds it
//! compiles and the group configs it assembles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_proto as pb;
use tokio::sync::watch;

use super::compile::{self, ZoneContext};
use super::world::{World, WorldContext, same_configs};
use super::*;
use crate::federation::FederationView;
use crate::inventory::{Instance, LocalInventory, ServiceKey};
use crate::store::ZoneStore;

fn settings() -> DiscoveryConfig {
    DiscoveryConfig {
        zone: "a".into(),
        region: "eu".into(),
        trust_domain: "strait.local".into(),
        vip_cidr: "127.250.0.0/16".parse().unwrap(),
        registration_grace: Duration::from_secs(1),
    }
}

fn sim(service: &str, instance: &str, subzone: &str) -> Instance {
    Instance {
        service: ServiceKey {
            namespace: "demo".into(),
            name: service.into(),
        },
        instance: instance.into(),
        ports: vec![pb::Port {
            name: "http".into(),
            port: 8080,
            protocol: pb::Protocol::Http as i32,
        }],
        labels: BTreeMap::new(),
        locality: pb::Locality {
            region: "eu".into(),
            zone: "a".into(),
            subzone: subzone.into(),
        },
        inbound_address: format!("127.0.0.1:{}", 20_000 + instance.len()),
        identity: format!("spiffe://strait.local/ns/demo/sa/{service}"),
        healthy: true,
    }
}

fn inventory(instances: &[&Instance]) -> Arc<LocalInventory> {
    let mut inv = LocalInventory::default();
    for i in instances {
        inv.instances
            .entry(i.service.clone())
            .or_default()
            .insert(i.instance.clone(), (*i).clone());
    }
    Arc::new(inv)
}

#[tokio::test]
async fn with_workloads_the_cluster_gives_the_instances_and_the_registry_the_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let store = ZoneStore::open(dir.path().join("state")).unwrap();
    let (_federation_tx, federation) = watch::channel(Arc::new(FederationView::default()));
    let echo = sim("echo", "echo-pod-1", "z1");
    let (workloads_tx, workloads) = watch::channel(inventory(&[&echo]));
    let (server, mut zone_inventory) =
        DiscoveryServer::with_workloads(settings(), federation, store, workloads).unwrap();
    assert_eq!(
        zone_inventory.borrow().instances,
        inventory(&[&echo]).instances
    );

    // A sidecar's registration adds no endpoint (its pod is in the EndpointSlice already);
    // a gateway's does.
    let registered = sim("echo", "echo-sidecar", "z1");
    let result = server.inner.mutate(|r| {
        let result = r.register(1, registered);
        (result, true)
    });
    assert_eq!(result, Ok(true));
    let gateway = Instance::gateway(
        "gw-1".into(),
        pb::Locality {
            region: "eu".into(),
            zone: "a".into(),
            subzone: String::new(),
        },
        "127.0.0.1:15009".into(),
        "203.0.113.1:15443".into(),
        "spiffe://strait.local/zone/a/gateway".into(),
    );
    gateways::register(&server.inner, gateway).unwrap();
    {
        let now = zone_inventory.borrow_and_update();
        assert_eq!(now.instances, inventory(&[&echo]).instances);
        assert_eq!(now.gateways.keys().collect::<Vec<_>>(), ["gw-1"]);
    }

    // The cluster changes: the zone's inventory follows, gateways kept.
    let echo2 = sim("echo", "echo-pod-2", "z2");
    workloads_tx.send_replace(inventory(&[&echo, &echo2]));
    tokio::time::timeout(Duration::from_secs(5), zone_inventory.changed())
        .await
        .unwrap()
        .unwrap();
    let now = zone_inventory.borrow().clone();
    assert_eq!(now.instances, inventory(&[&echo, &echo2]).instances);
    assert_eq!(now.gateways.len(), 1);
}

fn gateway(name: &str, local: &str) -> Instance {
    Instance::gateway(
        name.into(),
        pb::Locality {
            region: "eu".into(),
            zone: "a".into(),
            subzone: String::new(),
        },
        local.into(),
        "203.0.113.1:15443".into(),
        "spiffe://strait.local/zone/a/gateway".into(),
    )
}

#[tokio::test]
async fn with_workloads_the_clusters_gateways_win_over_registrations_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = ZoneStore::open(dir.path().join("state")).unwrap();
    let (_federation_tx, federation) = watch::channel(Arc::new(FederationView::default()));
    // The cluster lists gw-1 (not ready) and gw-2.
    let mut cluster = LocalInventory::default();
    let mut not_ready = gateway("gw-1", "10.0.0.1:15009");
    not_ready.healthy = false;
    cluster.gateways.insert("gw-1".into(), not_ready.clone());
    cluster
        .gateways
        .insert("gw-2".into(), gateway("gw-2", "10.0.0.2:15009"));
    let (_workloads_tx, workloads) = watch::channel(Arc::new(cluster));
    let (server, zone_inventory) =
        DiscoveryServer::with_workloads(settings(), federation, store, workloads).unwrap();

    // gw-1 streams from this replica (healthy, as far as it knows); gw-3 is a gateway the
    // cluster does not list (outside it).
    gateways::register(&server.inner, gateway("gw-1", "10.0.0.1:15009")).unwrap();
    gateways::register(&server.inner, gateway("gw-3", "192.0.2.3:15009")).unwrap();
    let now = zone_inventory.borrow().clone();
    assert_eq!(
        now.gateways.keys().collect::<Vec<_>>(),
        ["gw-1", "gw-2", "gw-3"]
    );
    assert_eq!(now.gateways["gw-1"], not_ready, "the cluster's gw-1 counts");
    assert_eq!(
        now.local_gateway_addresses(),
        ["10.0.0.2:15009", "192.0.2.3:15009"]
    );
    assert_eq!(now.gateway_endpoints().len(), 2);
}

/// A view carrying the policies of `yaml`.
fn with_policies(yaml: &str) -> FederationView {
    let policies = strait_policy::parse_documents(yaml, "test.yaml")
        .unwrap()
        .into_iter()
        .map(|r| pb::PolicyResource {
            kind: r.kind.to_string(),
            namespace: r.metadata.namespace.clone(),
            name: r.metadata.name.clone(),
            json: r.to_json().unwrap(),
            revision: 1,
        })
        .collect();
    FederationView::new(pb::FederationSnapshot {
        policies,
        ..Default::default()
    })
}

/// What a stream would compare, the slow way (the whole config).
fn full(world: &World, sidecar: &Instance) -> pb::SidecarConfig {
    world.assembled(&settings(), sidecar).config.clone()
}

#[test]
fn equal_worlds_keep_the_generation_and_different_ones_bump_it() {
    let context = WorldContext::from(&settings());
    let now = Instant::now();
    let a = sim("sim", "a1", "");
    let view = Arc::new(FederationView::default());
    let first = context.build(view.clone(), inventory(&[&a]), now, None);
    // A new snapshot version alone changes no config.
    let mut newer = FederationView::default();
    newer.snapshot.version = 7;
    let same = context.build(Arc::new(newer), inventory(&[&a]), now, Some(&first));
    assert_eq!(same.shared.generation, first.shared.generation);
    assert!(Arc::ptr_eq(&same.shared, &first.shared));
    assert!(same_configs(&first, &same));
    assert!(
        first
            .assembled(&settings(), &a)
            .same_config(&same.assembled(&settings(), &a))
    );

    // Another instance changes the services: a new generation, and a different config.
    let b = sim("sim", "b1", "");
    let more = context.build(view, inventory(&[&a, &b]), now, Some(&same));
    assert_eq!(more.shared.generation, first.shared.generation + 1);
    assert!(!same_configs(&same, &more));
    assert_ne!(full(&same, &a), full(&more, &a));
    assert!(
        !same
            .assembled(&settings(), &a)
            .same_config(&more.assembled(&settings(), &a))
    );
}

#[test]
fn an_inbound_policy_change_wakes_the_streams_though_the_shared_part_is_the_same() {
    let context = WorldContext::from(&settings());
    let now = Instant::now();
    let a = sim("sim", "a1", "");
    let before = context.build(
        Arc::new(FederationView::default()),
        inventory(&[&a]),
        now,
        None,
    );
    // MeshTLS is server-side only: the outbound services stay as they were.
    let after = context.build(
        Arc::new(with_policies(
            "apiVersion: strait.dev/v1alpha1
kind: MeshTLS
metadata: {name: permissive, namespace: demo}
spec: {mode: PERMISSIVE}
",
        )),
        inventory(&[&a]),
        now,
        Some(&before),
    );
    assert_eq!(before.shared.generation, after.shared.generation);
    assert!(!same_configs(&before, &after), "the streams must be woken");
    assert_ne!(full(&before, &a), full(&after, &a));
    assert!(
        !before
            .assembled(&settings(), &a)
            .same_config(&after.assembled(&settings(), &a))
    );
}

#[test]
fn sidecars_of_one_service_and_subzone_share_one_assembled_config() {
    let context = WorldContext::from(&settings());
    let (a1, a2) = (sim("sim", "a1", "r1"), sim("sim", "a2", "r1"));
    let (other_rack, other_service) = (sim("sim", "a3", "r2"), sim("web", "w1", "r1"));
    let world = context.build(
        Arc::new(FederationView::default()),
        inventory(&[&a1, &a2, &other_rack, &other_service]),
        Instant::now(),
        None,
    );
    let shared = world.assembled(&settings(), &a1);
    assert!(Arc::ptr_eq(&shared, &world.assembled(&settings(), &a2)));
    // The group config is exactly what compiling for that sidecar alone gives.
    for sidecar in [&a1, &a2, &other_rack, &other_service] {
        let alone = compile::compile(&compile::CompileInput {
            context: ZoneContext {
                zone: "a",
                region: "eu",
                trust_domain: "strait.local",
                vip_cidr: settings().vip_cidr,
                inventory: &world.inventory,
                federation: &world.view,
                policies: &world.policies,
                local_gateways: &[],
            },
            sidecar,
        });
        assert_eq!(full(&world, sidecar), alone, "{}", sidecar.instance);
    }
    let rack = world.assembled(&settings(), &other_rack);
    assert!(!shared.same_config(&rack), "the subzone differs");
    let web = world.assembled(&settings(), &other_service);
    assert_eq!(shared.generation, web.generation);
    assert_eq!(lock(&world.groups).len(), 3);
}
