//! The Raft state machine: the in-memory [`FederationState`], its snapshots on sled, and the
//! revision watch the zone sync server subscribes to.
//!
//! The state lives in memory only; what is durable is the latest snapshot plus the log. At
//! startup [`super::open`] rebuilds it from the snapshot and re-applies the committed entries
//! after it, so a node serves the state it had acknowledged before its restart.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use tokio::sync::watch;

use super::Stats;
use super::codec;
use crate::state::Command;
use crate::state::CommandResult;
use crate::state::Detail;
use crate::state::FederationState;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// The applied state: the federation state and how far the log has been applied to it.
/// Kept under one lock so a snapshot always pairs a state with the log id it reflects.
#[derive(Debug, Clone, Default)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: FederationState,
}

impl AppliedState {
    /// Applies one log entry. Blank and membership entries do not touch the federation state.
    pub(crate) fn apply_entry(&mut self, entry: &Entry) -> CommandResult {
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => CommandResult::Ok {
                revision: self.state.revision,
                detail: Detail::Unchanged,
            },
            EntryPayload::Normal(command) => {
                let result = self.state.apply(entry.log_id.index, command);
                log_rejections(entry.log_id.index, command, &result);
                result
            }
            EntryPayload::Membership(membership) => {
                self.last_membership =
                    StoredMembership::new(Some(entry.log_id), membership.clone());
                CommandResult::Ok {
                    revision: self.state.revision,
                    detail: Detail::Unchanged,
                }
            }
        }
    }
}

/// Logs every refused command of an entry, the commands of a batch one by one.
fn log_rejections(index: u64, command: &Command, result: &CommandResult) {
    match (command, result) {
        (
            Command::Batch(commands),
            CommandResult::Ok {
                detail: Detail::Batch(results),
                ..
            },
        ) => {
            for (command, result) in commands.iter().zip(results) {
                log_rejections(index, command, result);
            }
        }
        (_, CommandResult::Rejected(rejection)) => {
            tracing::debug!(index, command = command.name(), %rejection, "command rejected");
        }
        _ => {}
    }
}

/// What the state machine shares with its snapshot builders and the [`super::StateReader`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) snapshots: sled::Tree,
    pub(crate) applied: RwLock<AppliedState>,
    pub(crate) revision: watch::Sender<u64>,
    pub(crate) stats: Arc<Stats>,
    /// Distinguishes snapshots built at the same log id within one process.
    snapshot_seq: AtomicU64,
    /// The snapshot builder's own copy of the state, as of the last snapshot it built. Held
    /// by the builder while it catches up and encodes, never by `apply`.
    replica: Mutex<Option<FederationState>>,
    /// What `apply` did since then, for the builder to replay on its replica.
    backlog: Mutex<Backlog>,
}

/// Commands applied since the replica's point, in order, with their log index. Replaying
/// them on the replica (apply is deterministic) yields the applied state without copying it
/// under the lock: building a snapshot never makes `apply` wait for more than moving this
/// list out.
#[derive(Debug, Default)]
struct Backlog {
    commands: Vec<(u64, Command)>,
    /// The state was replaced by an installed snapshot: the replica restarts from this copy.
    reset: Option<FederationState>,
    /// More than [`MAX_BACKLOG`] commands piled up (no snapshot for that long): the list was
    /// dropped and the next build copies the state under the lock instead.
    overflowed: bool,
}

/// Bound of the backlog, far above what the snapshot policy lets accumulate, so that a node
/// that never builds a snapshot does not keep every command in memory a second time.
const MAX_BACKLOG: usize = 100_000;

impl Shared {
    pub(crate) fn new(
        db: sled::Db,
        snapshots: sled::Tree,
        applied: AppliedState,
        stats: Arc<Stats>,
    ) -> Self {
        let (revision, _) = watch::channel(applied.state.revision);
        Shared {
            db,
            snapshots,
            revision,
            stats,
            snapshot_seq: AtomicU64::new(0),
            replica: Mutex::new(Some(applied.state.clone())),
            backlog: Mutex::new(Backlog::default()),
            applied: RwLock::new(applied),
        }
    }

    fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings the replica up to the applied state and encodes it: the snapshot's meta and
    /// bytes, plus how long catching up took. Blocking; run it off the runtime's workers.
    fn encode_snapshot_state(
        &self,
    ) -> Result<(Option<LogId>, StoredMembership, Vec<u8>, usize), serde_json::Error> {
        // One builder at a time: the replica is the builder's.
        let mut replica = self.replica.lock().unwrap_or_else(PoisonError::into_inner);
        let (last_log_id, last_membership, commands) = {
            let applied = self.read();
            let mut backlog = self.backlog();
            let commands = std::mem::take(&mut backlog.commands);
            if let Some(reset) = backlog.reset.take() {
                *replica = Some(reset);
            }
            if std::mem::take(&mut backlog.overflowed) || replica.is_none() {
                // Rare fallback (see `Backlog::overflowed`): copy under the lock.
                *replica = Some(applied.state.clone());
                (
                    applied.last_applied,
                    applied.last_membership.clone(),
                    Vec::new(),
                )
            } else {
                (
                    applied.last_applied,
                    applied.last_membership.clone(),
                    commands,
                )
            }
        };
        let state = replica.get_or_insert_with(FederationState::default);
        for (index, command) in &commands {
            state.apply(*index, command);
        }
        let data = codec::to_json(&*state)?;
        Ok((last_log_id, last_membership, data, commands.len()))
    }

    // A panic while the lock is held cannot leave the state half-changed in a way that a
    // poison flag would help with (apply is pure and does not panic on any input), so a
    // poisoned lock is used as is rather than turned into a second panic.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        self.applied.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, AppliedState> {
        self.applied.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells subscribers about a new revision; quiet when it did not change.
    fn publish(&self, revision: u64) {
        self.revision.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
    }

    /// Replaces the stored snapshot and flushes it.
    async fn persist_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let record = codec::encode_snapshot(meta, data)?;
        self.snapshots
            .insert(codec::KEY_SNAPSHOT, record)
            .map_err(|e| codec::sto_err(subject(), ErrorVerb::Write, &e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| codec::sto_err(subject(), ErrorVerb::Write, &e))?;
        self.stats
            .last_snapshot_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Loads the stored snapshot, if any: its meta and the state it holds.
pub(crate) fn load_snapshot(
    snapshots: &sled::Tree,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let record = snapshots
        .get(codec::KEY_SNAPSHOT)
        .map_err(|e| codec::sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
    record.map(|r| codec::decode_snapshot(&r)).transpose()
}

/// Decodes a snapshot's bytes into the federation state.
pub(crate) fn decode_state(
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<FederationState, StorageError> {
    codec::from_json(data).map_err(|e| {
        codec::sto_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
            &e,
        )
    })
}

/// The Raft state machine. Hand it to `Raft::new`; read the state through a
/// [`super::StateReader`].
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    pub(crate) shared: Arc<Shared>,
}

impl StateMachineStore {
    /// Another reader of the state (`open` returns one already).
    pub fn reader(&self) -> super::StateReader {
        super::StateReader {
            shared: self.shared.clone(),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Not from the live state: `apply` needs its lock for writing, and encoding a large
        // state (tens of MB of JSON) takes ~100 ms, as does even copying it. The builder keeps
        // its own replica and replays the commands applied since its last snapshot on it, on
        // the blocking pool, so `apply` only ever waits for a list to be moved out.
        let started = std::time::Instant::now();
        let shared = self.shared.clone();
        let (last_log_id, last_membership, data, replayed) =
            tokio::task::spawn_blocking(move || shared.encode_snapshot_state())
                .await
                .map_err(|e| codec::sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?
                .map_err(|e| codec::sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
        let encoded = started.elapsed();
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match &last_log_id {
            Some(log_id) => format!("{}-{}-{seq}", log_id.leader_id, log_id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.shared.persist_snapshot(&meta, &data).await?;
        self.shared
            .stats
            .snapshots_built
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            snapshot = %meta,
            bytes = data.len(),
            replayed,
            encode_ms = encoded.as_millis(),
            total_ms = started.elapsed().as_millis(),
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (results, revision) = {
            let mut applied = self.shared.write();
            let mut backlog = self.shared.backlog();
            let mut results = Vec::new();
            for entry in entries {
                results.push(applied.apply_entry(&entry));
                if let EntryPayload::Normal(command) = entry.payload {
                    backlog.commands.push((entry.log_id.index, command));
                }
            }
            if backlog.commands.len() > MAX_BACKLOG {
                backlog.commands = Vec::new();
                backlog.overflowed = true;
            }
            (results, applied.state.revision)
        };
        self.shared.publish(revision);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = decode_state(meta, &data)?;
        // Persist before swapping: if the write fails, the old state stays in force.
        self.shared.persist_snapshot(meta, &data).await?;
        let revision = state.revision;
        let replica = state.clone();
        {
            let mut applied = self.shared.write();
            *applied = AppliedState {
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                state,
            };
            let mut backlog = self.shared.backlog();
            *backlog = Backlog {
                reset: Some(replica),
                ..Backlog::default()
            };
        }
        self.shared.publish(revision);
        self.shared
            .stats
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta, bytes = data.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(
            load_snapshot(&self.shared.snapshots)?.map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
        )
    }
}
