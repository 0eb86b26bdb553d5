//! A whole zone control plane (`node::run`) in-process against a fake global: it joins, serves
//! `/ready` once it has a federation view, and after a restart with global down serves the
//! persisted view at once (static stability).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::Global;
use strait_proto::zone_message::Msg;
use strait_test_support::wait::{PATIENCE, eventually, within};
use strait_zone::config::ZoneConfig;
use strait_zone::node::{self, ZoneError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `GET path` on the admin port: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: zone\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await.ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

struct Zone {
    admin: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ZoneError>>,
}

async fn start(g: &Global, dir: &Path, token: Option<std::path::PathBuf>) -> Zone {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ZoneConfig::new(
        "a",
        vec![g.addr.to_string()],
        dir.to_path_buf(),
        grpc.local_addr().unwrap(),
        admin.local_addr().unwrap(),
    );
    config.token_file = token;
    config.registration_grace = Duration::from_millis(200);
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node::run(config, grpc, admin, async move {
        let _ = stop_rx.await;
    }));
    Zone {
        admin: admin_addr,
        stop,
        task,
    }
}

impl Zone {
    async fn ready(&self) -> bool {
        matches!(get(self.admin, "/ready").await, Some((200, _)))
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within("the zone to stop", PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn restart_serves_the_persisted_view_while_global_is_down() {
    let mut g = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let zone = start(&g, &dir, Some(g.write_token(tmp.path()))).await;

    let mut s = g.next_session().await;
    assert_eq!(s.hello.known_version, 0);
    // Joined, connected, but no federation view yet: not ready, and it says why.
    let not_ready = within("the admin port", PATIENCE, async {
        loop {
            if let Some(answer) = get(zone.admin, "/ready").await {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(not_ready.0, 503);
    assert!(
        not_ready
            .1
            .contains("waiting for the first federation snapshot"),
        "{}",
        not_ready.1
    );
    s.send_snapshot(7, "n7").await;
    s.recv_matching(|m| matches!(m, Msg::Ack(a) if a.version == 7).then_some(()))
        .await;
    within("ready", PATIENCE, async {
        while !zone.ready().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_, config) = get(zone.admin, "/config").await.unwrap();
    assert!(
        config.contains("\"vip_cidr\": \"127.240.0.0/16\""),
        "{config}"
    );
    zone.stop().await;
    drop(s);

    // Global is down; the zone restarts without a token and is ready on what it persisted.
    g.set_down(true);
    let zone = start(&g, &dir, None).await;
    within("ready from the persisted view", PATIENCE, async {
        while !zone.ready().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (_, metrics) = get(zone.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("strait_zone_sync_snapshot_version 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strait_zone_sync_connected 0"),
        "{metrics}"
    );

    // Global is back: the zone resumes from v7.
    g.set_down(false);
    let s = g.next_session().await;
    assert_eq!(s.hello.known_version, 7);
    zone.stop().await;
}

#[tokio::test]
async fn a_data_dir_of_another_zone_is_refused() {
    let g = Global::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("zone-a");
    let zone = start(&g, &dir, Some(g.write_token(tmp.path()))).await;
    eventually("credentials on disk", PATIENCE, async || {
        dir.join("zone.json").exists().then_some(())
    })
    .await;
    zone.stop().await;

    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ZoneConfig::new(
        "b",
        vec![g.addr.to_string()],
        dir.clone(),
        grpc.local_addr().unwrap(),
        admin.local_addr().unwrap(),
    );
    let err = node::run(config, grpc, admin, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("belongs to zone \"a\""), "{err}");
}
