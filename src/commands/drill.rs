//! `strait drill failover` and `strait drain|undrain`: flags in, report out. The drill itself
//! (load, taking the service out, restoring it, the analysis) is `strait_drill::failover`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use strait_drill::admin::Admin;
use strait_drill::failover::{self, DrillEvent, DrillSpec, Report, Timings};
use strait_drill::load::Protocol;
use strait_drill::outage::Mode;
use strait_global::admin_client::AdminClient;

use crate::cli::{ClientArgs, Format};
use crate::commands::admin::{client, print_structured};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Drain,
    Kill,
    Partition,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Drain => Mode::Drain,
            ModeArg::Kill => Mode::Kill,
            ModeArg::Partition => Mode::Partition,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Http,
    Grpc,
}

impl From<ProtocolArg> for Protocol {
    fn from(protocol: ProtocolArg) -> Self {
        match protocol {
            ProtocolArg::Http => Protocol::Http,
            ProtocolArg::Grpc => Protocol::Grpc,
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
    #[arg(long, value_enum, default_value_t = ModeArg::Drain)]
    pub mode: ModeArg,
    /// What the load speaks: `http` (`GET /`, a connection each) or `grpc`
    /// (`strait.demo.v1.Greeter/Hello` on one HTTP/2 channel: the service must serve it, as
    /// the demo's `greeter` does); failures are counted by their status.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Http)]
    pub protocol: ProtocolArg,
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

impl FailoverArgs {
    fn spec(&self) -> DrillSpec {
        let dir = self.dir.clone().or_else(|| {
            self.client
                .config
                .as_deref()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
        });
        DrillSpec {
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            zone: self.zone.clone(),
            from: self.from.clone(),
            mode: self.mode.into(),
            protocol: self.protocol.into(),
            rate: self.rate,
            duration: self.duration,
            max_errors: self.max_errors,
            objective_rto: self.objective_rto,
            objective_errors: self.objective_errors,
            dir,
        }
    }
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
    admin
        .set_drain(&args.namespace, &args.service, &args.zone, drained)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    crate::outln!(
        "{}/{} {} in zone {}",
        args.namespace,
        args.service,
        if drained { "drained" } else { "undrained" },
        args.zone
    );
    Ok(())
}

/// `strait drill failover`: runs the drill, prints the report; fails when an objective was
/// missed.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let format = args.format;
    let report = run_failover(&args).await?;
    print(&report, format)?;
    if !report.objectives_met {
        bail!("the drill missed its objectives");
    }
    Ok(())
}

/// Runs a drill with a live progress line and returns its report (`strait demo` prints it).
async fn run_failover(args: &FailoverArgs) -> anyhow::Result<Report> {
    run_drill(&client(&args.client)?, args.spec()).await
}

/// Runs the drill `spec` with a live progress line and returns its report.
pub async fn run_drill(admin: &AdminClient, spec: DrillSpec) -> anyhow::Result<Report> {
    let label = format!("drill {}/{} in {}", spec.namespace, spec.service, spec.zone);
    let live = std::io::stderr().is_terminal();
    let report = failover::run_failover(admin, spec, Timings::default(), &|event| {
        show(event, &label, live)
    })
    .await?;
    Ok(report)
}

/// A live status line on stderr (only when stderr is a terminal), and restore failures.
fn show(event: DrillEvent<'_>, label: &str, live: bool) {
    match event {
        DrillEvent::Progress { phase, load } if live => {
            let p = load.progress();
            eprint!(
                "\r{label}: {phase:<8} {:>5.1}s  sent {:>6}  ok {:>6}  errors {:>4}  last answer from {:<6}",
                load.elapsed().as_secs_f64(),
                p.sent,
                p.answered,
                p.errors,
                p.last_zone.unwrap_or_else(|| "-".to_owned())
            );
            let _ = std::io::stderr().flush();
        }
        DrillEvent::Progress { .. } => {}
        DrillEvent::RestoreFailed(err) => {
            clear(live);
            eprintln!("restoring failed: {}", chain(err));
        }
        DrillEvent::Done => clear(live),
    }
}

fn clear(live: bool) {
    if live {
        eprint!("\r{:100}\r", "");
    }
}

/// An error and its causes, `outer: inner: ...`.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Prints a drill's report as a table, or as JSON/YAML.
pub fn print(report: &Report, format: Format) -> anyhow::Result<()> {
    if format != Format::Table {
        return print_structured(format, &report.json());
    }
    let a = &report.analysis;
    let s = &report.spec;
    let ms = |v: Option<u64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v} ms"));
    crate::outln!(
        "Failover drill: {}/{} out of zone {} ({} mode), {} load from zone {}'s client at {}/s",
        s.namespace,
        s.service,
        s.zone,
        s.mode.as_str(),
        s.protocol.as_str(),
        report.from,
        s.rate
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
    if !a.errors_by_status.is_empty() {
        let by_status: Vec<String> = a
            .errors_by_status
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        crate::outln!("  by status    {}", by_status.join("  "));
    }
    crate::outln!("  detection    {}", ms(a.detection_ms));
    crate::outln!(
        "  RTO          {}  (objective ≤ {} ms: {})",
        ms(a.rto_ms),
        s.objective_rto.as_millis(),
        if report.rto_met() { "met" } else { "MISSED" }
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
        report.slice.as_millis()
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
    for note in &report.notes {
        crate::outln!("  note: {note}");
    }
    if report.aborted {
        crate::outln!("  ABORTED: errors passed --max-errors {}", s.max_errors);
    }
    crate::outln!(
        "  objectives   {}",
        if report.objectives_met {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
