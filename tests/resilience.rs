//! The resilience suite (issue: "`strait demo`, failover drills, and the resilience suite"):
//! real processes, steady fixed-rate traffic through zone a's client, something taken away,
//! and the failed requests counted — the answer must be zero.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::BIN;
use common::demo::{get, vip};
use strait_drill::load::{Load, LoadConfig};
use strait_drill::timeline::{Sample, SampleResult};
use strait_test_support::federation::{self, Federation, eventually};

/// Waits until `addr` answers 200 (cross-zone paths take a moment after `strait up`).
async fn answering(addr: &str) {
    eventually("a 200 answer", Duration::from_secs(30), async || {
        (get(addr, "/", &[]).await.0 == 200).then_some(())
    })
    .await;
}

/// Waits until `load` has completed `n` more requests (answered or failed): the traffic a step
/// of a test must see, counted rather than timed.
async fn until_completed(load: &Load, n: u64) {
    let target = load.progress().sent + n;
    eventually(
        &format!("{n} more requests"),
        Duration::from_secs(60),
        async || (load.progress().sent >= target).then_some(()),
    )
    .await;
}

fn load(addr: &str, rate: u32) -> Load {
    let target: SocketAddr = addr.parse().unwrap();
    let mut config = LoadConfig::new(target, rate);
    // A request may wait out a dead peer's detection and a retry elsewhere; what matters is
    // that it succeeds.
    config.timeout = Duration::from_secs(15);
    Load::start(config)
}

/// Failures and answers by zone.
fn tally(samples: &[Sample]) -> (Vec<String>, BTreeMap<String, u32>) {
    let mut failures = Vec::new();
    let mut zones = BTreeMap::new();
    for s in samples {
        match &s.result {
            SampleResult::Answered { zone } => *zones.entry(zone.clone()).or_default() += 1,
            SampleResult::Failed { reason } => {
                failures.push(format!("at {:?}: {reason}", s.sent));
            }
        }
    }
    (failures, zones)
}

fn drill(fed: &Federation, mode: &str) -> serde_json::Value {
    let out = fed.strait(&[
        "drill",
        "failover",
        "--service",
        "echo",
        "--zone",
        "a",
        "--mode",
        mode,
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
            "no JSON report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!(
        "{mode} drill: requests {} errors {} detection {} rto {} failback {} answers {}",
        report["requests"],
        report["errors"],
        report["detection_ms"],
        report["rto_ms"],
        report["failback_ms"],
        report["answers_by_zone"]
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_kill_drills_move_traffic_within_a_second_without_errors() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    answering(&vip(&fed, "ledger", "a")).await;
    for mode in ["drain", "kill"] {
        let report = drill(&fed, mode);
        assert_eq!(report["errors"], 0, "{report}");
        let rto = report["rto_ms"].as_u64().expect("an RTO");
        assert!(rto <= 1_000, "rto_ms {rto} in {mode} mode");
        assert!(report["failback_ms"].is_u64(), "no failback: {report}");
        assert!(report["answers_by_zone"]["b"].as_u64().unwrap_or(0) > 0);
        assert_eq!(report["objectives_met"], true);
        assert_eq!(report["aborted"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_global_control_plane_fails_no_request() {
    let fed = Federation::up(BIN, &["--global-nodes", "3", "--zones", "a,b", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    let ledger = vip(&fed, "ledger", "a");
    answering(&ledger).await;
    let local = load(&echo, 50);
    let remote = load(&ledger, 50);
    until_completed(&remote, 50).await;

    let leader_id = eventually("a leader", Duration::from_secs(10), async || {
        federation::leader(&fed.client()).await
    })
    .await;
    let leader = fed.global_nodes()[&leader_id].clone();
    fed.kill(&leader);
    eventually("a new leader", Duration::from_secs(15), async || {
        federation::leader(&fed.client())
            .await
            .filter(|&id| id != leader_id)
    })
    .await;
    until_completed(&remote, 50).await;
    for node in ["global-1", "global-2", "global-3"] {
        if node != leader {
            fed.kill(node);
        }
    }
    // Three seconds of traffic with no global node at all.
    until_completed(&remote, 150).await;

    for (what, load) in [("echo", local), ("ledger", remote)] {
        let samples = load.stop().await;
        let (failures, zones) = tally(&samples);
        eprintln!(
            "{what}: {} requests while global went away: {zones:?}",
            samples.len()
        );
        assert!(failures.is_empty(), "{what}: {failures:?}");
        assert!(
            samples.len() > 200,
            "{what}: too few requests ({})",
            samples.len()
        );
    }
    // The zones keep serving, and stay ready, with no global at all.
    assert_eq!(get(&echo, "/", &[]).await.0, 200);
    assert_eq!(get(&ledger, "/", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_control_plane_crash_and_restart_fails_no_request() {
    let mut fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    let ledger = vip(&fed, "ledger", "a");
    answering(&ledger).await;
    let local = load(&echo, 50);
    let remote = load(&ledger, 50);
    until_completed(&remote, 50).await;
    fed.kill("zone-a");
    until_completed(&remote, 100).await;
    fed.restart("zone-a");
    fed.wait_ready("zone-a", Duration::from_secs(30)).await;
    // Long enough for the restarted zone to push its sidecars a config again.
    until_completed(&remote, 150).await;
    for (what, load) in [("echo", local), ("ledger", remote)] {
        let samples = load.stop().await;
        let (failures, zones) = tally(&samples);
        eprintln!(
            "{what}: {} requests across zone a's restart: {zones:?}",
            samples.len()
        );
        assert!(failures.is_empty(), "{what}: {failures:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_two_gateway_replicas_fails_no_request() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo", "--gateways", "2"]);
    let ledger = vip(&fed, "ledger", "a");
    answering(&ledger).await;
    let remote = load(&ledger, 50);
    until_completed(&remote, 50).await;
    fed.kill("gateway-a-1");
    until_completed(&remote, 100).await;
    fed.kill("gateway-b-2");
    // Past the QUIC idle timeout (2.5 s) that notices the dead peer, at 50/s.
    until_completed(&remote, 200).await;
    let samples = remote.stop().await;
    let (failures, zones) = tally(&samples);
    eprintln!(
        "ledger: {} requests, a gateway lost on each side: {zones:?}",
        samples.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_zone_and_a_lost_zone_leave_traffic_on_the_third() {
    // a and b share a region: with echo drained in a, b serves; when all of b dies, c does.
    let fed = Federation::up(
        BIN,
        &["--zones", "a,b,c", "--regions", "a=r1,b=r1,c=r2", "--demo"],
    );
    let echo = vip(&fed, "echo", "a");
    answering(&vip(&fed, "ledger", "a")).await;
    let out = fed.strait(&["drain", "--service", "echo", "--zone", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "echo answered from zone b",
        Duration::from_secs(10),
        async || {
            let (_, body) = get(&echo, "/", &[]).await;
            body.contains("\"zone\":\"b\"").then_some(())
        },
    )
    .await;

    let traffic = load(&echo, 50);
    until_completed(&traffic, 50).await;
    let zone_b: Vec<String> = fed
        .processes()
        .iter()
        .filter(|p| p.zone.as_deref() == Some("b"))
        .map(|p| p.name.clone())
        .collect();
    let killed_at = traffic.elapsed();
    for name in &zone_b {
        fed.kill(name);
    }
    // Five seconds of traffic at 50/s: the last answer from zone b must be in the first three.
    until_completed(&traffic, 250).await;
    let samples = traffic.stop().await;
    let (failures, zones) = tally(&samples);
    eprintln!(
        "echo: {} requests, all of zone b killed: {zones:?}",
        samples.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    let last_from_b = samples
        .iter()
        .filter(|s| matches!(&s.result, SampleResult::Answered { zone } if zone == "b"))
        .map(|s| s.sent)
        .max()
        .unwrap_or_default();
    let moved_after = last_from_b.saturating_sub(killed_at);
    eprintln!("last answer from zone b {moved_after:?} after the kill");
    assert!(
        moved_after <= Duration::from_secs(3),
        "zone b still answered {moved_after:?} after it was killed"
    );
    assert!(zones.get("c").copied().unwrap_or(0) > 0, "{zones:?}");
    assert_eq!(zones.get("a"), None, "echo is drained in zone a: {zones:?}");
}
