//! The launch plan of `strait up`: which processes start, in which order, with which flags,
//! tokens and ports, recorded in `DIR/processes.json`, with `DIR/config.yaml` for the CLI.
//!
//! Global nodes first (each later one joins with a node token), then a control plane per zone
//! (each with its join token and its own loopback VIP range), then the east-west gateways, and
//! with `demo` the demo workloads. Every process is confirmed ready before the next starts; a
//! process that lost one of its ports to another program is started again on new ones; a start
//! that fails stops everything started before it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strait_global::admin_client::{AdminClient, ClientConfig, ClientError, CredentialPaths};
use strait_proto as pb;

use crate::ports::{self, PortsError};
use crate::processes::{self, ProcessKind, ProcessRecord, ProcessesError};
use crate::supervisor::{self, ProcessSpec, Progress, SupervisorError};

/// How long one process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The trust domain of a local federation.
pub const TRUST_DOMAIN: &str = "strait.local";
/// How many sets of ports a process is started on before `up` gives up on it.
const PORT_TRIES: usize = 3;
/// Port every demo app listens on (on its own loopback address).
pub const DEMO_PORT: u16 = 8080;
/// Port of every demo sidecar's inbound listener (next to its app).
const DEMO_INBOUND_PORT: u16 = 15008;

/// What to start, as `strait up`'s flags say.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Data, logs, processes.json and config.yaml (absolute).
    pub dir: PathBuf,
    /// The `strait` program every process runs.
    pub program: PathBuf,
    /// Global control plane nodes (1, 3 or 5).
    pub global_nodes: u64,
    /// Zones to start, in order (each gets the next loopback VIP range).
    pub zones: Vec<String>,
    /// Zone → region; other zones get `region-ZONE`.
    pub regions: BTreeMap<String, String>,
    /// Extra flags for the processes it starts.
    pub tuning: Tuning,
    /// East-west gateway replicas per zone.
    pub gateways: u16,
    /// Also start the demo workloads.
    pub demo: bool,
}

/// Flags `strait up` passes through to the processes it starts.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// For every `strait global run`.
    pub global: Vec<String>,
    /// For every `strait zone run`.
    pub zone: Vec<String>,
}

/// What `up` reports while it works.
#[derive(Debug, Clone, Copy)]
pub enum UpEvent<'a> {
    /// A process starting, ready, stopping or stopped.
    Process(Progress<'a>),
    /// Another program took one of `name`'s ports; it is started again on new ones.
    PortLost { name: &'a str },
    /// A start failed; what was started is being stopped.
    StartFailed,
}

/// Starting a federation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(
        "a federation is already running in {dir} (run `strait down --dir {dir}` first)",
        dir = dir.display()
    )]
    AlreadyRunning { dir: PathBuf },
    #[error("creating {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    PrivateDir(#[from] strait_global::credentials::CredentialsError),
    #[error("writing {}", path.display())]
    WriteToken {
        path: PathBuf,
        source: strait_trust::Error,
    },
    #[error("writing {}", path.display())]
    WriteConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rendering the client config: {0}")]
    RenderConfig(String),
    #[error(transparent)]
    Admin(#[from] ClientError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Processes(#[from] ProcessesError),
    #[error(transparent)]
    Ports(#[from] PortsError),
    #[error("port allocation: asked for {wanted}, got {got}")]
    PortCount { wanted: usize, got: usize },
    #[error("zone-{zone} is not among the started processes")]
    NoZone { zone: String },
}

/// The plan for one federation directory.
struct Plan<'a> {
    dir: &'a Path,
    program: PathBuf,
    tuning: Tuning,
    events: &'a (dyn Fn(UpEvent<'_>) + Sync),
}

/// Starts the federation `options` describes and returns its processes, in start order (also
/// in `processes.json`). Must run on a multi-thread tokio runtime: readiness polls block.
///
/// On failure everything it started is stopped and `processes.json` is left empty.
pub async fn up(
    options: &UpOptions,
    events: &(dyn Fn(UpEvent<'_>) + Sync),
) -> Result<Vec<ProcessRecord>, UpError> {
    let dir = options.dir.as_path();
    if let Ok(existing) = processes::read(dir)
        && existing.iter().any(supervisor::is_running)
    {
        return Err(UpError::AlreadyRunning {
            dir: dir.to_owned(),
        });
    }
    std::fs::create_dir_all(dir.join("logs")).map_err(|source| UpError::CreateDir {
        dir: dir.to_owned(),
        source,
    })?;
    strait_global::credentials::create_private_dir(&dir.join("tokens"))?;

    let plan = Plan {
        dir,
        program: options.program.clone(),
        tuning: options.tuning.clone(),
        events,
    };
    let mut records = Vec::new();
    let result = async {
        let api_addrs = start_global(&plan, options.global_nodes, &mut records).await?;
        start_zones(
            &plan,
            &api_addrs,
            &options.zones,
            &options.regions,
            &mut records,
        )
        .await?;
        start_gateways(
            &plan,
            &api_addrs,
            &options.zones,
            options.gateways,
            &mut records,
        )
        .await?;
        if options.demo {
            start_demo(&plan, &api_addrs, &options.zones, &mut records).await?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        events(UpEvent::StartFailed);
        let _ = supervisor::stop_all(&records, STOP_GRACE, &|p| events(UpEvent::Process(p)));
        let _ = processes::write(dir, &[]);
        return Err(err);
    }
    Ok(records)
}

/// The client config of the federation in `dir` whose global nodes are `api_addrs`.
pub fn client_config(dir: &Path, api_addrs: &[String]) -> ClientConfig {
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

fn write_private(path: &Path, text: &str) -> Result<(), UpError> {
    strait_trust::store::write_key(path, text).map_err(|source| UpError::WriteToken {
        path: path.to_owned(),
        source,
    })
}

fn flag(name: &str, value: impl ToString) -> [String; 2] {
    [name.to_owned(), value.to_string()]
}

/// `N` ports out of what [`start_on_ports`] picked.
fn take<const N: usize>(ports: &[SocketAddr]) -> Result<[SocketAddr; N], UpError> {
    ports.try_into().map_err(|_| UpError::PortCount {
        wanted: N,
        got: ports.len(),
    })
}

/// Starts `plan`'s process `spec` and records it (processes.json is rewritten after each start,
/// so `down` can clean up after a partial failure).
fn start(
    plan: &Plan<'_>,
    spec: &ProcessSpec,
    records: &mut Vec<ProcessRecord>,
) -> Result<(), UpError> {
    // Polling /ready blocks: keep it off the async workers.
    let record = tokio::task::block_in_place(|| {
        supervisor::start(spec, Instant::now() + READY_TIMEOUT, &|p| {
            (plan.events)(UpEvent::Process(p))
        })
    })?;
    records.push(record);
    processes::write(plan.dir, records)?;
    Ok(())
}

/// Starts the process `build` makes from `n` fresh loopback TCP ports, and records it; returns
/// the ports. They are picked right before the start, and if another program took one in
/// between (the race [`ports::free_loopback_ports`] describes, which federations started side
/// by side, as the tests do, run into), the process exits with "address in use" and is started
/// again on new ports.
fn start_on_ports(
    plan: &Plan<'_>,
    n: usize,
    records: &mut Vec<ProcessRecord>,
    build: impl Fn(&[SocketAddr]) -> Result<ProcessSpec, UpError>,
) -> Result<Vec<SocketAddr>, UpError> {
    let mut attempt = 1;
    loop {
        let ports = ports::free_loopback_ports(n)?;
        let spec = build(&ports)?;
        match start(plan, &spec, records) {
            Ok(()) => return Ok(ports),
            Err(err) if attempt < PORT_TRIES && lost_a_port(&err) => {
                (plan.events)(UpEvent::PortLost { name: &spec.name });
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether a process failed to start because one of its addresses was in use.
fn lost_a_port(err: &UpError) -> bool {
    match err {
        UpError::Supervisor(
            SupervisorError::ExitedBeforeReady { log, .. } | SupervisorError::NotReady { log, .. },
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
) -> Result<Vec<String>, UpError> {
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
            let [api, admin] = take(ports)?;
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
        let [api, _] = take(&ports)?;
        api_addrs.push(api.to_string());
        let config = client_config(dir, &api_addrs)
            .to_yaml()
            .map_err(UpError::RenderConfig)?;
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).map_err(|source| UpError::WriteConfig { path, source })?;
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
) -> Result<(), UpError> {
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
        let vip_cidr = ports::loopback_range(index)?;
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
            let [api, admin, dns] = take(ports)?;
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
) -> Result<(), UpError> {
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
                let [local, admin] = take(ports)?;
                let [quic] = take(&crate::ports::free_loopback_udp_ports(1)?)?;
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
fn zone_api(records: &[ProcessRecord], zone: &str) -> Result<String, UpError> {
    records
        .iter()
        .find(|r| r.name == format!("zone-{zone}"))
        .and_then(|r| r.address("api"))
        .map(str::to_owned)
        .ok_or_else(|| UpError::NoZone {
            zone: zone.to_owned(),
        })
}

/// The demo workloads: in every zone `echo` v1 and v2 (HTTP), `greeter` (gRPC, its sidecar
/// told `--app-protocol grpc`) and `wsecho` (WebSocket), app + sidecar each, and a `client`
/// sidecar on the zone's VIPs (no app: `curl VIP:8080` from this machine is a call from that
/// zone's client); `ledger` only in the last zone. Apps listen on 127.1.Z.N:8080, one loopback
/// address each, so every instance can use the service's port.
async fn start_demo(
    plan: &Plan<'_>,
    api_addrs: &[String],
    zones: &[String],
    records: &mut Vec<ProcessRecord>,
) -> Result<(), UpError> {
    let dir = plan.dir;
    let client = AdminClient::new(&client_config(dir, api_addrs))?;
    let bundle = dir.join("admin/bundle.pem");
    for (z, zone) in zones.iter().enumerate() {
        let zone_api = zone_api(records, zone)?;
        let mut workloads: Vec<(&str, Option<&str>, DemoKind)> = vec![
            ("echo", Some("v1"), DemoKind::Http),
            ("echo", Some("v2"), DemoKind::Http),
        ];
        if z + 1 == zones.len() {
            workloads.push(("ledger", Some("v1"), DemoKind::Http));
        }
        workloads.push(("client", None, DemoKind::Http));
        // After the client, so the addresses of the workloads above stay what they were.
        workloads.push(("greeter", Some("v1"), DemoKind::Grpc));
        workloads.push(("wsecho", Some("v1"), DemoKind::WebSocket));
        for (n, (service, version, kind)) in workloads.iter().enumerate() {
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
                    "--protocol",
                    kind.demo_app_protocol(),
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
                args.extend(flag("--app-protocol", kind.sidecar_app_protocol()));
                args.extend(flag("--outbound", "none"));
            } else {
                args.extend(flag("--outbound", "vips"));
            }
            let sidecar_name = format!("{name}-sidecar");
            start_on_ports(plan, 1, records, |ports| {
                let [admin] = take(ports)?;
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

/// What a demo workload's app speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DemoKind {
    Http,
    Grpc,
    WebSocket,
}

impl DemoKind {
    /// `strait demo-app --protocol`.
    fn demo_app_protocol(self) -> &'static str {
        match self {
            DemoKind::Http => "http",
            DemoKind::Grpc => "grpc",
            DemoKind::WebSocket => "websocket",
        }
    }

    /// `strait sidecar run --app-protocol`: a WebSocket app is HTTP/1.1 (the upgrade is
    /// HTTP/1.1's).
    fn sidecar_app_protocol(self) -> &'static str {
        match self {
            DemoKind::Http | DemoKind::WebSocket => "http",
            DemoKind::Grpc => "grpc",
        }
    }
}

/// A bootstrap token for `service` in `namespace` (a gateway: service `gateway`, no namespace).
async fn workload_token(
    client: &AdminClient,
    zone: &str,
    namespace: &str,
    service: &str,
) -> Result<String, UpError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A stand-in process: serves `/ready` on the port it is given, or exits with Python's
    /// "Address already in use" if it cannot bind it.
    const SERVE_READY: &str = "import http.server as h, sys
class R(h.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'ready')
h.HTTPServer(('127.0.0.1', int(sys.argv[1])), R).serve_forever()";

    /// A plan whose processes are `python3` with the spec's arguments, logging under `dir`.
    fn python_plan<'a>(
        dir: &'a Path,
        events: &'a (dyn Fn(UpEvent<'_>) + Sync),
    ) -> std::io::Result<Plan<'a>> {
        std::fs::create_dir_all(dir.join("logs"))?;
        Ok(Plan {
            dir,
            program: PathBuf::from("python3"),
            tuning: Tuning::default(),
            events,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_that_lost_its_port_is_started_again_on_a_new_one() -> TestResult {
        let dir = tempfile::tempdir()?;
        let lost = Mutex::new(Vec::new());
        let events = |e: UpEvent<'_>| {
            if let UpEvent::PortLost { name } = e {
                lost.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(name.to_owned());
            }
        };
        let plan = python_plan(dir.path(), &events)?;
        // The first set of ports is taken by "another program" (held here) before the process
        // binds it: the race `free_loopback_ports` leaves open.
        let taken: Mutex<Vec<std::net::TcpListener>> = Mutex::new(Vec::new());
        let tries = Mutex::new(Vec::new());
        let mut records = Vec::new();
        let ports = start_on_ports(&plan, 1, &mut records, |ports| {
            let [port] = take(ports)?;
            let mut tries = tries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if tries.is_empty() {
                let held = std::net::TcpListener::bind(port)
                    .map_err(|e| UpError::Ports(PortsError::Bind(e)))?;
                taken
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(held);
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
        assert_eq!(
            lost.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            ["stand-in"]
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_start_failures_are_not_retried() -> TestResult {
        let dir = tempfile::tempdir()?;
        let plan = python_plan(dir.path(), &|_| {})?;
        let tries = Mutex::new(0);
        let mut records = Vec::new();
        let result = start_on_ports(&plan, 1, &mut records, |ports| {
            *tries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
            let [port] = take(ports)?;
            Ok(spec(
                &plan,
                "failing".to_owned(),
                ProcessKind::App,
                None,
                vec!["-c".to_owned(), "raise SystemExit('bad config')".to_owned()],
                &[("admin", port.to_string())],
            ))
        });
        let err = result.err().ok_or("a failing process started")?;
        assert!(err.to_string().contains("bad config"), "{err}");
        assert_eq!(
            *tries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            1
        );
        assert!(records.is_empty());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_federation_is_not_started_twice() -> TestResult {
        let dir = tempfile::tempdir()?;
        // A running process recorded in the directory.
        let sleeper = supervisor::spawn(&ProcessSpec {
            name: "global-1".to_owned(),
            kind: ProcessKind::Global,
            zone: None,
            node_id: Some(1),
            program: PathBuf::from("sleep"),
            args: vec!["30".to_owned()],
            env: BTreeMap::new(),
            addresses: BTreeMap::new(),
            log_dir: dir.path().join("old-logs"),
        })?;
        processes::write(dir.path(), std::slice::from_ref(&sleeper))?;
        let options = UpOptions {
            dir: dir.path().to_owned(),
            program: PathBuf::from("/nonexistent/strait"),
            global_nodes: 1,
            zones: Vec::new(),
            regions: BTreeMap::new(),
            tuning: Tuning::default(),
            gateways: 0,
            demo: false,
        };
        let err = up(&options, &|_| {}).await.err().ok_or("started twice")?;
        assert!(matches!(err, UpError::AlreadyRunning { .. }), "{err}");
        assert!(!dir.path().join("logs").exists(), "wrote before refusing");
        assert!(
            supervisor::is_running(&sleeper),
            "the running one was touched"
        );
        let _ = supervisor::kill(&sleeper, supervisor::Signal::SIGKILL);
        Ok(())
    }
}
