//! Bad input before side effects: every `run` command (`global`, `zone`, `gateway`, `sidecar`)
//! refuses a bad token or certificate file at once, naming the file, before it binds a port or
//! writes its data directory. The reported case: `strait zone run` with a garbage token while
//! something else held its port waited 10 s and then reported the port, never the token.

#![allow(clippy::expect_used, clippy::unwrap_used)] // A harness failure should stop the test loudly.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;

/// Well under the zone's 10 s wait for a port in use: "at once".
const AT_ONCE: Duration = Duration::from_secs(5);

/// Runs `strait ARGS`, killed if it outlives 30 s; its exit success, stderr and run time.
fn run(args: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strait");
    let deadline = started + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    (status.success(), stderr, elapsed)
}

/// A TCP port held by "another program" (this test) for as long as the listener lives.
fn held_tcp() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

fn held_udp() -> (UdpSocket, String) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    (socket, addr)
}

fn garbage_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, "this is not a token\n").unwrap();
    path
}

/// The command failed at once, naming `what` and the file, and never got to the ports.
fn assert_refused(result: (bool, String, Duration), what: &str, file: &Path) {
    let (success, stderr, elapsed) = result;
    assert!(!success, "it ran with a bad {what}:\n{stderr}");
    assert!(elapsed < AT_ONCE, "took {elapsed:?} to refuse:\n{stderr}");
    assert!(stderr.contains(what), "{what} not named:\n{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()),
        "{} not named:\n{stderr}",
        file.display()
    );
    assert!(
        !stderr.contains("binding") && !stderr.contains("in use"),
        "reported a port, not the {what}:\n{stderr}"
    );
}

#[test]
fn zone_run_reports_a_garbage_token_at_once_while_its_ports_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let token = garbage_file(dir.path(), "zone-a.token");
    let data = dir.path().join("zone-a");
    let (_api, api) = held_tcp();
    let (_admin, admin) = held_tcp();
    let result = run(&[
        "zone",
        "run",
        "--name",
        "a",
        "--global",
        "127.0.0.1:1",
        "--token-file",
        token.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &api,
        "--admin-listen",
        &admin,
    ]);
    assert_refused(result, "join token", &token);
    assert!(!data.exists(), "the data directory was written");
}

#[test]
fn zone_run_without_a_token_on_its_first_start_says_so_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("zone-a");
    let (_api, api) = held_tcp();
    let (_admin, admin) = held_tcp();
    let (success, stderr, elapsed) = run(&[
        "zone",
        "run",
        "--name",
        "a",
        "--global",
        "127.0.0.1:1",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &api,
        "--admin-listen",
        &admin,
    ]);
    assert!(!success);
    assert!(elapsed < AT_ONCE, "took {elapsed:?}:\n{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    assert!(!stderr.contains("binding"), "{stderr}");
    assert!(!data.exists(), "the data directory was written");
}

#[test]
fn global_run_reports_a_garbage_join_token_or_root_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let token = garbage_file(dir.path(), "global-2.token");
    let data = dir.path().join("global-2");
    let (_api, api) = held_tcp();
    let (_admin, admin) = held_tcp();
    let result = run(&[
        "global",
        "run",
        "--node-id",
        "2",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &api,
        "--admin-listen",
        &admin,
        "--join",
        "127.0.0.1:1",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_refused(result, "join token", &token);
    assert!(!data.exists(), "the data directory was written");

    let root = garbage_file(dir.path(), "root.crt");
    let result = run(&[
        "global",
        "run",
        "--node-id",
        "1",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &api,
        "--admin-listen",
        &admin,
        "--root-cert",
        root.to_str().unwrap(),
        "--root-key",
        root.to_str().unwrap(),
    ]);
    assert_refused(result, "root CA", &root);
    assert!(!data.exists(), "the data directory was written");
}

#[test]
fn gateway_run_reports_a_garbage_token_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let token = garbage_file(dir.path(), "gateway.token");
    let (_quic, quic) = held_udp();
    let (_local, local) = held_tcp();
    let (_admin, admin) = held_tcp();
    let result = run(&[
        "gateway",
        "run",
        "--zone-cp",
        "127.0.0.1:1",
        "--zone",
        "a",
        "--token-file",
        token.to_str().unwrap(),
        "--quic",
        &quic,
        "--local",
        &local,
        "--public-address",
        &quic,
        "--admin",
        &admin,
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert_refused(result, "workload token file", &token);
    assert!(!dir.path().join("data").exists());
}

#[test]
fn sidecar_run_reports_a_garbage_token_or_bundle_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let token = garbage_file(dir.path(), "echo.token");
    let (_inbound, inbound) = held_tcp();
    let (_admin, admin) = held_tcp();
    let args = |token: &Path, bundle: Option<&Path>| {
        let mut args: Vec<String> = [
            "sidecar",
            "run",
            "--zone-cp",
            "127.0.0.1:1",
            "--zone",
            "a",
            "--service",
            "echo",
            "--namespace",
            "demo",
            "--inbound",
            &inbound,
            "--admin",
            &admin,
            "--token-file",
            token.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(bundle) = bundle {
            args.extend(["--bundle-file".to_owned(), bundle.display().to_string()]);
        }
        args
    };
    let run_args = |args: Vec<String>| run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_refused(run_args(args(&token, None)), "workload token file", &token);

    // A well-formed token, but a bundle that is not PEM.
    let root = strait_trust::RootCa::generate("strait.local", Duration::from_secs(3600)).unwrap();
    let id = strait_trust::SpiffeId::workload("strait.local", "demo", "echo").unwrap();
    let claims = strait_trust::workload_token::Claims::new(
        id,
        "a",
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    );
    let good = dir.path().join("good.token");
    std::fs::write(
        &good,
        strait_trust::workload_token::WorkloadToken::issue(&root, &claims).unwrap(),
    )
    .unwrap();
    let bundle = garbage_file(dir.path(), "bundle.pem");
    assert_refused(
        run_args(args(&good, Some(&bundle))),
        "trust bundle",
        &bundle,
    );
}
