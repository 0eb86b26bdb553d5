//! `strait up` and `strait down`: a whole federation on this machine, as background processes
//! on loopback, recorded in `DIR/processes.json`, with `DIR/config.yaml` for the other commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use strait_global::admin_client::{AdminClient, ClientConfig, CredentialPaths};
use strait_proto as pb;

use crate::local::processes::{self, ProcessKind, ProcessRecord};
use crate::local::supervisor::{self, ProcessSpec, Progress};

/// How long one process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const TRUST_DOMAIN: &str = "strait.local";

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
    /// Also start the demo workloads in namespace `demo`: `echo` (v1 and v2) and a client in
    /// every zone, `ledger` in the last zone.
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

/// Flags `strait up` passes through to the processes it starts.
#[derive(Debug, Default)]
struct Tuning {
    global: Vec<String>,
    zone: Vec<String>,
}

impl Tuning {
    fn from_args(args: &UpArgs) -> Self {
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
}

/// The plan for one federation directory.
struct Plan<'a> {
    dir: &'a Path,
    program: PathBuf,
    tuning: Tuning,
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

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    strait_trust::store::write_key(path, text)
        .with_context(|| format!("writing {}", path.display()))
}

fn flag(name: &str, value: impl ToString) -> [String; 2] {
    [name.to_owned(), value.to_string()]
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
    if let Ok(existing) = processes::read(&dir)
        && existing.iter().any(supervisor::is_running)
    {
        bail!(
            "a federation is already running in {} (run `strait down --dir {}` first)",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    strait_global::credentials::create_private_dir(&dir.join("tokens"))?;

    let plan = Plan {
        dir: &dir,
        program: std::env::current_exe().context("locating the strait binary")?,
        tuning: Tuning::from_args(&args),
    };
    let mut records = Vec::new();
    let result = async {
        let api_addrs = start_global(&plan, args.global_nodes, &mut records).await?;
        start_zones(&plan, &api_addrs, &zones, &regions, &mut records).await?;
        start_gateways(&plan, &api_addrs, &zones, args.gateways, &mut records).await?;
        if args.demo {
            start_demo(&plan, &api_addrs, &zones, &mut records).await?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        eprintln!("start failed; stopping what was started");
        let _ = supervisor::stop_all(&records, STOP_GRACE, &progress);
        let _ = processes::write(&dir, &[]);
        return Err(err);
    }
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

/// Starts `plan`'s process `spec` and records it (processes.json is rewritten after each start,
/// so `down` can clean up after a partial failure).
fn start(
    plan: &Plan<'_>,
    spec: &ProcessSpec,
    records: &mut Vec<ProcessRecord>,
) -> anyhow::Result<()> {
    // Polling /ready blocks: keep it off the async workers.
    let record = tokio::task::block_in_place(|| {
        supervisor::start(spec, Instant::now() + READY_TIMEOUT, &progress)
    })?;
    records.push(record);
    processes::write(plan.dir, records)?;
    Ok(())
}

/// How many sets of ports a process is started on before `up` gives up on it.
const PORT_TRIES: usize = 3;

/// Starts the process `build` makes from `n` fresh loopback TCP ports, and records it; returns
/// the ports. They are picked right before the start, and if another program took one in
/// between (the race [`crate::local::ports::free_loopback_ports`] describes, which federations
/// started side by side, as the tests do, run into), the process exits with "address in use"
/// and is started again on new ports.
fn start_on_ports(
    plan: &Plan<'_>,
    n: usize,
    records: &mut Vec<ProcessRecord>,
    build: impl Fn(&[SocketAddr]) -> anyhow::Result<ProcessSpec>,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut attempt = 1;
    loop {
        let ports = crate::local::ports::free_loopback_ports(n)?;
        let spec = build(&ports)?;
        match start(plan, &spec, records) {
            Ok(()) => return Ok(ports),
            Err(err) if attempt < PORT_TRIES && lost_a_port(&err) => {
                eprintln!(
                    "{}: another program took one of its ports; starting it on new ones",
                    spec.name
                );
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether a process failed to start because one of its addresses was in use.
fn lost_a_port(err: &anyhow::Error) -> bool {
    match err.downcast_ref::<supervisor::SupervisorError>() {
        Some(
            supervisor::SupervisorError::ExitedBeforeReady { log, .. }
            | supervisor::SupervisorError::NotReady { log, .. },
        ) => log.lines.contains("Address already in use"),
        _ => false,
    }
}

fn spec(
    plan: &Plan<'_>,
    name: String,
    kind: ProcessKind,
    zone: Option<String>,
    args: Vec<String>,
    addresses: &[(&str, String)],
) -> ProcessSpec {
    ProcessSpec {
        name,
        kind,
        zone,
        node_id: None,
        program: plan.program.clone(),
        args,
        env: BTreeMap::new(),
        addresses: addresses
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        log_dir: plan.dir.join("logs"),
    }
}

/// Starts the global nodes one by one (each later one joins with a node token); returns their
/// gRPC addresses.
async fn start_global(
    plan: &Plan<'_>,
    nodes: u64,
    records: &mut Vec<ProcessRecord>,
) -> anyhow::Result<Vec<String>> {
    let dir = plan.dir;
    let mut api_addrs: Vec<String> = Vec::new();
    for id in 1..=nodes {
        let mut args: Vec<String> = ["global", "run"].map(str::to_owned).to_vec();
        args.extend(flag("--node-id", id));
        args.extend(flag(
            "--data-dir",
            dir.join(format!("global-{id}")).display(),
        ));
        args.extend(flag("--trust-domain", TRUST_DOMAIN));
        args.extend(flag("--admin-credentials-dir", dir.join("admin").display()));
        args.extend(plan.tuning.global.iter().cloned());
        if id > 1 {
            let client = AdminClient::new(&client_config(dir, &api_addrs))?;
            let request = pb::CreateJoinTokenRequest {
                purpose: Some(pb::create_join_token_request::Purpose::NodeId(id)),
                ttl_seconds: 600,
            };
            let token = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.create_join_token(r).await }
                })
                .await?;
            let token_file = dir.join("tokens").join(format!("global-{id}.token"));
            write_private(&token_file, &token.join_token)?;
            args.extend(flag("--join", api_addrs.join(",")));
            args.extend(flag("--token-file", token_file.display()));
        }
        let ports = start_on_ports(plan, 2, records, |ports| {
            let [api, admin]: [SocketAddr; 2] = ports.try_into().context("port allocation")?;
            let mut args = args.clone();
            args.extend(flag("--listen", api));
            args.extend(flag("--admin-listen", admin));
            let mut spec = spec(
                plan,
                format!("global-{id}"),
                ProcessKind::Global,
                None,
                args,
                &[("api", api.to_string()), ("admin", admin.to_string())],
            );
            spec.node_id = Some(id);
            Ok(spec)
        })?;
        let api = ports.first().context("port allocation")?;
        api_addrs.push(api.to_string());
        let config = client_config(dir, &api_addrs)
            .to_yaml()
            .map_err(|e| anyhow::anyhow!(e))?;
        std::fs::write(dir.join("config.yaml"), config)?;
    }
    Ok(api_addrs)
}

/// Creates each zone in global and starts its control plane with its join token, each zone on
/// its own loopback VIP range.
async fn start_zones(
    plan: &Plan<'_>,
    api_addrs: &[String],
    zones: &[String],
    regions: &BTreeMap<String, String>,
    records: &mut Vec<ProcessRecord>,
) -> anyhow::Result<()> {
    let dir = plan.dir;
    let client = AdminClient::new(&client_config(dir, api_addrs))?;
    for (index, zone) in zones.iter().enumerate() {
        let region = regions
            .get(zone)
            .cloned()
            .unwrap_or_else(|| format!("region-{zone}"));
        let request = pb::CreateZoneRequest {
            name: zone.clone(),
            region: region.clone(),
            labels: Default::default(),
            token_ttl_seconds: 0,
        };
        let reply = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.create_zone(r).await }
            })
            .await?;
        let token_file = dir.join("tokens").join(format!("zone-{zone}.token"));
        write_private(&token_file, &reply.join_token)?;
        let vip_cidr = crate::local::ports::loopback_range(index)?;
        let mut args: Vec<String> = ["zone", "run"].map(str::to_owned).to_vec();
        args.extend(flag("--name", zone));
        args.extend(flag("--region", &region));
        args.extend(flag("--global", api_addrs.join(",")));
        args.extend(flag("--token-file", token_file.display()));
        args.extend(flag(
            "--data-dir",
            dir.join(format!("zone-{zone}")).display(),
        ));
        args.extend(flag("--vip-cidr", &vip_cidr));
        args.extend(flag("--trust-domain", TRUST_DOMAIN));
        args.extend(plan.tuning.zone.iter().cloned());
        // api, admin, and dns (UDP and TCP on the same port).
        start_on_ports(plan, 3, records, |ports| {
            let [api, admin, dns]: [SocketAddr; 3] = ports.try_into().context("port allocation")?;
            let mut args = args.clone();
            args.extend(flag("--listen", api));
            args.extend(flag("--admin-listen", admin));
            args.extend(flag("--dns", dns));
            let addresses = [
                ("api", api.to_string()),
                ("admin", admin.to_string()),
                ("dns", dns.to_string()),
                ("vip_cidr", vip_cidr.clone()),
            ];
            Ok(spec(
                plan,
                format!("zone-{zone}"),
                ProcessKind::Zone,
                Some(zone.clone()),
                args,
                &addresses,
            ))
        })?;
    }
    Ok(())
}

/// Starts `replicas` east-west gateways in every zone: each with a gateway token, a QUIC port
/// other zones reach (its public address), an HTTP/2 CONNECT port for its zone's sidecars and
/// an admin port.
async fn start_gateways(
    plan: &Plan<'_>,
    api_addrs: &[String],
    zones: &[String],
    replicas: u16,
    records: &mut Vec<ProcessRecord>,
) -> anyhow::Result<()> {
    let dir = plan.dir;
    let client = AdminClient::new(&client_config(dir, api_addrs))?;
    let bundle = dir.join("admin/bundle.pem");
    for zone in zones {
        let zone_api = zone_api(records, zone)?;
        for replica in 1..=replicas {
            let name = format!("gateway-{zone}-{replica}");
            let token = workload_token(&client, zone, "", "gateway").await?;
            let token_file = dir.join("tokens").join(format!("{name}.token"));
            write_private(&token_file, &token)?;
            let mut args: Vec<String> = ["gateway", "run"].map(str::to_owned).to_vec();
            args.extend(flag("--zone-cp", &zone_api));
            args.extend(flag("--zone", zone));
            args.extend(flag("--token-file", token_file.display()));
            args.extend(flag("--instance", &name));
            args.extend(flag("--bundle-file", bundle.display()));
            args.extend(flag("--trust-domain", TRUST_DOMAIN));
            start_on_ports(plan, 2, records, |ports| {
                let [local, admin]: [SocketAddr; 2] =
                    ports.try_into().context("port allocation")?;
                let quic = *crate::local::ports::free_loopback_udp_ports(1)?
                    .first()
                    .context("UDP port allocation")?;
                let mut args = args.clone();
                args.extend(flag("--quic", quic));
                args.extend(flag("--public-address", quic));
                args.extend(flag("--local", local));
                args.extend(flag("--admin", admin));
                let addresses = [
                    ("quic", quic.to_string()),
                    ("local", local.to_string()),
                    ("admin", admin.to_string()),
                ];
                Ok(spec(
                    plan,
                    name.clone(),
                    ProcessKind::Gateway,
                    Some(zone.clone()),
                    args,
                    &addresses,
                ))
            })?;
        }
    }
    Ok(())
}

/// The `api` address of zone `zone`'s control plane among the started processes.
fn zone_api(records: &[ProcessRecord], zone: &str) -> anyhow::Result<String> {
    records
        .iter()
        .find(|r| r.name == format!("zone-{zone}"))
        .and_then(|r| r.address("api"))
        .map(str::to_owned)
        .with_context(|| format!("zone-{zone} is not among the started processes"))
}

/// Port every demo app listens on (on its own loopback address).
const DEMO_PORT: u16 = 8080;
/// Port of every demo sidecar's inbound listener (next to its app).
const DEMO_INBOUND_PORT: u16 = 15008;

/// The demo workloads: in every zone `echo` v1 and v2 (app + sidecar each) and a `client`
/// sidecar on the zone's VIPs (no app: `curl VIP:8080` from this machine is a call from that
/// zone's client); `ledger` only in the last zone. Apps listen on 127.1.Z.N:8080, one loopback
/// address each, so every instance can use the service's port.
async fn start_demo(
    plan: &Plan<'_>,
    api_addrs: &[String],
    zones: &[String],
    records: &mut Vec<ProcessRecord>,
) -> anyhow::Result<()> {
    let dir = plan.dir;
    let client = AdminClient::new(&client_config(dir, api_addrs))?;
    let bundle = dir.join("admin/bundle.pem");
    for (z, zone) in zones.iter().enumerate() {
        let zone_api = zone_api(records, zone)?;
        let mut workloads: Vec<(&str, Option<&str>)> =
            vec![("echo", Some("v1")), ("echo", Some("v2"))];
        if z + 1 == zones.len() {
            workloads.push(("ledger", Some("v1")));
        }
        workloads.push(("client", None));
        for (n, (service, version)) in workloads.iter().enumerate() {
            let host = format!("127.1.{z}.{}", n + 1);
            let token = workload_token(&client, zone, "demo", service).await?;
            let token_file = dir.join("tokens").join(format!("{service}-{zone}.token"));
            write_private(&token_file, &token)?;
            let name = match version {
                Some(v) => format!("{service}-{v}-{zone}"),
                None => format!("{service}-{zone}"),
            };
            let inbound = format!("{host}:{DEMO_INBOUND_PORT}");
            let mut args: Vec<String> = ["sidecar", "run"].map(str::to_owned).to_vec();
            args.extend(flag("--zone-cp", &zone_api));
            args.extend(flag("--zone", zone));
            args.extend(flag("--token-file", token_file.display()));
            args.extend(flag("--service", service));
            args.extend(flag("--namespace", "demo"));
            args.extend(flag("--instance", &name));
            args.extend(flag("--inbound", &inbound));
            args.extend(flag("--bundle-file", bundle.display()));
            if let Some(version) = version {
                let app = format!("{host}:{DEMO_PORT}");
                let app_args = [
                    "demo-app",
                    "--listen",
                    &app,
                    "--service",
                    service,
                    "--zone",
                    zone,
                    "--instance",
                    &name,
                ];
                let app_addresses = [("http", app.clone()), ("admin", app.clone())];
                let app_spec = spec(
                    plan,
                    name.clone(),
                    ProcessKind::App,
                    Some(zone.clone()),
                    app_args.map(str::to_owned).to_vec(),
                    &app_addresses,
                );
                start(plan, &app_spec, records)?;
                args.extend(flag("--app", &app));
                args.extend(flag("--labels", format!("version={version}")));
                args.extend(flag("--outbound", "none"));
            } else {
                args.extend(flag("--outbound", "vips"));
            }
            let sidecar_name = format!("{name}-sidecar");
            start_on_ports(plan, 1, records, |ports| {
                let [admin]: [SocketAddr; 1] = ports.try_into().context("port allocation")?;
                let mut args = args.clone();
                args.extend(flag("--admin", admin));
                let addresses = [("inbound", inbound.clone()), ("admin", admin.to_string())];
                Ok(spec(
                    plan,
                    sidecar_name.clone(),
                    ProcessKind::Sidecar,
                    Some(zone.clone()),
                    args,
                    &addresses,
                ))
            })?;
        }
    }
    Ok(())
}

/// A bootstrap token for `service` in `namespace` (a gateway: service `gateway`, no namespace).
async fn workload_token(
    client: &AdminClient,
    zone: &str,
    namespace: &str,
    service: &str,
) -> anyhow::Result<String> {
    let request = pb::CreateWorkloadTokenRequest {
        zone: zone.to_owned(),
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        service_account: String::new(),
        ttl_seconds: 0,
    };
    let reply = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.create_workload_token(r).await }
        })
        .await?;
    Ok(reply.token)
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

fn client_config(dir: &Path, api_addrs: &[String]) -> ClientConfig {
    ClientConfig {
        trust_domain: TRUST_DOMAIN.to_owned(),
        global: api_addrs.to_vec(),
        credentials: CredentialPaths {
            cert: dir.join("admin/admin.crt"),
            key: dir.join("admin/admin.key"),
            bundle: dir.join("admin/bundle.pem"),
        },
    }
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let records = processes::read(&args.dir)?;
    if records.is_empty() {
        eprintln!("nothing is running in {}", args.dir.display());
        return Ok(());
    }
    let report = supervisor::stop_all(&records, STOP_GRACE, &progress);
    let failures: Vec<String> = report
        .failures()
        .map(|(name, why)| format!("{name}: {why}"))
        .collect();
    if !failures.is_empty() {
        bail!(
            "some processes could not be stopped: {}",
            failures.join("; ")
        );
    }
    processes::write(&args.dir, &[])?;
    eprintln!(
        "federation in {} stopped (data and logs kept)",
        args.dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A stand-in process: serves `/ready` on the port it is given, or exits with Python's
    /// "Address already in use" if it cannot bind it.
    const SERVE_READY: &str = "import http.server as h, sys
class R(h.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'ready')
h.HTTPServer(('127.0.0.1', int(sys.argv[1])), R).serve_forever()";

    /// A plan whose processes are `python3` with the spec's arguments, logging under `dir`.
    fn python_plan(dir: &Path) -> anyhow::Result<Plan<'_>> {
        std::fs::create_dir_all(dir.join("logs"))?;
        Ok(Plan {
            dir,
            program: PathBuf::from("python3"),
            tuning: Tuning::default(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_that_lost_its_port_is_started_again_on_a_new_one() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let plan = python_plan(dir.path())?;
        // The first set of ports is taken by "another program" (held here) before the process
        // binds it: the race `free_loopback_ports` leaves open.
        let taken: Mutex<Vec<std::net::TcpListener>> = Mutex::new(Vec::new());
        let tries = Mutex::new(Vec::new());
        let mut records = Vec::new();
        let ports = start_on_ports(&plan, 1, &mut records, |ports| {
            let [port]: [SocketAddr; 1] = ports.try_into().context("port allocation")?;
            let mut tries = tries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if tries.is_empty() {
                taken
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(std::net::TcpListener::bind(port)?);
            }
            tries.push(port);
            Ok(spec(
                &plan,
                "stand-in".to_owned(),
                ProcessKind::App,
                None,
                vec![
                    "-c".to_owned(),
                    SERVE_READY.to_owned(),
                    port.port().to_string(),
                ],
                &[("admin", port.to_string())],
            ))
        })?;
        let report = supervisor::stop_all(&records, STOP_GRACE, &|_| {});
        let tries = tries
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(tries.len(), 2, "{tries:?}");
        assert_eq!(ports, vec![tries[1]]);
        assert_ne!(tries[0], tries[1]);
        assert_eq!(records.len(), 1);
        assert!(report.all_stopped(), "{report:?}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_start_failures_are_not_retried() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let plan = python_plan(dir.path())?;
        let tries = Mutex::new(0);
        let mut records = Vec::new();
        let result = start_on_ports(&plan, 1, &mut records, |ports| {
            *tries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
            Ok(spec(
                &plan,
                "failing".to_owned(),
                ProcessKind::App,
                None,
                vec!["-c".to_owned(), "raise SystemExit('bad config')".to_owned()],
                &[("admin", ports[0].to_string())],
            ))
        });
        let err = result.err().context("a failing process started")?;
        assert!(err.to_string().contains("bad config"), "{err:#}");
        assert_eq!(
            *tries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            1
        );
        assert!(records.is_empty());
        Ok(())
    }
}
