//! The zone's join and sync client against a fake of global's ZoneSync service, in-process on
//! loopback over Strait's real mutual TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{Global, Session};
use strait_proto as pb;
use strait_proto::zone_message::Msg;
use strait_test_support::pki::TD;
use strait_test_support::wait::{PATIENCE, eventually, within};
use strait_trust::SpiffeId;
use strait_zone::config::ZoneConfig;
use strait_zone::credentials::{CredentialsError, ZoneCredentials};
use strait_zone::federation::FederationView;
use strait_zone::inventory::{Instance, LocalInventory, ServiceKey};
use strait_zone::store::ZoneStore;
use strait_zone::sync::{SyncClient, SyncConfig, SyncMetrics};
use tokio::sync::watch;

fn zone_config(
    name: &str,
    global: &[String],
    dir: &Path,
    token: Option<std::path::PathBuf>,
) -> ZoneConfig {
    let mut c = ZoneConfig::new(
        name,
        global.to_vec(),
        dir.to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    c.token_file = token;
    c
}

async fn join(g: &Global, dir: &Path) -> ZoneCredentials {
    let token = g.write_token(dir.parent().unwrap());
    ZoneCredentials::join(&zone_config("a", &[g.addr.to_string()], dir, Some(token)))
        .await
        .unwrap()
}

fn inventory(services: &[(&str, usize)]) -> Arc<LocalInventory> {
    let mut inv = LocalInventory::default();
    for (name, count) in services {
        let key = ServiceKey {
            namespace: "demo".into(),
            name: (*name).into(),
        };
        let entry = inv.instances.entry(key.clone()).or_default();
        for i in 0..*count {
            entry.insert(
                format!("{name}-{i}"),
                Instance {
                    service: key.clone(),
                    instance: format!("{name}-{i}"),
                    ports: vec![],
                    labels: BTreeMap::new(),
                    locality: pb::Locality {
                        region: "r1".into(),
                        zone: "a".into(),
                        subzone: String::new(),
                    },
                    inbound_address: "127.0.0.1:1".into(),
                    identity: format!("spiffe://{TD}/ns/demo/sa/{name}"),
                    healthy: true,
                },
            );
        }
    }
    Arc::new(inv)
}

/// A running sync client and the handles a test drives it with.
struct Running {
    federation: watch::Receiver<Arc<FederationView>>,
    inventory: watch::Sender<Arc<LocalInventory>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        within("the sync client to stop", PATIENCE, self.task)
            .await
            .unwrap();
    }
}

fn start_sync(
    g: &Global,
    creds: &ZoneCredentials,
    store: &ZoneStore,
    inv: Arc<LocalInventory>,
    grace: Duration,
    renew_check: Duration,
) -> Running {
    start_sync_as(g, creds, store, inv, grace, renew_check, None)
}

/// [`start_sync`] for one of several replicas: it speaks for the zone while `primary` is true.
fn start_sync_as(
    g: &Global,
    creds: &ZoneCredentials,
    store: &ZoneStore,
    inv: Arc<LocalInventory>,
    grace: Duration,
    renew_check: Duration,
    primary: Option<watch::Receiver<bool>>,
) -> Running {
    let persisted = store
        .load_federation()
        .unwrap()
        .map(FederationView::new)
        .unwrap_or_default();
    let (fed_tx, fed_rx) = watch::channel(Arc::new(persisted));
    let (inv_tx, inv_rx) = watch::channel(inv);
    let config = SyncConfig {
        zone: "a".into(),
        region: "r1".into(),
        vip_cidr: "127.240.0.0/16".into(),
        global: vec![g.addr.to_string()],
        registration_grace: grace,
        renew_check_interval: renew_check,
    };
    let metrics = SyncMetrics::new(&prometheus::Registry::new()).unwrap();
    let client = SyncClient::new(
        config,
        creds.clone(),
        store.clone(),
        fed_tx,
        inv_rx,
        metrics,
    )
    .unwrap();
    let client = match primary {
        Some(primary) => client.with_primary(primary),
        None => client,
    };
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(client.run(async move {
        let _ = stop_rx.await;
    }));
    Running {
        federation: fed_rx,
        inventory: inv_tx,
        stop,
        task,
    }
}

async fn next_report(s: &mut Session) -> pb::InventoryReport {
    s.recv_matching(|m| match m {
        Msg::Inventory(r) => Some(r),
        _ => None,
    })
    .await
}

async fn next_ack(s: &mut Session) -> pb::SnapshotAck {
    s.recv_matching(|m| match m {
        Msg::Ack(a) => Some(a),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn join_persists_credentials_and_later_starts_need_no_token() {
    let g = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let creds = join(&g, &dir).await;
    assert_eq!(creds.identity(), SpiffeId::zone_cp(TD, "a").unwrap());
    assert_eq!(creds.ca.current().zone(), "a");

    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("tls")), 0o700);
    assert_eq!(mode(&dir.join("tls/ca.key")), 0o600);
    assert_eq!(mode(&dir.join("tls/cp.key")), 0o600);

    // A later start: no token, same credentials.
    let loaded = ZoneCredentials::load(&dir, "a")
        .unwrap()
        .expect("credentials persisted");
    assert_eq!(
        loaded.ca.current().not_after(),
        creds.ca.current().not_after()
    );
    assert_eq!(loaded.identity(), creds.identity());
    // The CA can sign a workload (the chain it hands out ends with the root).
    let key = strait_trust::KeyPair::generate().unwrap();
    let wl = SpiffeId::workload(TD, "demo", "echo").unwrap();
    let issued = loaded
        .ca
        .current()
        .sign_leaf(&key.leaf_csr(&wl).unwrap(), &wl, Duration::from_secs(600))
        .unwrap();
    assert_eq!(issued.chain.last(), Some(g.root.cert_der()));

    // Another zone's name on this data directory is refused with both names.
    let err = ZoneCredentials::load(&dir, "b").unwrap_err();
    assert!(matches!(err, CredentialsError::WrongZone { .. }), "{err}");
    assert!(err.to_string().contains("belongs to zone \"a\""), "{err}");

    // The token is single use: global's reason reaches the user.
    let err = ZoneCredentials::join(&zone_config(
        "a",
        &[g.addr.to_string()],
        &tmp.path().join("again"),
        Some(g.write_token(tmp.path())),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, CredentialsError::JoinRefused(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "global refused the join token: join token already used"
    );
}

#[tokio::test]
async fn join_errors_say_which_case() {
    let g = Global::start().await;
    let other = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();

    // The token pins `g`'s root, but the address is another federation's.
    let token = g.write_token(tmp.path());
    let err = ZoneCredentials::join(&zone_config(
        "a",
        &[other.addr.to_string()],
        &tmp.path().join("z1"),
        Some(token.clone()),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, CredentialsError::PinMismatch { .. }), "{err}");
    assert!(err.to_string().contains("matches pin sha256:"), "{err}");
    assert!(
        err.to_string().starts_with(
            "global's certificate does not match the root pin in the token: wrong federation?"
        ),
        "{err}"
    );

    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let err = ZoneCredentials::join(&zone_config(
        "a",
        &[closed],
        &tmp.path().join("z2"),
        Some(token.clone()),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, CredentialsError::Unreachable(_)), "{err}");
    assert!(
        err.to_string().starts_with("no global node reachable"),
        "{err}"
    );

    // First start without a token.
    let err = ZoneCredentials::join(&zone_config(
        "a",
        &[g.addr.to_string()],
        &tmp.path().join("z3"),
        None,
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--token-file"), "{err}");

    // A file that is not a token (never echoed: it might be a secret).
    let bad = tmp.path().join("bad.token");
    std::fs::write(&bad, "hello").unwrap();
    let err = ZoneCredentials::join(&zone_config(
        "a",
        &[g.addr.to_string()],
        &tmp.path().join("z4"),
        Some(bad),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, CredentialsError::Token { .. }), "{err}");

    // A zone the token was not made for: global says why (PermissionDenied from the fake
    // here is "unknown" for a token it never issued).
    let forged = tmp.path().join("forged.token");
    let forged_token = strait_trust::join_token::JoinToken::generate(&g.root.pin()).unwrap();
    std::fs::write(&forged, forged_token.to_string()).unwrap();
    let err = ZoneCredentials::join(&zone_config(
        "a",
        &[g.addr.to_string()],
        &tmp.path().join("z5"),
        Some(forged),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "global refused the join token: join token unknown"
    );
    // Nothing was left behind that a later start would mistake for credentials.
    assert!(
        ZoneCredentials::load(&tmp.path().join("z5"), "a")
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn snapshots_are_persisted_before_the_ack_and_the_stream_resumes_from_them() {
    let mut g = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let creds = join(&g, &dir).await;
    let store = ZoneStore::open(dir.join("state")).unwrap();
    let run = start_sync(
        &g,
        &creds,
        &store,
        inventory(&[]),
        Duration::ZERO,
        Duration::from_secs(60),
    );

    let mut s = g.next_session().await;
    assert_eq!(
        s.peer,
        SpiffeId::zone_cp(TD, "a").unwrap(),
        "the zone connects as its control plane"
    );
    assert_eq!((s.hello.zone.as_str(), s.hello.known_version), ("a", 0));
    assert_eq!(
        (s.hello.vip_cidr.as_str(), s.hello.region.as_str()),
        ("127.240.0.0/16", "r1")
    );

    s.send_snapshot(5, "n5").await;
    let ack = next_ack(&mut s).await;
    assert_eq!(
        (ack.version, ack.nonce.as_str(), ack.error),
        (5, "n5", None)
    );
    // Acked means on disk (and already published).
    assert_eq!(store.load_federation().unwrap().unwrap().version, 5);
    assert_eq!(run.federation.borrow().version(), 5);
    assert_eq!(
        run.federation.borrow().zone("b").map(|z| z.region.as_str()),
        Some("r2")
    );

    // An older snapshot (a lagging global node) is acked and ignored.
    s.send_snapshot(3, "n3").await;
    let ack = next_ack(&mut s).await;
    assert_eq!(ack.version, 3);
    assert_eq!(run.federation.borrow().version(), 5);
    assert_eq!(store.load_federation().unwrap().unwrap().version, 5);

    // Global drops the stream: the zone comes back saying what it has.
    drop(s);
    let mut s = g.next_session().await;
    assert_eq!(s.hello.known_version, 5);
    s.send_snapshot(8, "n8").await;
    assert_eq!(next_ack(&mut s).await.version, 8);
    assert_eq!(run.federation.borrow().version(), 8);

    // While global refuses streams the zone keeps serving v8, and retries.
    g.set_down(true);
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(run.federation.borrow().version(), 8);
    g.set_down(false);
    let s = g.next_session().await;
    assert_eq!(s.hello.known_version, 8);
    run.stop().await;
}

#[tokio::test]
async fn inventory_versions_only_increase_even_across_restarts() {
    let mut g = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let creds = join(&g, &dir).await;
    let store = ZoneStore::open(dir.join("state")).unwrap();
    let run = start_sync(
        &g,
        &creds,
        &store,
        inventory(&[("echo", 1)]),
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let mut s = g.next_session().await;

    let r1 = next_report(&mut s).await;
    assert_eq!(r1.services.len(), 1, "reported on connect");
    assert!(s.hello.inventory_version <= r1.version);
    run.inventory
        .send(inventory(&[("echo", 2), ("web", 1)]))
        .unwrap();
    let r2 = next_report(&mut s).await;
    assert!(r2.version > r1.version);
    assert_eq!(r2.services.len(), 2);
    assert_eq!(r2.services[0].localities[0].total, 2);
    s.send(pb::global_message::Msg::InventoryAck(pb::InventoryAck {
        version: r2.version,
        error: None,
    }))
    .await;

    // Restart: the version continues above the last one, whatever the clock says.
    run.stop().await;
    drop(s);
    let run = start_sync(
        &g,
        &creds,
        &store,
        inventory(&[("echo", 2), ("web", 1)]),
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let mut s = g.next_session().await;
    assert!(s.hello.inventory_version > r2.version);
    let r3 = next_report(&mut s).await;
    assert!(r3.version > r2.version);

    // Global holds a newer version than ours (our store was restored from a backup): the
    // zone jumps past it rather than being ignored for ever.
    let far = r3.version + 1_000_000_000;
    s.send(pb::global_message::Msg::InventoryAck(pb::InventoryAck {
        version: far,
        error: None,
    }))
    .await;
    let r4 = next_report(&mut s).await;
    assert!(r4.version > far);
    run.stop().await;
}

#[tokio::test]
async fn a_standby_replica_observes_until_it_leads_then_speaks_for_the_zone() {
    let mut g = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let creds = join(&g, &dir).await;
    let store = ZoneStore::open(dir.join("state")).unwrap();
    let (primary_tx, primary) = watch::channel(false);
    let mut run = start_sync_as(
        &g,
        &creds,
        &store,
        inventory(&[("echo", 1)]),
        Duration::ZERO,
        Duration::from_secs(60),
        Some(primary),
    );

    // A standby: snapshots come down and are served, nothing goes up but acks.
    let mut s = g.next_session().await;
    assert_eq!(s.hello.role(), pb::SyncRole::Observer);
    s.send_snapshot(3, "n3").await;
    assert_eq!(next_ack(&mut s).await.version, 3);
    eventually("the snapshot served", PATIENCE, async || {
        (run.federation.borrow_and_update().version() == 3).then_some(())
    })
    .await;
    run.inventory.send(inventory(&[("echo", 2)])).unwrap();
    // Silence is the point here: a report would have gone out within the 50 ms debounce.
    let quiet = tokio::time::timeout(Duration::from_millis(300), s.recv()).await;
    assert!(quiet.is_err(), "an observer sent {:?}", quiet.unwrap());

    // It wins the Lease: a new stream as the primary, the inventory reported at once.
    primary_tx.send(true).unwrap();
    let mut s = g.next_session().await;
    assert_eq!(s.hello.role(), pb::SyncRole::Primary);
    assert_eq!(s.hello.known_version, 3, "it resumes from what it served");
    let report = next_report(&mut s).await;
    assert_eq!(report.services[0].localities[0].total, 2);

    // And steps down again.
    primary_tx.send(false).unwrap();
    let s = g.next_session().await;
    assert_eq!(s.hello.role(), pb::SyncRole::Observer);
    run.stop().await;
}

#[tokio::test]
async fn no_smaller_inventory_is_reported_during_the_grace_after_a_restart() {
    let mut g = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let creds = join(&g, &dir).await;
    let store = ZoneStore::open(dir.join("state")).unwrap();
    let run = start_sync(
        &g,
        &creds,
        &store,
        inventory(&[("echo", 2), ("web", 1)]),
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let mut s = g.next_session().await;
    let before = next_report(&mut s).await;
    assert_eq!(before.services.len(), 2);
    run.stop().await;
    drop(s);

    // Restarted; `web`'s sidecar has not reconnected yet.
    let grace = Duration::from_secs(2);
    let started = Instant::now();
    let run = start_sync(
        &g,
        &creds,
        &store,
        inventory(&[("echo", 2)]),
        grace,
        Duration::from_secs(60),
    );
    let mut s = g.next_session().await;
    let early = tokio::time::timeout(Duration::from_millis(800), s.from_zone.recv()).await;
    assert!(early.is_err(), "nothing may be reported yet, got {early:?}");

    // When the grace ends without `web`, the smaller inventory goes out: it is real now.
    let report = next_report(&mut s).await;
    assert!(
        started.elapsed() >= grace,
        "reported after {:?}",
        started.elapsed()
    );
    assert_eq!(report.services.len(), 1);
    assert!(report.version > before.version);

    // After the grace, shrinking is reported at once.
    run.inventory.send(inventory(&[])).unwrap();
    let t = Instant::now();
    assert!(next_report(&mut s).await.services.is_empty());
    assert!(t.elapsed() < Duration::from_secs(1));
    run.stop().await;
}

#[tokio::test]
async fn renewal_swaps_the_ca_without_a_restart_and_persists_it() {
    let mut g = Global::start().await;
    // So short that it is due about 2 s after issuance (2/3 of its life).
    g.set_intermediate_validity(Duration::from_secs(3));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let creds = join(&g, &dir).await;
    let old_expiry = creds.ca.current().not_after();
    let handle = creds.ca.clone();
    let store = ZoneStore::open(dir.join("state")).unwrap();
    let run = start_sync(
        &g,
        &creds,
        &store,
        inventory(&[]),
        Duration::ZERO,
        Duration::from_millis(100),
    );
    let mut s = g.next_session().await;

    let request = s
        .recv_matching(|m| match m {
            Msg::Renew(r) => Some(r),
            _ => None,
        })
        .await;
    assert!(!request.ca_csr_pem.is_empty());
    assert!(
        request.cp_csr_pem.is_empty(),
        "the control plane leaf is not due"
    );

    // Refused first (e.g. the zone is being removed): the zone keeps its CA and asks later.
    s.send(pb::global_message::Msg::Renew(pb::RenewResponse {
        error: Some(pb::ErrorDetail {
            message: "zone a was removed".into(),
            ..Default::default()
        }),
        ..Default::default()
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle.current().not_after(), old_expiry);

    // Reconnecting makes the zone ask again at once (the retry pause is per stream).
    drop(s);
    let mut s = g.next_session().await;
    let request = s
        .recv_matching(|m| match m {
            Msg::Renew(r) => Some(r),
            _ => None,
        })
        .await;
    let reply = g.renew(
        "a",
        &request,
        strait_trust::ca::DEFAULT_INTERMEDIATE_VALIDITY,
    );
    s.send(pb::global_message::Msg::Renew(reply)).await;
    let week = SystemTime::now() + Duration::from_secs(6 * 24 * 3600);
    eventually("the renewed CA in the handle", PATIENCE, async || {
        (handle.current().not_after() > week).then_some(())
    })
    .await;
    // On disk too: a restart keeps the renewed CA.
    let loaded = ZoneCredentials::load(&dir, "a").unwrap().unwrap();
    assert!(loaded.ca.current().not_after() > week);
    assert!(!dir.join("tls/ca.crt.next").exists());
    run.stop().await;
}
