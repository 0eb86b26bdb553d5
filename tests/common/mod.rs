//! Harness for the end-to-end suites: runs the real `strait` binary as processes on loopback.
//!
//! A [`Federation`] is started with `strait up` in a temp directory and torn down on drop
//! (`strait down`, then SIGKILL for anything a test restarted by hand), so a failing test
//! leaves no process behind.

#![allow(dead_code)] // Each test file uses a different part of the harness.
#![allow(clippy::expect_used, clippy::unwrap_used)] // A harness failure should stop the test loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod demo;
pub mod peers;
pub mod sidecar;

use strait_global::admin_client::{AdminClient, ClientConfig};
use strait_local::processes::{self, ProcessKind, ProcessRecord};
use strait_local::supervisor::{self, ProcessSpec};

pub const BIN: &str = env!("CARGO_BIN_EXE_strait");

/// Installs ring as the process-wide provider (once per test binary).
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A federation started by `strait up`.
pub struct Federation {
    pub dir: tempfile::TempDir,
    /// Processes (re)started by the test itself, killed on drop (also when `down` failed).
    restarted: Vec<ProcessRecord>,
}

impl Federation {
    /// `strait up --dir TMP ARGS...`; panics with the output if it fails.
    pub fn up(args: &[&str]) -> Self {
        crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(BIN)
            .arg("up")
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run strait up");
        let fed = Self {
            dir,
            restarted: Vec::new(),
        };
        assert!(
            out.status.success(),
            "strait up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fed
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::load(&self.config_path()).expect("client config")
    }

    /// An Admin client over every global node.
    pub fn client(&self) -> AdminClient {
        AdminClient::new(&self.client_config()).expect("admin client")
    }

    /// An Admin client that talks to `node` only (to see what that node has applied).
    pub fn node_client(&self, node: &str) -> AdminClient {
        let mut config = self.client_config();
        config.global = vec![self.address(node, "api")];
        AdminClient::new(&config).expect("admin client")
    }

    /// Runs `strait ARGS` with this federation's config.
    pub fn strait(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("STRAIT_CONFIG", self.config_path())
            .output()
            .expect("run strait")
    }

    /// The federation's processes, from `processes.json` (as `strait_local` reads it).
    pub fn processes(&self) -> Vec<ProcessRecord> {
        processes::read(self.dir.path()).expect("processes.json")
    }

    pub fn process(&self, name: &str) -> ProcessRecord {
        self.processes()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    pub fn address(&self, name: &str, which: &str) -> String {
        self.process(name)
            .address(which)
            .unwrap_or_else(|| panic!("{name} has no {which}"))
            .to_owned()
    }

    /// SIGKILL, the way a machine dies: no shutdown path runs.
    pub fn kill(&self, name: &str) {
        let process = self.process(name);
        let _ = supervisor::kill(&process, supervisor::Signal::SIGKILL);
        // SIGKILL is asynchronous: wait until the process has exited (gone, or a zombie whose
        // sockets are already closed), so a restart can bind the same addresses.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !supervisor::is_running(&process) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{name} (pid {}) still running 10 s after SIGKILL",
            process.pid
        );
    }

    /// Starts `name` again with the command line `strait up` used (its data dir makes it the
    /// same node), and records its new pid in `processes.json`, so `strait down` stops it.
    pub fn restart(&mut self, name: &str) {
        let process = self.process(name);
        let spec = ProcessSpec::again(&process).expect("a recorded command");
        let record = supervisor::spawn(&spec).expect("restart process");
        self.restarted.push(record.clone());
        let mut records = self.processes();
        if let Some(slot) = records.iter_mut().find(|r| r.name == name) {
            *slot = record;
        }
        processes::write(self.dir.path(), &records).expect("processes.json");
    }

    /// Starts `strait ARGS` as one more process of the federation, named `name` (its log in
    /// `DIR/logs`), recorded in `processes.json` so that `strait down` stops it.
    pub fn start_extra(&mut self, name: &str, kind: ProcessKind, zone: &str, args: &[String]) {
        self.start_program(name, kind, zone, Path::new(BIN), args);
    }

    /// [`Federation::start_extra`] for any program (a real peer: a gRPC server, a WebSocket
    /// app), stopped with the federation.
    pub fn start_program(
        &mut self,
        name: &str,
        kind: ProcessKind,
        zone: &str,
        program: &Path,
        args: &[String],
    ) {
        let spec = ProcessSpec {
            name: name.to_owned(),
            kind,
            zone: Some(zone.to_owned()),
            node_id: None,
            program: program.to_owned(),
            args: args.to_vec(),
            env: BTreeMap::new(),
            addresses: BTreeMap::new(),
            log_dir: self.dir.path().join("logs"),
        };
        let record = supervisor::spawn(&spec).expect("start process");
        self.restarted.push(record.clone());
        let mut records = self.processes();
        records.push(record);
        processes::write(self.dir.path(), &records).expect("processes.json");
    }

    /// Waits for `GET /ready` on `name`'s admin address to answer 200.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) {
        let admin = self.address(name, "admin");
        let deadline = Instant::now() + timeout;
        while http_get(&admin, "/ready").await.0 != 200 {
            if Instant::now() >= deadline {
                let log = self.process(name).log;
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{name} not ready after {timeout:?}; last lines of {}:\n{}",
                    log.display(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The global node names with their node ids.
    pub fn global_nodes(&self) -> BTreeMap<u64, String> {
        self.processes()
            .into_iter()
            .filter(|p| p.kind == ProcessKind::Global)
            .map(|p| (p.node_id.expect("node_id"), p.name))
            .collect()
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .arg("down")
            .arg("--dir")
            .arg(self.dir.path())
            .output();
        for process in &self.restarted {
            let _ = supervisor::kill(process, supervisor::Signal::SIGKILL);
        }
    }
}

/// The Raft leader's node id, as the cluster reports it.
pub async fn leader(client: &AdminClient) -> Option<u64> {
    let status = client
        .call(|mut c| async move {
            c.cluster_status(strait_proto::ClusterStatusRequest {})
                .await
        })
        .await
        .ok()?;
    status
        .nodes
        .iter()
        .find(|n| n.role == strait_proto::NodeRole::Leader as i32)
        .map(|n| n.id)
}

/// A plain HTTP/1.1 GET: (status, body). (0, "") when nothing answers.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, path, &[], Duration::from_secs(2)).await
}

/// A `GET` with extra headers over a fresh connection, each step bounded by `timeout`:
/// (status, body), (0, "") when nothing answers.
pub async fn http_request(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
    else {
        return (0, String::new());
    };
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Reads a file the harness expects to exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A loopback address with a port free at the time of asking.
pub fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Whether global records zone `zone` as connected (`strait zone list -o json`).
pub fn zone_connected(fed: &Federation, zone: &str) -> bool {
    let out = fed.strait(&["zone", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zones: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    zones
        .as_array()
        .unwrap()
        .iter()
        .any(|z| z["name"] == zone && z["connected"] == true)
}

/// Parses a gauge value from a Prometheus text page.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
