//! The Raft state machine: the in-memory [`FederationState`], its snapshots on sled, and the
//! revision watch the zone sync server subscribes to.
//!
//! The state lives in memory only; what is durable is the latest snapshot plus the log. At
//! startup [`super::open`] rebuilds it from the snapshot and re-applies the committed entries
//! after it, so a node serves the state it had acknowledged before its restart.

use std::io::Cursor;
use std::sync::Arc;
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
                if let CommandResult::Rejected(rejection) = &result {
                    tracing::debug!(
                        index = entry.log_id.index,
                        command = command.name(),
                        %rejection,
                        "command rejected"
                    );
                }
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
}

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
            applied: RwLock::new(applied),
            revision,
            stats,
            snapshot_seq: AtomicU64::new(0),
        }
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
        let (last_log_id, last_membership, data) = {
            let applied = self.shared.read();
            let data = codec::to_json(&applied.state)
                .map_err(|e| codec::sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
            (applied.last_applied, applied.last_membership.clone(), data)
        };
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
        tracing::info!(snapshot = %meta, bytes = data.len(), "built snapshot");
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
            let results: Vec<CommandResult> = entries
                .into_iter()
                .map(|entry| applied.apply_entry(&entry))
                .collect();
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
        {
            let mut applied = self.shared.write();
            *applied = AppliedState {
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                state,
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
