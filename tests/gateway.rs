//! Cross-zone traffic as real processes: `strait up --demo` with east-west gateways, calls from
//! one zone's client sidecar answered in another zone (issue: "East-west gateway").

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::BIN;
use common::demo::{get, json, vip};
use strait_test_support::federation::{Federation, eventually};
use strait_test_support::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: &str = "spiffe://strait.local/ns/demo/sa/client";

/// Waits until `service` answers 200 through `addr` (the zone's view of the other zones, and the
/// gateways' view of each other, take a moment after `strait up`).
async fn wait_answering(addr: &str) -> serde_json::Value {
    eventually("a 200 answer", Duration::from_secs(30), async || {
        let (status, body) = get(addr, "/", &[]).await;
        (status == 200).then(|| json(&body))
    })
    .await
}

/// HTTP/1.1 sent only after a pause, so the sidecar's sniffer has already taken the connection
/// as raw TCP (a server-speaks-first protocol would look the same): the bytes cross the zones
/// through the TCP path of both sidecars and both gateways.
async fn raw_tcp_get(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Silent past the sniff timeout (300 ms) on purpose: that is what makes it TCP.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_zones_with_the_callers_identity_end_to_end() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    // ledger runs only in zone b; zone a's client reaches it through both gateways.
    let ledger = vip(&fed, "ledger", "a");
    let answer = wait_answering(&ledger).await;
    assert_eq!(answer["zone"], "b", "{answer}");
    assert_eq!(answer["service"], "ledger");
    assert_eq!(
        answer["peer_identity"], CLIENT,
        "the destination sidecar must have authenticated zone a's client sidecar itself"
    );

    let reply = raw_tcp_get(&ledger).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"zone\":\"b\""), "{reply}");
    // Over TCP nobody adds the identity header: the app sees the raw request.
    assert!(reply.contains("\"service\":\"ledger\""), "{reply}");

    // The gateways counted the tunnels on both sides.
    let metrics = http::get(&fed.address("gateway-b-1", "admin"), "/metrics")
        .await
        .1;
    assert!(metrics.contains("strait_gateway_"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_every_local_instance_fails_over_to_the_next_zone_and_back() {
    let mut fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    assert_eq!(wait_answering(&echo).await["zone"], "a");
    // The path to zone b must work before zone a's instances go.
    wait_answering(&vip(&fed, "ledger", "a")).await;

    let victims = [
        "echo-v1-a",
        "echo-v1-a-sidecar",
        "echo-v2-a",
        "echo-v2-a-sidecar",
    ];
    let mut zones: BTreeMap<String, u32> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut last_zones = Vec::new();
    for i in 0..500 {
        if i == 100 {
            for victim in victims {
                fed.kill(victim);
            }
        }
        let (status, body) = get(&echo, "/", &[]).await;
        if status == 200 {
            let zone = json(&body)["zone"].as_str().unwrap().to_owned();
            *zones.entry(zone.clone()).or_default() += 1;
            if i >= 450 {
                last_zones.push(zone);
            }
        } else {
            failures.push((i, status, body));
        }
    }
    eprintln!("500 sequential requests, both zone-a instances killed at 100: {zones:?}");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        last_zones.iter().all(|z| z == "b"),
        "the last answers must come from zone b: {last_zones:?}"
    );

    for victim in victims {
        fed.restart(victim);
    }
    for victim in ["echo-v1-a-sidecar", "echo-v2-a-sidecar"] {
        fed.wait_ready(victim, Duration::from_secs(30)).await;
    }
    let back = Instant::now();
    eventually(
        "traffic back in zone a",
        Duration::from_secs(30),
        async || {
            let (status, body) = get(&echo, "/", &[]).await;
            assert_eq!(status, 200, "{body}");
            (json(&body)["zone"] == "a").then_some(())
        },
    )
    .await;
    eprintln!(
        "traffic back in zone a {:?} after the restart",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_replicas_cover_each_other_and_a_zone_without_one_fails_fast() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo", "--gateways", "2"]);
    let ledger = vip(&fed, "ledger", "a");
    wait_answering(&ledger).await;

    // One of zone b's two gateways dies mid-stream: no request is lost.
    let mut failures = Vec::new();
    for i in 0..300 {
        if i == 100 {
            fed.kill("gateway-b-1");
        }
        let (status, body) = get(&ledger, "/", &[]).await;
        if status != 200 {
            failures.push((i, status, body));
        }
    }
    assert!(
        failures.is_empty(),
        "requests failed with one of two gateways left: {failures:?}"
    );

    // The other one dies too: zone b is out of reach, and callers hear so at once.
    fed.kill("gateway-b-2");
    // The first calls may still wait for the dead peer to be noticed (under 3 s).
    eventually(
        "zone b refused as unreachable",
        Duration::from_secs(10),
        async || {
            let (status, body) = get(&ledger, "/", &[]).await;
            (status == 503 && body.contains("zone-unreachable")).then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        let started = Instant::now();
        let (status, body) = get(&ledger, "/", &[]).await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("zone-unreachable"),
            "the error must say why: {body}"
        );
        assert!(
            took < Duration::from_millis(500),
            "a call to an unreachable zone took {took:?}"
        );
    }
}
