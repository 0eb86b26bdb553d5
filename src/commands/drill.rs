//! `strait drill failover` and `strait drain|undrain`.
//!
//! A drill drives fixed-rate load at a service from one zone's client, takes the service out
//! of a zone, watches where answers come from, restores it and reports (see
//! [`strait_drill::timeline`] for what each number means). Modes:
//! - `drain`: through the control plane (global stores the drain, zones push it; works on any
//!   federation);
//! - `kill`: SIGKILLs the service's processes (apps and sidecars) in the zone, from the local
//!   federation's `processes.json`, and starts them again to restore;
//! - `partition`: as root, drops the UDP traffic to the zone's gateways (iptables), so other
//!   zones lose their way into it; removed to restore.
//!
//! Guardrail: when the errors pass `--max-errors`, the drill restores at once and reports
//! `aborted`.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use strait_drill::load::{Load, LoadConfig, request_once};
use strait_drill::timeline::{self, Analysis, Phases, SampleResult};
use strait_global::admin_client::AdminClient;
use strait_proto as pb;

use crate::cli::{ClientArgs, Format};
use crate::commands::admin::{client, print_structured};
use crate::local::processes::{self, ProcessRecord};
use crate::local::supervisor::{self, ProcessSpec};

/// Load before the service is taken out, so the report shows the steady state.
const WARMUP: Duration = Duration::from_secs(2);
/// How long failback may take before the drill stops waiting for it.
const FAILBACK_WAIT: Duration = Duration::from_secs(20);
/// Load kept after failback, so the report shows the zone serving again.
const TAIL: Duration = Duration::from_millis(500);
/// The timeline's slice.
const SLICE: Duration = Duration::from_millis(500);
/// How long the service must answer before the drill starts.
const PREFLIGHT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Drain,
    Kill,
    Partition,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Drain => "drain",
            Mode::Kill => "kill",
            Mode::Partition => "partition",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The service to take out.
    #[arg(long)]
    pub service: String,
    #[arg(long, default_value = "demo")]
    pub namespace: String,
    /// The zone it is taken out of.
    #[arg(long)]
    pub zone: String,
    /// The zone whose client sends the load (default: `--zone`).
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long, value_enum, default_value_t = Mode::Drain)]
    pub mode: Mode,
    /// Requests per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// How long the service stays out.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Guardrail: restore at once when errors pass this.
    #[arg(long, default_value_t = 100)]
    pub max_errors: u64,
    /// Objective: traffic has left the zone within this.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub objective_rto: Duration,
    /// Objective: at most this many failed requests.
    #[arg(long, default_value_t = 0)]
    pub objective_errors: u64,
    /// The local federation's directory (`kill` mode; default: the client config's directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub service: String,
    #[arg(long, default_value = "demo")]
    pub namespace: String,
    #[arg(long)]
    pub zone: String,
}

pub async fn drain(args: DrainArgs, drained: bool) -> anyhow::Result<()> {
    let admin = client(&args.client)?;
    set_drain(&admin, &args.namespace, &args.service, &args.zone, drained).await?;
    crate::outln!(
        "{}/{} {} in zone {}",
        args.namespace,
        args.service,
        if drained { "drained" } else { "undrained" },
        args.zone
    );
    Ok(())
}

async fn set_drain(
    admin: &AdminClient,
    namespace: &str,
    service: &str,
    zone: &str,
    drained: bool,
) -> anyhow::Result<()> {
    let request = pb::SetDrainRequest {
        service: Some(pb::ServiceRef {
            namespace: namespace.to_owned(),
            name: service.to_owned(),
        }),
        zone: zone.to_owned(),
        drained,
    };
    admin
        .call(|mut c| {
            let r = request.clone();
            async move { c.set_drain(r).await }
        })
        .await?;
    Ok(())
}

/// The drill's report, as printed.
#[derive(Debug, Clone)]
pub struct Report {
    pub args: FailoverArgs,
    pub from: String,
    pub analysis: Analysis,
    pub aborted: bool,
    pub objectives_met: bool,
    /// Why the drill's numbers may not mean what they seem.
    pub notes: Vec<String>,
}

impl Report {
    pub fn json(&self) -> serde_json::Value {
        let a = &self.analysis;
        json!({
            "service": self.args.service,
            "namespace": self.args.namespace,
            "zone": self.args.zone,
            "from": self.from,
            "mode": self.args.mode.as_str(),
            "rate": self.args.rate,
            "duration_ms": self.args.duration.as_millis() as u64,
            "requests": a.requests,
            "errors": a.errors,
            "error_reasons": a.error_reasons,
            "detection_ms": a.detection_ms,
            "rto_ms": a.rto_ms,
            "failback_ms": a.failback_ms,
            "answers_by_zone": a.answers_by_zone,
            "latency_ms": {"p50": a.p50_ms, "p99": a.p99_ms},
            "timeline": a.timeline,
            "aborted": self.aborted,
            "objectives": {
                "rto_ms": self.args.objective_rto.as_millis() as u64,
                "errors": self.args.objective_errors,
            },
            "objectives_met": self.objectives_met,
            "notes": self.notes,
        })
    }

    pub fn print(&self, format: Format) -> anyhow::Result<()> {
        if format != Format::Table {
            return print_structured(format, &self.json());
        }
        let a = &self.analysis;
        let ms = |v: Option<u64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v} ms"));
        let objective_rto = self.args.objective_rto.as_millis();
        let rto_met = a.rto_ms.is_some_and(|r| u128::from(r) <= objective_rto);
        crate::outln!(
            "Failover drill: {}/{} out of zone {} ({} mode), load from zone {}'s client at {}/s",
            self.args.namespace,
            self.args.service,
            self.args.zone,
            self.args.mode.as_str(),
            self.from,
            self.args.rate
        );
        crate::outln!("  requests     {}", a.requests);
        crate::outln!(
            "  errors       {}{}",
            a.errors,
            if a.error_reasons.is_empty() {
                String::new()
            } else {
                format!("  {:?}", a.error_reasons)
            }
        );
        crate::outln!("  detection    {}", ms(a.detection_ms));
        crate::outln!(
            "  RTO          {}  (objective ≤ {objective_rto} ms: {})",
            ms(a.rto_ms),
            if rto_met { "met" } else { "MISSED" }
        );
        crate::outln!("  failback     {}", ms(a.failback_ms));
        let answers: Vec<String> = a
            .answers_by_zone
            .iter()
            .map(|(z, n)| format!("{z}: {n}"))
            .collect();
        crate::outln!("  answers      {}", answers.join("  "));
        crate::outln!(
            "  latency      p50 {:.1} ms  p99 {:.1} ms",
            a.p50_ms,
            a.p99_ms
        );
        crate::outln!(
            "  timeline     (answers per zone, errors, per {} ms)",
            SLICE.as_millis()
        );
        for b in &a.timeline {
            let zones: Vec<String> = b.zones.iter().map(|(z, n)| format!("{z}={n}")).collect();
            let errors = if b.errors > 0 {
                format!(" errors={}", b.errors)
            } else {
                String::new()
            };
            crate::outln!(
                "    {:>6.1}s  {}{errors}",
                b.start_ms as f64 / 1000.0,
                zones.join(" ")
            );
        }
        for note in &self.notes {
            crate::outln!("  note: {note}");
        }
        if self.aborted {
            crate::outln!(
                "  ABORTED: errors passed --max-errors {}",
                self.args.max_errors
            );
        }
        crate::outln!(
            "  objectives   {}",
            if self.objectives_met { "met" } else { "MISSED" }
        );
        Ok(())
    }
}

/// `strait drill failover`: runs the drill, prints the report; fails when an objective was
/// missed.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let format = args.format;
    let report = run_failover(args).await?;
    report.print(format)?;
    if !report.objectives_met {
        bail!("the drill missed its objectives");
    }
    Ok(())
}

/// Runs a drill and returns its report (`strait demo` prints it its own way).
pub async fn run_failover(args: FailoverArgs) -> anyhow::Result<Report> {
    let admin = client(&args.client)?;
    let from = args.from.clone().unwrap_or_else(|| args.zone.clone());
    let target = service_address(&admin, &args.namespace, &args.service, &from).await?;
    let mut outage = Outage::prepare(&args)?;
    preflight(target).await?;

    let load = Load::start(LoadConfig::new(target, args.rate));
    let progress = Progress::new(&args);
    let mut aborted = !watch(&load, &progress, "steady", WARMUP, args.max_errors).await;
    let mut phases = Phases {
        out_at: load.elapsed(),
        restored_at: None,
    };
    let mut failure = None;
    if !aborted {
        if let Err(err) = outage.take_out(&admin).await {
            failure = Some(err);
        } else {
            aborted = !watch(&load, &progress, "out", args.duration, args.max_errors).await;
        }
    }
    // Restore whatever happened above: a drill never leaves the service out. The outage ends
    // when restoring starts (answers from the zone while processes come back are failback).
    phases.restored_at = Some(load.elapsed());
    let restore = outage.restore(&admin).await;
    if let Err(err) = &restore {
        progress.clear();
        eprintln!("restoring failed: {err:#}");
    }
    if failure.is_none() && restore.is_ok() {
        let restored_at = load.elapsed();
        let deadline = Instant::now() + FAILBACK_WAIT;
        while Instant::now() < deadline {
            progress.show(&load, "restored");
            if load.progress().last_zone.as_deref() == Some(args.zone.as_str())
                && load.elapsed() > restored_at
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = watch(&load, &progress, "restored", TAIL, u64::MAX).await;
    }
    progress.clear();
    let samples = load.stop().await;
    if let Some(err) = failure {
        return Err(err.context("taking the service out failed (it was restored)"));
    }
    restore?;
    let analysis = timeline::analyze(&samples, &args.zone, phases, SLICE);
    let served_before = samples.iter().any(|s| {
        s.sent < phases.out_at
            && matches!(&s.result, SampleResult::Answered { zone } if *zone == args.zone)
    });
    let mut notes = Vec::new();
    if !served_before {
        notes.push(format!(
            "zone {} answered none of zone {from}'s requests before it was taken out: the drill \
             measured nothing (another zone serves zone {from} first; try --from {})",
            args.zone, args.zone
        ));
    }
    let objectives_met = served_before
        && !aborted
        && analysis.errors <= args.objective_errors
        && analysis
            .rto_ms
            .is_some_and(|r| u128::from(r) <= args.objective_rto.as_millis())
        && analysis.failback_ms.is_some();
    Ok(Report {
        args,
        from,
        analysis,
        aborted,
        objectives_met,
        notes,
    })
}

/// Keeps the load going for `time`, showing progress; `false` when the guardrail tripped.
async fn watch(
    load: &Load,
    progress: &Progress,
    phase: &str,
    time: Duration,
    max_errors: u64,
) -> bool {
    let end = Instant::now() + time;
    while Instant::now() < end {
        progress.show(load, phase);
        if load.errors() > max_errors {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// The service's VIP and first port in zone `from` (where that zone's client listens).
async fn service_address(
    admin: &AdminClient,
    namespace: &str,
    service: &str,
    from: &str,
) -> anyhow::Result<SocketAddr> {
    let reply = admin
        .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
        .await?;
    let found = reply
        .services
        .iter()
        .find(|s| {
            s.service
                .as_ref()
                .is_some_and(|r| r.namespace == namespace && r.name == service)
        })
        .with_context(|| format!("no exported service {namespace}/{service}"))?;
    let vip = found
        .vips
        .get(from)
        .with_context(|| format!("{namespace}/{service} has no VIP in zone {from}"))?;
    let port = found
        .ports
        .first()
        .map(|p| p.port)
        .with_context(|| format!("{namespace}/{service} has no port"))?;
    let addr = format!("{vip}:{port}");
    addr.parse()
        .with_context(|| format!("{namespace}/{service}'s VIP {addr:?}"))
}

/// Waits until the service answers through `target`: a drill of a path that does not work
/// would measure nothing.
async fn preflight(target: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + PREFLIGHT;
    loop {
        match request_once(target, Duration::from_secs(2)).await {
            SampleResult::Answered { .. } => return Ok(()),
            SampleResult::Failed { reason } if Instant::now() > deadline => {
                bail!("{target} does not answer ({reason}): nothing to drill")
            }
            SampleResult::Failed { .. } => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

// === taking a service out ===

/// What a mode did, so it can be undone.
enum Outage {
    Drain {
        namespace: String,
        service: String,
        zone: String,
        applied: bool,
    },
    Kill {
        dir: PathBuf,
        victims: Vec<ProcessRecord>,
        /// The victims taken down (killed now, or found already gone), in start order.
        killed: Vec<ProcessRecord>,
    },
    Partition {
        ports: Vec<String>,
        applied: Vec<String>,
    },
}

fn federation_dir(args: &FailoverArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.dir {
        return Ok(dir.clone());
    }
    args.client
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("pass --dir (the directory of `strait up`) or --config DIR/config.yaml")
}

impl Outage {
    /// Checks the mode can work here before any load is sent.
    fn prepare(args: &FailoverArgs) -> anyhow::Result<Self> {
        match args.mode {
            Mode::Drain => Ok(Outage::Drain {
                namespace: args.namespace.clone(),
                service: args.service.clone(),
                zone: args.zone.clone(),
                applied: false,
            }),
            Mode::Kill => {
                let dir = federation_dir(args)?;
                let records = processes::read(&dir).with_context(|| {
                    format!(
                        "kill mode needs a local federation: reading {}",
                        dir.display()
                    )
                })?;
                let prefix = format!("{}-", args.service);
                let victims: Vec<ProcessRecord> = records
                    .into_iter()
                    .filter(|r| {
                        r.zone.as_deref() == Some(args.zone.as_str()) && r.name.starts_with(&prefix)
                    })
                    .collect();
                if victims.is_empty() {
                    bail!(
                        "no process of {} in zone {} in {}",
                        args.service,
                        args.zone,
                        dir.display()
                    );
                }
                Ok(Outage::Kill {
                    dir,
                    victims,
                    killed: Vec::new(),
                })
            }
            Mode::Partition => {
                if !nix::unistd::geteuid().is_root() {
                    bail!("partition mode needs root (it adds iptables rules)");
                }
                if args.from.as_deref().is_none_or(|f| f == args.zone) {
                    bail!(
                        "partition cuts zone {} off from the other zones: give --from another zone",
                        args.zone
                    );
                }
                let dir = federation_dir(args)?;
                let records = processes::read(&dir)
                    .with_context(|| format!("reading {}", processes::path(&dir).display()))?;
                let ports: Vec<String> = records
                    .iter()
                    .filter(|r| {
                        r.kind == processes::ProcessKind::Gateway
                            && r.zone.as_deref() == Some(args.zone.as_str())
                    })
                    .filter_map(|r| r.address("quic"))
                    .filter_map(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
                    .collect();
                if ports.is_empty() {
                    bail!("zone {} has no gateway in {}", args.zone, dir.display());
                }
                iptables(&["-L", "-n"]).context("partition mode needs iptables")?;
                Ok(Outage::Partition {
                    ports,
                    applied: Vec::new(),
                })
            }
        }
    }

    async fn take_out(&mut self, admin: &AdminClient) -> anyhow::Result<()> {
        match self {
            Outage::Drain {
                namespace,
                service,
                zone,
                applied,
            } => {
                set_drain(admin, namespace, service, zone, true).await?;
                *applied = true;
            }
            Outage::Kill {
                victims, killed, ..
            } => {
                for victim in victims.iter() {
                    match supervisor::kill(victim, nix::sys::signal::Signal::SIGKILL) {
                        // Already down is what the drill wants; it is started again with the rest.
                        Ok(()) | Err(supervisor::SupervisorError::NotRunning { .. }) => {
                            killed.push(victim.clone());
                        }
                        Err(err) => {
                            return Err(
                                anyhow::Error::new(err).context(format!("killing {}", victim.name))
                            );
                        }
                    }
                }
            }
            Outage::Partition { ports, applied } => {
                for port in ports.iter() {
                    iptables(&drop_rule("-I", port))?;
                    applied.push(port.clone());
                }
            }
        }
        Ok(())
    }

    async fn restore(&mut self, admin: &AdminClient) -> anyhow::Result<()> {
        match self {
            Outage::Drain {
                namespace,
                service,
                zone,
                applied,
            } => {
                if std::mem::take(applied) {
                    set_drain(admin, namespace, service, zone, false).await?;
                }
            }
            Outage::Kill { dir, killed, .. } => {
                let killed = std::mem::take(killed);
                restart(dir, &killed).await?;
            }
            Outage::Partition { applied, .. } => {
                for port in std::mem::take(applied) {
                    iptables(&drop_rule("-D", &port))?;
                }
            }
        }
        Ok(())
    }
}

/// Starts `victims` again (in their start order: apps before their sidecars) and records their
/// new pids in `processes.json`.
async fn restart(dir: &Path, victims: &[ProcessRecord]) -> anyhow::Result<()> {
    for victim in victims {
        let spec = ProcessSpec::again(victim)
            .with_context(|| format!("{} has no recorded command", victim.name))?;
        let record = tokio::task::spawn_blocking(move || {
            supervisor::start(&spec, Instant::now() + Duration::from_secs(60), &|_| {})
        })
        .await
        .context("restart task")??;
        let mut records = processes::read(dir)?;
        if let Some(slot) = records.iter_mut().find(|r| r.name == record.name) {
            *slot = record;
        }
        processes::write(dir, &records)?;
    }
    Ok(())
}

fn drop_rule(action: &str, port: &str) -> Vec<String> {
    [
        action,
        "INPUT",
        "-p",
        "udp",
        "--dport",
        port,
        "-j",
        "DROP",
        "-m",
        "comment",
        "--comment",
        "strait-drill",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn iptables<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<()> {
    let out = std::process::Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

// === progress ===

/// A live status line on stderr (only when stderr is a terminal or JSON goes to stdout).
struct Progress {
    label: String,
    live: bool,
}

impl Progress {
    fn new(args: &FailoverArgs) -> Self {
        Self {
            label: format!("drill {}/{} in {}", args.namespace, args.service, args.zone),
            live: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, load: &Load, phase: &str) {
        if !self.live {
            return;
        }
        let p = load.progress();
        eprint!(
            "\r{}: {phase:<8} {:>5.1}s  sent {:>6}  ok {:>6}  errors {:>4}  last answer from {:<6}",
            self.label,
            load.elapsed().as_secs_f64(),
            p.sent,
            p.answered,
            p.errors,
            p.last_zone.unwrap_or_else(|| "-".to_owned())
        );
        let _ = std::io::stderr().flush();
    }

    fn clear(&self) {
        if self.live {
            eprint!("\r{:100}\r", "");
        }
    }
}
