//! The sidecar's control half against the zone crate's real Discovery and Identity services,
//! in-process over mutual TLS: register, receive and run a config, reject a bad one and keep
//! the previous, report the app's health, reconnect after the zone restarts; and the admin
//! endpoint that shows it all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CutProxy, ZONE, Zone, demo_app, settings};
use strait_proto as pb;
use strait_proto::sidecar_message::Msg;
use strait_sidecar::admin::{self, AdminSources};
use strait_sidecar::discovery::{Control, ControlOptions, start_control, start_control_with};
use strait_test_support::files::Files;
use strait_test_support::metrics::metric;
use strait_test_support::pki::Pki;
use strait_test_support::wait::{PATIENCE, eventually};
use strait_trust::ca::DEFAULT_LEAF_VALIDITY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

async fn first_config(control: &Control) -> Arc<pb::SidecarConfig> {
    tokio::time::timeout(PATIENCE, control.first_config())
        .await
        .expect("a first config")
}

/// Registers `demo/echo` instance `instance` at `address` with a raw stream (as another
/// sidecar would), ACKing nothing; the stream lives as long as the returned sender.
async fn register_echo(
    zone: &Zone,
    pki: &Pki,
    instance: &str,
    address: &str,
) -> mpsc::Sender<pb::SidecarMessage> {
    let tls = strait_trust::client_config(
        &pki.workload(ZONE, "demo", "echo"),
        &pki.trust,
        Arc::new(strait_trust::AllowAny),
        vec![b"h2".to_vec()],
    )
    .unwrap();
    let channel =
        strait_proto::transport::channel(&zone.addr(), Arc::new(tls), Duration::from_secs(5));
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::SidecarMessage {
        msg: Some(Msg::Register(pb::Register {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            instance: instance.into(),
            ports: vec![],
            labels: Default::default(),
            locality: None,
            inbound_address: address.into(),
            outbound_vips: false,
            known_version: 0,
        })),
    })
    .await
    .unwrap();
    let mut stream = pb::discovery_client::DiscoveryClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    tx
}

fn echo_addresses(config: &pb::SidecarConfig) -> Vec<String> {
    addresses(config, "echo")
}

fn addresses(config: &pb::SidecarConfig, service: &str) -> Vec<String> {
    config
        .services
        .iter()
        .filter(|s| s.service.as_ref().is_some_and(|r| r.name == service))
        .flat_map(|s| s.localities.iter())
        .flat_map(|g| g.endpoints.iter())
        .map(|e| e.address.clone())
        .collect()
}

/// `GET path` on the admin port: (status, body).
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn registers_runs_its_config_and_shows_it_at_the_admin_endpoint() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let (mut s, inbound) = settings(&zone, &pki, &files, "echo").await;
    s.app = Some(app);
    s.labels.insert("version".into(), "v1".into());
    drop(inbound);
    let control = start_control(s.clone()).await.unwrap();

    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let sources = AdminSources::from_control(&control);
    let _admin = tokio::spawn(admin::serve(
        admin_listener,
        sources,
        std::future::pending::<()>(),
    ));

    let config = first_config(&control).await;
    assert_eq!(config.zone, "a");
    assert_eq!(config.trust_domain, "strait.local");
    assert_eq!(
        config.inbound.as_ref().map(|i| i.tls_mode),
        Some(pb::MeshTlsMode::Strict as i32)
    );
    // The zone lists this instance as an echo endpoint, with its inbound address and identity.
    let me = s.inbound.to_string();
    eventually("our own endpoint in a config", PATIENCE, async || {
        echo_addresses(&control.current_config()).contains(&me)
    })
    .await;
    let status = zone
        .discovery
        .sidecars()
        .into_iter()
        .find(|st| st.instance == "echo-1")
        .unwrap();
    assert_eq!(status.identity, "spiffe://strait.local/ns/demo/sa/echo");
    eventually("the zone saw our ACK", PATIENCE, async || {
        zone.discovery.sidecars().iter().any(|st| {
            st.instance == "echo-1" && st.acked_version == control.current_config().version
        })
    })
    .await;
    assert_eq!(zone.instance_health("echo", "echo-1"), Some(true));

    // The admin endpoint.
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = admin_get(admin_addr, "/ready").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready.0, 200, "{ready:?}");
    let (status, body) = admin_get(admin_addr, "/config").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["version"].as_u64().unwrap() >= 1);
    assert_eq!(json["zone"], "a");
    assert_eq!(json["inbound"]["tls_mode"], "MESH_TLS_MODE_STRICT");
    assert_eq!(
        json["sidecar"]["identity"]["spiffe_id"],
        "spiffe://strait.local/ns/demo/sa/echo"
    );
    assert_eq!(json["sidecar"]["settings"]["instance"], "echo-1");
    let identity = &json["sidecar"]["identity"];
    assert!(
        identity["not_after_unix"].as_u64().unwrap()
            > identity["not_before_unix"].as_u64().unwrap(),
        "{identity}"
    );
    assert_eq!(identity["trust_roots"][0], pki.root.pin());
    assert_eq!(json["sidecar"]["app_health"]["healthy"], true, "{json}");
    let (status, metrics) = admin_get(admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "strait_sidecar_cert_expiry_timestamp_seconds",
        "strait_sidecar_config_version",
        "strait_sidecar_discovery_connected 1",
        "strait_sidecar_app_healthy 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    control.stop().await;
}

#[tokio::test]
async fn an_invalid_config_is_nacked_and_the_previous_one_stays() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let (mut s, _inbound) = settings(&zone, &pki, &files, "web").await;
    s.instance = Some("web-1".into());
    let me = s.inbound.to_string();
    let control = start_control(s).await.unwrap();
    first_config(&control).await;
    eventually(
        "settled: our own endpoint in a config",
        PATIENCE,
        async || addresses(&control.current_config(), "web").contains(&me),
    )
    .await;
    let first = control.current_config();
    assert!(echo_addresses(&first).is_empty());

    // Another sidecar registers an address the zone passes on but no sidecar can dial.
    let _bad = register_echo(&zone, &pki, "echo-bad", "bad..host:8443").await;
    eventually("the NACK at the zone", PATIENCE, async || {
        zone.discovery
            .sidecars()
            .iter()
            .any(|st| st.instance == "web-1" && st.last_nack.is_some())
    })
    .await;
    let status = zone
        .discovery
        .sidecars()
        .into_iter()
        .find(|st| st.instance == "web-1")
        .unwrap();
    let (version, reason) = status.last_nack.unwrap();
    assert!(version > first.version);
    assert!(
        reason.contains("address") && reason.contains("bad..host"),
        "{reason}"
    );
    // Still running the previous config.
    assert_eq!(control.current_config().version, first.version);
    assert_eq!(*control.current_config(), *first);
    assert_eq!(
        metric(
            &control.registry,
            "strait_sidecar_config_updates_total",
            &[("result", "rejected")]
        ),
        1.0
    );
    control.stop().await;
}

#[tokio::test]
async fn a_validator_hook_can_reject_configs() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let (mut s, _inbound) = settings(&zone, &pki, &files, "web").await;
    s.instance = Some("web-1".into());
    let me = s.inbound.to_string();
    let no_echo: strait_sidecar::discovery::Validator = Arc::new(|c: &pb::SidecarConfig| {
        if echo_addresses(c).is_empty() {
            Ok(())
        } else {
            Err("listener for echo: address in use".to_owned())
        }
    });
    let control = start_control_with(
        s,
        ControlOptions {
            validators: vec![no_echo],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    first_config(&control).await;
    eventually(
        "settled: our own endpoint in a config",
        PATIENCE,
        async || addresses(&control.current_config(), "web").contains(&me),
    )
    .await;
    let first = control.current_config();
    let _echo = register_echo(&zone, &pki, "echo-1", "127.0.0.1:7001").await;
    eventually("the NACK at the zone", PATIENCE, async || {
        zone.discovery.sidecars().iter().any(|st| {
            st.instance == "web-1"
                && st
                    .last_nack
                    .as_ref()
                    .is_some_and(|(_, r)| r == "listener for echo: address in use")
        })
    })
    .await;
    assert_eq!(control.current_config().version, first.version);
}

#[tokio::test]
async fn health_reports_follow_the_app_port() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let files = Files::new();
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let (mut s, _inbound) = settings(&zone, &pki, &files, "echo").await;
    s.app = Some(app_addr);
    let control = start_control(s).await.unwrap();
    first_config(&control).await;
    assert_eq!(zone.instance_health("echo", "echo-1"), Some(true));

    drop(app);
    eventually("unhealthy at the zone", PATIENCE, async || {
        zone.instance_health("echo", "echo-1") == Some(false)
    })
    .await;
    assert!(!control.health.borrow().healthy);

    let _app = TcpListener::bind(app_addr).await.unwrap();
    eventually("healthy again at the zone", PATIENCE, async || {
        zone.instance_health("echo", "echo-1") == Some(true)
    })
    .await;
}

#[tokio::test]
async fn reconnects_after_the_stream_breaks_and_continues_the_versions() {
    let pki = Pki::new(&[ZONE]);
    let zone = Zone::start(&pki, DEFAULT_LEAF_VALIDITY).await;
    let proxy = CutProxy::start(zone.addr).await;
    let files = Files::new();
    let (mut s, _inbound) = settings(&zone, &pki, &files, "echo").await;
    s.zone_cp = proxy.addr.to_string();
    let control = start_control(s.clone()).await.unwrap();
    // Settled: the config lists this instance itself.
    let me = s.inbound.to_string();
    eventually("our own endpoint in a config", PATIENCE, async || {
        echo_addresses(&control.current_config()).contains(&me)
    })
    .await;
    let settled = control.current_config().version;

    proxy.cut();
    // The sidecar registers again with the version it runs; the zone numbers on from there.
    let mut rx = control.config.clone();
    let next = tokio::time::timeout(PATIENCE, rx.wait_for(|c| c.version > settled))
        .await
        .expect("a config on the new stream")
        .unwrap()
        .clone();
    assert_eq!(next.version, settled + 1);
    assert!(
        metric(
            &control.registry,
            "strait_sidecar_discovery_reconnects_total",
            &[]
        ) >= 1.0
    );
    assert!(
        echo_addresses(&next).contains(&me),
        "the instance was kept through the break"
    );
    eventually("connected again", PATIENCE, async || {
        metric(&control.registry, "strait_sidecar_discovery_connected", &[]) == 1.0
    })
    .await;
    control.stop().await;
}
