//! Kubernetes mode against a scripted API server ([`fake_api`]): the watches, the writes and
//! leader election, through a real `kube::Client`, without a cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strait_proto as pb;
use strait_proto::vip::VipCidr;
use tokio::sync::{mpsc, watch};

use super::controller::{reconcile, run_writer};
use super::fake_api::{self, ApiServer, list};
use super::lease::LeaseElector;
use super::source::tests::{export, gateway_pod, gateway_settings, pod, service, settings, slice};
use super::source::{self, ClusterState};
use crate::federation::FederationView;
use crate::inventory::{LocalInventory, ServiceKey};

const MCS: &str = "/apis/multicluster.x-k8s.io/v1alpha1";

fn cidr() -> VipCidr {
    "240.0.0.0/16".parse().unwrap()
}

fn exported_service(ns: &str, name: &str, ports: &[u32]) -> pb::ExportedService {
    pb::ExportedService {
        service: Some(pb::ServiceRef {
            namespace: ns.into(),
            name: name.into(),
        }),
        ports: ports
            .iter()
            .map(|p| pb::Port {
                name: if *p == 80 {
                    "http".into()
                } else {
                    format!("p{p}")
                },
                port: *p,
                protocol: pb::Protocol::Http as i32,
            })
            .collect(),
        localities: vec![pb::LocalityEndpoints {
            locality: None,
            healthy: 1,
            total: 1,
        }],
        identities: vec![],
        subsets: vec![],
    }
}

fn view(zones: Vec<(&str, Vec<pb::ExportedService>)>) -> FederationView {
    FederationView::new(pb::FederationSnapshot {
        version: 7,
        zones: zones
            .into_iter()
            .map(|(name, services)| pb::RemoteZone {
                name: name.into(),
                region: "r".into(),
                connected: true,
                services,
                ..Default::default()
            })
            .collect(),
        vips: vec![pb::ServiceVip {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            index: 5,
        }],
        ..Default::default()
    })
}

async fn wait_for<T>(rx: &mut watch::Receiver<T>, what: &str, mut done: impl FnMut(&T) -> bool) {
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| done(v)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("sender alive");
}

// === the watches ===

/// Serves the four watched kinds: lists from `objects`, watches as streams handed to the test
/// on `watches` (by resource plural).
async fn serve_watches(
    mut server: ApiServer,
    objects: HashMap<&'static str, (&'static str, &'static str, Vec<Value>)>,
    watches: mpsc::UnboundedSender<(String, mpsc::Sender<Value>)>,
) {
    loop {
        let call = server.next_loop().await;
        let Some(call) = call else { return };
        assert_eq!(call.method, Method::GET, "{call:?}");
        let plural = call.path.rsplit('/').next().unwrap_or_default().to_owned();
        let Some((kind, api_version, items)) = objects.get(plural.as_str()) else {
            panic!("unexpected request {call:?}");
        };
        if call.is_watch() {
            let _ = watches.send((plural, call.stream()));
        } else {
            call.json(200, list(kind, api_version, items.clone()));
        }
    }
}

/// `source` running against [`serve_watches`] over `objects`, and what the tests read.
struct RunningSource {
    inventory: watch::Receiver<Arc<LocalInventory>>,
    cluster: watch::Receiver<Option<Arc<ClusterState>>>,
    /// Each watch the source opens: its resource (plural) and the sender of its events.
    watches: mpsc::UnboundedReceiver<(String, mpsc::Sender<Value>)>,
    stop: tokio::sync::oneshot::Sender<()>,
    source: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

impl RunningSource {
    /// Starts the source (with `gateways`, reading the zone's gateway pods too).
    fn start(
        objects: HashMap<&'static str, (&'static str, &'static str, Vec<Value>)>,
        gateways: Option<source::GatewayPods>,
    ) -> Self {
        let (client, server) = fake_api::client();
        let (watches_tx, watches) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve_watches(server, objects, watches_tx));
        let (inventory_tx, inventory) = watch::channel(Arc::new(LocalInventory::default()));
        let (cluster_tx, cluster) = watch::channel(None);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let source = tokio::spawn(source::run(
            client,
            settings(),
            gateways,
            inventory_tx,
            cluster_tx,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            inventory,
            cluster,
            watches,
            stop,
            source,
            server,
        }
    }

    /// The next watch the source opens.
    async fn next_watch(&mut self) -> (String, mpsc::Sender<Value>) {
        tokio::time::timeout(Duration::from_secs(5), self.watches.recv())
            .await
            .expect("a watch within 5s")
            .expect("server alive")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.source)
            .await
            .expect("the source stops")
            .unwrap();
        self.server.abort();
    }
}

impl ApiServer {
    /// The next request, or `None` once the client is gone or quiet for a while.
    async fn next_loop(&mut self) -> Option<fake_api::Call> {
        // Watches stay open: a quiet server is normal here, so wait without panicking.
        tokio::time::timeout(Duration::from_secs(30), self.next())
            .await
            .ok()
    }
}

fn totals(inventory: &LocalInventory) -> Vec<(String, u32, u32)> {
    inventory
        .exported_services(&Default::default())
        .iter()
        .map(|s| {
            let r = s.service.as_ref().unwrap();
            let healthy = s.localities.iter().map(|l| l.healthy).sum();
            let total = s.localities.iter().map(|l| l.total).sum();
            (format!("{}/{}", r.namespace, r.name), healthy, total)
        })
        .collect()
}

#[tokio::test]
async fn service_endpoint_slice_and_export_become_the_exported_inventory_until_unexported() {
    let echo_export = serde_json::to_value(export("demo", "echo")).unwrap();
    let objects = HashMap::from([
        (
            "services",
            (
                "Service",
                "v1",
                vec![
                    serde_json::to_value(service(
                        "demo",
                        "echo",
                        json!([{"name": "http", "port": 80, "targetPort": 8080}]),
                    ))
                    .unwrap(),
                    // Not exported: no ServiceExport.
                    serde_json::to_value(service("demo", "private", json!([{"port": 80}])))
                        .unwrap(),
                ],
            ),
        ),
        (
            "endpointslices",
            (
                "EndpointSlice",
                "discovery.k8s.io/v1",
                vec![
                    serde_json::to_value(slice(
                        "demo",
                        "echo",
                        "echo-1",
                        "IPv4",
                        &[
                            ("echo-a", "10.1.0.1", Some(true), "z1"),
                            ("echo-b", "10.1.0.2", Some(true), "z2"),
                            ("echo-c", "10.1.0.3", Some(false), "z2"),
                        ],
                    ))
                    .unwrap(),
                    serde_json::to_value(slice(
                        "demo",
                        "private",
                        "private-1",
                        "IPv4",
                        &[("private-a", "10.1.0.9", Some(true), "z1")],
                    ))
                    .unwrap(),
                ],
            ),
        ),
        (
            "pods",
            (
                "Pod",
                "v1",
                vec![
                    serde_json::to_value(pod("demo", "echo-a", "echo", json!({"app": "echo"})))
                        .unwrap(),
                ],
            ),
        ),
        (
            "serviceexports",
            (
                "ServiceExport",
                "multicluster.x-k8s.io/v1alpha1",
                vec![echo_export.clone()],
            ),
        ),
    ]);
    let mut running = RunningSource::start(objects, None);

    wait_for(&mut running.inventory, "demo/echo to be exported", |inv| {
        !inv.instances.is_empty()
    })
    .await;
    let now = running.inventory.borrow().clone();
    assert_eq!(totals(&now), [("demo/echo".to_owned(), 2, 3)]);
    let echo = &now.instances[&ServiceKey {
        namespace: "demo".into(),
        name: "echo".into(),
    }];
    assert_eq!(
        echo["echo-a"].identity,
        "spiffe://strait.local/ns/demo/sa/echo"
    );
    assert_eq!(echo["echo-a"].inbound_address, "10.1.0.1:15008");
    assert_eq!(echo["echo-a"].labels["app"], "echo");
    assert_eq!(echo["echo-c"].locality.subzone, "z2");
    // The writers get the listed cluster too.
    wait_for(&mut running.cluster, "the cluster state", Option::is_some).await;
    assert_eq!(running.cluster.borrow().as_ref().unwrap().exports.len(), 1);

    // Every kind is watched; the ServiceExport is deleted.
    let mut streams = HashMap::new();
    while streams.len() < 4 {
        let (plural, tx) = running.next_watch().await;
        streams.insert(plural, tx);
    }
    streams["serviceexports"]
        .send(json!({"type": "DELETED", "object": echo_export}))
        .await
        .unwrap();
    wait_for(
        &mut running.inventory,
        "demo/echo to be unexported",
        |inv| inv.instances.is_empty(),
    )
    .await;
    assert!(
        running
            .inventory
            .borrow()
            .exported_services(&Default::default())
            .is_empty()
    );

    // An endpoint becomes ready while the service is exported again.
    streams["serviceexports"]
        .send(json!({"type": "ADDED", "object": echo_export}))
        .await
        .unwrap();
    let mut ready = slice(
        "demo",
        "echo",
        "echo-1",
        "IPv4",
        &[
            ("echo-a", "10.1.0.1", Some(true), "z1"),
            ("echo-b", "10.1.0.2", Some(true), "z2"),
            ("echo-c", "10.1.0.3", Some(true), "z2"),
        ],
    );
    ready.metadata.resource_version = Some("2".into());
    streams["endpointslices"]
        .send(json!({"type": "MODIFIED", "object": ready}))
        .await
        .unwrap();
    wait_for(&mut running.inventory, "3 of 3 healthy", |inv| {
        totals(inv) == [("demo/echo".to_owned(), 3, 3)]
    })
    .await;

    running.stop().await;
}

#[tokio::test]
async fn gateway_pods_become_the_inventorys_gateways_healthy_while_ready() {
    let gw = |ready: bool, version: &str| {
        let mut pod = gateway_pod(
            "strait-system",
            "gw-a",
            "eu-1",
            "10.2.0.7",
            ready,
            json!({}),
        );
        pod.metadata.resource_version = Some(version.into());
        serde_json::to_value(pod).unwrap()
    };
    let objects = HashMap::from([
        ("services", ("Service", "v1", vec![])),
        (
            "endpointslices",
            ("EndpointSlice", "discovery.k8s.io/v1", vec![]),
        ),
        (
            "pods",
            (
                "Pod",
                "v1",
                vec![
                    gw(true, "1"),
                    // Another zone's gateway, and a gateway-labelled pod outside the namespace.
                    serde_json::to_value(gateway_pod(
                        "strait-system",
                        "gw-us",
                        "us-1",
                        "10.2.0.8",
                        true,
                        json!({}),
                    ))
                    .unwrap(),
                    serde_json::to_value(gateway_pod(
                        "demo",
                        "gw-fake",
                        "eu-1",
                        "10.2.0.9",
                        true,
                        json!({}),
                    ))
                    .unwrap(),
                ],
            ),
        ),
        (
            "serviceexports",
            ("ServiceExport", "multicluster.x-k8s.io/v1alpha1", vec![]),
        ),
    ]);
    let mut running = RunningSource::start(objects, Some(gateway_settings()));

    wait_for(&mut running.inventory, "the gateway", |inv| {
        !inv.gateways.is_empty()
    })
    .await;
    {
        let now = running.inventory.borrow();
        assert_eq!(now.gateways.keys().collect::<Vec<_>>(), ["gw-a"]);
        assert_eq!(now.local_gateway_addresses(), ["10.2.0.7:7601"]);
        let announced: Vec<_> = now
            .gateway_endpoints()
            .iter()
            .map(|g| g.address.clone())
            .collect();
        assert_eq!(announced, ["10.2.0.7:7600"]);
    }

    let pods = loop {
        let (plural, tx) = running.next_watch().await;
        if plural == "pods" {
            break tx;
        }
    };
    // Not ready (failing its readiness probe): listed, unhealthy, announced nowhere.
    pods.send(json!({"type": "MODIFIED", "object": gw(false, "2")}))
        .await
        .unwrap();
    wait_for(
        &mut running.inventory,
        "the gateway to be unhealthy",
        |inv| inv.gateways.get("gw-a").is_some_and(|g| !g.healthy),
    )
    .await;
    assert!(
        running
            .inventory
            .borrow()
            .local_gateway_addresses()
            .is_empty()
    );
    assert!(running.inventory.borrow().gateway_endpoints().is_empty());
    // Ready again, then gone.
    pods.send(json!({"type": "MODIFIED", "object": gw(true, "3")}))
        .await
        .unwrap();
    wait_for(&mut running.inventory, "the gateway to be healthy", |inv| {
        inv.gateways.get("gw-a").is_some_and(|g| g.healthy)
    })
    .await;
    pods.send(json!({"type": "DELETED", "object": gw(true, "4")}))
        .await
        .unwrap();
    wait_for(&mut running.inventory, "the gateway to be gone", |inv| {
        inv.gateways.is_empty()
    })
    .await;

    running.stop().await;
}

// === ServiceImports ===

fn import_path(name: &str) -> String {
    format!("{MCS}/namespaces/demo/serviceimports/{name}")
}

#[tokio::test]
async fn a_remote_service_gets_a_service_import_created_updated_and_deleted() {
    let (client, mut server) = fake_api::client();
    let state = ClusterState::default();

    // Created: spec applied server-side, then the status.
    let v1 = view(vec![(
        "us-1",
        vec![exported_service("demo", "echo", &[80])],
    )]);
    let run = tokio::spawn({
        let (client, state) = (client.clone(), state.clone());
        async move { reconcile(&client, &state, &v1, "eu-1", cidr()).await }
    });
    server
        .expect(Method::GET, &format!("{MCS}/serviceimports"))
        .await
        .json(
            200,
            list("ServiceImport", "multicluster.x-k8s.io/v1alpha1", vec![]),
        );
    let apply = server.expect(Method::PATCH, &import_path("echo")).await;
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(
        apply.query.contains("fieldManager=strait-zone"),
        "{}",
        apply.query
    );
    assert!(apply.query.contains("force=true"), "{}", apply.query);
    let body = apply.body.clone();
    assert_eq!(body["apiVersion"], "multicluster.x-k8s.io/v1alpha1");
    assert_eq!(body["kind"], "ServiceImport");
    assert_eq!(body["metadata"]["namespace"], "demo");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "strait"
    );
    assert_eq!(
        body["spec"],
        json!({"type": "ClusterSetIP", "ips": ["240.0.0.5"], "sessionAffinity": "None",
               "ports": [{"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 80}]})
    );
    assert!(body.get("status").is_none(), "{body}");
    apply.echo();
    let status = server
        .expect(Method::PATCH, &format!("{}/status", import_path("echo")))
        .await;
    assert_eq!(
        status.body["status"],
        json!({"clusters": [{"cluster": "us-1"}]})
    );
    let mut created = body.clone();
    created["status"] = status.body["status"].clone();
    status.json(200, created.clone());
    assert_eq!(run.await.unwrap().unwrap(), 0);

    // Updated: another zone exports it with one more port.
    let v2 = view(vec![
        ("us-1", vec![exported_service("demo", "echo", &[80])]),
        ("ap-1", vec![exported_service("demo", "echo", &[80, 8443])]),
    ]);
    let run = tokio::spawn({
        let (client, state) = (client.clone(), state.clone());
        async move { reconcile(&client, &state, &v2, "eu-1", cidr()).await }
    });
    server
        .expect(Method::GET, &format!("{MCS}/serviceimports"))
        .await
        .json(
            200,
            list(
                "ServiceImport",
                "multicluster.x-k8s.io/v1alpha1",
                vec![created.clone()],
            ),
        );
    let apply = server.expect(Method::PATCH, &import_path("echo")).await;
    let ports: Vec<_> = apply.body["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [80, 8443]);
    let mut updated = apply.body.clone();
    apply.echo();
    let status = server
        .expect(Method::PATCH, &format!("{}/status", import_path("echo")))
        .await;
    assert_eq!(
        status.body["status"]["clusters"],
        json!([{"cluster": "ap-1"}, {"cluster": "us-1"}])
    );
    updated["status"] = status.body["status"].clone();
    status.json(200, updated.clone());
    assert_eq!(run.await.unwrap().unwrap(), 0);

    // Deleted: the service left the federation. Someone else's import is left alone.
    let v3 = view(vec![("us-1", vec![])]);
    let mut foreign = updated.clone();
    foreign["metadata"]["name"] = json!("theirs");
    foreign["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "someone-else"});
    let run = tokio::spawn({
        let (client, state) = (client.clone(), state.clone());
        async move { reconcile(&client, &state, &v3, "eu-1", cidr()).await }
    });
    server
        .expect(Method::GET, &format!("{MCS}/serviceimports"))
        .await
        .json(
            200,
            list(
                "ServiceImport",
                "multicluster.x-k8s.io/v1alpha1",
                vec![updated.clone(), foreign],
            ),
        );
    server
        .expect(Method::DELETE, &import_path("echo"))
        .await
        .json(200, updated);
    assert_eq!(run.await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn an_empty_federation_view_deletes_no_imports() {
    let (client, _server) = fake_api::client();
    // No request at all: the scripted server would panic on none, so a request would hang
    // until the client gave up; `reconcile` returning at once shows none was made.
    let empty = FederationView::default();
    let done = tokio::time::timeout(
        Duration::from_secs(1),
        reconcile(&client, &ClusterState::default(), &empty, "eu-1", cidr()),
    )
    .await
    .expect("no API call for an empty view");
    assert_eq!(done.unwrap(), 0);
}

// === ServiceExport status ===

#[tokio::test]
async fn a_conflicting_export_gets_a_conflict_condition() {
    let (client, mut server) = fake_api::client();
    let state = ClusterState {
        services: vec![Arc::new(service(
            "demo",
            "echo",
            json!([{"name": "http", "port": 80, "appProtocol": "http"}]),
        ))],
        exports: vec![Arc::new(export("demo", "echo"))],
        ..ClusterState::default()
    };
    // us-1 exports demo/echo on 8080 as well.
    let conflicting = view(vec![
        ("eu-1", vec![exported_service("demo", "echo", &[80])]),
        ("us-1", vec![exported_service("demo", "echo", &[80, 8080])]),
    ]);
    let run = tokio::spawn({
        let client = client.clone();
        async move { reconcile(&client, &state, &conflicting, "eu-1", cidr()).await }
    });
    let patch = server
        .expect(
            Method::PATCH,
            &format!("{MCS}/namespaces/demo/serviceexports/echo/status"),
        )
        .await;
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let conditions = patch.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .clone();
    let summary: Vec<_> = conditions
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                c["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Valid", "True", "Exported"),
            ("Conflict", "True", "PortConflict")
        ]
    );
    assert!(
        conditions[1]["message"]
            .as_str()
            .unwrap()
            .contains("zone us-1 exports [80/HTTP, 8080/HTTP]")
    );
    assert!(
        conditions[1]["lastTransitionTime"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .is_ok()
    );
    let mut echoed = serde_json::to_value(export("demo", "echo")).unwrap();
    echoed["status"] = patch.body["status"].clone();
    patch.json(200, echoed);
    // This zone exports demo/echo itself: no ServiceImport for it.
    server
        .expect(Method::GET, &format!("{MCS}/serviceimports"))
        .await
        .json(
            200,
            list("ServiceImport", "multicluster.x-k8s.io/v1alpha1", vec![]),
        );
    assert_eq!(run.await.unwrap().unwrap(), 0);
}

// === only the leader writes ===

/// Whether the client makes no request for a while.
async fn quiet(server: &mut ApiServer) -> bool {
    tokio::time::timeout(Duration::from_millis(600), server.next())
        .await
        .is_err()
}

#[tokio::test]
async fn the_writer_writes_only_while_leading_and_only_what_changed() {
    let (client, mut server) = fake_api::client();
    let mut state = ClusterState {
        services: vec![Arc::new(service(
            "demo",
            "echo",
            json!([{"name": "http", "port": 80}]),
        ))],
        exports: vec![Arc::new(export("demo", "echo"))],
        ..ClusterState::default()
    };
    let (cluster_tx, cluster) = watch::channel(Some(Arc::new(state.clone())));
    let (_federation_tx, federation) = watch::channel(Arc::new(view(vec![(
        "us-1",
        vec![exported_service("demo", "other", &[80])],
    )])));
    let (leader_tx, leader) = watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(run_writer(
        client,
        "eu-1".into(),
        cidr(),
        cluster,
        federation,
        leader,
        async move {
            let _ = stop_rx.await;
        },
    ));
    assert!(
        quiet(&mut server).await,
        "a replica that does not lead wrote"
    );

    leader_tx.send_replace(true);
    let patch = server
        .expect(
            Method::PATCH,
            &format!("{MCS}/namespaces/demo/serviceexports/echo/status"),
        )
        .await;
    let written = patch.body["status"].clone();
    let mut echoed = serde_json::to_value(export("demo", "echo")).unwrap();
    echoed["status"] = written.clone();
    patch.json(200, echoed.clone());
    server
        .expect(Method::GET, &format!("{MCS}/serviceimports"))
        .await
        .json(
            200,
            list("ServiceImport", "multicluster.x-k8s.io/v1alpha1", vec![]),
        );
    let apply = server.expect(Method::PATCH, &import_path("other")).await;
    let body = apply.body.clone();
    apply.echo();
    let status = server
        .expect(Method::PATCH, &format!("{}/status", import_path("other")))
        .await;
    let mut created = body;
    created["status"] = status.body["status"].clone();
    status.json(200, created);

    // The watch brings the written status back; a pod change elsewhere changes nothing the
    // writer owns: no more calls.
    state.exports = vec![Arc::new(serde_json::from_value(echoed).unwrap())];
    cluster_tx.send_replace(Some(Arc::new(state.clone())));
    assert!(quiet(&mut server).await, "the writer repeated itself");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer stops")
        .unwrap();
}

// === leader election ===

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/strait-system/leases";

/// A Lease endpoint with real optimistic concurrency: `PUT` with a stale `resourceVersion`
/// gets 409. Records every call as `METHOD holder-in-body`.
async fn serve_lease(
    mut server: ApiServer,
    lease: Arc<Mutex<Option<Value>>>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let name_path = format!("{LEASE}/strait-zone-leader");
    while let Some(call) = server.next_loop().await {
        let holder = call.body["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("-")
            .to_owned();
        log.lock()
            .unwrap()
            .push(format!("{} {holder}", call.method));
        let mut current = lease.lock().unwrap();
        let path = call.path.clone();
        match (call.method.clone(), path.as_str()) {
            (Method::GET, p) if p == name_path => match current.clone() {
                Some(l) => call.json(200, l),
                None => call.error(404, "NotFound"),
            },
            (Method::POST, LEASE) => {
                if current.is_some() {
                    call.error(409, "AlreadyExists");
                } else {
                    let mut l = call.body.clone();
                    l["metadata"]["resourceVersion"] = json!("1");
                    l["metadata"]["namespace"] = json!("strait-system");
                    *current = Some(l.clone());
                    call.json(201, l);
                }
            }
            (Method::PUT, p) if p == name_path => {
                let stored = current.clone().expect("PUT of a Lease that does not exist");
                if stored["metadata"]["resourceVersion"] != call.body["metadata"]["resourceVersion"]
                {
                    call.error(409, "Conflict");
                } else {
                    let next: u64 = stored["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        + 1;
                    let mut l = call.body.clone();
                    l["metadata"]["resourceVersion"] = json!(next.to_string());
                    *current = Some(l.clone());
                    call.json(200, l);
                }
            }
            _ => panic!("unexpected request {call:?}"),
        }
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_750_000_000 + seconds).unwrap()
}

fn elector(client: &kube::Client, me: &str) -> LeaseElector {
    LeaseElector::new(
        client.clone(),
        "strait-system",
        "strait-zone-leader",
        me,
        Duration::from_secs(15),
        Duration::from_secs(5),
    )
}

fn holder(lease: &Mutex<Option<Value>>) -> Value {
    lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"].clone()
}

#[tokio::test]
async fn leader_election_hands_over_when_the_lease_expires_or_is_released() {
    let (client, server) = fake_api::client();
    let lease = Arc::new(Mutex::new(None));
    let log = Arc::new(Mutex::new(Vec::new()));
    let server_task = tokio::spawn(serve_lease(server, lease.clone(), log.clone()));
    let a = elector(&client, "zone-a");
    let b = elector(&client, "zone-b");
    let take_log = || std::mem::take(&mut *log.lock().unwrap());

    // A creates the Lease and holds it; B waits with a single read.
    assert!(a.step(at(0)).await.unwrap());
    assert_eq!(take_log(), ["GET -", "POST zone-a"]);
    assert!(!b.step(at(5)).await.unwrap());
    assert_eq!(take_log(), ["GET -"]);
    // A renews; B still waits just before the renewal runs out (5 + 15 s).
    assert!(a.step(at(5)).await.unwrap());
    assert!(!b.step(at(19)).await.unwrap());
    assert_eq!(take_log(), ["GET -", "PUT zone-a", "GET -"]);
    assert_eq!(holder(&lease), "zone-a");

    // A stops renewing (it died): B takes over once the Lease expired.
    assert!(b.step(at(21)).await.unwrap());
    assert_eq!(take_log(), ["GET -", "PUT zone-b"]);
    {
        let l = lease.lock().unwrap();
        let spec = &l.as_ref().unwrap()["spec"];
        assert_eq!(spec["holderIdentity"], "zone-b");
        assert_eq!(spec["leaseTransitions"], 1);
        assert_eq!(spec["leaseDurationSeconds"], 15);
    }
    // A comes back: it is not the leader any more.
    assert!(!a.step(at(22)).await.unwrap());

    // B shuts down and releases: A takes over at once, not 15 s later.
    b.release().await.unwrap();
    assert_eq!(holder(&lease), Value::Null);
    assert!(a.step(at(23)).await.unwrap());
    assert_eq!(holder(&lease), "zone-a");

    // Both see an expired Lease at once: the compare-and-swap lets exactly one win.
    let (ra, rb) = tokio::join!(a.step(at(100)), b.step(at(100)));
    let winners = [ra.unwrap(), rb.unwrap()];
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
    let log = take_log();
    assert!(log.iter().any(|l| l.starts_with("PUT")), "{log:?}");
    server_task.abort();
}

#[tokio::test]
async fn a_running_leader_publishes_leadership_and_releases_the_lease_on_shutdown() {
    let (client, server) = fake_api::client();
    let lease = Arc::new(Mutex::new(None));
    let log = Arc::new(Mutex::new(Vec::new()));
    let server_task = tokio::spawn(serve_lease(server, lease.clone(), log.clone()));
    let (leader_tx, mut leader) = watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(elector(&client, "zone-a").run(leader_tx, async move {
        let _ = stop_rx.await;
    }));
    wait_for(&mut leader, "leadership", |l| *l).await;
    assert_eq!(holder(&lease), "zone-a");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the elector stops")
        .unwrap();
    assert!(!*leader.borrow());
    assert_eq!(holder(&lease), Value::Null);
    server_task.abort();
}
