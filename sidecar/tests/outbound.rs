//! The outbound side in-process on loopback: a plain client calls a service VIP, the client
//! sidecar routes, balances and retries over real mutual TLS to destination sidecars' inbound
//! listeners in front of demo apps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Got, Http, ZONE, demo_app};
use rand::Rng;
use strait_proto as pb;
use strait_sidecar::inbound::{self, InboundContext};
use strait_sidecar::outbound::{self, OutboundContext};
use strait_test_support::metrics::metric;
use strait_test_support::pki::Pki;
use strait_test_support::wait::{PATIENCE, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const WEB: &str = "spiffe://strait.local/ns/frontend/sa/web";
const ECHO: &str = "spiffe://strait.local/ns/demo/sa/echo";

/// A destination: an `echo` sidecar's inbound listener in front of an app.
struct Upstream {
    inbound: SocketAddr,
    instance: String,
    labels: HashMap<String, String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Upstream {
    async fn start(pki: &Pki, instance: &str, version: &str) -> Upstream {
        let (app, app_task) = demo_app("echo", instance).await;
        Self::in_front_of(pki, instance, version, app, app_task).await
    }

    async fn in_front_of(
        pki: &Pki,
        instance: &str,
        version: &str,
        app: SocketAddr,
        app_task: JoinHandle<()>,
    ) -> Upstream {
        let (_tx, rx) = watch::channel(Arc::new(pb::SidecarConfig {
            version: 1,
            zone: "a".into(),
            trust_domain: "strait.local".into(),
            inbound: Some(pb::InboundPolicy::default()),
            ..Default::default()
        }));
        let registry = prometheus::Registry::new();
        let ctx = InboundContext::new(
            pki.workload(ZONE, "demo", "echo"),
            pki.trust.clone(),
            rx,
            &registry,
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound = listener.local_addr().unwrap();
        let inbound_task = tokio::spawn(async move {
            // Keeps the config sender alive as long as the listener.
            let _tx = _tx;
            inbound::serve(listener, ctx, Some(app), std::future::pending::<()>())
                .await
                .unwrap();
        });
        Upstream {
            inbound,
            instance: instance.into(),
            labels: HashMap::from([("version".to_owned(), version.to_owned())]),
            tasks: vec![app_task, inbound_task],
        }
    }

    /// The instance dies: its app and its sidecar are gone, connections cut.
    fn kill(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    fn endpoint(&self) -> pb::Endpoint {
        pb::Endpoint {
            address: self.inbound.to_string(),
            instance: self.instance.clone(),
            labels: self.labels.clone(),
            spiffe_id: ECHO.into(),
            healthy: true,
        }
    }
}

fn service(
    vip: SocketAddr,
    protocol: pb::Protocol,
    endpoints: Vec<pb::Endpoint>,
    policy: Option<pb::RoutePolicy>,
) -> pb::OutboundService {
    pb::OutboundService {
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: format!("echo-{}", vip.port()),
        }),
        ports: vec![pb::Port {
            name: "p".into(),
            port: u32::from(vip.port()),
            protocol: protocol as i32,
        }],
        vip: vip.ip().to_string(),
        localities: vec![pb::LocalityGroup {
            zone: "a".into(),
            region: "eu".into(),
            priority: 0,
            total: u32::try_from(endpoints.len()).unwrap(),
            endpoints,
            ..Default::default()
        }],
        policy,
        ..Default::default()
    }
}

fn config(version: u64, services: Vec<pb::OutboundService>) -> Arc<pb::SidecarConfig> {
    Arc::new(pb::SidecarConfig {
        version,
        zone: "a".into(),
        trust_domain: "strait.local".into(),
        services,
        ..Default::default()
    })
}

/// A free `VIP:port` in `127.240.0.0/16` (VIP listeners need fixed addresses): a random
/// one, checked by binding it, retried when taken.
fn free_vip() -> SocketAddr {
    let mut rng = rand::rng();
    loop {
        let addr = SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                127,
                240,
                rng.random_range(1..255),
                rng.random_range(1..255),
            )),
            rng.random_range(20_000..60_000),
        );
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// The client sidecar's outbound side, with `config` in force.
struct Client {
    config: watch::Sender<Arc<pb::SidecarConfig>>,
    registry: prometheus::Registry,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    async fn start(pki: &Pki, config: Arc<pb::SidecarConfig>) -> Client {
        let (tx, rx) = watch::channel(config);
        let registry = prometheus::Registry::new();
        let ctx = OutboundContext::new(
            pki.workload(ZONE, "frontend", "web"),
            pki.trust.clone(),
            rx,
            &registry,
        )
        .unwrap();
        let task = tokio::spawn(async move {
            outbound::serve(ctx, std::future::pending::<()>())
                .await
                .unwrap();
        });
        Client {
            config: tx,
            registry,
            task,
        }
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }
}

/// Waits until `vip` accepts connections.
async fn listening(vip: SocketAddr) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while TcpStream::connect(vip).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{vip} never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 keep-alive connection to `vip`, as the app would open it.
async fn plain(vip: SocketAddr) -> Http {
    listening(vip).await;
    let tcp = TcpStream::connect(vip).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    Http::One(send)
}

/// An HTTP/2 connection to `vip` without TLS (prior knowledge), as an app opens one.
async fn h2c<B>(vip: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(vip).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

async fn get(http: &mut Http, path: &str, headers: &[(&str, &str)]) -> Got {
    http.get(path, headers).await.unwrap()
}

fn instance(got: &Got) -> String {
    assert_eq!(got.status, 200, "{got:?}");
    got.json()["instance"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn calls_reach_the_destination_over_mtls_and_survive_an_instance_dying() {
    let pki = Pki::new(&[ZONE]);
    let one = Upstream::start(&pki, "echo-1", "v1").await;
    let two = Upstream::start(&pki, "echo-2", "v1").await;
    let vip = free_vip();
    let svc = service(
        vip,
        pb::Protocol::Http,
        vec![one.endpoint(), two.endpoint()],
        None,
    );
    let client = Client::start(&pki, config(1, vec![svc])).await;
    let mut http = plain(vip).await;

    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let got = get(
            &mut http,
            "/hello",
            &[(
                "x-strait-peer-identity",
                "spiffe://strait.local/ns/demo/sa/admin",
            )],
        )
        .await;
        assert_eq!(got.json()["peer_identity"], WEB, "{got:?}");
        *seen.entry(instance(&got)).or_insert(0) += 1;
    }
    // An app speaking HTTP/2 without TLS (prior knowledge) is served too.
    let got = get(&mut Http::Two(h2c(vip).await), "/h2c", &[]).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["peer_identity"], WEB);

    // Sequential calls all go to the faster endpoint (peak EWMA, see `lb`): kill that one.
    let (busiest, _) = seen.iter().max_by_key(|(_, n)| **n).unwrap();
    let (dead, alive) = if busiest == "echo-1" {
        (&one, "echo-2")
    } else {
        (&two, "echo-1")
    };
    dead.kill();
    let mut failures = Vec::new();
    for i in 0..200 {
        let got = get(&mut http, "/after", &[]).await;
        if got.status != 200 {
            failures.push((i, got));
        } else {
            assert_eq!(instance(&got), alive);
        }
    }
    assert!(failures.is_empty(), "failures seen: {failures:?}");
    assert!(client.metric("strait_sidecar_outbound_retries_total", &[]) >= 1.0);
    assert_eq!(
        client.metric("strait_sidecar_outbound_ejections_total", &[]),
        1.0,
        "the dead endpoint is ejected"
    );
    assert_eq!(
        client.metric(
            "strait_sidecar_outbound_requests_total",
            &[("zone", "local"), ("code", "2xx")]
        ),
        221.0
    );
}

#[tokio::test]
async fn traffic_routes_split_by_weight_and_match_headers() {
    let pki = Pki::new(&[ZONE]);
    let v1 = Upstream::start(&pki, "echo-v1", "v1").await;
    let v2 = Upstream::start(&pki, "echo-v2", "v2").await;
    let vip = free_vip();
    let subset = |v: &str, weight| pb::WeightedSubset {
        labels: HashMap::from([("version".to_owned(), v.to_owned())]),
        weight,
    };
    let policy = pb::RoutePolicy {
        routes: vec![
            pb::Route {
                matches: vec![pb::RouteMatch {
                    headers: vec![pb::HeaderMatch {
                        name: "x-canary".into(),
                        r#match: Some(pb::header_match::Match::Exact("yes".into())),
                    }],
                    ..Default::default()
                }],
                split: vec![subset("v2", 100)],
            },
            pb::Route {
                matches: vec![],
                split: vec![subset("v1", 90), subset("v2", 10)],
            },
        ],
        ..Default::default()
    };
    let svc = service(
        vip,
        pb::Protocol::Http,
        vec![v1.endpoint(), v2.endpoint()],
        Some(policy),
    );
    let _client = Client::start(&pki, config(1, vec![svc])).await;
    let mut http = plain(vip).await;

    let mut to_v2 = 0;
    for _ in 0..1000 {
        if instance(&get(&mut http, "/", &[]).await) == "echo-v2" {
            to_v2 += 1;
        }
    }
    assert!(
        (50..=150).contains(&to_v2),
        "10 % ± 5 % to v2, got {to_v2} of 1000"
    );
    for _ in 0..20 {
        let got = get(&mut http, "/", &[("x-canary", "yes")]).await;
        assert_eq!(instance(&got), "echo-v2");
    }
}

#[tokio::test]
async fn faults_are_answered_by_the_client_sidecar_and_dead_services_get_503() {
    let pki = Pki::new(&[ZONE]);
    let up = Upstream::start(&pki, "echo-1", "v1").await;
    let aborted = free_vip();
    let remote_only = free_vip();
    let policy = pb::RoutePolicy {
        fault: Some(pb::FaultPolicy {
            abort_percent: 100.0,
            abort_status: 418,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut unreachable = service(remote_only, pb::Protocol::Http, vec![], None);
    unreachable.localities = vec![pb::LocalityGroup {
        zone: "b".into(),
        region: "us".into(),
        priority: 1,
        local_gateways: vec!["127.0.0.1:1".into()],
        weight: 1,
        total: 1,
        ..Default::default()
    }];
    let client = Client::start(
        &pki,
        config(
            1,
            vec![
                service(
                    aborted,
                    pb::Protocol::Http,
                    vec![up.endpoint()],
                    Some(policy),
                ),
                unreachable,
            ],
        ),
    )
    .await;

    let mut http = plain(aborted).await;
    for _ in 0..5 {
        let got = get(&mut http, "/", &[]).await;
        assert_eq!(got.status, 418);
        assert_eq!(got.headers["x-strait-error"], "fault-injected");
    }
    // Another zone is not reachable yet (no gateways): the caller gets a clear 503.
    let mut http = plain(remote_only).await;
    let got = get(&mut http, "/", &[]).await;
    assert_eq!(got.status, 503, "{got:?}");
    assert_eq!(got.headers["x-strait-error"], "no-healthy-upstream");
    assert_eq!(
        client.metric("strait_sidecar_outbound_requests_total", &[("code", "5xx")]),
        1.0
    );
}

/// A TCP echo server on a fresh loopback port.
async fn tcp_echo() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tcp_passes_bytes_through_both_when_declared_and_when_sniffed() {
    let pki = Pki::new(&[ZONE]);
    let (app, app_task) = tcp_echo().await;
    let up = Upstream::in_front_of(&pki, "echo-tcp", "v1", app, app_task).await;
    let declared = free_vip();
    let sniffed = free_vip();
    let client = Client::start(
        &pki,
        config(
            1,
            vec![
                service(declared, pb::Protocol::Tcp, vec![up.endpoint()], None),
                service(
                    sniffed,
                    pb::Protocol::Unspecified,
                    vec![up.endpoint()],
                    None,
                ),
            ],
        ),
    )
    .await;
    for vip in [declared, sniffed] {
        listening(vip).await;
        let mut s = TcpStream::connect(vip).await.unwrap();
        let message = b"hello through the mesh\n".repeat(1000);
        s.write_all(&message).await.unwrap();
        let mut back = vec![0; message.len()];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, message, "via {vip}");
    }
    let forwarded: f64 = [
        "echo-".to_owned() + &declared.port().to_string(),
        "echo-".to_owned() + &sniffed.port().to_string(),
    ]
    .iter()
    .map(|name| {
        client.metric(
            "strait_sidecar_outbound_tcp_connections_total",
            &[
                ("service", &format!("demo/{name}")),
                ("result", "forwarded"),
            ],
        )
    })
    .sum();
    // The declared-TCP listener also forwarded `listening`'s probe connection; the sniffing
    // one closed it (nothing was sent).
    assert_eq!(forwarded, 3.0);
}

#[tokio::test]
async fn config_changes_apply_without_dropping_open_connections() {
    let pki = Pki::new(&[ZONE]);
    let one = Upstream::start(&pki, "echo-1", "v1").await;
    let two = Upstream::start(&pki, "echo-2", "v1").await;
    let vip = free_vip();
    let client = Client::start(
        &pki,
        config(
            1,
            vec![service(vip, pb::Protocol::Http, vec![one.endpoint()], None)],
        ),
    )
    .await;
    let mut http = plain(vip).await;
    assert_eq!(instance(&get(&mut http, "/", &[]).await), "echo-1");

    // The endpoint is replaced, and a new service with its own VIP appears.
    let other = free_vip();
    client.config.send_replace(config(
        2,
        vec![
            service(vip, pb::Protocol::Http, vec![two.endpoint()], None),
            service(other, pb::Protocol::Http, vec![two.endpoint()], None),
        ],
    ));
    let mut switched = None;
    for i in 0..200 {
        // The same keep-alive connection as before the change.
        if instance(&get(&mut http, "/", &[]).await) == "echo-2" {
            switched = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(switched.is_some(), "the new endpoint takes traffic");
    for _ in 0..20 {
        assert_eq!(instance(&get(&mut http, "/", &[]).await), "echo-2");
    }
    let mut http_other = plain(other).await;
    assert_eq!(instance(&get(&mut http_other, "/", &[]).await), "echo-2");

    // The second service goes away: its listener closes, the first keeps serving.
    client.config.send_replace(config(
        3,
        vec![service(vip, pb::Protocol::Http, vec![two.endpoint()], None)],
    ));
    eventually("the removed VIP's listener closes", PATIENCE, async || {
        std::net::TcpStream::connect_timeout(&other, Duration::from_millis(200)).is_err()
    })
    .await;
    assert_eq!(get(&mut http, "/", &[]).await.status, 200);
    assert_eq!(client.metric("strait_sidecar_outbound_listeners", &[]), 1.0);
}

/// Two whole sidecars (`run`) against a real zone control plane: the caller's reaches the
/// callee's through the VIP the zone hands out, and both stop cleanly on shutdown.
#[tokio::test]
async fn whole_sidecars_call_each_other_through_the_zone_vip() {
    use common::{Zone, settings};
    use strait_sidecar::config::OutboundMode;
    use strait_test_support::files::Files;

    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, strait_trust::ca::DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    // Global's VIP index for demo/echo; random so that parallel suites do not collide.
    let index = rand::rng().random_range(1_000..60_000);
    zone.federation
        .send_replace(Arc::new(strait_zone::federation::FederationView::new(
            pb::FederationSnapshot {
                version: 1,
                trust_domain: "strait.local".into(),
                vips: vec![pb::ServiceVip {
                    service: Some(pb::ServiceRef {
                        namespace: "demo".into(),
                        name: "echo".into(),
                    }),
                    index,
                }],
                ..Default::default()
            },
        )));

    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let (mut echo, echo_inbound) = settings(&zone, &pki, &files, "echo").await;
    echo.app = Some(app);
    echo.outbound = OutboundMode::None;
    let (web, web_inbound) = settings(&zone, &pki, &files, "web").await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut sidecars = Vec::new();
    for (s, inbound) in [(echo, echo_inbound), (web, web_inbound)] {
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        sidecars.push(tokio::spawn(strait_sidecar::run::run(
            s,
            inbound,
            admin,
            stopped(),
        )));
    }

    let vip = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(std::net::Ipv4Addr::new(127, 240, 0, 0)) + index,
        )),
        app.port(),
    );
    let mut http = plain(vip).await;
    // The echo endpoint may reach the caller's config a moment after the VIP does.
    let deadline = std::time::Instant::now() + PATIENCE;
    let got = loop {
        let got = get(&mut http, "/hello", &[]).await;
        if got.status == 200 || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        got.json()["peer_identity"],
        "spiffe://strait.local/ns/demo/sa/web"
    );

    stop_tx.send(true).unwrap();
    for sidecar in sidecars {
        tokio::time::timeout(PATIENCE, sidecar)
            .await
            .expect("the sidecar stops within its drain period")
            .unwrap()
            .unwrap();
    }
}

fn breaker(max_connections: u32, max_pending_requests: u32) -> pb::CircuitBreakerPolicy {
    pb::CircuitBreakerPolicy {
        max_connections,
        max_pending_requests,
        // Outlier detection as the zone sends it by default.
        consecutive_5xx: 5,
        consecutive_connect_failures: 5,
        interval_ms: 10_000,
        base_ejection_ms: 30_000,
        max_ejection_percent: 50.0,
        ..Default::default()
    }
}

#[tokio::test]
async fn max_connections_passes_over_unconnected_endpoints_and_closes_tcp_beyond_it() {
    let pki = Pki::new(&[ZONE]);
    let one = Upstream::start(&pki, "echo-1", "v1").await;
    let two = Upstream::start(&pki, "echo-2", "v1").await;
    let (app, app_task) = tcp_echo().await;
    let tcp_up = Upstream::in_front_of(&pki, "echo-tcp", "v1", app, app_task).await;
    let http_vip = free_vip();
    let tcp_vip = free_vip();
    let policy = Some(pb::RoutePolicy {
        circuit_breaker: Some(breaker(1, 0)),
        ..Default::default()
    });
    let client = Client::start(
        &pki,
        config(
            1,
            vec![
                service(
                    http_vip,
                    pb::Protocol::Http,
                    vec![one.endpoint(), two.endpoint()],
                    policy.clone(),
                ),
                service(tcp_vip, pb::Protocol::Tcp, vec![tcp_up.endpoint()], policy),
            ],
        ),
    )
    .await;

    // HTTP: one connection to one endpoint; every request is served on it (the other
    // endpoint would need a second connection, so it is passed over, not failed).
    let mut http = plain(http_vip).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(instance(&get(&mut http, "/", &[]).await));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");

    // TCP: one proxied connection at a time; a second is closed at once.
    listening(tcp_vip).await;
    async fn round_trip(s: &mut TcpStream) -> bool {
        if s.write_all(b"ping\n").await.is_err() {
            return false;
        }
        let mut back = [0_u8; 5];
        matches!(
            tokio::time::timeout(PATIENCE, s.read_exact(&mut back)).await,
            Ok(Ok(_))
        ) && &back == b"ping\n"
    }
    // (`listening`'s own probe connection may hold the place for a moment.)
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut first = loop {
        let mut s = TcpStream::connect(tcp_vip).await.unwrap();
        if round_trip(&mut s).await {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no TCP connection got through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut second = TcpStream::connect(tcp_vip).await.unwrap();
    assert!(
        !round_trip(&mut second).await,
        "a second connection got through"
    );
    let name = format!("demo/echo-{}", tcp_vip.port());
    assert!(
        client.metric(
            "strait_sidecar_outbound_overflows_total",
            &[("service", &name), ("limit", "max_connections")]
        ) >= 1.0
    );
    // The first carries on; once it is closed, a new one gets through.
    assert!(round_trip(&mut first).await);
    drop(first);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut s = TcpStream::connect(tcp_vip).await.unwrap();
        if round_trip(&mut s).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn max_pending_requests_answers_overflow_at_once() {
    let pki = Pki::new(&[ZONE]);
    // An endpoint that accepts TCP and never answers the TLS handshake: a request to it
    // waits for its connection until the connect timeout.
    let black_hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = pb::Endpoint {
        address: black_hole.local_addr().unwrap().to_string(),
        instance: "slow".into(),
        labels: HashMap::new(),
        spiffe_id: ECHO.into(),
        healthy: true,
    };
    let vip = free_vip();
    let policy = pb::RoutePolicy {
        circuit_breaker: Some(breaker(0, 1)),
        timeout: Some(pb::TimeoutPolicy {
            connect_ms: 2_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let client = Client::start(
        &pki,
        config(
            1,
            vec![service(
                vip,
                pb::Protocol::Http,
                vec![endpoint],
                Some(policy),
            )],
        ),
    )
    .await;
    let mut a = plain(vip).await;
    let mut b = plain(vip).await;
    let started = std::time::Instant::now();
    async fn timed(http: &mut Http, started: std::time::Instant) -> (Got, Duration) {
        let got = get(http, "/", &[]).await;
        (got, started.elapsed())
    }
    // Two requests at once: one waits for the connection, the other is over the limit.
    let ((got_a, took_a), (got_b, took_b)) =
        tokio::join!(timed(&mut a, started), timed(&mut b, started));
    let (overflowed, waited) = if got_a.headers.get("x-strait-error").unwrap() == "overflow" {
        ((got_a, took_a), (got_b, took_b))
    } else {
        ((got_b, took_b), (got_a, took_a))
    };
    assert_eq!(overflowed.0.status, 503, "{:?}", overflowed.0);
    assert_eq!(
        overflowed.0.headers.get("x-strait-error").unwrap(),
        "overflow"
    );
    assert!(
        overflowed.1 < Duration::from_millis(1_500),
        "{:?}",
        overflowed.1
    );
    assert_eq!(waited.0.status, 503, "{:?}", waited.0);
    assert_eq!(
        waited.0.headers.get("x-strait-error").unwrap(),
        "no-healthy-upstream"
    );
    assert!(waited.1 >= Duration::from_millis(1_900), "{:?}", waited.1);
    let name = format!("demo/echo-{}", vip.port());
    assert_eq!(
        client.metric(
            "strait_sidecar_outbound_overflows_total",
            &[("service", &name), ("limit", "max_pending_requests")]
        ),
        1.0
    );
    drop(black_hole);
}

#[tokio::test]
async fn idle_downstream_connections_are_closed_and_new_ones_work() {
    let pki = Pki::new(&[ZONE]);
    let up = Upstream::start(&pki, "echo-1", "v1").await;
    let (app, app_task) = tcp_echo().await;
    let tcp_up = Upstream::in_front_of(&pki, "echo-tcp", "v1", app, app_task).await;
    let http_vip = free_vip();
    let tcp_vip = free_vip();
    let idle = Duration::from_millis(700);
    let policy = Some(pb::RoutePolicy {
        timeout: Some(pb::TimeoutPolicy {
            idle_ms: 700,
            ..Default::default()
        }),
        ..Default::default()
    });
    let _client = Client::start(
        &pki,
        config(
            1,
            vec![
                service(
                    http_vip,
                    pb::Protocol::Http,
                    vec![up.endpoint()],
                    policy.clone(),
                ),
                service(tcp_vip, pb::Protocol::Tcp, vec![tcp_up.endpoint()], policy),
            ],
        ),
    )
    .await;

    // HTTP: a keep-alive connection used now and then stays open; silent, it is closed.
    let mut http = plain(http_vip).await;
    for _ in 0..4 {
        assert_eq!(get(&mut http, "/", &[]).await.status, 200);
        tokio::time::sleep(idle / 3).await;
    }
    let Http::One(sender) = &http else {
        unreachable!()
    };
    assert!(!sender.is_closed(), "closed while in use");
    let silent = std::time::Instant::now();
    eventually("the idle HTTP connection closed", PATIENCE, async || {
        sender.is_closed()
    })
    .await;
    assert!(silent.elapsed() >= idle / 2, "{:?}", silent.elapsed());
    // A new connection is served at once, on the pooled upstream connection.
    let mut again = plain(http_vip).await;
    assert_eq!(get(&mut again, "/", &[]).await.status, 200);

    // TCP: closed once silent in both directions.
    let mut s = TcpStream::connect(tcp_vip).await.unwrap();
    s.write_all(b"ping\n").await.unwrap();
    let mut back = [0_u8; 5];
    s.read_exact(&mut back).await.unwrap();
    let silent = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("the idle TCP connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        silent.elapsed() >= idle - Duration::from_millis(100),
        "{:?}",
        silent.elapsed()
    );
}

/// An app that answers every request with headers and half its body at once, the other half
/// after `gap` (`content-length` announces both halves).
async fn slow_body_app(gap: Duration) -> (SocketAddr, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0_u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\nfirst";
                    if tcp.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                    if tcp.write_all(b"-half").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn the_request_timeout_covers_the_whole_response_body() {
    let pki = Pki::new(&[ZONE]);
    let (app, app_task) = slow_body_app(Duration::from_millis(1_500)).await;
    let up = Upstream::in_front_of(&pki, "slow-1", "v1", app, app_task).await;
    let timeout = |request_ms: u64| {
        Some(pb::RoutePolicy {
            timeout: Some(pb::TimeoutPolicy {
                request_ms,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let short = free_vip();
    let long = free_vip();
    let _client = Client::start(
        &pki,
        config(
            1,
            vec![
                service(short, pb::Protocol::Http, vec![up.endpoint()], timeout(500)),
                service(
                    long,
                    pb::Protocol::Http,
                    vec![up.endpoint()],
                    timeout(5_000),
                ),
            ],
        ),
    )
    .await;
    // The headers arrive in time, the body does not: the response fails, it is never a short
    // body that looks whole.
    let mut http = plain(short).await;
    let started = std::time::Instant::now();
    let result = http.get("/", &[]).await;
    assert!(
        result.is_err(),
        "a body past the deadline must fail: {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "cut at the deadline, not when the body ended: {:?}",
        started.elapsed()
    );
    // Within its deadline the whole body arrives.
    let mut http = plain(long).await;
    let got = get(&mut http, "/", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"first-half");
}

#[tokio::test]
async fn a_port_with_its_own_policy_uses_it_and_the_others_the_services() {
    let pki = Pki::new(&[ZONE]);
    let up = Upstream::start(&pki, "echo-1", "v1").await;
    let first = free_vip();
    // A second port on the same VIP.
    let second = loop {
        let candidate = SocketAddr::new(first.ip(), rand::rng().random_range(20_000..60_000));
        if candidate != first && std::net::TcpListener::bind(candidate).is_ok() {
            break candidate;
        }
    };
    let mut svc = service(first, pb::Protocol::Http, vec![up.endpoint()], None);
    svc.ports.push(pb::Port {
        name: "admin".into(),
        port: u32::from(second.port()),
        protocol: pb::Protocol::Http as i32,
    });
    svc.port_policies.insert(
        u32::from(second.port()),
        pb::RoutePolicy {
            fault: Some(pb::FaultPolicy {
                abort_percent: 100.0,
                abort_status: 418,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let _client = Client::start(&pki, config(1, vec![svc])).await;
    let mut http = plain(first).await;
    assert_eq!(instance(&get(&mut http, "/", &[]).await), "echo-1");
    let mut http = plain(second).await;
    let got = get(&mut http, "/", &[]).await;
    assert_eq!(got.status, 418, "{got:?}");
    assert_eq!(got.headers["x-strait-error"], "fault-injected");
}

/// A gRPC server (HTTP/2 without TLS) whose every call sends one message and then ends with
/// `grpc-status: status` in its trailers, as a real server does: not trailers-only.
async fn grpc_app(status: u32) -> (SocketAddr, JoinHandle<()>) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(move |_request| async move {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", status.into());
                let frames: [Result<Frame<bytes::Bytes>, std::convert::Infallible>; 2] = [
                    Ok(Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
                    Ok(Frame::trailers(trailers)),
                ];
                let body = StreamBody::new(futures::stream::iter(frames));
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    (addr, task)
}

/// One unary gRPC call over `send`; the `grpc-status` of its trailers.
async fn grpc_call(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    vip: SocketAddr,
) -> Option<String> {
    use http_body_util::BodyExt;

    let request = http::Request::post(format!("http://{vip}/demo.Echo/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers()?;
    Some(trailers.get("grpc-status")?.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_grpc_failure_in_trailers_counts_for_outlier_detection() {
    let pki = Pki::new(&[ZONE]);
    let (app, app_task) = grpc_app(14).await; // UNAVAILABLE, in trailers after a message
    let bad = Upstream::in_front_of(&pki, "bad", "v1", app, app_task).await;
    let vip = free_vip();
    let policy = pb::RoutePolicy {
        circuit_breaker: Some(pb::CircuitBreakerPolicy {
            consecutive_5xx: 3,
            max_ejection_percent: 100.0,
            ..breaker(0, 0)
        }),
        ..Default::default()
    };
    let svc = service(vip, pb::Protocol::Http, vec![bad.endpoint()], Some(policy));
    let client = Client::start(&pki, config(1, vec![svc])).await;
    listening(vip).await;
    let mut send = h2c(vip).await;

    // HTTP says 200 every time; the trailers say UNAVAILABLE, three times in a row.
    for _ in 0..3 {
        assert_eq!(grpc_call(&mut send, vip).await.as_deref(), Some("14"));
    }
    // Recorded when the trailers passed, so by the time the client has read them.
    assert_eq!(
        client.metric("strait_sidecar_outbound_ejections_total", &[]),
        1.0,
        "three UNAVAILABLE in a row eject the endpoint (consecutive5xx: 3)"
    );
    assert_eq!(
        client.metric(
            "strait_sidecar_outbound_grpc_calls_total",
            &[("class", "server-error")]
        ),
        3.0
    );
}

#[tokio::test]
async fn a_websocket_over_http2_extended_connect_reaches_an_http1_websocket_app() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let pki = Pki::new(&[ZONE]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let app_task = tokio::spawn(strait_sidecar::demo_ws::run_demo_ws(
        listener,
        "demo/wsecho".into(),
        "a".into(),
        "ws-1".into(),
        std::future::pending::<()>(),
    ));
    let upstream = Upstream::in_front_of(&pki, "ws-1", "v1", app, app_task).await;
    let vip = free_vip();
    let svc = service(vip, pb::Protocol::Http, vec![upstream.endpoint()], None);
    let client = Client::start(&pki, config(1, vec![svc])).await;
    listening(vip).await;
    let mut send = h2c(vip).await;

    // RFC 8441: CONNECT with `:protocol websocket`, no Sec-WebSocket-Key.
    let mut request = http::Request::connect(format!("http://{vip}/"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "{response:?}");
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    assert_eq!(response.headers()["x-strait-instance"], "ws-1");
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    let hello = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(hello["peer_identity"], WEB, "{hello}");
    let big = vec![7u8; 1 << 20];
    ws.send(Message::text("over one HTTP/2 stream"))
        .await
        .unwrap();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("over one HTTP/2 stream")
    );
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
    drop(client);
}
