//! `strait demo`: the whole tour in one command — a local federation (3 global nodes, zones a,
//! b and c), HTTP, gRPC and WebSocket calls from zone a answered in every zone, DNS answers,
//! failover drills under HTTP and gRPC load with their reports — then everything torn down, also on Ctrl-C or a failure. Exits non-zero when a step
//! or an objective failed.
//!
//! It drives the same binary as a user would (`strait up`, `strait down` as subprocesses), so
//! what it shows is what a user gets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use strait_drill::probe::{pinned_vips, resolve};
use strait_drill::tour::{self, Check, DnsExpect, Outcome, Section, WebSocketError, WebSocketTrip};
use strait_local::processes;

use crate::cli::{ClientArgs, Format};
use crate::commands::drill;

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
    let client_args = ClientArgs {
        config: Some(dir.join("config.yaml")),
    };
    let admin = crate::commands::admin::client(&client_args)?;
    let services = tour::listed_services(&admin, Duration::from_secs(30)).await?;
    let vip = |name: &str| tour::vip(&services, name, "a");
    heading("A Retry for greeter (a gRPC call is a POST: only named failures are retried)");
    let yaml = tour::greeter_retry();
    eprintln!("  strait apply -f - <<EOF\n{}  EOF", indent(&yaml));
    tour::apply(&admin, yaml, "strait demo")
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

    let mut ok = true;
    let client_admin = address("client-a-sidecar", "admin");
    let mut echo_pinned = BTreeMap::new();
    for section in Section::ALL {
        heading(match section {
            Section::Http => {
                "Calls from zone a's client (through its sidecar; other zones through the gateways)"
            }
            Section::Grpc => {
                "gRPC from zone a's client: strait.demo.v1.Greeter (HTTP/2 end to end, sidecar to sidecar)"
            }
            Section::WebSocket => {
                "WebSocket from zone a's client: wsecho (an HTTP/1.1 Upgrade through both sidecars)"
            }
        });
        let pinned = pinned_vips(client_admin.as_deref(), section.pinned_service()).await;
        for check in tour::plan(section, &services, &pinned) {
            ok &= show(&check, &check.run(&WebSocket).await);
        }
        if section == Section::Http {
            echo_pinned = pinned;
        }
    }

    heading("DNS (zone a's server: the names sidecars and apps resolve)");
    match address("zone-a", "dns").and_then(|a| a.parse::<SocketAddr>().ok()) {
        None => {
            eprintln!("  zone a has no DNS address in processes.json");
            ok = false;
        }
        Some(dns) => {
            for check in tour::dns_checks(vip("echo"), !echo_pinned.is_empty()) {
                let name = &check.name;
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
                        if !check.met(code, &addresses) {
                            if let DnsExpect::Address(expected) = &check.expect {
                                eprintln!("    expected echo's VIP {expected:?}");
                            }
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

    for step in tour::drills(dir) {
        heading(&step.title);
        if let Some(note) = &step.note {
            eprintln!("  {note}");
        }
        let report = drill::run_drill(&admin, step.spec).await?;
        drill::print(&report, Format::Table)?;
        ok &= report.objectives_met;
        if let Some(zone) = step.moves_to
            && report
                .analysis
                .answers_by_zone
                .get(zone)
                .copied()
                .unwrap_or(0)
                == 0
        {
            eprintln!("  expected traffic to move to zone {zone} (same region as a)");
            ok = false;
        }
    }
    Ok(ok)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Prints what a check got; whether it met its objective.
fn show(check: &Check, outcome: &Outcome) -> bool {
    let (what, expected) = (&check.what, &check.expected);
    let target = check.target.as_deref().unwrap_or_default();
    let field = tour::answer_field;
    match outcome {
        Outcome::NoVip => eprintln!("  {what}: FAILED: no VIP in zone a's client"),
        Outcome::Http(Ok(body)) => eprintln!(
            "  curl http://{target}/   {what}: answered by {} in zone {}, caller {}",
            field(body, "instance"),
            field(body, "zone"),
            field(body, "peer_identity"),
        ),
        Outcome::Http(Err(err)) => eprintln!("  curl http://{target}/   {what}: FAILED: {err:#}"),
        Outcome::Hello(Ok(reply)) => eprintln!(
            "  grpc {target} Greeter/Hello   {what}: {:?} from {} in zone {}, caller {}",
            reply.message, reply.instance, reply.zone, reply.peer_identity
        ),
        Outcome::Hello(Err(status)) => {
            eprintln!("  grpc {target} Greeter/Hello   {what}: FAILED: {status}")
        }
        Outcome::Count(Ok((numbers, zone))) if outcome.met(expected) => eprintln!(
            "  grpc {target} Greeter/Count(5)   {what}: a stream of {numbers:?} from zone {zone}"
        ),
        Outcome::Count(Ok((numbers, zone))) => {
            eprintln!(
                "  grpc {target} Greeter/Count(5)   FAILED: got {numbers:?} from zone {zone:?}"
            );
            return false;
        }
        Outcome::Count(Err(status)) => {
            eprintln!("  grpc {target} Greeter/Count(5)   FAILED: {status}")
        }
        Outcome::WebSocket(Ok(trip)) => eprintln!(
            "  websocket ws://{target}/   {what}: echoed {:?}, answered by {} in zone {}, caller {}",
            trip.echoed,
            field(&trip.hello, "instance"),
            field(&trip.hello, "zone"),
            field(&trip.hello, "peer_identity"),
        ),
        Outcome::WebSocket(Err(err)) => {
            eprintln!("  websocket ws://{target}/   {what}: FAILED: {err}")
        }
    }
    let met = outcome.met(expected);
    if outcome.answered() && !met {
        eprintln!("    expected zone {expected}");
    }
    met
}

/// The tour's WebSocket client: the demo app's own (`strait_sidecar::demo_ws`).
struct WebSocket;

impl tour::WebSocketClient for WebSocket {
    async fn round_trip(&self, target: SocketAddr) -> Result<WebSocketTrip, WebSocketError> {
        use strait_sidecar::demo_ws::{RoundTripError, round_trip};
        let timeout = Duration::from_secs(5);
        match round_trip(target, tour::WEBSOCKET_MESSAGE, timeout).await {
            Ok(trip) => Ok(WebSocketTrip {
                zone: trip.zone,
                hello: trip.hello,
                echoed: trip.echoed,
            }),
            Err(err) => Err(WebSocketError {
                not_listening: matches!(err, RoundTripError::Connect { .. }),
                message: err.to_string(),
            }),
        }
    }
}
