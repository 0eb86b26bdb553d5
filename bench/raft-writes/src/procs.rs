//! Every process this run starts is registered here, and [`Cleanup::stop_all`] (also run on
//! drop: error, panic, Ctrl-C) stops them. Each runs as the leader of its own process group, so
//! the whole group is signalled; `strait up` federations are stopped from their
//! `processes.json` as `strait down` does (through the same library, `strait_local`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use strait_local::down::{DownError, down};
use strait_local::processes::ProcessesError;
use strait_local::up::STOP_GRACE;

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct Cleanup {
    children: Vec<(String, Child)>,
    /// `strait up` federations: their directories.
    federations: Vec<PathBuf>,
}

impl Cleanup {
    /// Spawns `command` as the leader of a new process group and keeps it to stop later.
    pub fn spawn_group(&mut self, name: &str, command: &mut Command) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Registers a `strait up --dir DIR` federation, before starting it, so that a start that
    /// fails half-way is stopped too.
    pub fn track_federation(&mut self, dir: &Path) {
        self.federations.push(dir.to_owned());
    }

    /// Stops everything registered; safe to call more than once.
    pub fn stop_all(&mut self) {
        for dir in self.federations.drain(..) {
            stop_federation(&dir);
        }
        for (_, child) in &self.children {
            signal_group(child.id(), Signal::SIGTERM);
        }
        let deadline = Instant::now() + GRACE;
        for (name, mut child) in self.children.drain(..) {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                    _ => {
                        eprintln!("{name} did not stop on SIGTERM; killing its process group");
                        signal_group(child.id(), Signal::SIGKILL);
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn signal_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH (already gone) is the expected case after a clean stop.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Stops every process recorded in `DIR/processes.json`, as `strait down` does (through the
/// same library, `strait_local`); a directory where nothing was recorded is fine.
fn stop_federation(dir: &Path) {
    match down(dir, STOP_GRACE, &|_| {}) {
        Ok(_) | Err(DownError::Processes(ProcessesError::Missing { .. })) => {}
        Err(err) => eprintln!("stopping the federation in {}: {err}", dir.display()),
    }
}

/// Pids in `DIR/processes.json` (each the leader of its group); none if there is no file.
pub fn recorded_pids(dir: &Path) -> Vec<u32> {
    strait_local::processes::read(dir)
        .map(|records| records.iter().map(|r| r.pid).collect())
        .unwrap_or_default()
}
