//! `strait down`: stops every process of a local federation, last started first, and empties
//! `processes.json` (data and logs are kept).

use std::path::Path;
use std::time::Duration;

use crate::processes::{self, ProcessesError};
use crate::supervisor::{self, Progress, StopReport};

/// Stopping a federation failed.
#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error(transparent)]
    Processes(#[from] ProcessesError),
    #[error("some processes could not be stopped: {}", .0.join("; "))]
    NotStopped(Vec<String>),
}

/// What [`down`] found.
#[derive(Debug)]
pub enum Down {
    /// `processes.json` lists nothing.
    NothingRunning,
    /// Every recorded process is stopped.
    Stopped(StopReport),
}

/// Stops the federation recorded in `dir`: SIGTERM, `grace`, then SIGKILL, each process in
/// turn (see [`supervisor::stop_all`]). `processes.json` is emptied only when every process
/// is stopped, so a second `down` can try again.
pub fn down(
    dir: &Path,
    grace: Duration,
    progress: &dyn Fn(Progress<'_>),
) -> Result<Down, DownError> {
    let records = processes::read(dir)?;
    if records.is_empty() {
        return Ok(Down::NothingRunning);
    }
    let report = supervisor::stop_all(&records, grace, progress);
    let failures: Vec<String> = report
        .failures()
        .map(|(name, why)| format!("{name}: {why}"))
        .collect();
    if !failures.is_empty() {
        return Err(DownError::NotStopped(failures));
    }
    processes::write(dir, &[])?;
    Ok(Down::Stopped(report))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;
    use crate::processes::ProcessKind;
    use crate::supervisor::ProcessSpec;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn stops_what_is_recorded_and_empties_the_list() -> TestResult {
        let dir = tempfile::tempdir()?;
        let sleeper = supervisor::spawn(&ProcessSpec {
            name: "sleeper".to_owned(),
            kind: ProcessKind::App,
            zone: None,
            node_id: None,
            program: "sleep".into(),
            args: vec!["30".to_owned()],
            env: BTreeMap::new(),
            addresses: BTreeMap::new(),
            log_dir: dir.path().join("logs"),
        })?;
        processes::write(dir.path(), std::slice::from_ref(&sleeper))?;
        let started = Instant::now();
        let down = down(dir.path(), Duration::from_secs(10), &|_| {})?;
        assert!(
            matches!(down, Down::Stopped(ref r) if r.all_stopped()),
            "{down:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!supervisor::is_running(&sleeper));
        assert!(processes::read(dir.path())?.is_empty());
        // Again: nothing left to stop.
        assert!(matches!(
            super::down(dir.path(), Duration::from_secs(1), &|_| {})?,
            Down::NothingRunning
        ));
        Ok(())
    }

    #[test]
    fn a_directory_without_a_federation_is_an_error_naming_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let err = down(dir.path(), Duration::from_secs(1), &|_| {})
            .err()
            .ok_or("down succeeded without processes.json")?;
        assert!(err.to_string().contains("processes.json"), "{err}");
        Ok(())
    }
}
