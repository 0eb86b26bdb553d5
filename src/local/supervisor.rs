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
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use nix::sys::signal::Signal;

use super::processes::{ProcessKind, ProcessRecord};

/// How many lines of a process's log an error shows.
pub const LOG_TAIL_LINES: usize = 20;
/// How often a condition (ready, exited) is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Upper bound for one `/ready` probe, so a hung process cannot stall the poll loop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a process gets to vanish after SIGKILL before it is reported as stuck.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How much of the end of a log file is read to find its last lines.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

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

/// The end of a process's log, shown under an error: usually the reason the process failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    pub path: PathBuf,
    /// The last [`LOG_TAIL_LINES`] lines, indented.
    pub lines: String,
}

impl LogTail {
    fn read(path: &Path) -> Box<Self> {
        Box::new(Self {
            path: path.to_owned(),
            lines: log_tail(path, LOG_TAIL_LINES),
        })
    }
}

impl fmt::Display for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "last lines of {}:\n{}", self.path.display(), self.lines)
    }
}

/// The last `lines` lines of the log at `path`, indented for showing under an error; a note
/// instead if it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        // Only the end of the file matters; a long-running process's log can be large.
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "  (the log is empty)".to_owned()
            } else {
                tail.iter()
                    .map(|line| format!("  {line}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(err) => format!("  (cannot read the log: {err})"),
    }
}

// === liveness ===

/// What a recorded pid is now.
#[derive(Debug)]
enum Probe {
    /// Still the process that was started, running.
    Running,
    /// It was a child of this CLI and has exited; the status says how.
    Exited(String),
    /// No such process (or only a zombie some other parent has yet to reap).
    Gone,
    /// The pid belongs to something else now.
    NotOurs(String),
}

fn pid_of(record: &ProcessRecord) -> Result<Pid, SupervisorError> {
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

fn probe(record: &ProcessRecord, pid: Pid) -> Probe {
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
fn exit_status(record: &ProcessRecord) -> Option<String> {
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

fn signal_group(record: &ProcessRecord, pid: Pid, signal: Signal) -> Result<(), SupervisorError> {
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

fn stop_one(record: &ProcessRecord, grace: Duration) -> StopOutcome {
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::net::TcpListener;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Kills the process when a test ends, failed or not, so no sleeper outlives the tests.
    struct Reap(ProcessRecord);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = kill(&self.0, Signal::SIGKILL);
        }
    }

    fn spec(dir: &Path, name: &str, program: &str, args: &[&str]) -> ProcessSpec {
        ProcessSpec {
            name: name.to_owned(),
            kind: ProcessKind::App,
            zone: Some("a".to_owned()),
            node_id: None,
            program: PathBuf::from(program),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::new(),
            addresses: BTreeMap::new(),
            log_dir: dir.join("logs"),
        }
    }

    /// A stand-in admin port answering every request with `status` and `body`, on a thread.
    fn fake_admin(status: &'static str, body: &'static str) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // Read the whole request head before answering, like a real server.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(addr)
    }

    #[test]
    fn detached_process_is_recorded_and_stopped_with_sigterm() -> TestResult {
        let dir = tempfile::tempdir()?;
        let record = spawn(&spec(dir.path(), "sleeper", "sleep", &["30"]))?;
        let _reap = Reap(record.clone());
        assert_eq!(record.command, vec!["sleep", "30"]);
        assert_eq!(record.log, dir.path().join("logs/sleeper.log"));
        assert!(is_running(&record));
        // Its own process group, so the terminal's Ctrl-C does not reach it.
        let pid = Pid::from_raw(i32::try_from(record.pid)?);
        assert_eq!(nix::unistd::getpgid(Some(pid))?, pid);
        assert_ne!(nix::unistd::getpgid(None)?, pid);

        let lines = RefCell::new(Vec::new());
        let report = stop_all(
            std::slice::from_ref(&record),
            Duration::from_secs(10),
            &|p| lines.borrow_mut().push(p.to_string()),
        );
        assert!(
            matches!(
                report.outcomes.as_slice(),
                [(name, StopOutcome::Terminated { .. })] if name == "sleeper"
            ),
            "{report:?}"
        );
        assert!(report.all_stopped());
        assert!(!is_running(&record));
        let lines = lines.into_inner();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].starts_with("sleeper stopped ("), "{lines:?}");

        // Stopping again is fine: it is already gone.
        let again = stop_all(&[record], Duration::from_secs(1), &|_| {});
        assert_eq!(again.outcomes[0].1, StopOutcome::AlreadyGone);
        Ok(())
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_after_the_grace() -> TestResult {
        let dir = tempfile::tempdir()?;
        let record = spawn(&spec(
            dir.path(),
            "stubborn",
            "/bin/sh",
            // The quotes keep the marker out of the command line, which the log's first line shows.
            &[
                "-c",
                "trap '' TERM; echo trap''ped; while :; do sleep 0.05; done",
            ],
        ))?;
        let _reap = Reap(record.clone());
        // The trap must be installed before SIGTERM is sent, or the test proves nothing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&record.log)?.contains("trapped") {
            assert!(Instant::now() < deadline, "the shell never started");
            std::thread::sleep(POLL_INTERVAL);
        }
        let report = stop_all(
            std::slice::from_ref(&record),
            Duration::from_millis(300),
            &|_| {},
        );
        assert!(
            matches!(report.outcomes[0].1, StopOutcome::Killed { .. }),
            "{report:?}"
        );
        assert!(!is_running(&record));
        Ok(())
    }

    #[test]
    fn a_process_that_exits_fails_wait_ready_fast_with_its_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        // Nothing listens on this port: only the exit can end the wait early.
        let [admin] = ports_for_test()?;
        let mut spec = spec(
            dir.path(),
            "crasher",
            "/bin/sh",
            &[
                "-c",
                "echo 'error: address 127.0.0.1:7401 in use' >&2; exit 3",
            ],
        );
        spec.addresses.insert("admin".to_owned(), admin.to_string());
        let record = spawn(&spec)?;

        let started = Instant::now();
        let err = wait_ready(&record, started + Duration::from_secs(30))
            .err()
            .ok_or("wait_ready succeeded for a process that exited")?;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not fast: {:?}",
            started.elapsed()
        );
        let message = err.to_string();
        assert!(
            matches!(err, SupervisorError::ExitedBeforeReady { .. }),
            "{message}"
        );
        assert!(message.contains("exit status 3"), "{message}");
        assert!(
            message.contains("address 127.0.0.1:7401 in use"),
            "{message}"
        );
        assert!(message.contains("crasher.log"), "{message}");
        Ok(())
    }

    #[test]
    fn wait_ready_returns_on_200_and_times_out_on_503() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut ready = spec(dir.path(), "ready-app", "sleep", &["30"]);
        ready.addresses.insert(
            "admin".to_owned(),
            fake_admin("200 OK", "ready\n")?.to_string(),
        );
        let events = RefCell::new(Vec::new());
        let record = start(&ready, Instant::now() + Duration::from_secs(10), &|p| {
            events.borrow_mut().push(p.to_string())
        })?;
        let _reap = Reap(record.clone());
        let events = events.into_inner();
        assert_eq!(events[0], "starting ready-app ...");
        assert!(events[1].starts_with("ready-app ready ("), "{events:?}");

        let mut unready = spec(dir.path(), "unready-app", "sleep", &["30"]);
        unready.addresses.insert(
            "admin".to_owned(),
            fake_admin("503 Service Unavailable", "not ready: no leader\n")?.to_string(),
        );
        let err = start(
            &unready,
            Instant::now() + Duration::from_millis(500),
            &|_| {},
        )
        .err()
        .ok_or("start succeeded against a 503")?;
        let message = err.to_string();
        assert!(matches!(err, SupervisorError::NotReady { .. }), "{message}");
        assert!(message.contains("503 not ready: no leader"), "{message}");

        // The failed start cleaned up after itself; the ready one is ours to stop.
        let report = stop_all(&[record], Duration::from_secs(10), &|_| {});
        assert!(report.all_stopped(), "{report:?}");
        Ok(())
    }

    #[test]
    fn a_process_started_by_an_earlier_cli_is_found_and_stopped() -> TestResult {
        let dir = tempfile::tempdir()?;
        // `setsid -f` (util-linux) forks the sleeper into its own session and process group,
        // as `spawn` does, and returns: the sleeper is not a child of this process, so only
        // the pid checks (`kill(pid, 0)`, group, command line) can find it.
        let out = Command::new("setsid")
            .args([
                "-f",
                "/bin/sh",
                "-c",
                "echo $$; exec sleep 30 >/dev/null 2>&1",
            ])
            .output()?;
        let pid: u32 = String::from_utf8(out.stdout)?.trim().parse()?;
        let record = ProcessRecord {
            name: "zone-a".to_owned(),
            kind: ProcessKind::Zone,
            zone: Some("a".to_owned()),
            pid,
            node_id: None,
            addresses: BTreeMap::new(),
            command: vec!["sleep".to_owned(), "30".to_owned()],
            log: dir.path().join("logs/zone-a.log"),
        };
        let _reap = Reap(record.clone());
        assert!(is_running(&record));
        let report = stop_all(
            std::slice::from_ref(&record),
            Duration::from_secs(10),
            &|_| {},
        );
        assert!(
            matches!(report.outcomes[0].1, StopOutcome::Terminated { .. }),
            "{report:?}"
        );
        assert!(!is_running(&record));
        Ok(())
    }

    #[test]
    fn a_reused_pid_is_never_signalled() -> TestResult {
        let dir = tempfile::tempdir()?;
        // This test process stands in for an unrelated program that got the recorded pid.
        let record = ProcessRecord {
            name: "global-1".to_owned(),
            kind: ProcessKind::Global,
            zone: None,
            pid: std::process::id(),
            node_id: Some(1),
            addresses: BTreeMap::new(),
            command: vec!["strait".to_owned(), "global".to_owned(), "run".to_owned()],
            log: dir.path().join("logs/global-1.log"),
        };
        assert!(!is_running(&record));
        let killed = kill(&record, Signal::SIGKILL);
        assert!(
            matches!(killed, Err(SupervisorError::NotOurs { .. })),
            "{killed:?}"
        );
        let report = stop_all(
            std::slice::from_ref(&record),
            Duration::from_secs(1),
            &|_| {},
        );
        assert!(
            matches!(report.outcomes[0].1, StopOutcome::NotOurs { .. }),
            "{report:?}"
        );

        for pid in [0, 1, u32::MAX] {
            let bad = ProcessRecord {
                pid,
                ..record.clone()
            };
            assert!(matches!(
                kill(&bad, Signal::SIGTERM),
                Err(SupervisorError::InvalidPid { .. })
            ));
            assert!(!report_of(&bad).all_stopped());
        }
        Ok(())
    }

    #[test]
    fn kill_signals_a_running_process() -> TestResult {
        let dir = tempfile::tempdir()?;
        let record = spawn(&spec(dir.path(), "victim", "sleep", &["30"]))?;
        let _reap = Reap(record.clone());
        kill(&record, Signal::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(&record) {
            assert!(Instant::now() < deadline, "SIGKILL did not take");
            std::thread::sleep(POLL_INTERVAL);
        }
        assert!(matches!(
            kill(&record, Signal::SIGTERM),
            Err(SupervisorError::NotRunning { .. })
        ));
        Ok(())
    }

    #[test]
    fn names_that_are_not_file_names_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        for name in ["", ".hidden", "../escape", "a/b", "with space"] {
            let result = spawn(&spec(dir.path(), name, "sleep", &["30"]));
            assert!(
                matches!(result, Err(SupervisorError::InvalidName { .. })),
                "{name:?}"
            );
        }
        let missing = spawn(&spec(dir.path(), "ghost", "/nonexistent/program", &[]));
        assert!(
            matches!(missing, Err(SupervisorError::Spawn { .. })),
            "{missing:?}"
        );
        Ok(())
    }

    fn report_of(record: &ProcessRecord) -> StopReport {
        stop_all(
            std::slice::from_ref(record),
            Duration::from_millis(100),
            &|_| {},
        )
    }

    fn ports_for_test() -> Result<[SocketAddr; 1], Box<dyn std::error::Error>> {
        let ports = super::super::ports::free_loopback_ports(1)?;
        ports.try_into().map_err(|_| "wrong number of ports".into())
    }
}
