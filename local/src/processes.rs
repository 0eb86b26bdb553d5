//! `DIR/processes.json`: which process runs with which pid, addresses, command and log.
//!
//! `strait up` writes it once every process is started; `strait down`, `strait status` and
//! drills read it. The format is a contract other tools may read too: a JSON array, one object
//! per process, in start order:
//!
//! ```json
//! [
//!   {
//!     "name": "global-1",
//!     "kind": "global",
//!     "zone": null,
//!     "pid": 1234,
//!     "node_id": 1,
//!     "addresses": { "admin": "127.0.0.1:7401", "api": "127.0.0.1:7400" },
//!     "command": ["/usr/local/bin/strait", "global", "run", "--node-id", "1", "..."],
//!     "log": "DIR/logs/global-1.log"
//!   }
//! ]
//! ```
//!
//! `node_id` is there for global nodes only; `zone` is `null` for processes outside a zone.
//! A zone control plane's `addresses` are `api`, `admin`, `dns` (its DNS server, UDP and TCP
//! on the same port) and `vip_cidr`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name inside the federation directory.
pub const FILE_NAME: &str = "processes.json";

/// What a process is in the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessKind {
    /// A node of the Raft-replicated global control plane.
    Global,
    /// A zone control plane.
    Zone,
    /// An east-west gateway.
    Gateway,
    /// A sidecar proxy.
    Sidecar,
    /// A demo application.
    App,
}

impl std::fmt::Display for ProcessKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Global => "global",
            Self::Zone => "zone",
            Self::Gateway => "gateway",
            Self::Sidecar => "sidecar",
            Self::App => "app",
        })
    }
}

/// One started process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Unique within the federation, e.g. `global-1`, `zone-a`, `gateway-a`.
    pub name: String,
    pub kind: ProcessKind,
    /// The zone the process belongs to; `null` for global nodes.
    pub zone: Option<String>,
    /// Also its process group id: every process is started as the leader of its own group.
    pub pid: u32,
    /// The Raft node id, for global nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Named listen addresses, e.g. `api`, `admin`; `admin` serves `/ready`.
    pub addresses: BTreeMap<String, String>,
    /// The program and its arguments, as started.
    pub command: Vec<String>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

impl ProcessRecord {
    /// The address named `name` (`"admin"`, `"api"`, ...), if the process has one.
    pub fn address(&self, name: &str) -> Option<&str> {
        self.addresses.get(name).map(String::as_str)
    }
}

/// `processes.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProcessesError {
    /// There is no `processes.json`: nothing was started in this directory (or it was stopped
    /// and cleaned up).
    #[error("{path} does not exist: no local federation was started in {dir}", dir = path.parent().unwrap_or(Path::new(".")).display(), path = path.display())]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}", path = path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid process list: {source}", path = path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}", path = path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot render the process list: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// `DIR/processes.json`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Reads `DIR/processes.json`.
pub fn read(dir: &Path) -> Result<Vec<ProcessRecord>, ProcessesError> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProcessesError::Missing { path });
        }
        Err(source) => return Err(ProcessesError::Read { path, source }),
    };
    serde_json::from_slice(&bytes).map_err(|source| ProcessesError::Parse { path, source })
}

/// Writes `DIR/processes.json` atomically: readers see the old list or the new one, never a
/// half-written file, even if `strait up` is killed while writing.
pub fn write(dir: &Path, records: &[ProcessRecord]) -> Result<(), ProcessesError> {
    let path = path(dir);
    let mut json = serde_json::to_vec_pretty(records).map_err(ProcessesError::Serialize)?;
    json.push(b'\n');
    // The temporary file sits next to the target so the rename stays within one file system.
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    written.map_err(|source| {
        // Best effort: a leftover temporary file is harmless, the error below is what matters.
        let _ = std::fs::remove_file(&tmp);
        ProcessesError::Write {
            path: path.clone(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global_1(dir: &Path) -> ProcessRecord {
        ProcessRecord {
            name: "global-1".to_owned(),
            kind: ProcessKind::Global,
            zone: None,
            pid: 1234,
            node_id: Some(1),
            addresses: BTreeMap::from([
                ("api".to_owned(), "127.0.0.1:7400".to_owned()),
                ("admin".to_owned(), "127.0.0.1:7401".to_owned()),
            ]),
            command: vec!["strait".to_owned(), "global".to_owned(), "run".to_owned()],
            log: dir.join("logs/global-1.log"),
        }
    }

    #[test]
    fn round_trips_and_matches_the_contract() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let zone_a = ProcessRecord {
            name: "zone-a".to_owned(),
            kind: ProcessKind::Zone,
            zone: Some("a".to_owned()),
            node_id: None,
            ..global_1(dir.path())
        };
        let records = vec![global_1(dir.path()), zone_a];
        write(dir.path(), &records)?;
        assert_eq!(read(dir.path())?, records);

        // The field names and shapes other tools rely on.
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("processes.json"))?)?;
        assert_eq!(raw[0]["kind"], "global");
        assert_eq!(raw[0]["node_id"], 1);
        assert_eq!(raw[0]["zone"], serde_json::Value::Null);
        assert_eq!(raw[0]["addresses"]["admin"], "127.0.0.1:7401");
        assert_eq!(raw[1]["zone"], "a");
        assert!(
            raw[1].get("node_id").is_none(),
            "node_id only for global nodes"
        );

        // Overwriting leaves no temporary file behind.
        write(dir.path(), &records[..1])?;
        assert_eq!(read(dir.path())?.len(), 1);
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec![std::ffi::OsString::from("processes.json")]);
        Ok(())
    }

    #[test]
    fn errors_name_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let missing = read(dir.path())
            .err()
            .ok_or("read of a missing file succeeded")?;
        assert!(matches!(missing, ProcessesError::Missing { .. }));
        assert!(missing.to_string().contains("processes.json"), "{missing}");

        std::fs::write(dir.path().join("processes.json"), "[{\"name\": 1}]")?;
        let bad = read(dir.path())
            .err()
            .ok_or("read of a bad file succeeded")?;
        assert!(matches!(bad, ProcessesError::Parse { .. }));
        assert!(
            bad.to_string().contains(&dir.path().display().to_string()),
            "{bad}"
        );

        let written = write(&dir.path().join("no/such/dir"), &[]);
        assert!(matches!(written, Err(ProcessesError::Write { .. })));
        Ok(())
    }
}
