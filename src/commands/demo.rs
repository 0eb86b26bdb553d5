//! `strait demo`: the whole tour in one command — a local federation (3 global nodes, zones a,
//! b and c), HTTP, gRPC and WebSocket calls from zone a answered in every zone, DNS answers,
//! failover drills under HTTP and gRPC load with their reports — then everything torn down, also on Ctrl-C or a failure. Exits non-zero when a step
//! or an objective failed.
//!
//! It drives the same binary as a user would (`strait up`, `strait down` as subprocesses), so
//! what it shows is what a user gets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hickory_proto::op::ResponseCode;
use strait_proto as pb;

use crate::cli::{ClientArgs, Format};
use crate::commands::drill::{self, FailoverArgs, ModeArg, ProtocolArg};
use strait_drill::probe::{call, pinned_vips, resolve, until};
use strait_local::processes;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the federation keeps its data and logs (default: a new directory under the
    /// system's temp dir, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Leave the federation running at the end (stop it with `strait down --dir DIR`).
    #[arg(long)]
    keep: bool,
}

const ZONES: [&str; 3] = ["a", "b", "c"];
/// a and b share a region, so zone a fails over to b first; c is further away.
const REGIONS: &str = "a=region-1,b=region-1,c=region-2";

fn heading(text: &str) {
    eprintln!("\n== {text}");
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (dir, temporary) = match &args.dir {
        Some(dir) => (std::path::absolute(dir)?, false),
        None => (
            std::env::temp_dir().join(format!("strait-demo-{}", std::process::id())),
            true,
        ),
    };
    let program = std::env::current_exe().context("locating the strait binary")?;
    heading(&format!("Starting a federation in {}", dir.display()));
    let up = Command::new(&program)
        .args(["up", "--dir"])
        .arg(&dir)
        .args([
            "--global-nodes",
            "3",
            "--zones",
            &ZONES.join(","),
            "--regions",
            REGIONS,
            "--demo",
        ])
        .status()
        .context("running strait up")?;
    if !up.success() {
        bail!("strait up failed (it stopped what it had started)");
    }
    let result = tokio::select! {
        result = tour(&dir) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if args.keep && result.is_ok() {
        eprintln!(
            "\nThe federation keeps running: export STRAIT_CONFIG={}  (stop: strait down --dir {})",
            dir.join("config.yaml").display(),
            dir.display()
        );
    } else {
        heading("Tearing down");
        let down = Command::new(&program)
            .args(["down", "--dir"])
            .arg(&dir)
            .status();
        if !down.is_ok_and(|s| s.success()) {
            eprintln!(
                "strait down --dir {} failed; stop it by hand",
                dir.display()
            );
        } else if temporary && matches!(result, Ok(true)) {
            // Kept after a failure: the logs say what went wrong.
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    match result {
        Ok(true) => {
            eprintln!("\nDemo finished: every objective met.");
            Ok(())
        }
        Ok(false) => bail!("the demo finished, but an objective was missed (see above)"),
        Err(err) => Err(err),
    }
}

/// The steps between up and down; `Ok(false)` when an objective was missed.
async fn tour(dir: &Path) -> anyhow::Result<bool> {
    let config = dir.join("config.yaml");
    let client_args = ClientArgs {
        config: Some(config.clone()),
    };
    let admin = crate::commands::admin::client(&client_args)?;
    // The workloads started last may not be exported yet: wait (a while) until every demo
    // service has a VIP in zone a.
    let listed = until(
        Duration::from_secs(30),
        |e: &Result<_, _>| e.is_ok(),
        async || {
            let services = admin
                .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
                .await
                .map(|reply| reply.services);
            match services {
                Ok(services) => {
                    let all_there = ["echo", "ledger", "greeter", "wsecho"].iter().all(|name| {
                        services.iter().any(|s| {
                            s.service.as_ref().is_some_and(|r| r.name == *name)
                                && s.vips.contains_key("a")
                        })
                    });
                    if all_there {
                        Ok(services)
                    } else {
                        Err(Ok(services))
                    }
                }
                Err(err) => Err(Err(err)),
            }
        },
    )
    .await;
    // After 30 s, go on with what is there: the checks below say what is missing.
    let services = match listed {
        Ok(services) | Err(Ok(services)) => services,
        Err(Err(err)) => return Err(err.into()),
    };
    let vip = |name: &str, zone: &str| -> Option<String> {
        services
            .iter()
            .find(|s| s.service.as_ref().is_some_and(|r| r.name == name))
            .and_then(|s| s.vips.get(zone).cloned())
    };
    heading("A Retry for greeter (a gRPC call is a POST: only named failures are retried)");
    apply_greeter_retry(&admin)
        .await
        .context("applying greeter's Retry")?;
    let records = processes::read(dir)?;
    let address = |name: &str, which: &str| -> Option<String> {
        records
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.address(which))
            .map(str::to_owned)
    };

    heading("Calls from zone a's client (through its sidecar; other zones through the gateways)");
    let mut ok = true;
    let mut calls: Vec<(String, String, String)> = Vec::new();
    if let Some(v) = vip("echo", "a") {
        calls.push(("echo".into(), format!("{v}:8080"), "a".into()));
    }
    if let Some(v) = vip("ledger", "a") {
        calls.push((
            "ledger (runs only in zone c)".into(),
            format!("{v}:8080"),
            "c".into(),
        ));
    }
    let client_admin = address("client-a-sidecar", "admin");
    let pinned = pinned_vips(client_admin.as_deref(), "echo").await;
    for zone in ["b", "c"] {
        if let Some(v) = pinned.get(zone) {
            calls.push((
                format!("echo pinned to zone {zone}"),
                format!("{v}:8080"),
                zone.to_owned(),
            ));
        }
    }
    for (what, target, expected) in &calls {
        let answer = call(target).await;
        match &answer {
            Ok(body) => {
                let zone = body["zone"].as_str().unwrap_or("?");
                eprintln!(
                    "  curl http://{target}/   {what}: answered by {} in zone {zone}, caller {}",
                    body["instance"].as_str().unwrap_or("?"),
                    body["peer_identity"].as_str().unwrap_or("?"),
                );
                if zone != expected {
                    eprintln!("    expected zone {expected}");
                    ok = false;
                }
            }
            Err(err) => {
                eprintln!("  curl http://{target}/   {what}: FAILED: {err:#}");
                ok = false;
            }
        }
    }

    heading(
        "gRPC from zone a's client: strait.demo.v1.Greeter (HTTP/2 end to end, sidecar to sidecar)",
    );
    let greeter_pinned = pinned_vips(client_admin.as_deref(), "greeter").await;
    let mut grpc_targets: Vec<(String, Option<String>, &str)> =
        vec![("greeter".into(), vip("greeter", "a"), "a")];
    for zone in ["b", "c"] {
        grpc_targets.push((
            format!("greeter pinned to zone {zone}"),
            greeter_pinned.get(zone).cloned(),
            zone,
        ));
    }
    for (what, v, expected) in &grpc_targets {
        let Some(target) = v.as_deref().and_then(|v| format!("{v}:8080").parse().ok()) else {
            eprintln!("  {what}: FAILED: no VIP in zone a's client");
            ok = false;
            continue;
        };
        ok &= grpc_check(what, target, expected).await;
    }
    if let Some(target) = greeter_pinned
        .get("b")
        .and_then(|v| format!("{v}:8080").parse().ok())
    {
        match strait_drill::grpc::count_once(target, 5, Duration::from_secs(5)).await {
            Ok((numbers, zone)) if numbers == [1, 2, 3, 4, 5] && zone == "b" => eprintln!(
                "  grpc {target} Greeter/Count(5)   greeter pinned to zone b: a stream of {numbers:?} from zone {zone}"
            ),
            Ok((numbers, zone)) => {
                eprintln!(
                    "  grpc {target} Greeter/Count(5)   FAILED: got {numbers:?} from zone {zone:?}"
                );
                ok = false;
            }
            Err(status) => {
                eprintln!("  grpc {target} Greeter/Count(5)   FAILED: {status}");
                ok = false;
            }
        }
    }

    heading("WebSocket from zone a's client: wsecho (an HTTP/1.1 Upgrade through both sidecars)");
    let wsecho_pinned = pinned_vips(client_admin.as_deref(), "wsecho").await;
    let ws_targets = [
        ("wsecho".to_owned(), vip("wsecho", "a"), "a"),
        (
            "wsecho pinned to zone b".to_owned(),
            wsecho_pinned.get("b").cloned(),
            "b",
        ),
    ];
    for (what, v, expected) in &ws_targets {
        let Some(target) = v.as_deref().and_then(|v| format!("{v}:8080").parse().ok()) else {
            eprintln!("  {what}: FAILED: no VIP in zone a's client");
            ok = false;
            continue;
        };
        ok &= websocket_check(what, target, expected).await;
    }

    heading("DNS (zone a's server: the names sidecars and apps resolve)");
    match address("zone-a", "dns").and_then(|a| a.parse::<SocketAddr>().ok()) {
        None => {
            eprintln!("  zone a has no DNS address in processes.json");
            ok = false;
        }
        Some(dns) => {
            let expected_echo = vip("echo", "a");
            let mut names = vec![
                "echo.demo.svc.clusterset.local".to_owned(),
                "ledger.demo.svc.clusterset.local".to_owned(),
            ];
            if !pinned.is_empty() {
                names.push("echo.demo.svc.b.mesh.local".to_owned());
            }
            names.push("nope.demo.svc.clusterset.local".to_owned());
            for name in &names {
                match resolve(dns, name).await {
                    Ok((code, addresses)) => {
                        eprintln!(
                            "  dig @{} -p {} {name}   {code}{}",
                            dns.ip(),
                            dns.port(),
                            if addresses.is_empty() {
                                String::new()
                            } else {
                                format!(" {}", addresses.join(", "))
                            }
                        );
                        if name.starts_with("echo.demo.svc.clusterset")
                            && expected_echo
                                .as_ref()
                                .is_none_or(|v| !addresses.contains(v))
                        {
                            eprintln!("    expected echo's VIP {expected_echo:?}");
                            ok = false;
                        }
                        if name.starts_with("nope") && code != ResponseCode::NXDomain {
                            ok = false;
                        }
                    }
                    Err(err) => {
                        eprintln!("  {name}: FAILED: {err:#}");
                        ok = false;
                    }
                }
            }
        }
    }

    heading("Failover drill: echo drained in zone a while zone a's client calls it");
    let drill_args = FailoverArgs {
        client: client_args.clone(),
        service: "echo".into(),
        namespace: "demo".into(),
        zone: "a".into(),
        from: Some("a".into()),
        mode: ModeArg::Drain,
        protocol: ProtocolArg::Http,
        rate: 50,
        duration: Duration::from_secs(3),
        max_errors: 50,
        objective_rto: Duration::from_secs(1),
        objective_errors: 0,
        dir: Some(dir.to_path_buf()),
        format: Format::Table,
    };
    let report = drill::run_failover(&drill_args).await?;
    drill::print(&report, Format::Table)?;
    ok &= report.objectives_met;
    let moved_to_b = report
        .analysis
        .answers_by_zone
        .get("b")
        .copied()
        .unwrap_or(0);
    if moved_to_b == 0 {
        eprintln!("  expected traffic to move to zone b (same region as a)");
        ok = false;
    }

    heading("Failover drill: echo's processes in zone a SIGKILLed, then restarted");
    let report = drill::run_failover(&FailoverArgs {
        mode: ModeArg::Kill,
        duration: Duration::from_secs(2),
        ..drill_args.clone()
    })
    .await?;
    drill::print(&report, Format::Table)?;
    ok &= report.objectives_met;

    heading(&format!(
        "Failover drill under gRPC load: greeter drained in zone a (Retry: {GREETER_RETRY_ON})"
    ));
    let grpc_drill = FailoverArgs {
        service: "greeter".into(),
        protocol: ProtocolArg::Grpc,
        mode: ModeArg::Drain,
        duration: Duration::from_secs(3),
        ..drill_args
    };
    let report = drill::run_failover(&grpc_drill).await?;
    drill::print(&report, Format::Table)?;
    ok &= report.objectives_met;

    heading(
        "Failover drill under gRPC load: greeter's processes in zone a SIGKILLed, then restarted",
    );
    // A call in flight on the instance at the moment it is killed is reset mid-call, and a
    // reset POST is not retried (the app may have run it): at 50 calls/s that is rarely more
    // than one call. The report names them; more than this many is a real failure.
    eprintln!(
        "  (calls in flight on the killed instance are lost: at most {KILL_IN_FLIGHT} allowed)"
    );
    let report = drill::run_failover(&FailoverArgs {
        mode: ModeArg::Kill,
        duration: Duration::from_secs(2),
        objective_errors: KILL_IN_FLIGHT,
        ..grpc_drill
    })
    .await?;
    drill::print(&report, Format::Table)?;
    ok &= report.objectives_met;
    Ok(ok)
}

/// gRPC calls the kill drill may lose: those in flight on the killed instance.
const KILL_IN_FLIGHT: u64 = 3;

/// What the demo's `Retry` for `greeter` retries.
const GREETER_RETRY_ON: &str = "connect-failure, unavailable";

/// The demo's `Retry` for `greeter`: a gRPC call is a `POST`, which the mesh retries only on a
/// connect failure unless `retryOn` names gRPC statuses; `unavailable` also retries a call
/// answered trailers-only `UNAVAILABLE` (nothing reached the caller yet).
fn greeter_retry() -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Retry
metadata:
  name: greeter-retries
  namespace: demo
spec:
  targetRef: {{service: greeter}}
  attempts: 2
  retryOn: [{GREETER_RETRY_ON}]
  backoff: {{base: 25ms, max: 250ms}}
"
    )
}

/// Applies [`greeter_retry`] (printed, as `strait apply -f` would take it).
async fn apply_greeter_retry(
    admin: &strait_global::admin_client::AdminClient,
) -> anyhow::Result<()> {
    let yaml = greeter_retry();
    eprintln!("  strait apply -f - <<EOF\n{}  EOF", indent(&yaml));
    let request = pb::ApplyPoliciesRequest {
        yaml,
        source: "strait demo".into(),
        dry_run: false,
    };
    admin
        .call(|mut c| {
            let r = request.clone();
            async move { c.apply_policies(r).await }
        })
        .await?;
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// A `Greeter/Hello` through `target`, retried for a while (right after `strait up` the zones
/// are still learning about each other); prints it and says whether zone `expected` answered.
async fn grpc_check(what: &str, target: SocketAddr, expected: &str) -> bool {
    let reply = until(
        Duration::from_secs(30),
        |_| true,
        async || strait_drill::grpc::hello_once(target, Duration::from_secs(5)).await,
    )
    .await;
    match reply {
        Ok(reply) => {
            eprintln!(
                "  grpc {target} Greeter/Hello   {what}: {:?} from {} in zone {}, caller {}",
                reply.message, reply.instance, reply.zone, reply.peer_identity
            );
            if reply.zone != expected {
                eprintln!("    expected zone {expected}");
                return false;
            }
            true
        }
        Err(status) => {
            eprintln!("  grpc {target} Greeter/Hello   {what}: FAILED: {status}");
            false
        }
    }
}

/// A WebSocket round trip through `target` (retried for a few seconds while the VIP is not
/// listening yet); prints it and says whether zone `expected` answered and echoed. A refused
/// upgrade is a failure, reported as such.
async fn websocket_check(what: &str, target: SocketAddr, expected: &str) -> bool {
    use strait_sidecar::demo_ws::{RoundTripError, round_trip};
    let not_listening = |err: &RoundTripError| matches!(err, RoundTripError::Connect { .. });
    let result = until(Duration::from_secs(10), not_listening, async || {
        round_trip(target, "hello over the mesh", Duration::from_secs(5)).await
    })
    .await;
    match result {
        Ok(trip) => {
            let zone = trip.hello["zone"].as_str().unwrap_or("?");
            eprintln!(
                "  websocket ws://{target}/   {what}: echoed {:?}, answered by {} in zone {zone}, caller {}",
                trip.echoed,
                trip.hello["instance"].as_str().unwrap_or("?"),
                trip.hello["peer_identity"].as_str().unwrap_or("?"),
            );
            if zone != expected || trip.zone.as_deref() != Some(expected) {
                eprintln!("    expected zone {expected}");
                return false;
            }
            true
        }
        Err(err) => {
            eprintln!("  websocket ws://{target}/   {what}: FAILED: {err}");
            false
        }
    }
}
