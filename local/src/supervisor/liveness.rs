//! Whether a recorded pid is still the process that was started, and signalling it.

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{Signal, SupervisorError};
use crate::processes::ProcessRecord;

// === liveness ===

/// What a recorded pid is now.
#[derive(Debug)]
pub(super) enum Probe {
    /// Still the process that was started, running.
    Running,
    /// It was a child of this CLI and has exited; the status says how.
    Exited(String),
    /// No such process (or only a zombie some other parent has yet to reap).
    Gone,
    /// The pid belongs to something else now.
    NotOurs(String),
}

pub(super) fn pid_of(record: &ProcessRecord) -> Result<Pid, SupervisorError> {
    // 0 and 1 must never be signalled: `kill(0)` means "my own group", 1 is init, and
    // negative values (from a huge u32) mean "every process".
    i32::try_from(record.pid)
        .ok()
        .filter(|pid| *pid > 1)
        .map(Pid::from_raw)
        .ok_or_else(|| SupervisorError::InvalidPid {
            name: record.name.clone(),
            pid: record.pid,
        })
}

pub(super) fn probe(record: &ProcessRecord, pid: Pid) -> Probe {
    // A child of this CLI stays a zombie until reaped, and `kill(pid, 0)` succeeds on a
    // zombie; `waitpid` both reaps it and says how it ended.
    match nix::sys::wait::waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => return Probe::Running,
        Ok(WaitStatus::Exited(_, code)) => return Probe::Exited(format!("exit status {code}")),
        Ok(WaitStatus::Signaled(_, signal, _)) => {
            return Probe::Exited(format!("killed by {signal}"));
        }
        // Stopped or continued: it is still there.
        Ok(_) => return Probe::Running,
        // ECHILD: started by an earlier CLI; find out by other means.
        Err(_) => {}
    }
    match nix::sys::signal::kill(pid, None) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return Probe::Gone,
        Err(Errno::EPERM) => {
            return Probe::NotOurs("it belongs to another user".to_owned());
        }
        Err(err) => return Probe::NotOurs(format!("cannot check it: {err}")),
    }
    identity(record, pid)
}

/// Whether the running `pid` is still what `record` started: everything is started as a
/// process group leader, and on Linux its command line is the recorded one.
fn identity(record: &ProcessRecord, pid: Pid) -> Probe {
    match nix::unistd::getpgid(Some(pid)) {
        Ok(pgid) if pgid == pid => {}
        Ok(_) => return Probe::NotOurs("it does not lead its own process group".to_owned()),
        Err(Errno::ESRCH) => return Probe::Gone,
        Err(err) => return Probe::NotOurs(format!("cannot check it: {err}")),
    }
    #[cfg(target_os = "linux")]
    {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            // A zombie has an empty command line; its parent will reap it.
            Ok(raw) if raw.is_empty() => return Probe::Gone,
            Ok(raw) => {
                let argv: Vec<String> = raw
                    .strip_suffix(b"\0")
                    .unwrap_or(&raw)
                    .split(|b| *b == 0)
                    .map(|arg| String::from_utf8_lossy(arg).into_owned())
                    .collect();
                if argv != record.command {
                    return Probe::NotOurs(format!("it runs `{}`", argv.join(" ")));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Probe::Gone,
            Err(err) => return Probe::NotOurs(format!("cannot read its command line: {err}")),
        }
    }
    Probe::Running
}

/// Whether the recorded process is still running (and is still what was started).
pub fn is_running(record: &ProcessRecord) -> bool {
    pid_of(record).is_ok_and(|pid| matches!(probe(record, pid), Probe::Running))
}

/// `Some(how it ended)` once the process is no longer running; `None` while it runs.
pub(super) fn exit_status(record: &ProcessRecord) -> Option<String> {
    let Ok(pid) = pid_of(record) else {
        return Some(format!("pid {} is invalid", record.pid));
    };
    match probe(record, pid) {
        Probe::Running => None,
        Probe::Exited(status) => Some(status),
        Probe::Gone => Some("it is no longer running".to_owned()),
        Probe::NotOurs(reason) => Some(format!("its pid {pid} is reused: {reason}")),
    }
}

// === signals ===

/// Sends `signal` to the recorded process and its process group, after checking the pid is
/// still that process. For drills (kill a zone) and tests.
pub fn kill(record: &ProcessRecord, signal: Signal) -> Result<(), SupervisorError> {
    let pid = pid_of(record)?;
    match probe(record, pid) {
        Probe::Running => signal_group(record, pid, signal),
        Probe::Exited(_) | Probe::Gone => Err(SupervisorError::NotRunning {
            name: record.name.clone(),
            pid: record.pid,
        }),
        Probe::NotOurs(reason) => Err(SupervisorError::NotOurs {
            name: record.name.clone(),
            pid: record.pid,
            reason,
        }),
    }
}

pub(super) fn signal_group(
    record: &ProcessRecord,
    pid: Pid,
    signal: Signal,
) -> Result<(), SupervisorError> {
    match nix::sys::signal::killpg(pid, signal) {
        // It exited between the check and the signal: what the caller wanted anyway.
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(SupervisorError::Signal {
            name: record.name.clone(),
            pid: record.pid,
            signal,
            source,
        }),
    }
}
