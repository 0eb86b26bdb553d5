//! The discovery server in-process on loopback, over Strait's real mutual TLS: sidecars
//! register, receive configs with each other's endpoints, leave, come back, NACK, and the
//! zone restarts under them.

// A harness failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_proto as pb;
use strait_proto::discovery_client::DiscoveryClient;
use strait_proto::sidecar_message::Msg;
use strait_test_support::metrics::metric;
use strait_test_support::pki::{Pki, TD};
use strait_test_support::wait::eventually_every;
use strait_trust::{
    AllowAny, AllowExactly, CredentialStore, SpiffeId, client_config, pinned_client_config,
    server_config_optional_client_auth,
};
use strait_zone::discovery::{DiscoveryConfig, DiscoveryServer, REGISTRY_KEY};
use strait_zone::federation::FederationView;
use strait_zone::inventory::{InventoryWatch, ServiceKey};
use strait_zone::store::ZoneStore;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

const ZONE: &str = "a";
/// Long enough for any condition below to be observed inside it on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(10);
/// Between two checks of the server's in-memory state (cheap; looked at often).
const POLL: Duration = Duration::from_millis(5);

fn h2() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// A zone control plane's discovery server on loopback.
struct Zone {
    server: DiscoveryServer,
    inventory: InventoryWatch,
    federation: watch::Sender<Arc<FederationView>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Zone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Zone {
    async fn start(pki: &Pki, store: ZoneStore, grace: Duration) -> Zone {
        let (federation, federation_rx) = watch::channel(Arc::new(view(&[])));
        let (server, inventory) = DiscoveryServer::new(
            DiscoveryConfig {
                zone: ZONE.into(),
                region: "eu".into(),
                trust_domain: TD.into(),
                vip_cidr: "127.240.0.0/16".parse().unwrap(),
                registration_grace: grace,
            },
            federation_rx,
            store,
        )
        .unwrap();
        let tls = server_config_optional_client_auth(
            &pki.zone_cp(ZONE),
            &pki.trust,
            Arc::new(AllowAny),
            h2(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = strait_proto::transport::tls_incoming(listener, Arc::new(tls));
        let router = tonic::transport::Server::builder().add_service(server.clone().into_service());
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Zone {
            server,
            inventory,
            federation,
            addr,
            task,
        }
    }

    fn client(&self, tls: rustls::ClientConfig) -> DiscoveryClient<tonic::transport::Channel> {
        DiscoveryClient::new(strait_proto::transport::channel(
            &self.addr.to_string(),
            Arc::new(tls),
            Duration::from_secs(5),
        ))
    }

    fn mtls(
        &self,
        pki: &Pki,
        creds: &CredentialStore,
    ) -> DiscoveryClient<tonic::transport::Channel> {
        let tls = client_config(
            creds,
            &pki.trust,
            Arc::new(AllowExactly(vec![SpiffeId::zone_cp(TD, ZONE).unwrap()])),
            h2(),
        )
        .unwrap();
        self.client(tls)
    }

    /// Whether the zone's inventory lists `instance` of demo/`service`.
    fn has(&self, service: &str, instance: &str) -> bool {
        self.inventory
            .borrow()
            .instances
            .get(&key(service))
            .is_some_and(|m| m.contains_key(instance))
    }

    fn metric(&self, name: &str) -> f64 {
        metric(self.server.metrics(), name, &[])
    }
}

fn key(service: &str) -> ServiceKey {
    ServiceKey {
        namespace: "demo".into(),
        name: service.into(),
    }
}

/// A federation view where zone `c` (region us) exports `services`.
fn view(services: &[&str]) -> FederationView {
    FederationView::new(pb::FederationSnapshot {
        version: 1,
        trust_domain: TD.into(),
        zones: vec![pb::RemoteZone {
            name: "c".into(),
            region: "us".into(),
            connected: true,
            services: services
                .iter()
                .map(|s| pb::ExportedService {
                    service: Some(pb::ServiceRef {
                        namespace: "demo".into(),
                        name: (*s).into(),
                    }),
                    ports: vec![http(8080)],
                    localities: vec![pb::LocalityEndpoints {
                        locality: None,
                        healthy: 2,
                        total: 3,
                    }],
                    identities: vec![format!("spiffe://strait.local/ns/demo/sa/{s}")],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
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

fn http(port: u32) -> pb::Port {
    pb::Port {
        name: "http".into(),
        port,
        protocol: pb::Protocol::Http as i32,
    }
}

fn register(service: &str, instance: &str, address: &str) -> pb::Register {
    pb::Register {
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: service.into(),
        }),
        instance: instance.into(),
        ports: vec![http(8080)],
        labels: [("version".to_owned(), "v1".to_owned())].into(),
        locality: Some(pb::Locality {
            region: String::new(),
            zone: ZONE.into(),
            subzone: String::new(),
        }),
        inbound_address: address.into(),
        outbound_vips: true,
        known_version: 0,
    }
}

/// A sidecar's end of a discovery stream.
struct Sidecar {
    tx: mpsc::Sender<pb::SidecarMessage>,
    rx: Streaming<pb::SidecarConfig>,
    /// Every config received, in order.
    seen: Vec<pb::SidecarConfig>,
}

impl Sidecar {
    async fn connect(
        mut client: DiscoveryClient<tonic::transport::Channel>,
        first: pb::SidecarMessage,
    ) -> Result<Sidecar, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Sidecar {
            tx,
            rx,
            seen: Vec::new(),
        })
    }

    async fn register(
        zone: &Zone,
        pki: &Pki,
        sa: &str,
        register: pb::Register,
    ) -> Result<Sidecar, Status> {
        let client = zone.mtls(pki, &pki.workload(ZONE, "demo", sa));
        Self::connect(
            client,
            pb::SidecarMessage {
                msg: Some(Msg::Register(register)),
            },
        )
        .await
    }

    async fn send(&self, msg: Msg) {
        self.tx
            .send(pb::SidecarMessage { msg: Some(msg) })
            .await
            .unwrap();
    }

    async fn ack(&self, config: &pb::SidecarConfig, accepted: bool) {
        self.send(Msg::Ack(pb::ConfigAck {
            version: config.version,
            nonce: config.nonce.clone(),
            accepted,
            error: if accepted {
                String::new()
            } else {
                "listener on 127.240.0.5:8080: address in use".into()
            },
        }))
        .await;
    }

    /// Reads configs (ACKing each) until one satisfies `want`; fails the test at the deadline.
    async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&pb::SidecarConfig) -> bool,
    ) -> pb::SidecarConfig {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let config = tokio::time::timeout_at(deadline, self.rx.message())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no config with {what} within {PATIENCE:?}; last: {:#?}",
                        self.seen.last()
                    )
                })
                .unwrap_or_else(|status| panic!("stream failed while waiting for {what}: {status}"))
                .unwrap_or_else(|| panic!("stream ended while waiting for {what}"));
            self.seen.push(config.clone());
            self.ack(&config, true).await;
            if want(&config) {
                return config;
            }
        }
    }
}

fn echo_endpoints(config: &pb::SidecarConfig) -> Vec<(String, String, bool)> {
    config
        .services
        .iter()
        .filter(|s| s.service.as_ref().is_some_and(|r| r.name == "echo"))
        .flat_map(|s| s.localities.iter())
        .filter(|g| g.zone == ZONE)
        .flat_map(|g| g.endpoints.iter())
        .map(|e| (e.instance.clone(), e.address.clone(), e.healthy))
        .collect()
}

fn has_echo_a(config: &pb::SidecarConfig) -> bool {
    echo_endpoints(config).iter().any(|(i, _, _)| i == "echo-a")
}

fn store() -> (tempfile::TempDir, ZoneStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ZoneStore::open(dir.path().join("state")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn a_sidecar_sees_anothers_endpoint_until_the_grace_after_it_left() {
    let pki = Pki::new(&[ZONE]);
    let (_dir, store) = store();
    let grace = Duration::from_millis(700);
    let zone = Zone::start(&pki, store, grace).await;

    let a = Sidecar::register(
        &zone,
        &pki,
        "echo",
        register("echo", "echo-a", "127.0.0.1:7001"),
    )
    .await
    .unwrap();
    let mut b = Sidecar::register(
        &zone,
        &pki,
        "client",
        register("client", "client-b", "127.0.0.1:7002"),
    )
    .await
    .unwrap();

    let config = b.until("echo-a's endpoint", has_echo_a).await;
    assert_eq!(
        echo_endpoints(&config),
        [("echo-a".to_owned(), "127.0.0.1:7001".to_owned(), true)]
    );
    let echo = config
        .services
        .iter()
        .find(|s| s.service.as_ref().unwrap().name == "echo")
        .unwrap();
    assert_eq!(echo.vip, "127.240.0.5");
    let endpoint = &echo.localities[0].endpoints[0];
    assert_eq!(
        endpoint.spiffe_id, "spiffe://strait.local/ns/demo/sa/echo",
        "from the certificate"
    );
    assert_eq!(
        endpoint.labels.get("version").map(String::as_str),
        Some("v1")
    );
    assert_eq!(config.zone, ZONE);
    assert_eq!(
        config.inbound.as_ref().unwrap().tls_mode,
        pb::MeshTlsMode::Strict as i32
    );
    eventually_every("two sidecars connected", PATIENCE, POLL, async || {
        zone.metric("strait_zone_sidecars_connected") == 2.0
    })
    .await;
    eventually_every("ACK latency recorded", PATIENCE, POLL, async || {
        zone.metric("strait_zone_config_push_latency_seconds") >= 1.0
    })
    .await;
    assert!(zone.metric("strait_zone_config_pushes_total") >= 2.0);
    let versions: Vec<u64> = b.seen.iter().map(|c| c.version).collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "versions increase by one: {versions:?}"
    );

    // A leaves. Its endpoint stays for the grace: B is not told anything.
    let left_at = Instant::now();
    drop(a);
    eventually_every("A's stream noticed as ended", PATIENCE, POLL, async || {
        zone.server.sidecars().len() == 1
    })
    .await;
    assert!(
        zone.has("echo", "echo-a"),
        "still registered right after leaving"
    );
    let config = b.until("echo-a gone", |c| !has_echo_a(c)).await;
    let gone_after = left_at.elapsed();
    assert!(
        gone_after >= grace,
        "removed after {gone_after:?}, before the grace of {grace:?}"
    );
    assert!(!zone.has("echo", "echo-a"));
    assert!(
        config
            .services
            .iter()
            .all(|s| s.service.as_ref().unwrap().name != "echo"),
        "echo ran only in A, so it is no longer a service"
    );
    eventually_every("one sidecar connected", PATIENCE, POLL, async || {
        zone.metric("strait_zone_sidecars_connected") == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_sidecar_that_reconnects_within_the_grace_is_never_removed() {
    let pki = Pki::new(&[ZONE]);
    let (_dir, store) = store();
    let grace = Duration::from_millis(300);
    let zone = Zone::start(&pki, store, grace).await;
    let a = Sidecar::register(
        &zone,
        &pki,
        "echo",
        register("echo", "echo-a", "127.0.0.1:7001"),
    )
    .await
    .unwrap();
    let mut b = Sidecar::register(
        &zone,
        &pki,
        "client",
        register("client", "client-b", "127.0.0.1:7002"),
    )
    .await
    .unwrap();
    b.until("echo-a's endpoint", has_echo_a).await;

    // Watch every inventory the zone publishes from before A leaves until three graces after
    // it came back: A is in each of them.
    let mut inventory = zone.server.inventory();
    inventory.borrow_and_update();
    let window = Instant::now() + grace * 4;
    let observer = tokio::spawn(async move {
        loop {
            let remaining = window.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, inventory.changed()).await {
                Err(_) => return,
                Ok(changed) => changed.unwrap(),
            }
            let current = inventory.borrow_and_update().clone();
            assert!(
                current
                    .instances
                    .get(&key("echo"))
                    .is_some_and(|m| m.contains_key("echo-a")),
                "echo-a disappeared from the inventory: {current:?}"
            );
        }
    });
    drop(a);
    eventually_every("A's stream noticed as ended", PATIENCE, POLL, async || {
        zone.server.sidecars().len() == 1
    })
    .await;
    let mut again = register("echo", "echo-a", "127.0.0.1:7001");
    again.known_version = 3;
    let mut a = Sidecar::register(&zone, &pki, "echo", again).await.unwrap();
    let first = a.until("any config", |_| true).await;
    assert_eq!(
        first.version, 4,
        "versions continue from the one the sidecar runs"
    );
    observer.await.unwrap();
    // The watch coalesces (a removal and a re-add between two reads look like nothing), so
    // also check that nothing ever expired.
    assert_eq!(zone.metric("strait_zone_instances_expired_total"), 0.0);
    assert!(zone.has("echo", "echo-a"));
    assert!(
        b.seen.iter().skip_while(|c| !has_echo_a(c)).all(has_echo_a),
        "B never saw A go"
    );
}

#[tokio::test]
async fn health_reports_and_nacks_keep_the_stream_going() {
    let pki = Pki::new(&[ZONE]);
    let (_dir, store) = store();
    let zone = Zone::start(&pki, store, Duration::from_millis(100)).await;
    let mut b = Sidecar::register(
        &zone,
        &pki,
        "client",
        register("client", "client-b", "127.0.0.1:7002"),
    )
    .await
    .unwrap();

    // B rejects its first config, with a reason.
    let first = tokio::time::timeout(PATIENCE, b.rx.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    b.ack(&first, false).await;
    eventually_every("the NACK counted", PATIENCE, POLL, async || {
        zone.metric("strait_zone_config_nacks_total") == 1.0
    })
    .await;
    let status = &zone.server.sidecars()[0];
    assert_eq!(
        status.last_nack.as_ref().map(|(v, _)| *v),
        Some(first.version)
    );
    assert!(
        status
            .last_nack
            .as_ref()
            .unwrap()
            .1
            .contains("address in use")
    );
    assert_eq!(status.acked_version, 0);

    // The stream goes on: A registers, B gets it and accepts.
    let a = Sidecar::register(
        &zone,
        &pki,
        "echo",
        register("echo", "echo-a", "127.0.0.1:7001"),
    )
    .await
    .unwrap();
    let config = b.until("echo-a's endpoint", has_echo_a).await;
    assert!(config.version > first.version);
    eventually_every("B's ACK recorded", PATIENCE, POLL, async || {
        zone.server
            .sidecars()
            .iter()
            .any(|s| s.instance == "client-b" && s.acked_version == config.version)
    })
    .await;

    // A's app turns unhealthy: its endpoint stays, flagged, so B stops picking it.
    a.send(Msg::Health(pb::HealthReport {
        healthy: false,
        reason: "readiness probe failed".into(),
    }))
    .await;
    let config = b
        .until("echo-a unhealthy", |c| {
            echo_endpoints(c)
                .iter()
                .any(|(i, _, h)| i == "echo-a" && !h)
        })
        .await;
    let echo = config
        .services
        .iter()
        .find(|s| s.service.as_ref().unwrap().name == "echo")
        .unwrap();
    assert_eq!(echo.localities[0].weight, 0);
    a.send(Msg::Health(pb::HealthReport {
        healthy: true,
        reason: String::new(),
    }))
    .await;
    b.until("echo-a healthy again", |c| {
        echo_endpoints(c)
            .iter()
            .any(|(i, _, h)| i == "echo-a" && *h)
    })
    .await;
}

#[tokio::test]
async fn a_federation_change_reaches_sidecars_with_a_new_version() {
    let pki = Pki::new(&[ZONE]);
    let (_dir, store) = store();
    let zone = Zone::start(&pki, store, Duration::from_millis(100)).await;
    let mut b = Sidecar::register(
        &zone,
        &pki,
        "client",
        register("client", "client-b", "127.0.0.1:7002"),
    )
    .await
    .unwrap();
    let first = b.until("a first config", |_| true).await;
    assert!(
        first
            .services
            .iter()
            .all(|s| s.service.as_ref().unwrap().name != "web")
    );

    zone.federation.send_replace(Arc::new(view(&["web"])));
    let config = b
        .until("web from zone c", |c| {
            c.services
                .iter()
                .any(|s| s.service.as_ref().unwrap().name == "web")
        })
        .await;
    assert!(config.version > first.version);
    let web = config
        .services
        .iter()
        .find(|s| s.service.as_ref().unwrap().name == "web")
        .unwrap();
    assert_eq!(web.localities.len(), 1);
    let group = &web.localities[0];
    assert_eq!(
        (
            group.zone.as_str(),
            group.region.as_str(),
            group.priority,
            group.weight
        ),
        ("c", "us", 0, 2)
    );

    // A new snapshot with the same content is not a new version.
    let pushes = zone.metric("strait_zone_config_pushes_total");
    let mut same = view(&["web"]);
    same.snapshot.version = 2;
    zone.federation.send_replace(Arc::new(same));
    // A change that does matter, sent after, arrives as the very next version: the
    // identical snapshot before it produced no push.
    let mut denied = view(&["web"]);
    denied.snapshot.version = 3;
    denied.snapshot.deny_list = vec!["c".into()];
    zone.federation.send_replace(Arc::new(denied));
    let config2 = b.until("c denied", |c| c.deny_list == ["c"]).await;
    assert_eq!(config2.version, config.version + 1);
    assert!(
        config2
            .services
            .iter()
            .all(|s| s.service.as_ref().unwrap().name != "web"),
        "a denied zone's services are not offered"
    );
    assert_eq!(zone.metric("strait_zone_config_pushes_total"), pushes + 1.0);
}

#[tokio::test]
async fn callers_without_a_proper_identity_or_register_are_refused() {
    let pki = Pki::new(&[ZONE]);
    let (_dir, store) = store();
    let zone = Zone::start(&pki, store, Duration::from_millis(100)).await;
    let reg = |r: pb::Register| pb::SidecarMessage {
        msg: Some(Msg::Register(r)),
    };

    // No certificate at all (the client trusts the server by the root pin).
    let anonymous = pinned_client_config(
        TD,
        &pki.root.pin(),
        Arc::new(AllowExactly(vec![SpiffeId::zone_cp(TD, ZONE).unwrap()])),
        h2(),
    )
    .unwrap();
    let err = Sidecar::connect(
        zone.client(anonymous),
        reg(register("echo", "x", "127.0.0.1:1")),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("certificate"), "{err:?}");

    // A workload of another namespace cannot register demo's services.
    let other = zone.mtls(&pki, &pki.workload(ZONE, "other", "echo"));
    let err = Sidecar::connect(other, reg(register("echo", "x", "127.0.0.1:1")))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("namespace"), "{err:?}");

    // A gateway's identity is not a workload.
    let gateway = zone.mtls(&pki, &pki.leaf(ZONE, &SpiffeId::gateway(TD, ZONE).unwrap()));
    let err = Sidecar::connect(gateway, reg(register("echo", "x", "127.0.0.1:1")))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The first message must be Register.
    let client = zone.mtls(&pki, &pki.workload(ZONE, "demo", "echo"));
    let ack = pb::SidecarMessage {
        msg: Some(Msg::Ack(pb::ConfigAck::default())),
    };
    let err = Sidecar::connect(client, ack).await.err().expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Register"), "{err:?}");

    // A Register that says nothing usable.
    let client = zone.mtls(&pki, &pki.workload(ZONE, "demo", "echo"));
    let err = Sidecar::connect(client, reg(register("echo", "x", "no-port")))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Another identity cannot take over a connected instance.
    let _a = Sidecar::register(
        &zone,
        &pki,
        "echo",
        register("echo", "echo-a", "127.0.0.1:7001"),
    )
    .await
    .unwrap();
    let err = Sidecar::register(
        &zone,
        &pki,
        "impostor",
        register("echo", "echo-a", "127.0.0.1:6666"),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    assert!(zone.has("echo", "echo-a"));
    assert_eq!(
        zone.inventory.borrow().instances.len(),
        1,
        "nothing refused was registered"
    );
    assert_eq!(
        zone.inventory.borrow().instances[&key("echo")]["echo-a"].inbound_address,
        "127.0.0.1:7001"
    );
}

/// Waits until the store holds a registry listing `instance`.
async fn persisted(store: &ZoneStore, instance: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let bytes = store.get(REGISTRY_KEY).unwrap().unwrap_or_default();
        if String::from_utf8_lossy(&bytes).contains(&format!("\"{instance}\"")) {
            return;
        }
        assert!(Instant::now() < deadline, "{instance} never persisted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_restarted_zone_keeps_persisted_endpoints_until_the_grace() {
    let pki = Pki::new(&[ZONE]);
    let (_dir, store) = store();
    let first = Zone::start(&pki, store.clone(), Duration::from_millis(100)).await;
    let a = Sidecar::register(
        &first,
        &pki,
        "echo",
        register("echo", "echo-a", "127.0.0.1:7001"),
    )
    .await
    .unwrap();
    let x = Sidecar::register(
        &first,
        &pki,
        "echo",
        register("echo", "echo-x", "127.0.0.1:7009"),
    )
    .await
    .unwrap();
    persisted(&store, "echo-a").await;
    persisted(&store, "echo-x").await;

    // The control plane restarts: a new server on the same store. (The first one's sidecars
    // are cut off with it.)
    drop((a, x));
    drop(first);
    let grace = Duration::from_millis(600);
    let started = Instant::now();
    let zone = Zone::start(&pki, store.clone(), grace).await;
    assert!(
        zone.has("echo", "echo-a") && zone.has("echo", "echo-x"),
        "restored at start"
    );

    // A sidecar connecting to the new server sees both right away.
    let mut b = Sidecar::register(
        &zone,
        &pki,
        "client",
        register("client", "client-b", "127.0.0.1:7002"),
    )
    .await
    .unwrap();
    let config = b.until("a first config", |_| true).await;
    let instances: Vec<String> = echo_endpoints(&config)
        .into_iter()
        .map(|(i, _, _)| i)
        .collect();
    assert_eq!(instances, ["echo-a", "echo-x"]);

    // echo-a comes back within the grace; echo-x never does.
    let mut a = Sidecar::register(
        &zone,
        &pki,
        "echo",
        register("echo", "echo-a", "127.0.0.1:7001"),
    )
    .await
    .unwrap();
    a.until("a first config", |_| true).await;
    let config = b
        .until("echo-x gone", |c| {
            !echo_endpoints(c).iter().any(|(i, _, _)| i == "echo-x")
        })
        .await;
    assert!(
        started.elapsed() >= grace,
        "echo-x removed before the grace ended"
    );
    assert!(has_echo_a(&config), "echo-a re-registered and stays");
    assert!(zone.has("echo", "echo-a") && !zone.has("echo", "echo-x"));
    assert_eq!(zone.metric("strait_zone_instances_expired_total"), 1.0);

    // And the store follows: the next restart would not bring echo-x back.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let bytes = store.get(REGISTRY_KEY).unwrap().unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !text.contains("\"echo-x\"") {
            assert!(text.contains("\"echo-a\""));
            break;
        }
        assert!(Instant::now() < deadline, "echo-x still persisted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn many_sidecars_one_change_one_push_each() {
    let pki = Pki::new(&[ZONE]);
    let (_dir, store) = store();
    let zone = Zone::start(&pki, store, Duration::from_millis(100)).await;
    let creds = pki.workload(ZONE, "demo", "client");
    let mut sidecars = Vec::new();
    for i in 0..20 {
        let client = zone.mtls(&pki, &creds);
        let msg = pb::SidecarMessage {
            msg: Some(Msg::Register(register(
                "client",
                &format!("c{i}"),
                &format!("127.0.0.1:{}", 8000 + i),
            ))),
        };
        sidecars.push(Sidecar::connect(client, msg).await.unwrap());
    }
    // Wait until every sidecar has the final config (all 20 client endpoints) and ACKed it.
    let all = |c: &pb::SidecarConfig| {
        c.services
            .iter()
            .find(|s| s.service.as_ref().unwrap().name == "client")
            .is_some_and(|s| s.localities[0].endpoints.len() == 20)
    };
    for s in &mut sidecars {
        s.until("all 20 clients", all).await;
    }
    let before = zone.metric("strait_zone_config_pushes_total");

    // A burst of federation snapshots within the coalescing window...
    for n in 0..10 {
        let mut v = view(&["web"]);
        v.snapshot.version = 10 + n;
        zone.federation.send_replace(Arc::new(v));
    }
    for s in &mut sidecars {
        s.until("web", |c| {
            c.services
                .iter()
                .any(|s| s.service.as_ref().unwrap().name == "web")
        })
        .await;
    }
    // ...is one push per sidecar: the snapshots differ only in version, so even one that
    // lands after a coalescing boundary compiles to the same config and is not pushed.
    let pushes = zone.metric("strait_zone_config_pushes_total") - before;
    assert_eq!(pushes, 20.0, "{pushes} pushes for 20 sidecars");
}
