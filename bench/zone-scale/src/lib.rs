//! The zone control plane benchmarks (see `docs/benchmarks.md`):
//!
//! - [`propagation`]: `strait up --zones a,b,c`, N simulated sidecar streams, then a policy
//!   change per round, timed from just before `ApplyPolicies` to every stream's ACK;
//! - [`inventory`]: three fake zones that report 10,000 services each, timed to global's acks
//!   and to the real zones serving all 30,000, with message sizes and resident memory;
//! - [`sidecar`], [`federation`]: the sidecar's control-plane half and the `strait up`
//!   federation; [`procs`]: the guard that stops every federation, also on error or signal;
//! - [`stats`], [`report`]: percentiles, `/proc` readings and the markdown (pure).

pub mod federation;
pub mod inventory;
pub mod procs;
pub mod propagation;
pub mod report;
pub mod sidecar;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::procs::Cleanup;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Propagation,
    Inventory,
    All,
}

/// Command line of the benchmark.
#[derive(Debug, clap::Parser)]
#[command(
    about = "Zone control plane: policy propagation to N sidecar streams over 3 zones, and 3 x 10,000 services through global and the zones"
)]
pub struct Args {
    /// The `strait` binary (`cargo build --release` puts it at target/release/strait).
    #[arg(long, default_value = "target/release/strait")]
    pub strait_bin: PathBuf,
    /// Which part to run.
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,
    /// Simulated sidecar streams, comma-separated; each count gets its own federation.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub streams: Vec<usize>,
    /// Policy changes per stream count.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Discovery streams sharing one HTTP/2 connection (and one certificate per zone).
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// A round in which some stream has not seen the new value after this long is counted
    /// as missed by those streams.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub round_timeout: Duration,
    /// Services each fake zone reports.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// How long the inventory may take to reach every zone.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub inventory_timeout: Duration,
    /// Parent directory for the federations' data; a fresh subdirectory is made in it.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data and logs after the run.
    #[arg(long)]
    pub keep: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Upper bounds that keep a mistyped flag from running for hours.
const MAX_STREAMS: usize = 3_000;
const MAX_ROUNDS: usize = 200;
const MAX_SERVICES: usize = 100_000;
const MAX_TIMEOUT: Duration = Duration::from_secs(900);

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.streams.is_empty() || self.streams.iter().any(|n| !(3..=MAX_STREAMS).contains(n)) {
            anyhow::bail!("--streams takes counts between 3 and {MAX_STREAMS}");
        }
        if self.rounds == 0 || self.rounds > MAX_ROUNDS {
            anyhow::bail!("--rounds must be between 1 and {MAX_ROUNDS}");
        }
        if self.streams_per_connection == 0 {
            anyhow::bail!("--streams-per-connection must be at least 1");
        }
        if self.services == 0 || self.services > MAX_SERVICES {
            anyhow::bail!("--services must be between 1 and {MAX_SERVICES}");
        }
        for (flag, d) in [
            ("--round-timeout", self.round_timeout),
            ("--inventory-timeout", self.inventory_timeout),
        ] {
            if d.is_zero() || d > MAX_TIMEOUT {
                anyhow::bail!("{flag} must be above 0 and at most {MAX_TIMEOUT:?}");
            }
        }
        if !self.strait_bin.is_file() {
            anyhow::bail!(
                "--strait-bin {}: no such file (build with `cargo build --release -p strait`)",
                self.strait_bin.display()
            );
        }
        Ok(())
    }
}

/// Runs the benchmark; on Ctrl-C or SIGTERM the run is dropped, and with it the [`Cleanup`]
/// guard, which stops every federation.
pub async fn run_until_signal(args: Args) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; federations stopped")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated; federations stopped")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    let bin = std::path::absolute(&args.strait_bin)?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = tempfile::Builder::new()
        .prefix("strait-bench-zone-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    eprintln!("data and logs under {}", base.path().display());

    let mut cleanup = Cleanup::default();
    let result = measure(&args, &bin, base.path(), &mut cleanup).await;
    cleanup.stop_all();
    let text = match result {
        Ok(text) => text,
        Err(err) => {
            let kept = base.keep();
            eprintln!("kept {} for its logs", kept.display());
            return Err(err);
        }
    };
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    if args.keep {
        let kept = base.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

async fn measure(
    args: &Args,
    bin: &std::path::Path,
    base: &std::path::Path,
    cleanup: &mut Cleanup,
) -> anyhow::Result<String> {
    let mut text = String::new();
    if matches!(args.phase, Phase::Propagation | Phase::All) {
        let mut runs = Vec::new();
        for &n in &args.streams {
            let settings = propagation::Settings {
                streams: n,
                rounds: args.rounds,
                streams_per_connection: args.streams_per_connection,
                round_timeout: args.round_timeout,
            };
            let dir = base.join(format!("propagation-{n}"));
            let outcome = propagation::run(bin, &dir, &settings, cleanup).await?;
            eprintln!(
                "  {n} streams: per-stream p50 {:.1} ms p99 {:.1} ms; last stream p50 {:.1} ms p99 {:.1} ms",
                stats::ms(outcome.per_stream.p50),
                stats::ms(outcome.per_stream.p99),
                stats::ms(outcome.last_stream.p50),
                stats::ms(outcome.last_stream.p99),
            );
            runs.push(outcome);
        }
        text.push_str("### Config propagation\n\n");
        text.push_str(&report::propagation(&runs));
        text.push('\n');
    }
    if matches!(args.phase, Phase::Inventory | Phase::All) {
        let settings = inventory::Settings {
            services: args.services,
            timeout: args.inventory_timeout,
        };
        let outcome = inventory::run(bin, &base.join("inventory"), &settings, cleanup).await?;
        text.push_str("### Inventory scale\n\n");
        text.push_str(&report::inventory(&outcome));
    }
    Ok(text)
}
