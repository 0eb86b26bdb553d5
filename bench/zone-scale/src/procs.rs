//! Every federation this run starts is registered here, and [`Cleanup::stop_all`] (also run on
//! drop: error, panic, Ctrl-C) stops it: `strait down`, then SIGKILL to the process group of
//! any recorded process still alive. (Adapted from `bench/raft-writes/src/procs.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

#[derive(Debug, Default)]
pub struct Cleanup {
    /// `strait up` federations: (strait binary, directory).
    federations: Vec<(PathBuf, PathBuf)>,
}

impl Cleanup {
    /// Registers a `strait up --dir DIR` federation, before starting it, so that a start that
    /// fails half-way is stopped too.
    pub fn track_federation(&mut self, strait_bin: &Path, dir: &Path) {
        self.federations
            .push((strait_bin.to_owned(), dir.to_owned()));
    }

    /// Stops the federation in `dir` now (and forgets it).
    pub fn stop(&mut self, dir: &Path) {
        let (stopping, kept): (Vec<_>, Vec<_>) =
            self.federations.drain(..).partition(|(_, d)| d == dir);
        self.federations = kept;
        for (bin, dir) in stopping {
            stop_federation(&bin, &dir);
        }
    }

    /// Stops everything registered; safe to call more than once.
    pub fn stop_all(&mut self) {
        for (bin, dir) in self.federations.drain(..) {
            stop_federation(&bin, &dir);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `strait down --dir DIR`, then SIGKILL to the group of any recorded process still alive.
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
            // ESRCH (already gone) is the expected case after a clean stop.
            let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
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
