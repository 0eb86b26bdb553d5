//! The zone's persisted state: one sled database (`DATA/state`, mode 0700) holding the last
//! [`pb::FederationSnapshot`] global sent and small records other modules keep (the
//! discovery server's sidecar registry, the sync client's last inventory version).
//!
//! Every write is flushed before it returns: the sync client ACKs a snapshot to global only
//! once it is on disk, so after a crash the zone restarts from a snapshot global knows it has
//! (static stability), never from one it merely received.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use strait_proto as pb;

/// Key of the persisted federation snapshot (protobuf-encoded).
const FEDERATION_KEY: &str = "federation/snapshot";

/// How long [`ZoneStore::open`] waits for another handle (a zone still shutting down in the
/// same process, or a previous process exiting) to release the database's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);
const LOCK_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open the state database {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("cannot {op} `{key}` in the state database: {source}")]
    Db {
        op: &'static str,
        key: String,
        source: sled::Error,
    },
    #[error("the persisted `{key}` is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Handle on the zone's sled database. Cheap to clone; clones share the database.
#[derive(Clone, Debug)]
pub struct ZoneStore {
    db: sled::Db,
    path: PathBuf,
}

impl ZoneStore {
    /// Opens (or creates) the database in the directory `path` (the node passes
    /// `DATA/state`), making the directory readable by this user only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        strait_trust::store::create_private_dir(&path).map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;
        let config = sled::Config::new().path(&path);
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_lock_conflict(&e) && Instant::now() < deadline => {
                    // Blocking on purpose: opening happens once, at startup, before serving.
                    std::thread::sleep(LOCK_POLL);
                }
                Err(source) => return Err(StoreError::Open { path, source }),
            }
        };
        Ok(Self { db, path })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last snapshot persisted by [`save_federation`](Self::save_federation), if any.
    pub fn load_federation(&self) -> Result<Option<pb::FederationSnapshot>, StoreError> {
        let Some(bytes) = self.get(FEDERATION_KEY)? else {
            return Ok(None);
        };
        pb::FederationSnapshot::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: FEDERATION_KEY.to_string(),
                reason: e.to_string(),
            })
    }

    /// Replaces the persisted snapshot (atomically: one key) and flushes.
    pub fn save_federation(&self, snapshot: &pb::FederationSnapshot) -> Result<(), StoreError> {
        self.put(FEDERATION_KEY, &snapshot.encode_to_vec())
    }

    /// Reads a record.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(key.as_bytes())
            .map(|v| v.map(|ivec| ivec.to_vec()))
            .map_err(|source| StoreError::Db {
                op: "read",
                key: key.to_string(),
                source,
            })
    }

    /// Writes a record and flushes it to disk before returning.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let db_err = |op, source| StoreError::Db {
            op,
            key: key.to_string(),
            source,
        };
        self.db
            .insert(key.as_bytes(), bytes)
            .map_err(|e| db_err("write", e))?;
        self.db.flush().map_err(|e| db_err("flush", e))?;
        Ok(())
    }

    /// Removes a record and flushes.
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        let db_err = |op, source| StoreError::Db {
            op,
            key: key.to_string(),
            source,
        };
        self.db
            .remove(key.as_bytes())
            .map_err(|e| db_err("remove", e))?;
        self.db.flush().map_err(|e| db_err("flush", e))?;
        Ok(())
    }

    /// A `u64` record stored as 8 big-endian bytes (counters such as the inventory version).
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(|b| Some(u64::from_be_bytes(b)))
                .map_err(|_| StoreError::Corrupt {
                    key: key.to_string(),
                    reason: format!("expected 8 bytes, found {}", bytes.len()),
                }),
        }
    }

    /// Writes a `u64` record (see [`get_u64`](Self::get_u64)).
    pub fn put_u64(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.put(key, &value.to_be_bytes())
    }
}

/// Whether sled failed because another handle holds the database's file lock. sled reports
/// this only as an `Other` IO error with a message, so the message is what we match.
fn is_lock_conflict(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e)
        if e.kind() == io::ErrorKind::Other && e.to_string().starts_with("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_survives_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state");
        {
            let store = ZoneStore::open(&path)?;
            assert_eq!(store.load_federation()?, None);
            let snap = pb::FederationSnapshot {
                version: 7,
                trust_domain: "strait.local".into(),
                ..Default::default()
            };
            store.save_federation(&snap)?;
            store.put("registry", b"abc")?;
        }
        let store = ZoneStore::open(&path)?;
        assert_eq!(store.load_federation()?.map(|s| s.version), Some(7));
        assert_eq!(store.get("registry")?, Some(b"abc".to_vec()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o700
        );
        Ok(())
    }

    #[test]
    fn corrupt_snapshot_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = ZoneStore::open(dir.path())?;
        store.put(FEDERATION_KEY, &[0xff, 0xff, 0xff])?;
        assert!(matches!(
            store.load_federation(),
            Err(StoreError::Corrupt { .. })
        ));
        store.put("n", &[1, 2])?;
        assert!(matches!(
            store.get_u64("n"),
            Err(StoreError::Corrupt { .. })
        ));
        store.put_u64("n", 42)?;
        assert_eq!(store.get_u64("n")?, Some(42));
        Ok(())
    }
}
