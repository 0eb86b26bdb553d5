//! `strait drill failover`: drives fixed-rate load at a service from one zone's client, takes
//! the service out of a zone ([`crate::outage`]), watches where answers come from, restores it
//! and reports (see [`crate::timeline`] for what each number means).
//!
//! Guardrail: when the errors pass `max_errors`, the drill restores at once and reports
//! `aborted`. Whatever happens, a drill never leaves the service out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use strait_local::processes::ProcessesError;
use strait_local::supervisor::SupervisorError;

use crate::admin::{Admin, AdminError};
use crate::load::{Load, LoadConfig, Protocol, request_once_with};
use crate::outage::{Mode, Outage};
use crate::timeline::{self, Analysis, Phases, SampleResult};

/// What to drill, as the operator asked.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    /// The service to take out.
    pub service: String,
    pub namespace: String,
    /// The zone it is taken out of.
    pub zone: String,
    /// The zone whose client sends the load (`None`: `zone`).
    pub from: Option<String>,
    pub mode: Mode,
    /// What the load speaks (gRPC: `Greeter/Hello` of the demo's `greeter`).
    pub protocol: Protocol,
    /// Requests per second.
    pub rate: u32,
    /// How long the service stays out.
    pub duration: Duration,
    /// Guardrail: restore at once when errors pass this.
    pub max_errors: u64,
    /// Objective: traffic has left the zone within this.
    pub objective_rto: Duration,
    /// Objective: at most this many failed requests.
    pub objective_errors: u64,
    /// The local federation's directory (`kill` and `partition` modes).
    pub dir: Option<PathBuf>,
}

/// The drill's fixed phases; [`Timings::default`] is what `strait drill failover` uses.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Load before the service is taken out, so the report shows the steady state.
    pub warmup: Duration,
    /// How long failback may take before the drill stops waiting for it.
    pub failback_wait: Duration,
    /// Load kept after failback, so the report shows the zone serving again.
    pub tail: Duration,
    /// The timeline's slice.
    pub slice: Duration,
    /// How long the service must answer before the drill starts.
    pub preflight: Duration,
    /// How often the guardrail and progress are checked.
    pub poll: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(2),
            failback_wait: Duration::from_secs(20),
            tail: Duration::from_millis(500),
            slice: Duration::from_millis(500),
            preflight: Duration::from_secs(20),
            poll: Duration::from_millis(50),
        }
    }
}

/// What a running drill tells its caller, to show.
#[derive(Debug)]
pub enum DrillEvent<'a> {
    /// The load in phase `phase` (`steady`, `out`, `restored`), a few times a second.
    Progress { phase: &'a str, load: &'a Load },
    /// Restoring failed; the drill goes on to report (or fail with the take-out error).
    RestoreFailed(&'a DrillError),
    /// No more progress will come.
    Done,
}

/// A drill could not run, or could not restore.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A control-plane call failed.
    #[error("{0}")]
    Admin(AdminError),
    #[error("no exported service {namespace}/{service}")]
    NoService { namespace: String, service: String },
    #[error("{namespace}/{service} has no VIP in zone {zone}")]
    NoVip {
        namespace: String,
        service: String,
        zone: String,
    },
    #[error("{namespace}/{service} has no port")]
    NoPort { namespace: String, service: String },
    #[error("{namespace}/{service}'s VIP {addr:?}")]
    BadVip {
        namespace: String,
        service: String,
        addr: String,
        source: std::net::AddrParseError,
    },
    #[error("{target} does not answer ({reason}): nothing to drill")]
    NotAnswering { target: SocketAddr, reason: String },
    #[error("pass --dir (the directory of `strait up`) or --config DIR/config.yaml")]
    NoFederationDir,
    #[error("kill mode needs a local federation: reading {}", dir.display())]
    KillNeedsFederation {
        dir: PathBuf,
        source: Box<ProcessesError>,
    },
    #[error("no process of {service} in zone {zone} in {}", dir.display())]
    NoVictims {
        service: String,
        zone: String,
        dir: PathBuf,
    },
    #[error("partition mode needs root (it adds iptables rules)")]
    PartitionNeedsRoot,
    #[error("partition cuts zone {zone} off from the other zones: give --from another zone")]
    PartitionNeedsFrom { zone: String },
    #[error("reading {}", path.display())]
    Processes {
        path: PathBuf,
        source: Box<ProcessesError>,
    },
    #[error("zone {zone} has no gateway in {}", dir.display())]
    NoGateway { zone: String, dir: PathBuf },
    #[error("partition mode needs iptables")]
    NoIptables(#[source] Box<DrillError>),
    #[error("running iptables")]
    RunIptables(#[source] std::io::Error),
    #[error("iptables failed: {stderr}")]
    Iptables { stderr: String },
    #[error("killing {name}")]
    Kill {
        name: String,
        source: Box<SupervisorError>,
    },
    #[error("{name} has no recorded command")]
    NoCommand { name: String },
    #[error("restart task")]
    RestartTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Restart(Box<SupervisorError>),
    #[error(transparent)]
    ProcessList(Box<ProcessesError>),
    #[error("taking the service out failed (it was restored)")]
    TakeOut(#[source] Box<DrillError>),
}

// Boxed: they are large, and a drill's errors travel through every `Result` of it.
impl From<SupervisorError> for DrillError {
    fn from(err: SupervisorError) -> Self {
        DrillError::Restart(Box::new(err))
    }
}

impl From<ProcessesError> for DrillError {
    fn from(err: ProcessesError) -> Self {
        DrillError::ProcessList(Box::new(err))
    }
}

/// The drill's outcome.
#[derive(Debug, Clone)]
pub struct Report {
    pub spec: DrillSpec,
    /// The zone whose client sent the load.
    pub from: String,
    pub analysis: Analysis,
    pub aborted: bool,
    pub objectives_met: bool,
    /// Why the drill's numbers may not mean what they seem.
    pub notes: Vec<String>,
    /// The timeline's slice.
    pub slice: Duration,
}

impl Report {
    /// The report as `-o json` prints it.
    pub fn json(&self) -> serde_json::Value {
        let a = &self.analysis;
        let s = &self.spec;
        json!({
            "service": s.service,
            "namespace": s.namespace,
            "zone": s.zone,
            "from": self.from,
            "mode": s.mode.as_str(),
            "protocol": s.protocol.as_str(),
            "rate": s.rate,
            "duration_ms": s.duration.as_millis() as u64,
            "requests": a.requests,
            "errors": a.errors,
            "error_reasons": a.error_reasons,
            "errors_by_status": a.errors_by_status,
            "detection_ms": a.detection_ms,
            "rto_ms": a.rto_ms,
            "failback_ms": a.failback_ms,
            "answers_by_zone": a.answers_by_zone,
            "latency_ms": {"p50": a.p50_ms, "p99": a.p99_ms},
            "timeline": a.timeline,
            "aborted": self.aborted,
            "objectives": {
                "rto_ms": s.objective_rto.as_millis() as u64,
                "errors": s.objective_errors,
            },
            "objectives_met": self.objectives_met,
            "notes": self.notes,
        })
    }

    /// Whether the RTO objective was met (the report's other objectives are in
    /// `objectives_met`).
    pub fn rto_met(&self) -> bool {
        self.analysis
            .rto_ms
            .is_some_and(|r| u128::from(r) <= self.spec.objective_rto.as_millis())
    }
}

/// Runs a drill with `admin` and returns its report.
pub async fn run_failover(
    admin: &impl Admin,
    spec: DrillSpec,
    timings: Timings,
    events: &(dyn Fn(DrillEvent<'_>) + Sync),
) -> Result<Report, DrillError> {
    let from = spec.from.clone().unwrap_or_else(|| spec.zone.clone());
    let target = service_address(admin, &spec.namespace, &spec.service, &from).await?;
    let mut outage = Outage::prepare(&spec)?;
    let config = LoadConfig {
        protocol: spec.protocol,
        ..LoadConfig::new(target, spec.rate)
    };
    preflight(&config, timings).await?;

    let load = Load::start(config);
    let running = &load;
    let keep_going = move |phase: &'static str, time: Duration, max_errors: u64| {
        watch(running, events, phase, time, max_errors, timings.poll)
    };
    let mut aborted = !keep_going("steady", timings.warmup, spec.max_errors).await;
    let mut phases = Phases {
        out_at: load.elapsed(),
        restored_at: None,
    };
    let mut failure = None;
    if !aborted {
        if let Err(err) = outage.take_out(admin).await {
            failure = Some(err);
        } else {
            aborted = !keep_going("out", spec.duration, spec.max_errors).await;
        }
    }
    // Restore whatever happened above: a drill never leaves the service out. The outage ends
    // when restoring starts (answers from the zone while processes come back are failback).
    phases.restored_at = Some(load.elapsed());
    let restore = outage.restore(admin).await;
    if let Err(err) = &restore {
        events(DrillEvent::RestoreFailed(err));
    }
    if failure.is_none() && restore.is_ok() {
        let restored_at = load.elapsed();
        let deadline = Instant::now() + timings.failback_wait;
        while Instant::now() < deadline {
            events(DrillEvent::Progress {
                phase: "restored",
                load: &load,
            });
            if load.progress().last_zone.as_deref() == Some(spec.zone.as_str())
                && load.elapsed() > restored_at
            {
                break;
            }
            tokio::time::sleep(timings.poll).await;
        }
        let _ = keep_going("restored", timings.tail, u64::MAX).await;
    }
    events(DrillEvent::Done);
    let samples = load.stop().await;
    if let Some(err) = failure {
        return Err(DrillError::TakeOut(Box::new(err)));
    }
    restore?;
    let analysis = timeline::analyze(&samples, &spec.zone, phases, timings.slice);
    let served_before = samples.iter().any(|s| {
        s.sent < phases.out_at
            && matches!(&s.result, SampleResult::Answered { zone } if *zone == spec.zone)
    });
    let mut notes = Vec::new();
    if !served_before {
        notes.push(format!(
            "zone {} answered none of zone {from}'s requests before it was taken out: the drill \
             measured nothing (another zone serves zone {from} first; try --from {})",
            spec.zone, spec.zone
        ));
    }
    if spec.mode == Mode::Kill {
        let reset = in_flight_at_kill(&samples, phases.out_at);
        if reset > 0 {
            notes.push(format!(
                "{reset} request(s) in flight at the kill failed: on a SIGKILLed instance \
                 they were reset mid-call, and the mesh retries no request that may have \
                 reached the app (a POST, any gRPC call)"
            ));
        }
    }
    let mut report = Report {
        spec,
        from,
        analysis,
        aborted,
        objectives_met: false,
        notes,
        slice: timings.slice,
    };
    report.objectives_met = served_before
        && !aborted
        && report.analysis.errors <= report.spec.objective_errors
        && report.rto_met()
        && report.analysis.failback_ms.is_some();
    Ok(report)
}

/// How long after `out_at` the kill may land (finding and signalling the processes): a
/// request sent in that window can still be in flight on a killed instance.
const KILL_LANDS_WITHIN: Duration = Duration::from_millis(100);

/// Failed requests still unanswered at `out_at` and sent before the kill landed (within
/// [`KILL_LANDS_WITHIN`] of it): the calls in flight when the processes were killed.
pub fn in_flight_at_kill(samples: &[crate::timeline::Sample], out_at: Duration) -> usize {
    samples
        .iter()
        .filter(|s| {
            s.sent < out_at + KILL_LANDS_WITHIN
                && s.sent + s.latency >= out_at
                && matches!(s.result, SampleResult::Failed { .. })
        })
        .count()
}

/// Keeps the load going for `time`, showing progress; `false` when the guardrail tripped.
async fn watch(
    load: &Load,
    events: &(dyn Fn(DrillEvent<'_>) + Sync),
    phase: &str,
    time: Duration,
    max_errors: u64,
    poll: Duration,
) -> bool {
    let end = Instant::now() + time;
    while Instant::now() < end {
        events(DrillEvent::Progress { phase, load });
        if load.errors() > max_errors {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
    true
}

/// The service's VIP and first port in zone `from` (where that zone's client listens).
async fn service_address(
    admin: &impl Admin,
    namespace: &str,
    service: &str,
    from: &str,
) -> Result<SocketAddr, DrillError> {
    let found = admin
        .service(namespace, service)
        .await
        .map_err(DrillError::Admin)?
        .ok_or_else(|| DrillError::NoService {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        })?;
    let vip = found.vips.get(from).ok_or_else(|| DrillError::NoVip {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        zone: from.to_owned(),
    })?;
    let port = found.ports.first().ok_or_else(|| DrillError::NoPort {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
    })?;
    let addr = format!("{vip}:{port}");
    addr.parse().map_err(|source| DrillError::BadVip {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        addr,
        source,
    })
}

/// Waits until the service answers through `target`: a drill of a path that does not work
/// would measure nothing.
async fn preflight(config: &LoadConfig, timings: Timings) -> Result<(), DrillError> {
    let deadline = Instant::now() + timings.preflight;
    let probe = LoadConfig {
        timeout: Duration::from_secs(2),
        ..config.clone()
    };
    loop {
        match request_once_with(&probe).await {
            SampleResult::Answered { .. } => return Ok(()),
            SampleResult::Failed { reason } if Instant::now() > deadline => {
                return Err(DrillError::NotAnswering {
                    target: config.target,
                    reason,
                });
            }
            SampleResult::Failed { .. } => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests;
