//! The benchmark: start a 3-node Strait global cluster and a 3-node etcd cluster under one
//! directory, then for each writer count run the same closed-loop write load against Strait and
//! then etcd, and print one markdown table.
//!
//! - [`load`]: the closed-loop driver (N writers, each one write at a time, every latency kept).
//! - [`report`]: percentiles and the markdown table (pure).
//! - [`strait`], [`etcd`]: starting each cluster, finding its leader, one writer per connection.
//! - [`procs`]: the guard that stops every process this run started, also on error or signal.
//! - [`fsync`]: the disk's own fsync latency, and [`cpu`]: CPU time per process, for context.

pub mod cpu;
pub mod etcd;
pub mod fsync;
pub mod http1;
pub mod load;
pub mod procs;
pub mod report;
pub mod strait;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::procs::Cleanup;
use crate::report::{Run, System};

/// Command line of the benchmark.
#[derive(Debug, clap::Parser)]
#[command(
    about = "Committed writes/s and p50/p99 commit latency: Strait global vs etcd, 3 nodes each on loopback"
)]
pub struct Args {
    /// The `strait` binary (`cargo build --release` puts it at target/release/strait).
    #[arg(long, default_value = "target/release/strait")]
    pub strait_bin: PathBuf,
    /// The etcd server binary (Debian's `etcd-server`).
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Measured time per system and writer count.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured load per system before the first measurement.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Concurrent writers, comma-separated; each count runs Strait then etcd.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub writers: Vec<usize>,
    /// A write that takes longer than this counts as an error.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Parent directory for both clusters' data (one filesystem for both); a fresh
    /// subdirectory is made in it. Defaults to the system temp directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data and logs after the run (the directory is printed).
    #[arg(long)]
    pub keep: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Upper bounds that keep a mistyped flag from running for hours.
const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_WRITERS: usize = 1024;

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            anyhow::bail!("--duration must be above 0 and at most {MAX_DURATION:?}");
        }
        if self.warmup > MAX_DURATION {
            anyhow::bail!("--warmup must be at most {MAX_DURATION:?}");
        }
        if self.writers.is_empty() || self.writers.iter().any(|&n| n == 0 || n > MAX_WRITERS) {
            anyhow::bail!("--writers takes counts between 1 and {MAX_WRITERS}");
        }
        for (flag, path) in [
            ("--strait-bin", &self.strait_bin),
            ("--etcd-bin", &self.etcd_bin),
        ] {
            if !path.is_file() {
                anyhow::bail!(
                    "{flag} {}: no such file (build with `cargo build --release`, install etcd with `apt-get install etcd-server`)",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// Runs the benchmark; on Ctrl-C or SIGTERM the run is dropped, and with it the [`Cleanup`]
/// guard, which stops both clusters.
pub async fn run_until_signal(args: Args) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; clusters stopped")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated; clusters stopped")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    let strait_bin = std::path::absolute(&args.strait_bin)?;
    let parent = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = tempfile::Builder::new()
        .prefix("strait-bench-raft-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    eprintln!("data and logs under {}", base.path().display());

    let fsync = fsync::measure(base.path(), 200).context("measuring fsync latency")?;
    eprintln!(
        "fdatasync of a 4 KiB overwrite on this disk: p50 {:.3} ms, p99 {:.3} ms",
        report::ms(fsync.p50),
        report::ms(fsync.p99)
    );

    let mut cleanup = Cleanup::default();
    let result = measure(&args, &strait_bin, base.path(), &mut cleanup).await;
    cleanup.stop_all();
    let runs = match result {
        Ok(runs) => runs,
        Err(err) => {
            // The logs say why a cluster did not start or a write failed.
            let kept = base.keep();
            eprintln!("kept {} for its logs", kept.display());
            return Err(err);
        }
    };

    let table = report::markdown(&runs, &args, &fsync);
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    if args.keep {
        let kept = base.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

/// Starts both clusters, warms each up, then runs every writer count on Strait and on etcd.
async fn measure(
    args: &Args,
    strait_bin: &std::path::Path,
    base: &std::path::Path,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Vec<Run>> {
    eprintln!("starting a 3-node Strait global cluster");
    let strait = strait::StraitCluster::start(strait_bin, &base.join("strait"), cleanup).await?;
    eprintln!("  leader {}", strait.leader_address());
    eprintln!("starting a 3-node etcd cluster");
    let etcd = etcd::EtcdCluster::start(&args.etcd_bin, &base.join("etcd"), cleanup).await?;
    eprintln!("  leader {}", etcd.leader_address());

    if !args.warmup.is_zero() {
        let n = args.writers.iter().copied().max().unwrap_or(1).min(16);
        eprintln!("warm-up: {n} writers for {:?} on each", args.warmup);
        let writers = strait.writers("warm", n)?;
        load::run(writers, args.warmup, args.request_timeout).await;
        let writers = etcd.writers("warm", n).await?;
        load::run(writers, args.warmup, args.request_timeout).await;
    }

    let mut runs = Vec::new();
    for (round, &n) in args.writers.iter().enumerate() {
        // Unique per round, so a repeated writer count creates new policies, not "unchanged".
        let label = format!("r{round}-c{n}");

        let before = strait.write_metric().await.ok();
        let writers = strait.writers(&label, n)?;
        let meter = cpu::Meter::start(strait.pids());
        let outcome = load::run(writers, args.duration, args.request_timeout).await;
        let usage = meter.stop();
        let after = strait.write_metric().await.ok();
        let (server_mean, leader_log) = match (before, after) {
            (Some(b), Some(a)) => (a.mean_since(&b), a.log_since(&b)),
            _ => (None, None),
        };
        let mut run = Run::new(System::Strait, n, outcome, server_mean, usage);
        run.leader_log = leader_log;
        eprintln!("{}", run.line());
        runs.push(run);

        let writers = etcd.writers(&label, n).await?;
        let meter = cpu::Meter::start(etcd.pids());
        let outcome = load::run(writers, args.duration, args.request_timeout).await;
        let run = Run::new(System::Etcd, n, outcome, None, meter.stop());
        eprintln!("{}", run.line());
        runs.push(run);
    }
    Ok(runs)
}
