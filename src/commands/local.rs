//! `strait up` and `strait down`: flags in, progress and hints out. The launch plan and the
//! supervisor are `strait_local`; this file only turns flags into [`UpOptions`] and prints.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strait_global::admin_client::{AdminClient, ClientConfig};
use strait_local::down::Down;
use strait_local::processes;
use strait_local::supervisor::Progress;
use strait_local::up::{DEMO_PORT, STOP_GRACE, Tuning, UpEvent, UpOptions};
use strait_proto as pb;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory for data, logs, processes.json and config.yaml.
    #[arg(long)]
    dir: PathBuf,
    /// Global control plane nodes (1, 3 or 5).
    #[arg(long, default_value_t = 1, value_parser = parse_node_count)]
    global_nodes: u64,
    /// Zones to start, comma-separated (`none` for no zone).
    #[arg(long, default_value = "a,b")]
    zones: String,
    /// Regions of zones (ZONE=REGION pairs, comma-separated; others get `region-ZONE`).
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    /// Lifetime of zone intermediate CAs (default 7 days; short values exercise renewal).
    #[arg(long)]
    zone_ca_validity: Option<String>,
    /// Lifetime of zone control plane certificates (default 24h).
    #[arg(long)]
    zone_cp_validity: Option<String>,
    /// Lifetime of workload certificates (default 24h).
    #[arg(long)]
    workload_cert_validity: Option<String>,
    /// How long a disconnected sidecar keeps its endpoints (default 10s).
    #[arg(long)]
    registration_grace: Option<String>,
    /// How often zones check whether their certificates need renewing (default 30s).
    #[arg(long)]
    renew_check_interval: Option<String>,
    /// East-west gateway replicas per zone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=8))]
    gateways: u16,
    /// Also start the demo workloads in namespace `demo`: `echo` (HTTP, v1 and v2), `greeter`
    /// (gRPC), `wsecho` (WebSocket) and a client in every zone, `ledger` in the last zone.
    #[arg(long)]
    demo: bool,
}

fn parse_node_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => {
            Err("must be 1, 3 or 5 (an odd number keeps a majority through a node loss)".to_owned())
        }
    }
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The directory given to `strait up`.
    #[arg(long)]
    dir: PathBuf,
}

fn tuning(args: &UpArgs) -> Tuning {
    let flag = |name: &str, value: &Option<String>| {
        value
            .iter()
            .flat_map(|v| [name.to_owned(), v.clone()])
            .collect::<Vec<_>>()
    };
    Tuning {
        global: [
            flag("--zone-ca-validity", &args.zone_ca_validity),
            flag("--zone-cp-validity", &args.zone_cp_validity),
        ]
        .concat(),
        zone: [
            flag("--workload-cert-validity", &args.workload_cert_validity),
            flag("--registration-grace", &args.registration_grace),
            flag("--renew-check-interval", &args.renew_check_interval),
        ]
        .concat(),
    }
}

fn progress(p: Progress<'_>) {
    match p {
        Progress::Starting { .. } | Progress::Stopping { .. } => {
            eprint!("{p} ");
            let _ = std::io::stderr().flush();
        }
        Progress::Ready { .. } | Progress::Stopped { .. } => eprintln!("{p}"),
    }
}

fn up_event(event: UpEvent<'_>) {
    match event {
        UpEvent::Process(p) => progress(p),
        UpEvent::PortLost { name } => {
            eprintln!("{name}: another program took one of its ports; starting it on new ones")
        }
        UpEvent::StartFailed => eprintln!("start failed; stopping what was started"),
    }
}

/// The zones to start, validated; `none` means no zone.
fn zone_list(zones: &str) -> anyhow::Result<Vec<String>> {
    if zones.trim() == "none" {
        return Ok(Vec::new());
    }
    let list: Vec<String> = zones
        .split(',')
        .map(|z| z.trim().to_owned())
        .filter(|z| !z.is_empty())
        .collect();
    for zone in &list {
        strait_global::state::validate_zone_name(zone)
            .map_err(|e| anyhow::anyhow!("--zones: {e}"))?;
    }
    Ok(list)
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let zones = zone_list(&args.zones)?;
    let regions: BTreeMap<String, String> = args
        .regions
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(z, r)| (z.to_owned(), r.to_owned()))
                .context("--regions takes ZONE=REGION pairs")
        })
        .collect::<anyhow::Result<_>>()?;
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let options = UpOptions {
        dir: dir.clone(),
        program: std::env::current_exe().context("locating the strait binary")?,
        global_nodes: args.global_nodes,
        zones: zones.clone(),
        regions,
        tuning: tuning(&args),
        gateways: args.gateways,
        demo: args.demo,
    };
    strait_local::up::up(&options, &up_event).await?;
    let zones_text = if zones.is_empty() {
        "none".to_owned()
    } else {
        zones.join(", ")
    };
    eprintln!(
        "\nFederation up: {} global node(s), zones: {zones_text}",
        args.global_nodes
    );
    if args.demo
        && let Some(first) = zones.first()
    {
        demo_hint(&dir, first).await;
    }
    eprintln!(
        "Try:\n  export STRAIT_CONFIG={}\n  strait status",
        dir.join("config.yaml").display()
    );
    Ok(())
}

/// Prints a `curl` line for echo's VIP in the first zone, once global shows it, and a `dig`
/// line for its name at that zone's DNS server.
async fn demo_hint(dir: &Path, zone: &str) {
    let Ok(config) = ClientConfig::load(&dir.join("config.yaml")) else {
        return;
    };
    let Ok(client) = AdminClient::new(&config) else {
        return;
    };
    for _ in 0..50 {
        let reply = client
            .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
            .await;
        let vip = reply.ok().and_then(|r| {
            r.services
                .into_iter()
                .find(|s| s.service.as_ref().is_some_and(|s| s.name == "echo"))
                .and_then(|s| s.vips.get(zone).cloned())
        });
        if let Some(vip) = vip {
            eprintln!(
                "  curl http://{vip}:{DEMO_PORT}/        # echo, called by zone {zone}'s client"
            );
            let dns = processes::read(dir).ok().and_then(|records| {
                records
                    .into_iter()
                    .find(|r| r.name == format!("zone-{zone}"))
                    .and_then(|r| r.address("dns").and_then(|a| a.parse::<SocketAddr>().ok()))
            });
            if let Some(dns) = dns {
                eprintln!(
                    "  dig @{} -p {} echo.demo.svc.clusterset.local        # zone {zone}'s DNS",
                    dns.ip(),
                    dns.port()
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    match strait_local::down::down(&args.dir, STOP_GRACE, &progress)? {
        Down::NothingRunning => eprintln!("nothing is running in {}", args.dir.display()),
        Down::Stopped(_) => eprintln!(
            "federation in {} stopped (data and logs kept)",
            args.dir.display()
        ),
    }
    Ok(())
}
