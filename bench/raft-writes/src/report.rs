//! Percentiles and the markdown report. Pure: no clocks, no IO.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Args;
use crate::cpu::Usage;
use crate::fsync::FsyncLatency;
use crate::load::Outcome;
use crate::strait::LogCounts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Strait,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Strait => "Strait",
            System::Etcd => "etcd",
        }
    }
}

/// One system at one writer count.
#[derive(Debug, Clone)]
pub struct Run {
    pub system: System,
    pub writers: usize,
    pub writes: usize,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Strait only: mean time the leader's Admin API spent on a write (parse, commit, apply),
    /// from its `strait_global_write_latency_seconds` histogram.
    pub server_mean: Option<Duration>,
    pub cpu: Usage,
    /// Strait only: the leader's log flushes and appended entries during the run, from
    /// `strait_global_log_flushes_total` and `strait_global_log_entries_appended_total`.
    pub leader_log: Option<LogCounts>,
}

impl Run {
    pub fn new(
        system: System,
        writers: usize,
        mut outcome: Outcome,
        server_mean: Option<Duration>,
        cpu: Usage,
    ) -> Self {
        outcome.latencies.sort_unstable();
        Run {
            system,
            writers,
            writes: outcome.latencies.len(),
            errors: outcome.errors,
            first_error: outcome.first_error,
            elapsed: outcome.elapsed,
            p50: percentile(&outcome.latencies, 50.0),
            p99: percentile(&outcome.latencies, 99.0),
            server_mean,
            cpu,
            leader_log: None,
        }
    }

    /// On the leader: log flushes per appended entry, and acknowledged writes per entry (the
    /// mean batch size).
    pub fn leader_log_ratios(&self) -> Option<(f64, f64)> {
        let log = self.leader_log.filter(|l| l.entries > 0)?;
        let entries = log.entries as f64;
        Some((log.flushes as f64 / entries, self.writes as f64 / entries))
    }

    /// CPU time per acknowledged write, in ms: (all server processes, this client).
    pub fn cpu_per_write_ms(&self) -> (f64, f64) {
        if self.writes == 0 {
            return (0.0, 0.0);
        }
        let n = self.writes as f64;
        (ms(self.cpu.servers) / n, ms(self.cpu.client) / n)
    }

    /// Cores busy on average during the run: (this benchmark's processes, the whole machine).
    pub fn cores(&self) -> (f64, f64) {
        let secs = self.elapsed.as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        let ours = (self.cpu.servers + self.cpu.client).as_secs_f64() / secs;
        (ours, self.cpu.machine.as_secs_f64() / secs)
    }

    pub fn writes_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.writes as f64 / secs
        } else {
            0.0
        }
    }

    /// A progress line for stderr.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:>6} {:>3} writers: {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} writes, {} errors; CPU/write: servers {:.3} ms, client {:.3} ms)",
            self.system.name(),
            self.writers,
            self.writes_per_sec(),
            ms(self.p50),
            ms(self.p99),
            self.writes,
            self.errors,
            self.cpu_per_write_ms().0,
            self.cpu_per_write_ms().1,
        );
        if let Some(err) = &self.first_error {
            let _ = write!(line, " first error: {err}");
        }
        line
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of an ascending slice; zero for an empty one.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".to_owned()
    }
}

/// The report: settings, the per-run table, and Strait/etcd ratios per writer count.
pub fn markdown(runs: &[Run], args: &Args, fsync: &FsyncLatency) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:?} measured per system and writer count after a {:?} warm-up; closed loop, one connection per writer, requests to the leader.",
        args.duration, args.warmup
    );
    let _ = writeln!(
        out,
        "fdatasync of a 4 KiB overwrite on the data disk: p50 {:.3} ms, p99 {:.3} ms ({} samples).\n",
        ms(fsync.p50),
        ms(fsync.p99),
        fsync.samples
    );
    let _ = writeln!(
        out,
        "| system | writers | writes | writes/s | p50 ms | p99 ms | errors | server-side mean ms | server CPU ms/write | client CPU ms/write | cores busy: bench / machine | leader flushes/entry | writes/entry |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let server = run
            .server_mean
            .map_or_else(|| "–".to_owned(), |d| format!("{:.2}", ms(d)));
        let (server_cpu, client_cpu) = run.cpu_per_write_ms();
        let (ours, machine) = run.cores();
        let (flushes_per_entry, writes_per_entry) = run.leader_log_ratios().map_or_else(
            || ("–".to_owned(), "–".to_owned()),
            |(f, w)| (format!("{f:.2}"), format!("{w:.1}")),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {:.3} | {:.3} | {:.2} / {:.2} | {} | {} |",
            run.system.name(),
            run.writers,
            run.writes,
            run.writes_per_sec(),
            ms(run.p50),
            ms(run.p99),
            run.errors,
            server,
            server_cpu,
            client_cpu,
            ours,
            machine,
            flushes_per_entry,
            writes_per_entry
        );
    }
    let _ = writeln!(
        out,
        "\n| writers | Strait/etcd writes/s | Strait/etcd p50 | Strait/etcd p99 |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    for strait in runs.iter().filter(|r| r.system == System::Strait) {
        let Some(etcd) = runs
            .iter()
            .find(|r| r.system == System::Etcd && r.writers == strait.writers)
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            strait.writers,
            ratio(strait.writes_per_sec(), etcd.writes_per_sec()),
            ratio(ms(strait.p50), ms(etcd.p50)),
            ratio(ms(strait.p99), ms(etcd.p99)),
        );
    }
    for run in runs.iter().filter(|r| r.first_error.is_some()) {
        let _ = writeln!(
            out,
            "\n{} with {} writers, first error: {}",
            run.system.name(),
            run.writers,
            run.first_error.as_deref().unwrap_or_default()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted = ms_list(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&ms_list(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn a_run_sorts_its_latencies_and_divides_by_elapsed() {
        let outcome = Outcome {
            latencies: ms_list(&[5, 1, 3, 2, 4]),
            errors: 0,
            first_error: None,
            elapsed: Duration::from_millis(500),
        };
        let run = Run::new(System::Strait, 1, outcome, None, Usage::default());
        assert_eq!(run.writes, 5);
        assert_eq!(run.p50, Duration::from_millis(3));
        assert_eq!(run.p99, Duration::from_millis(5));
        assert!((run.writes_per_sec() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn the_report_has_one_row_per_run_and_a_ratio_per_writer_count() {
        let run = |system, latency: u64, elapsed: u64| {
            Run::new(
                system,
                16,
                Outcome {
                    latencies: ms_list(&[latency; 10]),
                    errors: 0,
                    first_error: None,
                    elapsed: Duration::from_millis(elapsed),
                },
                None,
                Usage {
                    servers: Duration::from_millis(20),
                    client: Duration::from_millis(10),
                    machine: Duration::from_millis(40),
                },
            )
        };
        let mut strait = run(System::Strait, 4, 1000);
        strait.leader_log = Some(LogCounts {
            flushes: 2,
            entries: 4,
        });
        let runs = vec![strait, run(System::Etcd, 2, 500)];
        let args = <Args as clap::Parser>::parse_from(["bench"]);
        let fsync = FsyncLatency {
            samples: 1,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(1),
        };
        let text = markdown(&runs, &args, &fsync);
        assert!(
            text.contains(
                "| Strait | 16 | 10 | 10 | 4.00 | 4.00 | 0 | – | 2.000 | 1.000 | 0.03 / 0.04 | 0.50 | 2.5 |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| etcd | 16 | 10 | 20 | 2.00 | 2.00 | 0 | – | 2.000 | 1.000 | 0.06 / 0.08 | – | – |"
            ),
            "{text}"
        );
        assert!(text.contains("| 16 | 0.50 | 2.00 | 2.00 |"), "{text}");
    }
}
