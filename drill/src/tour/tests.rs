//! The tour's plan, judgements and drills, without a federation.

use super::*;

fn service(name: &str, vips: &[(&str, &str)]) -> pb::ServiceStatus {
    pb::ServiceStatus {
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: name.into(),
        }),
        vips: vips
            .iter()
            .map(|(z, v)| ((*z).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

fn demo_services() -> Vec<pb::ServiceStatus> {
    vec![
        service("echo", &[("a", "127.240.0.1"), ("b", "127.241.0.1")]),
        service("ledger", &[("a", "127.240.0.2")]),
        service("greeter", &[("a", "127.240.0.3")]),
        service("wsecho", &[("a", "127.240.0.4")]),
    ]
}

fn pinned(zones: &[(&str, &str)]) -> BTreeMap<String, String> {
    zones
        .iter()
        .map(|(z, v)| ((*z).to_owned(), (*v).to_owned()))
        .collect()
}

fn summary(checks: &[Check]) -> Vec<(&str, Kind, Option<&str>, &str)> {
    checks
        .iter()
        .map(|c| {
            (
                c.what.as_str(),
                c.kind,
                c.target.as_deref(),
                c.expected.as_str(),
            )
        })
        .collect()
}

#[test]
fn services_are_listed_when_each_has_a_vip_in_zone_a() {
    let mut services = demo_services();
    assert!(all_listed(&services));
    assert_eq!(
        vip(&services, "ledger", "a").as_deref(),
        Some("127.240.0.2")
    );
    assert_eq!(vip(&services, "ledger", "b"), None);
    services[3] = service("wsecho", &[("b", "127.241.0.4")]);
    assert!(!all_listed(&services));
    services.pop();
    assert!(!all_listed(&services));
}

#[test]
fn http_calls_go_to_each_vip_and_each_pinned_zone() {
    let checks = plan(
        Section::Http,
        &demo_services(),
        &pinned(&[
            ("a", "127.240.1.1"),
            ("b", "127.240.2.1"),
            ("c", "127.240.3.1"),
        ]),
    );
    assert_eq!(
        summary(&checks),
        [
            ("echo", Kind::Http, Some("127.240.0.1:8080"), "a"),
            (
                "ledger (runs only in zone c)",
                Kind::Http,
                Some("127.240.0.2:8080"),
                "c"
            ),
            (
                "echo pinned to zone b",
                Kind::Http,
                Some("127.240.2.1:8080"),
                "b"
            ),
            (
                "echo pinned to zone c",
                Kind::Http,
                Some("127.240.3.1:8080"),
                "c"
            ),
        ]
    );
}

#[test]
fn http_calls_without_a_vip_are_left_out() {
    let services = vec![service("ledger", &[("a", "127.240.0.2")])];
    let checks = plan(Section::Http, &services, &pinned(&[("c", "127.240.3.1")]));
    assert_eq!(
        summary(&checks),
        [
            (
                "ledger (runs only in zone c)",
                Kind::Http,
                Some("127.240.0.2:8080"),
                "c"
            ),
            (
                "echo pinned to zone c",
                Kind::Http,
                Some("127.240.3.1:8080"),
                "c"
            ),
        ]
    );
}

#[test]
fn grpc_calls_stay_without_a_vip_and_the_stream_goes_to_zone_b() {
    let checks = plan(
        Section::Grpc,
        &demo_services(),
        &pinned(&[("b", "127.240.2.3")]),
    );
    assert_eq!(
        summary(&checks),
        [
            ("greeter", Kind::Hello, Some("127.240.0.3:8080"), "a"),
            (
                "greeter pinned to zone b",
                Kind::Hello,
                Some("127.240.2.3:8080"),
                "b"
            ),
            ("greeter pinned to zone c", Kind::Hello, None, "c"),
            (
                "greeter pinned to zone b",
                Kind::Count,
                Some("127.240.2.3:8080"),
                "b"
            ),
        ]
    );
    // No pinned VIP for zone b: no stream to call.
    let checks = plan(Section::Grpc, &[], &BTreeMap::new());
    assert_eq!(
        summary(&checks),
        [
            ("greeter", Kind::Hello, None, "a"),
            ("greeter pinned to zone b", Kind::Hello, None, "b"),
            ("greeter pinned to zone c", Kind::Hello, None, "c"),
        ]
    );
}

#[test]
fn websocket_calls_go_to_zone_a_and_zone_b() {
    let checks = plan(
        Section::WebSocket,
        &demo_services(),
        &pinned(&[("b", "127.240.2.4"), ("c", "127.240.3.4")]),
    );
    assert_eq!(
        summary(&checks),
        [
            ("wsecho", Kind::WebSocket, Some("127.240.0.4:8080"), "a"),
            (
                "wsecho pinned to zone b",
                Kind::WebSocket,
                Some("127.240.2.4:8080"),
                "b"
            ),
        ]
    );
    assert_eq!(Section::WebSocket.pinned_service(), "wsecho");
}

#[tokio::test]
async fn a_check_without_a_vip_fails_at_once() {
    struct Unused;
    impl WebSocketClient for Unused {
        async fn round_trip(&self, _: SocketAddr) -> Result<WebSocketTrip, WebSocketError> {
            unreachable!("no VIP: nothing is called")
        }
    }
    for kind in [Kind::Hello, Kind::Count, Kind::WebSocket] {
        let check = Check::new("x", kind, None, "a");
        let outcome = check.run(&Unused).await;
        assert!(matches!(outcome, Outcome::NoVip), "{kind:?}: {outcome:?}");
        assert!(!outcome.answered());
        assert!(!outcome.met("a"));
    }
}

#[tokio::test]
async fn a_refused_websocket_upgrade_is_not_retried() {
    use std::sync::atomic::{AtomicU32, Ordering};
    struct Refusing(AtomicU32);
    impl WebSocketClient for Refusing {
        async fn round_trip(&self, _: SocketAddr) -> Result<WebSocketTrip, WebSocketError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Err(WebSocketError {
                not_listening: n == 0,
                message: format!("attempt {n}"),
            })
        }
    }
    let client = Refusing(AtomicU32::new(0));
    let check = Check::new("wsecho", Kind::WebSocket, Some("127.0.0.1"), "a");
    let outcome = check.run(&client).await;
    // Not listening at first: tried again; then refused: final.
    assert!(
        matches!(&outcome, Outcome::WebSocket(Err(m)) if m == "attempt 1"),
        "{outcome:?}"
    );
}

#[test]
fn outcomes_are_met_only_by_the_expected_zone() {
    let body = serde_json::json!({"zone": "b", "instance": "echo-b", "peer_identity": "x"});
    assert!(Outcome::Http(Ok(body.clone())).met("b"));
    assert!(!Outcome::Http(Ok(body.clone())).met("a"));
    assert!(!Outcome::Http(Ok(serde_json::json!({}))).met("a"));
    assert_eq!(answer_field(&serde_json::json!({}), "zone"), "?");
    assert_eq!(answer_field(&body, "instance"), "echo-b");
    assert!(!Outcome::Http(Err(ProbeError::Timeout(Duration::from_secs(1)))).met("b"));

    let hello = |zone: &str| HelloReply {
        zone: zone.into(),
        ..Default::default()
    };
    assert!(Outcome::Hello(Ok(hello("c"))).met("c"));
    assert!(!Outcome::Hello(Ok(hello("a"))).met("c"));
    assert!(Outcome::Hello(Ok(hello("a"))).answered());
    assert!(!Outcome::Hello(Err(tonic::Status::unavailable("x"))).answered());

    assert!(Outcome::Count(Ok((vec![1, 2, 3, 4, 5], "b".into()))).met("b"));
    assert!(!Outcome::Count(Ok((vec![1, 2, 3, 4], "b".into()))).met("b"));
    assert!(!Outcome::Count(Ok((vec![1, 2, 3, 4, 5], "a".into()))).met("b"));

    let trip = |header: Option<&str>, hello: &str| WebSocketTrip {
        zone: header.map(str::to_owned),
        hello: serde_json::json!({ "zone": hello }),
        echoed: WEBSOCKET_MESSAGE.into(),
    };
    assert!(Outcome::WebSocket(Ok(trip(Some("b"), "b"))).met("b"));
    assert!(!Outcome::WebSocket(Ok(trip(None, "b"))).met("b"));
    assert!(!Outcome::WebSocket(Ok(trip(Some("b"), "a"))).met("b"));
}

#[test]
fn dns_checks_expect_echos_vip_and_nxdomain_for_an_unknown_name() {
    let checks = dns_checks(Some("127.240.0.1".into()), true);
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "echo.demo.svc.clusterset.local",
            "ledger.demo.svc.clusterset.local",
            "echo.demo.svc.b.mesh.local",
            "nope.demo.svc.clusterset.local",
        ]
    );
    let echo = &checks[0];
    assert!(echo.met(ResponseCode::NoError, &["127.240.0.1".into()]));
    assert!(!echo.met(ResponseCode::NoError, &["127.240.0.9".into()]));
    assert!(checks[1].met(ResponseCode::NXDomain, &[]));
    assert!(checks[3].met(ResponseCode::NXDomain, &[]));
    assert!(!checks[3].met(ResponseCode::NoError, &["127.240.0.1".into()]));

    // No VIP for echo: nothing it answers is right; no pinned VIPs: no pinned name.
    let checks = dns_checks(None, false);
    assert_eq!(checks.len(), 3);
    assert!(!checks[0].met(ResponseCode::NoError, &["127.240.0.1".into()]));
}

#[test]
fn the_greeter_retry_is_a_valid_policy() -> Result<(), Box<dyn std::error::Error>> {
    let resources = strait_policy::parse_documents(&greeter_retry(), "test")?;
    assert_eq!(resources.len(), 1);
    assert!(greeter_retry().contains("retryOn: [connect-failure, unavailable]"));
    Ok(())
}

#[test]
fn drills_drain_then_kill_echo_then_greeter_under_grpc_load() {
    let drills = drills(Path::new("/tmp/fed"));
    let shape: Vec<_> = drills
        .iter()
        .map(|d| {
            (
                d.spec.service.as_str(),
                d.spec.mode,
                d.spec.protocol,
                d.spec.duration.as_secs(),
                d.spec.objective_errors,
                d.moves_to,
                d.note.is_some(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("echo", Mode::Drain, Protocol::Http, 3, 0, Some("b"), false),
            ("echo", Mode::Kill, Protocol::Http, 2, 0, None, false),
            ("greeter", Mode::Drain, Protocol::Grpc, 3, 0, None, false),
            (
                "greeter",
                Mode::Kill,
                Protocol::Grpc,
                2,
                KILL_IN_FLIGHT,
                None,
                true
            ),
        ]
    );
    for d in &drills {
        let s = &d.spec;
        assert_eq!((s.namespace.as_str(), s.zone.as_str()), ("demo", "a"));
        assert_eq!(s.from.as_deref(), Some("a"));
        assert_eq!((s.rate, s.max_errors), (50, 50));
        assert_eq!(s.objective_rto, Duration::from_secs(1));
        assert_eq!(s.dir.as_deref(), Some(Path::new("/tmp/fed")));
    }
    assert!(drills[2].title.contains(GREETER_RETRY_ON));
}
