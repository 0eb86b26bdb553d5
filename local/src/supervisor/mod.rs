//! Starting, watching and stopping the processes of a local federation.
//!
//! Every process is started detached from the CLI: the leader of its own process group (so a
//! Ctrl-C in the terminal that ran `strait up` does not reach it), stdin closed, stdout and
//! stderr appended to `DIR/logs/NAME.log`. It keeps running after `strait up` returns;
//! `strait down` finds it again through `processes.json`.
//!
//! A pid read back from `processes.json` may by then belong to an unrelated program (after a
//! reboot, say). Before signalling a process that is not a child of this CLI, it is checked
//! to still be what was started: a process group leader, and on Linux running the recorded
//! command. Anything else is left alone and reported.
//!
//! These functions block (they poll with short sleeps); from async code call them through
//! `tokio::task::spawn_blocking`.
//!
//! A global node, for example, is started like this (the `strait global run` contract):
//!
//! ```text
//! strait global run --node-id 1 --data-dir DIR/global-1 \
//!     --listen 127.0.0.1:7400 --admin-listen 127.0.0.1:7401 [--trust-domain TD] \
//!     [--join ADDR,ADDR --token-file F] [--admin-credentials-dir D]
//! ```
//!
//! with `addresses` `{"api": "127.0.0.1:7400", "admin": "127.0.0.1:7401"}`; [`wait_ready`]
//! then polls `GET http://127.0.0.1:7401/ready` until it answers 200.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;

pub use nix::sys::signal::Signal;

use crate::processes::{ProcessKind, ProcessRecord};

mod liveness;
mod log;
mod stop;

use liveness::exit_status;
pub use liveness::{is_running, kill};
pub use log::{LogTail, log_tail};
pub use stop::stop_all;
use stop::stop_one;

/// How many lines of a process's log an error shows.
pub const LOG_TAIL_LINES: usize = 20;
/// How often a condition (ready, exited) is polled.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound for one `/ready` probe, so a hung process cannot stall the poll loop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a process gets to vanish after SIGKILL before it is reported as stuck.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(2);
/// How much of the end of a log file is read to find its last lines.
pub(super) const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// What to start.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Unique within the federation; also the log file's name, so letters, digits, `-`, `_`
    /// and `.` only (e.g. `global-1`, `zone-a`).
    pub name: String,
    pub kind: ProcessKind,
    pub zone: Option<String>,
    /// The Raft node id, for global nodes.
    pub node_id: Option<u64>,
    /// The program to run, usually `std::env::current_exe()`.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment on top of the CLI's own (e.g. `RUST_LOG`).
    pub env: BTreeMap<String, String>,
    /// Named listen addresses the arguments make the process bind; `admin` is where
    /// [`wait_ready`] looks.
    pub addresses: BTreeMap<String, String>,
    /// `DIR/logs`; created if missing.
    pub log_dir: PathBuf,
}

impl ProcessSpec {
    /// The spec that starts `record`'s process again exactly as it was started (same
    /// arguments, addresses and log), e.g. after a drill killed it.
    pub fn again(record: &ProcessRecord) -> Option<Self> {
        let (program, args) = record.command.split_first()?;
        Some(Self {
            name: record.name.clone(),
            kind: record.kind,
            zone: record.zone.clone(),
            node_id: record.node_id,
            program: PathBuf::from(program),
            args: args.to_vec(),
            env: BTreeMap::new(),
            addresses: record.addresses.clone(),
            log_dir: record.log.parent()?.to_path_buf(),
        })
    }
}

/// A step of a long operation, for the CLI to show.
///
/// `Display` gives a line for each; to print `starting global-1 ... ready (0.8s)` on one line,
/// print [`Progress::Starting`] without a newline and flush.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    Starting {
        name: &'a str,
    },
    Ready {
        name: &'a str,
        elapsed: Duration,
    },
    Stopping {
        name: &'a str,
        pid: u32,
    },
    Stopped {
        name: &'a str,
        outcome: &'a StopOutcome,
    },
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Starting { name } => write!(f, "starting {name} ..."),
            Self::Ready { name, elapsed } => {
                write!(f, "{name} ready ({:.1}s)", elapsed.as_secs_f64())
            }
            Self::Stopping { name, pid } => write!(f, "stopping {name} (pid {pid}) ..."),
            Self::Stopped { name, outcome } => write!(f, "{name} {outcome}"),
        }
    }
}

/// How stopping one process went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// It exited after SIGTERM.
    Terminated { after: Duration },
    /// It was still running when the grace period ended and was killed with SIGKILL.
    Killed { grace: Duration },
    /// It had already exited.
    AlreadyGone,
    /// Its pid now belongs to something else; nothing was signalled.
    NotOurs { reason: String },
    /// It could not be stopped.
    Failed { error: String },
}

impl fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Terminated { after } => write!(f, "stopped ({:.1}s)", after.as_secs_f64()),
            Self::Killed { grace } => write!(
                f,
                "killed (still running {:.1}s after SIGTERM)",
                grace.as_secs_f64()
            ),
            Self::AlreadyGone => f.write_str("already gone"),
            Self::NotOurs { reason } => write!(f, "left alone: {reason}"),
            Self::Failed { error } => write!(f, "not stopped: {error}"),
        }
    }
}

/// What [`stop_all`] did, per process, in the order it stopped them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    pub outcomes: Vec<(String, StopOutcome)>,
}

impl StopReport {
    /// The processes that could not be stopped, with the reason.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes
            .iter()
            .filter_map(|(name, outcome)| match outcome {
                StopOutcome::Failed { error } => Some((name.as_str(), error.as_str())),
                _ => None,
            })
    }

    /// Whether nothing recorded is left running.
    pub fn all_stopped(&self) -> bool {
        self.failures().next().is_none()
    }
}

/// Starting, watching or signalling a process failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(
        "invalid process name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    InvalidName { name: String },
    #[error("cannot create the log directory {dir}: {source}", dir = dir.display())]
    LogDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the log file {path}: {source}", path = path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {name} ({program}): {source}", program = program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} has no `admin` address to check readiness on")]
    NoAdminAddress { name: String },
    #[error("{name} has an invalid admin address {addr:?}: {source}")]
    BadAdminAddress {
        name: String,
        addr: String,
        source: std::net::AddrParseError,
    },
    #[error("{name} exited before it was ready ({status}); {log}")]
    ExitedBeforeReady {
        name: String,
        status: String,
        log: Box<LogTail>,
    },
    #[error("{name} was not ready after {waited:.1?} (GET http://{addr}/ready: {last}); {log}")]
    NotReady {
        name: String,
        addr: SocketAddr,
        waited: Duration,
        last: String,
        log: Box<LogTail>,
    },
    #[error("{name} has pid {pid}, which cannot be a process this CLI started")]
    InvalidPid { name: String, pid: u32 },
    #[error("{name} (pid {pid}) is not running")]
    NotRunning { name: String, pid: u32 },
    #[error("{name}: pid {pid} is not the process that was started ({reason}); not signalled")]
    NotOurs {
        name: String,
        pid: u32,
        reason: String,
    },
    #[error("cannot send {signal} to {name} (pid {pid}): {source}")]
    Signal {
        name: String,
        pid: u32,
        signal: Signal,
        source: Errno,
    },
}

// === spawn ===

/// Starts `spec.program` detached from the CLI and returns its record.
///
/// The process leads its own process group, reads nothing (stdin is `/dev/null`) and appends
/// stdout and stderr to `LOG_DIR/NAME.log`, after a line saying what is being started. It
/// outlives the CLI. Use [`wait_ready`] to know when it works, or [`start`] for both.
pub fn spawn(spec: &ProcessSpec) -> Result<ProcessRecord, SupervisorError> {
    validate_name(&spec.name)?;
    std::fs::create_dir_all(&spec.log_dir).map_err(|source| SupervisorError::LogDir {
        dir: spec.log_dir.clone(),
        source,
    })?;
    let log = spec.log_dir.join(format!("{}.log", spec.name));
    let log_error = |source| SupervisorError::Log {
        path: log.clone(),
        source,
    };
    let mut stdout = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(log_error)?;
    let stderr = stdout.try_clone().map_err(log_error)?;

    let mut command = vec![spec.program.to_string_lossy().into_owned()];
    command.extend(spec.args.iter().cloned());
    // Logs are appended across runs; this line marks where this run starts.
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    writeln!(
        stdout,
        "--- strait: starting {} at unix time {started_at}: {} ---",
        spec.name,
        command.join(" ")
    )
    .map_err(log_error)?;

    let child = Command::new(&spec.program)
        .args(&spec.args)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own group: terminal signals aimed at the CLI's group do not reach it, and
        // `stop_all` can signal it together with anything it forks.
        .process_group(0)
        .spawn()
        .map_err(|source| SupervisorError::Spawn {
            name: spec.name.clone(),
            program: spec.program.clone(),
            source,
        })?;
    // Dropping `child` neither waits for nor kills it; `probe` reaps it if it exits while
    // this CLI still runs, and init does after.
    Ok(ProcessRecord {
        name: spec.name.clone(),
        kind: spec.kind,
        zone: spec.zone.clone(),
        pid: child.id(),
        node_id: spec.node_id,
        addresses: spec.addresses.clone(),
        command,
        log,
    })
}

fn validate_name(name: &str) -> Result<(), SupervisorError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(SupervisorError::InvalidName {
            name: name.to_owned(),
        })
    }
}

// === readiness ===

/// Polls `GET http://ADMIN/ready` of `record` (its `admin` address) until it answers 200, and
/// returns how long that took.
///
/// Fails as soon as the process has exited, with its exit status and the last
/// [`LOG_TAIL_LINES`] lines of its log (usually the reason, e.g. "address in use"); fails at
/// `deadline` with the last answer seen and the log tail.
pub fn wait_ready(record: &ProcessRecord, deadline: Instant) -> Result<Duration, SupervisorError> {
    let addr = admin_addr(record)?;
    let start = Instant::now();
    loop {
        if let Some(status) = exit_status(record) {
            return Err(SupervisorError::ExitedBeforeReady {
                name: record.name.clone(),
                status,
                log: LogTail::read(&record.log),
            });
        }
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        let last = match probe_ready(addr, remaining.min(PROBE_TIMEOUT)) {
            Ok((200, _)) => return Ok(start.elapsed()),
            Ok((status, body)) => format!("{status} {body}"),
            Err(err) => err.to_string(),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(SupervisorError::NotReady {
                name: record.name.clone(),
                addr,
                waited: start.elapsed(),
                last,
                log: LogTail::read(&record.log),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// [`spawn`], then [`wait_ready`], showing progress. If the process does not become ready, it
/// is killed before the error is returned, so a failed start leaves nothing behind.
pub fn start(
    spec: &ProcessSpec,
    deadline: Instant,
    progress: &dyn Fn(Progress<'_>),
) -> Result<ProcessRecord, SupervisorError> {
    progress(Progress::Starting { name: &spec.name });
    let record = spawn(spec)?;
    match wait_ready(&record, deadline) {
        Ok(elapsed) => {
            progress(Progress::Ready {
                name: &record.name,
                elapsed,
            });
            Ok(record)
        }
        Err(err) => {
            // Best effort: the error being returned says more than a failed cleanup would.
            let _ = stop_one(&record, Duration::ZERO);
            Err(err)
        }
    }
}

fn admin_addr(record: &ProcessRecord) -> Result<SocketAddr, SupervisorError> {
    let addr = record
        .address("admin")
        .ok_or_else(|| SupervisorError::NoAdminAddress {
            name: record.name.clone(),
        })?;
    addr.parse()
        .map_err(|source| SupervisorError::BadAdminAddress {
            name: record.name.clone(),
            addr: addr.to_owned(),
            source,
        })
}

/// One `GET /ready`: the status code and the first line of the body.
///
/// Minimal HTTP/1.1 over a plain socket, bounded in time and size: enough for the admin
/// server, which always answers with a status line and a short body and closes on
/// `Connection: close`.
fn probe_ready(addr: SocketAddr, timeout: Duration) -> std::io::Result<(u16, String)> {
    let timeout = timeout.max(Duration::from_millis(10));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: `write!` would send the request in pieces, and a server that answers after
    // its first read and closes would turn the later pieces into a broken pipe.
    let request = format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    stream.take(8 * 1024).read_to_end(&mut reply)?;
    let reply = String::from_utf8_lossy(&reply);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(bad)?;
    let body = body.lines().next().unwrap_or_default().trim().to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests;
