//! Durable storage of the global control plane: the Raft log, vote and snapshots in one sled
//! database, behind openraft's storage-v2 traits.
//!
//! Layout (one `sled::Db` per node, in its data directory):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `raft_log` | log index, big-endian u64 | JSON of the [`Entry`](crate::types::Entry) |
//! | `raft_meta` | `vote`, `committed`, `last_purged_log_id` | JSON |
//! | `raft_snapshot` | `current` | snapshot meta + JSON of the [`FederationState`] |
//!
//! Rules the implementation keeps (openraft's, written down here so a second store would
//! keep them too, and checked by openraft's conformance suite in `tests/store_*.rs`):
//! - an appended entry is readable when `append` returns and acknowledged only once flushed;
//! - the vote is flushed before `save_vote` returns;
//! - the log never has a hole: appends are one batch, truncation removes a suffix, purging a
//!   prefix records the purge point first;
//! - a snapshot is flushed before it is reported built or installed;
//! - anything undecodable on disk is a `StorageError`, never a panic.

// openraft's storage traits return its `StorageError` (over 200 bytes); the helpers behind
// them return the same type, since boxing it only to unbox it at the trait boundary buys
// nothing on these IO-bound paths.
#[allow(clippy::result_large_err)]
mod codec;
#[allow(clippy::result_large_err)]
mod log;
#[allow(clippy::result_large_err)]
mod state_machine;

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use openraft::ErrorSubject;
use openraft::LogIdOptionExt;
use openraft::SnapshotPolicy;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

pub use self::log::LogReader;
pub use self::log::LogStore;
pub use self::state_machine::AppliedState;
use self::state_machine::Shared;
pub use self::state_machine::StateMachineStore;
use crate::state::FederationState;
use crate::types::LogId;
use crate::types::StorageError;
use crate::types::StoredMembership;

/// Build a snapshot (and allow purging the log behind it) after this many applied entries.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 2000;
/// Entries kept in the log behind a snapshot, so that a follower that is only a little behind
/// catches up from the log instead of receiving a whole snapshot.
pub const KEEP_ENTRIES_BEHIND_SNAPSHOT: u64 = 500;
/// Entries deleted per purge.
pub const PURGE_BATCH_SIZE: u64 = 256;

/// Sets the snapshot and log compaction knobs of an openraft config to the values this store
/// is sized for; everything else (timeouts, cluster name) is left to the caller.
pub fn with_log_compaction(mut config: openraft::Config) -> openraft::Config {
    config.snapshot_policy = SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES);
    config.max_in_snapshot_log_to_keep = KEEP_ENTRIES_BEHIND_SNAPSHOT;
    config.purge_batch_size = PURGE_BATCH_SIZE;
    config
}

/// How often `open` retries while another handle holds the database lock.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// Tuning of the sled database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Size of sled's page cache.
    pub cache_capacity_bytes: u64,
    /// Interval of sled's background flush, which persists the writes that are not flushed
    /// explicitly (the committed log id). `None` disables it.
    pub flush_every_ms: Option<u64>,
    /// How long `open` waits for the database lock. The lock is held until every handle of a
    /// previous instance is dropped, and after `Raft::shutdown` openraft's state machine task
    /// may still be finishing for a moment, so a node restarted in-process has to wait. A
    /// second process on the same directory still gets an error after this long.
    pub lock_timeout_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: Some(500),
            lock_timeout_ms: 5000,
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the private Raft store directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the Raft store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the Raft store at {} is unreadable: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: Box<StorageError>,
    },
}

/// Counters for metrics, shared by the log and the state machine.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    snapshots_built: AtomicU64,
    snapshots_installed: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    log_flushes: AtomicU64,
    entries_appended: AtomicU64,
}

/// Storage figures for `/metrics` and `strait status`. Counters count since the process
/// started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    /// Size of the state in the last snapshot built or installed since start (0 if none).
    pub last_snapshot_bytes: u64,
    /// Log flushes for appends (sled flushes, see `log`); compare with `entries_appended` to
    /// see group commit.
    pub log_flushes: u64,
    pub entries_appended: u64,
    /// Size of the sled database on disk, if sled could tell.
    pub size_on_disk_bytes: Option<u64>,
}

/// Read access to the replicated state for the rest of the node (admin API, zone sync
/// server, metrics). Cheap to clone. It shares the sled database, so the directory stays
/// locked until every reader is dropped too.
#[derive(Debug, Clone)]
pub struct StateReader {
    shared: Arc<Shared>,
}

impl StateReader {
    /// Runs `f` on the federation state as this node has applied it, under the read lock.
    /// Keep `f` short and copy out what you need: `apply` waits while it runs.
    pub fn read<R>(&self, f: impl FnOnce(&FederationState) -> R) -> R {
        f(&self.shared.read().state)
    }

    /// Like [`StateReader::read`], with the applied log id and membership as well.
    pub fn read_applied<R>(&self, f: impl FnOnce(&AppliedState) -> R) -> R {
        f(&self.shared.read())
    }

    /// The state's current revision (log index of its last change).
    pub fn revision(&self) -> u64 {
        *self.shared.revision.borrow()
    }

    /// A receiver notified when the applied revision changes. A watch keeps only the latest
    /// value, so a slow subscriber skips intermediate revisions and reads the state as of now.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision.subscribe()
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.read().last_applied
    }

    pub fn membership(&self) -> StoredMembership {
        self.shared.read().last_membership.clone()
    }

    pub fn stats(&self) -> StoreStats {
        let stats = &self.shared.stats;
        StoreStats {
            snapshots_built: stats.snapshots_built.load(Ordering::Relaxed),
            snapshots_installed: stats.snapshots_installed.load(Ordering::Relaxed),
            last_snapshot_bytes: stats.last_snapshot_bytes.load(Ordering::Relaxed),
            log_flushes: stats.log_flushes.load(Ordering::Relaxed),
            entries_appended: stats.entries_appended.load(Ordering::Relaxed),
            size_on_disk_bytes: self.shared.db.size_on_disk().ok(),
        }
    }
}

/// Opens (or creates) the store in `dir` and rebuilds the state machine: the persisted
/// snapshot, then every committed entry after it re-applied, so the returned state is the
/// one this node had acknowledged before it stopped.
///
/// Hand the log store and the state machine to `Raft::new`; keep the [`StateReader`].
pub fn open(
    dir: impl AsRef<Path>,
    options: StoreOptions,
) -> Result<(LogStore, StateMachineStore, StateReader), StoreError> {
    let path = dir.as_ref().to_path_buf();
    let open_err = |source| StoreError::Open {
        path: path.clone(),
        source,
    };
    strait_trust::store::create_private_dir(&path).map_err(|source| StoreError::CreateDir {
        path: path.clone(),
        source,
    })?;
    let config = sled::Config::new()
        .path(&path)
        .cache_capacity(options.cache_capacity_bytes)
        .flush_every_ms(options.flush_every_ms);
    let deadline = Instant::now() + Duration::from_millis(options.lock_timeout_ms);
    let db = loop {
        match config.open() {
            Ok(db) => break db,
            Err(e) if is_lock_conflict(&e) && Instant::now() < deadline => {
                // Blocking on purpose: opening happens once, at startup, before serving.
                std::thread::sleep(LOCK_POLL);
            }
            Err(e) => return Err(open_err(e)),
        }
    };
    let logs = db.open_tree(codec::TREE_LOG).map_err(open_err)?;
    let meta = db.open_tree(codec::TREE_META).map_err(open_err)?;
    let snapshots = db.open_tree(codec::TREE_SNAPSHOT).map_err(open_err)?;

    let applied = recover(&logs, &meta, &snapshots).map_err(|source| StoreError::Unreadable {
        path: path.clone(),
        source: Box::new(source),
    })?;
    tracing::info!(
        path = %path.display(),
        last_applied = ?applied.last_applied,
        revision = applied.state.revision,
        "opened Raft store"
    );

    let stats = Arc::new(Stats::default());
    let log_store = LogStore::new(db.clone(), logs, meta, stats.clone());
    let sm_store = StateMachineStore {
        shared: Arc::new(Shared::new(db, snapshots, applied, stats)),
    };
    let reader = sm_store.reader();
    Ok((log_store, sm_store, reader))
}

/// Whether sled failed to open because another handle holds the database's file lock. sled
/// reports this only as an `Other` IO error with a message, so the message is what we match.
fn is_lock_conflict(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e)
        if e.kind() == io::ErrorKind::Other && e.to_string().starts_with("could not acquire lock"))
}

/// The state as of the last snapshot plus the committed log after it.
#[allow(clippy::result_large_err)] // see the note on the submodules
fn recover(
    logs: &sled::Tree,
    meta: &sled::Tree,
    snapshots: &sled::Tree,
) -> Result<AppliedState, StorageError> {
    let mut applied = match state_machine::load_snapshot(snapshots)? {
        Some((snapshot, data)) => AppliedState {
            state: state_machine::decode_state(&snapshot, &data)?,
            last_applied: snapshot.last_log_id,
            last_membership: snapshot.last_membership,
        },
        None => AppliedState::default(),
    };
    let committed: Option<Option<LogId>> =
        codec::read_meta(meta, codec::KEY_COMMITTED, || ErrorSubject::Store)?;
    if let Some(committed) = committed.flatten() {
        let first = applied.last_applied.next_index();
        if committed.index >= first {
            for entry in log::read_contiguous(logs, first, committed.index)? {
                applied.apply_entry(&entry);
            }
        }
    }
    Ok(applied)
}
