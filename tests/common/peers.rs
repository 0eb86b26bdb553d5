//! Real third-party peers (grpc-go's interop programs, Python grpcio and websockets) as apps
//! behind Strait sidecars and as their callers. `scripts/peers.sh` builds them (docs/testing.md,
//! "Real peers"); `scripts/test.sh` exports where.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strait_local::processes::{ProcessKind, ProcessRecord};
use strait_test_support::federation::{Federation, eventually};
use strait_test_support::net::free_port;

/// Where each peer is: the variable `scripts/test.sh` exports, else what `scripts/peers.sh`
/// wrote to `~/.cache/strait/peers.env`. A missing peer fails the test, naming the fix.
pub fn peer(variable: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("STRAIT_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/strait"),
        PathBuf::from,
    );
    let env = std::fs::read_to_string(cache.join("peers.env")).unwrap_or_default();
    let path = env
        .lines()
        .find_map(|l| l.strip_prefix(variable)?.strip_prefix('='))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{variable} unset and not in peers.env: run scripts/peers.sh"));
    assert!(
        path.exists(),
        "{} ({variable}) is missing: run scripts/peers.sh",
        path.display()
    );
    path
}

/// `tests/peers/NAME` in the checkout.
pub fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

fn own(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn flag_value(process: &ProcessRecord, flag: &str) -> String {
    let argv = &process.command;
    let i = argv
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{} has no {flag}", process.name));
    argv[i + 1].clone()
}

/// An app process and its sidecar, registered as one more instance of `service` in `zone`.
pub struct Instance<'a> {
    pub zone: &'a str,
    pub service: &'a str,
    /// A unique name: the instance's, and its processes' (`NAME`, `NAME-sidecar`).
    pub name: &'a str,
    /// Where the app listens (`IP:PORT`).
    pub app: &'a str,
    /// `--app-protocol`.
    pub app_protocol: &'a str,
}

impl Instance<'_> {
    /// Starts `program args` as the app and a sidecar in front of it (`--outbound none`: its
    /// callers are the zone's client sidecars), with the zone control plane and bundle of the
    /// zone's demo `client` sidecar.
    pub fn start(&self, fed: &mut Federation, program: &Path, args: &[String]) {
        fed.start_program(self.name, ProcessKind::App, self.zone, program, args);
        let token = fed.strait(&[
            "token",
            "workload",
            "--zone",
            self.zone,
            "--namespace",
            "demo",
            "--service",
            self.service,
        ]);
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token_file = fed.dir.path().join(format!("{}.token", self.name));
        std::fs::write(&token_file, &token.stdout).unwrap();
        let template = fed.process(&format!("client-{}-sidecar", self.zone));
        let ip = self.app.rsplit_once(':').unwrap().0;
        let inbound = format!("{ip}:{}", free_port().rsplit_once(':').unwrap().1);
        fed.start_extra(
            &format!("{}-sidecar", self.name),
            ProcessKind::Sidecar,
            self.zone,
            &own(&[
                "sidecar",
                "run",
                "--zone-cp",
                &flag_value(&template, "--zone-cp"),
                "--zone",
                self.zone,
                "--token-file",
                token_file.to_str().unwrap(),
                "--bundle-file",
                &flag_value(&template, "--bundle-file"),
                "--service",
                self.service,
                "--namespace",
                "demo",
                "--instance",
                self.name,
                "--app",
                self.app,
                "--app-protocol",
                self.app_protocol,
                "--inbound",
                &inbound,
                "--admin",
                &free_port(),
                "--outbound",
                "none",
            ]),
        );
    }
}

/// Waits until `service` has healthy endpoints in every zone of `zones` and the zones'
/// client sidecars listen on its VIPs.
pub async fn wait_served(fed: &Federation, service: &str, zones: &[&str]) {
    eventually(
        &format!("{service} served in {zones:?}"),
        Duration::from_secs(30),
        async || {
            let out = fed.strait(&["services", "-o", "json"]);
            let services: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let entry = services
                .as_array()?
                .iter()
                .find(|s| s["name"] == service)?
                .clone();
            let zones_ok = zones.iter().all(|zone| {
                entry["zones"].as_array().is_some_and(|all| {
                    all.iter()
                        .any(|z| z["zone"] == *zone && z["healthy"].as_u64().is_some_and(|n| n > 0))
                })
            });
            zones_ok.then_some(())
        },
    )
    .await;
}

/// Runs `program args` to completion (at most `timeout`): (success, stdout and stderr).
pub fn run(program: &Path, args: &[String], timeout: Duration) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
