//! The process harness of the end-to-end suites: a federation started by `strait up` in a temp
//! directory from the `strait` binary the caller names (only the root package's tests know its
//! path, `env!("CARGO_BIN_EXE_strait")`), torn down on drop (`strait down`, then SIGKILL for
//! anything a test restarted by hand), so a failing test leaves no process behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use strait_global::admin_client::{AdminClient, ClientConfig};
use strait_local::processes::{self, ProcessKind, ProcessRecord};
use strait_local::supervisor::{self, ProcessSpec};

use crate::http;
use crate::wait::{Outcome, eventually_every};

/// Between two checks of a condition on processes: each check is a request or runs `strait`,
/// so it is made less often than an in-process one.
pub const POLL: Duration = Duration::from_millis(100);

/// [`crate::wait::eventually`] at the pace of the process suites ([`POLL`]).
pub async fn eventually<R: Outcome>(
    what: &str,
    timeout: Duration,
    check: impl AsyncFnMut() -> R,
) -> R::Value {
    eventually_every(what, timeout, POLL, check).await
}

/// A federation started by `strait up`.
#[derive(Debug)]
pub struct Federation {
    pub dir: tempfile::TempDir,
    /// The `strait` binary.
    bin: PathBuf,
    /// Processes (re)started by the test itself, killed on drop (also when `down` failed).
    restarted: Vec<ProcessRecord>,
}

impl Federation {
    /// `BIN up --dir TMP ARGS...`; panics with the output if it fails.
    pub fn up(bin: impl AsRef<Path>, args: &[&str]) -> Self {
        crate::pki::install_provider();
        let bin = bin.as_ref().to_owned();
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(&bin)
            .arg("up")
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run strait up");
        let fed = Self {
            dir,
            bin,
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
        Command::new(&self.bin)
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
        let bin = self.bin.clone();
        self.start_program(name, kind, zone, &bin, args);
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
        while http::get(&admin, "/ready").await.0 != 200 {
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
            tokio::time::sleep(POLL).await;
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

    /// Whether global records zone `zone` as connected (`strait zone list -o json`).
    pub fn zone_connected(&self, zone: &str) -> bool {
        let out = self.strait(&["zone", "list", "-o", "json"]);
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
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
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

/// Reads a file the harness expects to exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
