//! Traffic capture with real kernel rules (issue 9: "`strait sidecar init` inside a network
//! namespace"): an app in a network namespace calls a service VIP, and only the iptables rules
//! `strait sidecar init` installs bring that call to the capture-mode sidecar; the sidecar's own
//! upstream connection, although it goes to an address the rules capture, is not looped back.
//!
//! Root only (network namespaces, iptables): without root, `ip`, `iptables`, `setpriv` or
//! `curl` the test prints why and passes without running.
//!
//! Inside one namespace: a one-zone federation (`strait up --zones a`, all root), the `capecho`
//! service (demo app + a root sidecar whose mTLS inbound listens on `127.250.0.1`), and the
//! `capclient` sidecar in `--outbound capture:15001` mode running as uid 1337. The rules capture
//! `127.240.0.0/16` (zone a's VIPs) **and** `127.250.0.0/16`, so the capture sidecar's upstream
//! connection to `127.250.0.1:15008` matches a `REDIRECT` rule: only the uid exclusion keeps it
//! out of the sidecar.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::BIN;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use strait_test_support::federation::eventually;

const PROXY_UID: u32 = 1337;
const CAPTURE_PORT: &str = "15001";
const CAPTURED: &str = "127.240.0.0/16,127.250.0.0/16";

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces and iptables need it)".into());
    }
    for tool in ["ip", "iptables", "setpriv", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace with loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("strait-cap-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self(name);
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }

    /// A command run inside the namespace.
    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }

    /// `curl http://TARGET` (`host:port/path`) from inside the namespace as root (the "app"):
    /// (status, body); status 0 when no HTTP answer came.
    fn curl(&self, target: &str) -> (u16, String) {
        let out = self
            .cmd("curl")
            .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://{target}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The federation and the processes this test started, stopped on drop (before the namespace).
struct Processes {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
        let _ = Command::new(BIN)
            .arg("down")
            .arg("--dir")
            .arg(&self.dir)
            .output();
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("spawn")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_calling_a_vip_is_answered_through_the_capture_sidecar_without_loops() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED: traffic capture in a network namespace: {reason}");
        return;
    }
    strait_test_support::pki::install_provider();
    let ns = Netns::new();
    let fed_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // The capture sidecar runs as uid 1337: it must reach its token and bundle.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut procs = Processes {
        dir: fed_dir.path().to_owned(),
        children: Vec::new(),
    };
    run(ns
        .cmd(BIN)
        .arg("up")
        .arg("--dir")
        .arg(fed_dir.path())
        .args(["--zones", "a"]));
    let config = fed_dir.path().join("config.yaml");
    let zone_api = strait_local::processes::read(fed_dir.path())
        .unwrap()
        .into_iter()
        .find(|p| p.name == "zone-a")
        .and_then(|p| p.address("api").map(str::to_owned))
        .expect("zone-a api address");
    let bundle = work.path().join("bundle.pem");
    std::fs::copy(fed_dir.path().join("admin/bundle.pem"), &bundle).unwrap();
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token = |service: &str| {
        let out = run(ns
            .cmd(BIN)
            .args(["token", "workload", "--zone", "a", "--namespace", "demo"])
            .args(["--service", service])
            .env("STRAIT_CONFIG", &config));
        let path = work.path().join(format!("{service}.token"));
        std::fs::write(&path, String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let server_token = token("capecho");
    let client_token = token("capclient");
    std::os::unix::fs::chown(&client_token, Some(PROXY_UID), Some(PROXY_UID)).unwrap();

    // The destination: a demo app and its (root) sidecar, whose inbound address lies in a
    // captured range.
    let mut app = ns.cmd(BIN);
    app.args([
        "demo-app",
        "--listen",
        "127.0.0.1:8080",
        "--service",
        "capecho",
    ])
    .args(["--zone", "a"]);
    procs
        .children
        .push(spawn(app, &work.path().join("capecho-app.log")));
    let mut server = ns.cmd(BIN);
    server
        .args(["sidecar", "run", "--zone-cp", &zone_api, "--zone", "a"])
        .arg("--token-file")
        .arg(&server_token)
        .args(["--service", "capecho", "--namespace", "demo"])
        .args(["--app", "127.0.0.1:8080", "--inbound", "127.250.0.1:15008"])
        .args(["--admin", "127.0.0.1:15020", "--outbound", "none"])
        .arg("--bundle-file")
        .arg(&bundle);
    procs
        .children
        .push(spawn(server, &work.path().join("capecho-sidecar.log")));

    // The capture-mode sidecar of the calling pod, as its own uid.
    let client_log = work.path().join("capclient-sidecar.log");
    let mut client = ns.cmd("setpriv");
    client
        .args([
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
            "--",
            BIN,
        ])
        .args(["sidecar", "run", "--zone-cp", &zone_api, "--zone", "a"])
        .arg("--token-file")
        .arg(&client_token)
        .args(["--service", "capclient", "--namespace", "demo"])
        .args(["--inbound", "127.0.0.1:15006", "--admin", "127.0.0.1:15021"])
        .args(["--outbound", &format!("capture:{CAPTURE_PORT}")])
        .arg("--bundle-file")
        .arg(&bundle);
    procs.children.push(spawn(client, &client_log));

    // The service's VIP in zone a, once the destination registered and global allocated it.
    let vip = eventually("capecho's VIP", Duration::from_secs(30), async || {
        let out = ns
            .cmd(BIN)
            .args(["services", "-o", "json"])
            .env("STRAIT_CONFIG", &config)
            .output()
            .ok()?;
        let services: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let s = services
            .as_array()?
            .iter()
            .find(|s| s["name"] == "capecho")?;
        Some(format!(
            "{}:{}",
            s["vips"]["a"].as_str()?,
            s["ports"][0]["port"].as_u64()?
        ))
    })
    .await;
    eprintln!("capecho VIP: {vip}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ns.curl("127.0.0.1:15021/ready").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture sidecar is not ready after 30 s:\n{}",
            log_tail(&client_log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without rules nothing listens on the VIP: the call can only be answered through capture.
    let (status, body) = ns.curl(&format!("{vip}/"));
    assert_eq!(status, 0, "nothing may answer on the VIP yet: {body}");

    // Rules that exclude some other uid: the sidecar's own upstream connection (to
    // 127.250.0.1, a captured range) is redirected back into the sidecar, so the call fails.
    // This shows the exclusion below is what keeps it out.
    let init = |uid: u32| {
        let out = run(ns
            .cmd(BIN)
            .args(["sidecar", "init", "--vip-cidr", CAPTURED])
            .args(["--inbound-ports", "8080", "--outbound-port", CAPTURE_PORT])
            .args(["--proxy-uid", &uid.to_string()]));
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    };
    init(PROXY_UID + 1);
    let (status, body) = ns.curl(&format!("{vip}/"));
    eprintln!("with the wrong uid excluded: {status} {body}");
    assert_eq!(
        status, 503,
        "with the sidecar's own traffic captured, its upstream loops back into itself and the \
         call cannot be served: {body}"
    );

    // The real rules (installed over the previous ones): the app's call is captured, the
    // sidecar's upstream connection is not, and the destination names the caller's identity.
    init(PROXY_UID);
    let rules = run(ns
        .cmd("iptables")
        .args(["-t", "nat", "-S", "STRAIT_OUTPUT"]));
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert_eq!(
        rules.matches("--uid-owner").count(),
        1,
        "a second run replaces the rules:\n{rules}"
    );
    assert!(
        rules.contains(&format!("--uid-owner {PROXY_UID}")),
        "{rules}"
    );
    let answer = eventually(
        "a call to the VIP answered through the capture sidecar",
        Duration::from_secs(20),
        async || {
            let (status, body) = ns.curl(&format!("{vip}/"));
            (status == 200).then_some(body)
        },
    )
    .await;
    eprintln!("with the sidecar's uid excluded: {answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["service"], "capecho", "{answer}");
    assert_eq!(
        answer["peer_identity"], "spiffe://strait.local/ns/demo/sa/capclient",
        "the destination's sidecar must see the capture sidecar's mTLS identity: {answer}"
    );
    for _ in 0..5 {
        let (status, body) = ns.curl(&format!("{vip}/"));
        assert_eq!(status, 200, "{body}");
    }
    drop(procs);
}
