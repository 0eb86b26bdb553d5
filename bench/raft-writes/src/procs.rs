//! Every process this run starts is registered here, and [`Cleanup::stop_all`] (also run on
//! drop: error, panic, Ctrl-C) stops them. Each runs as the leader of its own process group, so
//! the whole group is signalled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct Cleanup {
    children: Vec<(String, Child)>,
    /// `strait up` federations: (strait binary, directory).
    federations: Vec<(PathBuf, PathBuf)>,
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
    pub fn track_federation(&mut self, strait_bin: &Path, dir: &Path) {
        self.federations
            .push((strait_bin.to_owned(), dir.to_owned()));
    }

    /// Stops everything registered; safe to call more than once.
    pub fn stop_all(&mut self) {
        for (bin, dir) in self.federations.drain(..) {
            stop_federation(&bin, &dir);
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

/// `strait down --dir DIR`, then SIGKILL to the group of any recorded process still alive
/// (down failed, or `strait up` was interrupted before it could stop what it had started).
fn stop_federation(bin: &Path, dir: &Path) {
    let pids = recorded_pids(dir);
    if pids.is_empty() {
        return;
    }
    match Command::new(bin)
        .args(["down", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "strait down --dir {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("running strait down: {err}"),
    }
    for pid in pids {
        if let Ok(raw) = i32::try_from(pid)
            && kill(Pid::from_raw(raw), None).is_ok()
        {
            signal_group(pid, Signal::SIGKILL);
        }
    }
}

/// Pids in `DIR/processes.json` (each the leader of its group); none if there is no file.
pub fn recorded_pids(dir: &Path) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(dir.join("processes.json")) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(records)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|r| r.get("pid")?.as_u64())
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect()
}
