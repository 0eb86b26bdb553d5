//! Every federation this run starts is registered here, and [`Cleanup::stop_all`] (also run on
//! drop: error, panic, Ctrl-C) stops it, as `strait down` does (through the same library,
//! `strait_local`), from its `processes.json`.

use std::path::{Path, PathBuf};

use strait_local::down::{DownError, down};
use strait_local::processes::ProcessesError;
use strait_local::up::STOP_GRACE;

#[derive(Debug, Default)]
pub struct Cleanup {
    /// `strait up` federations: their directories.
    federations: Vec<PathBuf>,
}

impl Cleanup {
    /// Registers a `strait up --dir DIR` federation, before starting it, so that a start that
    /// fails half-way is stopped too.
    pub fn track_federation(&mut self, dir: &Path) {
        self.federations.push(dir.to_owned());
    }

    /// Stops the federation in `dir` now (and forgets it).
    pub fn stop(&mut self, dir: &Path) {
        let (stopping, kept): (Vec<_>, Vec<_>) = self.federations.drain(..).partition(|d| d == dir);
        self.federations = kept;
        for dir in stopping {
            stop_federation(&dir);
        }
    }

    /// Stops everything registered; safe to call more than once.
    pub fn stop_all(&mut self) {
        for dir in self.federations.drain(..) {
            stop_federation(&dir);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Stops every process recorded in `DIR/processes.json` (SIGTERM, then SIGKILL after the
/// grace); a directory where nothing was recorded is fine.
fn stop_federation(dir: &Path) {
    match down(dir, STOP_GRACE, &|_| {}) {
        Ok(_) | Err(DownError::Processes(ProcessesError::Missing { .. })) => {}
        Err(err) => eprintln!("stopping the federation in {}: {err}", dir.display()),
    }
}
