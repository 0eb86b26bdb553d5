//! Zone control planes as real processes: joining, impersonation, cross-zone discovery, static
//! stability with global down, zone removal and certificate renewal (issue: "Zone control
//! plane").

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::BIN;
use common::sidecar::{self, Discovery};
use strait_proto as pb;
use strait_test_support::federation::{Federation, eventually, read};
use strait_test_support::http;
use strait_test_support::metrics::sample;
use strait_test_support::net::free_port;
use strait_trust::tls::{AllowAny, CredentialStore, TrustStore};

/// Runs `strait zone run` for `zone` with `token` (in a fresh data dir) and returns its exit
/// status and stderr; a join failure must end the process quickly.
fn run_zone_with_token(fed: &Federation, zone: &str, token: &str) -> (bool, String) {
    let dir = fed.dir.path().join(format!("try-{zone}-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let ports = [free_port(), free_port()];
    let mut child = Command::new(BIN)
        .args([
            "zone",
            "run",
            "--name",
            zone,
            "--global",
            &fed.address("global-1", "api"),
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &ports[0], "--admin-listen", &ports[1]])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.success(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("zone {zone} with a bad token did not exit within 20s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn zone_create(fed: &Federation, zone: &str, extra: &[&str]) -> String {
    let mut args = vec!["zone", "create", zone];
    args.extend(extra);
    let out = fed.strait(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_tokens_stop_the_zone_with_a_message_that_says_which() {
    let fed = Federation::up(BIN, &["--zones", "none"]);

    // Reused: a good token works once...
    let token = zone_create(&fed, "a", &[]);
    let (ok, stderr) = run_zone_with_token_ready(&fed, "a", &token).await;
    assert!(ok, "first join must succeed: {stderr}");
    // ...and is refused the second time.
    let (ok, stderr) = run_zone_with_token(&fed, "a", &token);
    assert!(!ok);
    assert!(
        stderr.contains("join token was already used at"),
        "{stderr}"
    );

    // Expired.
    let token = zone_create(&fed, "c", &["--token-ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (ok, stderr) = run_zone_with_token(&fed, "c", &token);
    assert!(!ok);
    assert!(stderr.contains("join token expired at"), "{stderr}");

    // Another zone's token.
    let token_d = zone_create(&fed, "d", &[]);
    zone_create(&fed, "e", &[]);
    let (ok, stderr) = run_zone_with_token(&fed, "e", &token_d);
    assert!(!ok);
    assert!(
        stderr.contains("join token is for zone \"d\", not zone \"e\""),
        "{stderr}"
    );

    // Another federation's token: its root pin does not match this global's certificate.
    let other = Federation::up(BIN, &["--zones", "none"]);
    let foreign = zone_create(&other, "f", &[]);
    zone_create(&fed, "f", &[]);
    let (ok, stderr) = run_zone_with_token(&fed, "f", &foreign);
    assert!(!ok);
    assert!(
        stderr.contains("does not match the root pin in the token"),
        "{stderr}"
    );

    // Not a token at all.
    let (ok, stderr) = run_zone_with_token(&fed, "e", "not-a-token");
    assert!(!ok);
    assert!(stderr.contains("not a Strait join token"), "{stderr}");
}

/// Like [`run_zone_with_token`] for a good token: waits for the zone to be ready, then stops it.
async fn run_zone_with_token_ready(fed: &Federation, zone: &str, token: &str) -> (bool, String) {
    let dir = fed.dir.path().join(format!("good-{zone}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), token).unwrap();
    let (api, admin) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "zone",
            "run",
            "--name",
            zone,
            "--global",
            &fed.address("global-1", "api"),
        ])
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", &api, "--admin-listen", &admin])
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if http::get(&admin, "/ready").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    let _ = child.kill();
    let _ = child.wait();
    (
        ready,
        std::fs::read_to_string(dir.join("log")).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_cannot_speak_for_another_zone() {
    let fed = Federation::up(BIN, &["--zones", "a,b"]);
    // Zone b's real credentials, from its data directory.
    let channel = channel_as_zone(&fed, "b");
    let hello = pb::ZoneMessage {
        msg: Some(pb::zone_message::Msg::Hello(pb::SyncHello {
            zone: "a".into(),
            ..Default::default()
        })),
    };
    let result = pb::zone_sync_client::ZoneSyncClient::new(channel)
        .sync(tokio_stream::iter([hello]))
        .await;
    let Err(err) = result else {
        panic!("zone b's credentials must not open zone a's stream")
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("the credentials of zone b cannot speak for zone a"),
        "{}",
        err.message()
    );
}

/// A channel to global-1 with zone `zone`'s real control plane credentials (from its data
/// directory), as the zone itself or a second replica of it would connect.
fn channel_as_zone(fed: &Federation, zone: &str) -> tonic::transport::Channel {
    let tls_dir = fed.dir.path().join(format!("zone-{zone}/tls"));
    let creds = CredentialStore::from_pem(
        &read(&tls_dir.join("cp.crt")),
        &read(&tls_dir.join("cp.key")),
    )
    .unwrap();
    let trust = TrustStore::new(sidecar::bundle(fed));
    let tls =
        strait_trust::tls::client_config(&creds, &trust, Arc::new(AllowAny), vec![b"h2".to_vec()])
            .unwrap();
    strait_proto::transport::channel(
        &fed.address("global-1", "api"),
        Arc::new(tls),
        Duration::from_secs(2),
    )
}

/// A standby replica of a zone's control plane (Kubernetes mode, several replicas) opens an
/// observer stream: it gets the federation, but cannot report inventory or renew, and its
/// coming and going does not change the zone's connection state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_stream_gets_snapshots_but_cannot_speak_for_its_zone() {
    use futures::StreamExt;
    let fed = Federation::up(BIN, &["--zones", "a"]);
    fed.wait_ready("zone-a", Duration::from_secs(20)).await;
    eventually("zone a connected", Duration::from_secs(10), async || {
        fed.zone_connected("a").then_some(())
    })
    .await;
    // Zone a's real credentials: a second replica would share them.
    let channel = channel_as_zone(&fed, "a");
    let msg = |m| pb::ZoneMessage { msg: Some(m) };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(msg(pb::zone_message::Msg::Hello(pb::SyncHello {
        zone: "a".into(),
        role: pb::SyncRole::Observer.into(),
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut inbound = pb::zone_sync_client::ZoneSyncClient::new(channel)
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let next = async |inbound: &mut tonic::Streaming<pb::GlobalMessage>| {
        tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .expect("global answers within 10 s")
            .expect("stream open")
            .expect("no error")
            .msg
            .expect("a message")
    };
    let pb::global_message::Msg::Snapshot(snapshot) = next(&mut inbound).await else {
        panic!("an observer's first message is the federation snapshot")
    };
    assert!(snapshot.version > 0);
    assert!(snapshot.zones.iter().any(|z| z.name == "a"));
    // Later snapshots (the federation keeps changing: zone a reports, connects) may come
    // between a request and its answer; an observer gets them all.
    let answer = async |inbound: &mut tonic::Streaming<pb::GlobalMessage>| loop {
        match next(inbound).await {
            pb::global_message::Msg::Snapshot(_) => continue,
            other => break other,
        }
    };

    // An empty inventory from an observer would wipe zone a's services: refused.
    tx.send(msg(pb::zone_message::Msg::Inventory(pb::InventoryReport {
        version: u64::MAX / 2,
        ..Default::default()
    })))
    .await
    .unwrap();
    let pb::global_message::Msg::InventoryAck(ack) = answer(&mut inbound).await else {
        panic!("an inventory report is answered")
    };
    let error = ack.error.expect("an observer's report is refused");
    assert_eq!(error.code(), pb::ErrorCode::Denied);
    assert!(error.message.contains("observer"), "{}", error.message);
    tx.send(msg(pb::zone_message::Msg::Renew(
        pb::RenewRequest::default(),
    )))
    .await
    .unwrap();
    let pb::global_message::Msg::Renew(reply) = answer(&mut inbound).await else {
        panic!("a renewal request is answered")
    };
    assert_eq!(reply.error.expect("refused").code(), pb::ErrorCode::Denied);

    // Closing the observer stream leaves the primary's connection as it was.
    drop(tx);
    drop(inbound);
    let mut stays = 0;
    eventually(
        "zone a stays connected",
        Duration::from_secs(10),
        async || {
            assert!(
                fed.zone_connected("a"),
                "an observer's disconnect marked zone a disconnected"
            );
            stays += 1;
            (stays >= 5).then_some(())
        },
    )
    .await;
    let (status, metrics) = http::get(&fed.address("zone-a", "admin"), "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.lines().any(|l| l == "strait_zone_sync_connected 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_in_zone_a_reaches_zone_b_sidecars_and_strait_services() {
    let fed = Federation::up(BIN, &["--zones", "a,b"]);
    let client_b = sidecar::bootstrap(&fed, "b", "demo", "client")
        .await
        .unwrap();
    let mut watcher = Discovery::connect(
        &fed,
        "b",
        &client_b,
        "client",
        "client-b",
        "127.0.0.1:1",
        &[],
    )
    .await;
    let echo_a = sidecar::bootstrap(&fed, "a", "demo", "echo").await.unwrap();
    assert_eq!(
        echo_a.id.to_string(),
        "spiffe://strait.local/ns/demo/sa/echo"
    );

    let registered = Instant::now();
    let _echo = Discovery::connect(
        &fed,
        "a",
        &echo_a,
        "echo",
        "echo-v1-a",
        "127.0.0.1:2",
        &[("version", "v1")],
    )
    .await;
    let config = watcher
        .wait_for(
            "echo from zone a in zone b's config",
            Duration::from_secs(10),
            |c| sidecar::zones_serving(c, "demo", "echo") == vec!["a".to_owned()],
        )
        .await;
    let delay = registered.elapsed();
    eprintln!("a service registered in zone a reached a zone-b sidecar in {delay:?}");
    let echo = sidecar::service(&config, "demo", "echo").unwrap();
    assert!(
        echo.vip.starts_with("127.241."),
        "zone b's VIP range: {}",
        echo.vip
    );

    let out = fed.strait(&["services", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let echo = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "echo")
        .expect("echo listed");
    assert_eq!(echo["namespace"], "demo");
    assert_eq!(echo["zones"][0]["zone"], "a");
    assert_eq!(echo["zones"][0]["healthy"], 1);
    assert!(
        echo["vips"]["a"].as_str().unwrap().starts_with("127.240."),
        "{echo}"
    );
    assert!(
        echo["vips"]["b"].as_str().unwrap().starts_with("127.241."),
        "{echo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_keep_serving_from_persisted_state_while_global_is_down() {
    let mut fed = Federation::up(BIN, &["--zones", "a,b"]);
    let echo_a = sidecar::bootstrap(&fed, "a", "demo", "echo").await.unwrap();
    let _echo =
        Discovery::connect(&fed, "a", &echo_a, "echo", "echo-v1-a", "127.0.0.1:2", &[]).await;
    let watcher_id = sidecar::bootstrap(&fed, "b", "demo", "watcher")
        .await
        .unwrap();
    let mut watcher = Discovery::connect(
        &fed,
        "b",
        &watcher_id,
        "watcher",
        "watcher-b",
        "127.0.0.1:3",
        &[],
    )
    .await;
    let has_echo =
        |c: &pb::SidecarConfig| sidecar::zones_serving(c, "demo", "echo") == vec!["a".to_owned()];
    watcher
        .wait_for("echo in zone b", Duration::from_secs(10), has_echo)
        .await;
    // A token made while global is up: zones verify it offline.
    let out = fed.strait(&[
        "token",
        "workload",
        "--zone",
        "b",
        "--namespace",
        "demo",
        "--service",
        "late",
    ]);
    let late_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    fed.kill("global-1");
    // Zones stay ready, checked once each has noticed that global is gone...
    for zone in ["zone-a", "zone-b"] {
        let admin = fed.address(zone, "admin");
        eventually(
            &format!("{zone} disconnected from global"),
            Duration::from_secs(10),
            async || {
                let (_, metrics) = http::get(&admin, "/metrics").await;
                (sample(&metrics, "strait_zone_sync_connected", &[]) == Some(0.0)).then_some(())
            },
        )
        .await;
        let (status, body) = http::get(&admin, "/ready").await;
        assert_eq!(status, 200, "{zone} not ready with global down: {body}");
    }
    // ...and a newly connecting sidecar is served from the persisted state.
    let late = sidecar::sign(&fed, "b", "demo", "late", Some(late_token.clone()), None)
        .await
        .unwrap();
    let mut late_stream =
        Discovery::connect(&fed, "b", &late, "late", "late-b", "127.0.0.1:4", &[]).await;
    late_stream
        .wait_for(
            "echo for a sidecar that connected while global was down",
            Duration::from_secs(10),
            has_echo,
        )
        .await;
    late_stream.close();

    // Zone b restarts while global is down: still ready, still serving.
    watcher.close();
    fed.kill("zone-b");
    fed.restart("zone-b");
    fed.wait_ready("zone-b", Duration::from_secs(20)).await;
    let again = sidecar::sign(&fed, "b", "demo", "late", Some(late_token), None)
        .await
        .unwrap();
    let mut after_restart =
        Discovery::connect(&fed, "b", &again, "late", "late-b2", "127.0.0.1:5", &[]).await;
    after_restart
        .wait_for(
            "echo after zone b restarted without global",
            Duration::from_secs(10),
            has_echo,
        )
        .await;

    // Global returns; through the resync the watcher never sees echo disappear.
    fed.restart("global-1");
    fed.wait_ready("global-1", Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seen = 0;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), after_restart.configs.recv()).await {
            Ok(Some(config)) => {
                seen += 1;
                assert!(
                    has_echo(&config),
                    "zone a's echo vanished during the resync: {config:?}"
                );
            }
            Ok(None) => panic!("discovery stream ended during the resync"),
            Err(_) => {}
        }
    }
    eprintln!("{seen} configs pushed during the resync, all with echo");
    let status = eventually("zones reconnected", Duration::from_secs(20), async || {
        let out = fed.strait(&["status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["zones"]
            .as_array()?
            .iter()
            .all(|z| z["connected"] == true)
            .then_some(v)
    })
    .await;
    assert_eq!(status["zones"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_zone_is_denied_everywhere_and_not_renewed() {
    let fed = Federation::up(BIN, &["--zones", "a,b,c"]);
    let watcher_id = sidecar::bootstrap(&fed, "b", "demo", "watcher")
        .await
        .unwrap();
    let mut watcher = Discovery::connect(
        &fed,
        "b",
        &watcher_id,
        "watcher",
        "watcher-b",
        "127.0.0.1:3",
        &[],
    )
    .await;
    let out = fed.strait(&["zone", "remove", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    watcher
        .wait_for(
            "zone c on zone b's deny list",
            Duration::from_secs(10),
            |c| c.deny_list.contains(&"c".to_owned()),
        )
        .await;

    // Zone c's own credentials no longer open a sync stream, so nothing of it is renewed.
    let channel = channel_as_zone(&fed, "c");
    let hello = pb::ZoneMessage {
        msg: Some(pb::zone_message::Msg::Hello(pb::SyncHello {
            zone: "c".into(),
            ..Default::default()
        })),
    };
    let renew = pb::ZoneMessage {
        msg: Some(pb::zone_message::Msg::Renew(pb::RenewRequest::default())),
    };
    let err = pb::zone_sync_client::ZoneSyncClient::new(channel)
        .sync(tokio_stream::iter([hello, renew]))
        .await;
    let Err(err) = err else {
        panic!("a removed zone must not open a sync stream")
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("zone c was removed"),
        "{}",
        err.message()
    );
    eventually("zone c disconnected", Duration::from_secs(10), async || {
        let (_, m) = http::get(&fed.address("zone-c", "admin"), "/metrics").await;
        m.lines()
            .any(|l| l == "strait_zone_sync_connected 0")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_renew_before_expiry_without_interruption() {
    let fed = Federation::up(
        BIN,
        &[
            "--zones",
            "a",
            "--zone-ca-validity",
            "24s",
            "--zone-cp-validity",
            "24s",
            "--workload-cert-validity",
            "12s",
            "--renew-check-interval",
            "1s",
        ],
    );
    let admin = fed.address("zone-a", "admin");
    let (_, m) = http::get(&admin, "/metrics").await;
    let first_ca_expiry =
        sample(&m, "strait_zone_ca_cert_expiry_timestamp_seconds", &[]).expect("CA expiry gauge");

    // A workload whose certificate lives 12 s, renewed at 2/3 over mTLS with the current one.
    let mut workload = sidecar::bootstrap(&fed, "a", "demo", "echo").await.unwrap();
    let mut stream =
        Discovery::connect(&fed, "a", &workload, "echo", "echo-a", "127.0.0.1:2", &[]).await;
    stream
        .wait_for("first config", Duration::from_secs(5), |_| true)
        .await;
    let started = Instant::now();
    let mut renewals = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let info = workload.creds.cert_info();
        let renew_at = strait_trust::rotation::renew_at(info.not_before, info.not_after);
        if std::time::SystemTime::now() >= renew_at {
            // The current certificate is still valid: the zone renews it without a token.
            workload = sidecar::sign(&fed, "a", "demo", "echo", None, Some(&workload.creds))
                .await
                .unwrap();
            renewals += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        renewals >= 2,
        "the 12 s workload certificate renewed {renewals} times in 30 s"
    );

    // The zone renewed its 24 s intermediate (at ~16 s) and kept its stream to global up.
    let (_, m) = http::get(&admin, "/metrics").await;
    let ca_expiry = sample(&m, "strait_zone_ca_cert_expiry_timestamp_seconds", &[]).unwrap();
    assert!(
        ca_expiry > first_ca_expiry + 10.0,
        "intermediate not renewed: {first_ca_expiry} -> {ca_expiry}"
    );
    assert_eq!(sample(&m, "strait_zone_sync_connected", &[]), Some(1.0));
    // The original intermediate has expired by now; the zone still signs (with the renewed one).
    let fresh = sidecar::bootstrap(&fed, "a", "demo", "fresh")
        .await
        .unwrap();
    assert!(fresh.creds.cert_info().not_after > std::time::SystemTime::now());
    // And the discovery stream opened before any renewal still carries new configs.
    let policy = fed.dir.path().join("timeout.yaml");
    std::fs::write(
        &policy,
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {name: echo, namespace: demo}\n\
         spec: {targetRef: {service: echo}, request: 3s}\n",
    )
    .unwrap();
    let out = fed.strait(&["apply", "-f", policy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stream
        .wait_for(
            "the new policy on the long-lived stream",
            Duration::from_secs(10),
            |c| {
                sidecar::service(c, "demo", "echo")
                    .and_then(|s| s.policy.as_ref())
                    .and_then(|p| p.timeout.as_ref())
                    .is_some_and(|t| t.request_ms == 3_000)
            },
        )
        .await;
}
