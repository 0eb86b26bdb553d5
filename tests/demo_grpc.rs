//! The demo's gRPC service and WebSocket app through the mesh (issue 20, "the demo shows it"):
//! `strait up --demo` starts `greeter` (gRPC, `--app-protocol grpc`) and `wsecho` (WebSocket)
//! in every zone; zone a's client reaches greeter in its own zone and pinned to zone b, and
//! `strait drill failover --protocol grpc` drains greeter in zone a under gRPC load with no
//! failed call.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::BIN;
use common::demo::{pinned_vip, vip};
use strait_test_support::federation::Federation;

/// A `Hello` through `target`, retried for a while (cross-zone paths take a moment after
/// `strait up`); the reply.
async fn hello(target: SocketAddr) -> strait_proto::demo::v1::HelloReply {
    strait_drill::probe::until(
        Duration::from_secs(30),
        |_| true,
        async || strait_drill::grpc::hello_once(target, Duration::from_secs(5)).await,
    )
    .await
    .unwrap_or_else(|status| panic!("Greeter/Hello through {target}: {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeter_answers_across_zones_and_a_grpc_drain_drill_fails_no_call() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);

    // Same zone: zone a's greeter answers, and saw zone a's client's identity.
    let local: SocketAddr = vip(&fed, "greeter", "a").parse().unwrap();
    let reply = hello(local).await;
    assert_eq!(reply.zone, "a", "{reply:?}");
    assert_eq!(reply.instance, "greeter-v1-a");
    assert_eq!(reply.message, "hello strait-demo");
    assert_eq!(
        reply.peer_identity,
        "spiffe://strait.local/ns/demo/sa/client"
    );

    // Pinned to zone b: through both gateways, HTTP/2 end to end, a unary call and a stream.
    let remote: SocketAddr = pinned_vip(&fed, "greeter", "b", "a").parse().unwrap();
    let reply = hello(remote).await;
    assert_eq!(
        (reply.zone.as_str(), reply.instance.as_str()),
        ("b", "greeter-v1-b")
    );
    assert_eq!(
        reply.peer_identity,
        "spiffe://strait.local/ns/demo/sa/client"
    );
    let (numbers, zone) = strait_drill::grpc::count_once(remote, 20, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(numbers, (1..=20).collect::<Vec<u32>>());
    assert_eq!(zone, "b");

    // A failover drill under gRPC load: greeter drained in zone a, the client's calls move to
    // zone b with no failed call, within the objective.
    let out = fed.strait(&[
        "drill",
        "failover",
        "--service",
        "greeter",
        "--zone",
        "a",
        "--protocol",
        "grpc",
        "--rate",
        "50",
        "--duration",
        "3s",
        "-o",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["protocol"], "grpc");
    assert_eq!(report["errors"], 0, "{report:#}");
    assert!(
        report["errors_by_status"].as_object().unwrap().is_empty(),
        "{report:#}"
    );
    assert!(report["rto_ms"].as_u64().unwrap() <= 1_000, "{report:#}");
    assert!(
        report["answers_by_zone"]["b"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert!(report["failback_ms"].is_u64(), "{report:#}");
    assert!(out.status.success(), "{report:#}");
}

/// A WebSocket round trip from zone a's client to wsecho pinned to zone b (an HTTP/1.1
/// Upgrade through both sidecars and the gateways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsecho_echoes_across_zones() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let remote: SocketAddr = pinned_vip(&fed, "wsecho", "b", "a").parse().unwrap();
    // `strait services` shows the VIP before the client sidecar has its config and listens
    // on it: wait for the listener, not for a fixed time.
    let trip = strait_test_support::federation::eventually(
        "the wsecho VIP pinned to zone b answers",
        Duration::from_secs(20),
        async || {
            strait_sidecar::demo_ws::round_trip(remote, "over the mesh", Duration::from_secs(10))
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(trip.echoed, "over the mesh");
    assert_eq!(trip.zone.as_deref(), Some("b"));
    assert_eq!(trip.hello["instance"], "wsecho-v1-b");
    assert_eq!(
        trip.hello["peer_identity"],
        "spiffe://strait.local/ns/demo/sa/client"
    );
}
