//! Stopping the processes of a federation: SIGTERM, a grace period, then SIGKILL.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::liveness::{Probe, pid_of, probe, signal_group};
use super::{KILL_WAIT, POLL_INTERVAL, Progress, Signal, StopOutcome, StopReport};
use crate::processes::ProcessRecord;

/// Stops every recorded process, last started first (sidecars before zones before the global
/// nodes they talk to): SIGTERM, up to `grace` to exit, then SIGKILL. Processes already gone,
/// or whose pid now runs something else, are fine and reported as such.
///
/// Each process gets its own `grace`, so the worst case is `records.len() × grace`.
pub fn stop_all(
    records: &[ProcessRecord],
    grace: Duration,
    progress: &dyn Fn(Progress<'_>),
) -> StopReport {
    let mut report = StopReport::default();
    for record in records.iter().rev() {
        progress(Progress::Stopping {
            name: &record.name,
            pid: record.pid,
        });
        let outcome = stop_one(record, grace);
        progress(Progress::Stopped {
            name: &record.name,
            outcome: &outcome,
        });
        report.outcomes.push((record.name.clone(), outcome));
    }
    report
}

pub(super) fn stop_one(record: &ProcessRecord, grace: Duration) -> StopOutcome {
    let pid = match pid_of(record) {
        Ok(pid) => pid,
        Err(err) => {
            return StopOutcome::Failed {
                error: err.to_string(),
            };
        }
    };
    match probe(record, pid) {
        Probe::Running => {}
        Probe::Exited(_) | Probe::Gone => return StopOutcome::AlreadyGone,
        Probe::NotOurs(reason) => return StopOutcome::NotOurs { reason },
    }
    let start = Instant::now();
    if let Err(err) = signal_group(record, pid, Signal::SIGTERM) {
        return StopOutcome::Failed {
            error: err.to_string(),
        };
    }
    if wait_gone(record, pid, start + grace) {
        return StopOutcome::Terminated {
            after: start.elapsed(),
        };
    }
    if let Err(err) = signal_group(record, pid, Signal::SIGKILL) {
        return StopOutcome::Failed {
            error: err.to_string(),
        };
    }
    if wait_gone(record, pid, Instant::now() + KILL_WAIT) {
        StopOutcome::Killed { grace }
    } else {
        StopOutcome::Failed {
            error: format!("still running {KILL_WAIT:?} after SIGKILL"),
        }
    }
}

/// Polls until the process is gone or `deadline` passes; true if it is gone.
fn wait_gone(record: &ProcessRecord, pid: Pid, deadline: Instant) -> bool {
    loop {
        if !matches!(probe(record, pid), Probe::Running) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
