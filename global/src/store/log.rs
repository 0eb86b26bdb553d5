//! The Raft log on sled: entries, vote, committed and purged log ids.
//!
//! Durability: an append is readable as soon as `append` returns and acknowledged (the
//! `LogFlushed` callback) only after `Db::flush_async` has returned successfully. The flush
//! runs in a background task that takes every append queued behind the one it is flushing
//! and acknowledges them all after one flush: group commit, so the Raft core is not blocked
//! on the disk and a burst of appends costs one flush, not one each. On the leader openraft
//! appends one entry at a time, so there group commit comes from the write batcher
//! (`cluster::batcher`) putting many writes in one entry.
//!
//! A sled flush is `pwrite` + `sync_file_range` of its log buffers, not `fdatasync`: it does
//! not persist file metadata or flush the disk's cache; sled's background flusher `fsync`s
//! every `flush_every_ms` (see `docs/global.md`, Guarantees).

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::storage::LogFlushed;
use openraft::storage::RaftLogStorage;
use tokio::sync::mpsc;

use super::Stats;
use super::codec;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::StorageError;
use crate::types::TypeConfig;
use crate::types::Vote;

/// The Raft log store. Hand it to `Raft::new`.
#[derive(Debug)]
pub struct LogStore {
    db: sled::Db,
    reader: LogReader,
    meta: sled::Tree,
    stats: Arc<Stats>,
    /// Queue of the background flusher, started on the first append.
    flusher: Option<mpsc::UnboundedSender<FlushRequest>>,
}

/// A cheap read-only view of the log, used by openraft's replication tasks.
#[derive(Debug, Clone)]
pub struct LogReader {
    logs: sled::Tree,
}

/// An append waiting for its flush.
struct FlushRequest {
    /// The flusher holds the database only while it has work, so that once the store is
    /// dropped and acknowledged appends are done, nothing keeps the sled directory locked.
    db: sled::Db,
    callback: LogFlushed<TypeConfig>,
}

impl LogStore {
    pub(crate) fn new(db: sled::Db, logs: sled::Tree, meta: sled::Tree, stats: Arc<Stats>) -> Self {
        LogStore {
            db,
            reader: LogReader { logs },
            meta,
            stats,
            flusher: None,
        }
    }

    /// Queues `callback` to be called once everything written so far is on disk.
    fn flush_then(&mut self, callback: LogFlushed<TypeConfig>) {
        let request = FlushRequest {
            db: self.db.clone(),
            callback,
        };
        let request = match &self.flusher {
            Some(queue) => match queue.send(request) {
                Ok(()) => return,
                // The flusher is gone (its runtime shut down); start a new one below.
                Err(mpsc::error::SendError(request)) => request,
            },
            None => request,
        };
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(request, pending, self.stats.clone()));
        self.flusher = Some(queue);
    }

    async fn flush(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| codec::sto_err(subject, ErrorVerb::Write, &e))
    }
}

/// Flushes queued appends in groups until the store is dropped.
async fn run_flusher(
    first: FlushRequest,
    mut queue: mpsc::UnboundedReceiver<FlushRequest>,
    stats: Arc<Stats>,
) {
    let mut group = vec![first];
    loop {
        while let Ok(request) = queue.try_recv() {
            group.push(request);
        }
        // Every request carries the same database; keep one handle for the flush and drop the
        // rest now, and that one before acknowledging, so that whoever waits for the last
        // acknowledgement and then drops the store can reopen its directory at once.
        let db = group.first().map(|request| request.db.clone());
        let callbacks: Vec<LogFlushed<TypeConfig>> =
            group.drain(..).map(|request| request.callback).collect();
        let result = match db {
            Some(db) => db.flush_async().await.map(|_| ()),
            None => Ok(()),
        };
        stats.log_flushes.fetch_add(1, Ordering::Relaxed);
        for callback in callbacks {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(format!("flushing the Raft log: {e}"))),
            };
            callback.log_io_completed(outcome);
        }
        match queue.recv().await {
            Some(request) => group.push(request),
            None => return,
        }
    }
}

/// Reads the entries of `range` from the log tree, checking that each entry is stored under
/// its own index.
fn read_entries<RB: RangeBounds<u64>>(
    logs: &sled::Tree,
    range: RB,
) -> Result<Vec<Entry>, StorageError> {
    let start = codec::key_bound(range.start_bound());
    let end = codec::key_bound(range.end_bound());
    let mut entries = Vec::new();
    for item in logs.range((start, end)) {
        let (key, value) =
            item.map_err(|e| codec::sto_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let index = codec::key_index(&key)
            .ok_or_else(|| codec::corrupt(ErrorSubject::Logs, "log key is not an 8-byte index"))?;
        let entry: Entry = codec::from_json(&value)
            .map_err(|e| codec::sto_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))?;
        if entry.log_id.index != index {
            return Err(codec::corrupt(
                ErrorSubject::LogIndex(index),
                format!("entry {} is stored under index {index}", entry.log_id),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Reads the committed entries in `range`, failing unless all of them are present: they are
/// about to be applied, and a gap would silently skip a command.
pub(crate) fn read_contiguous(
    logs: &sled::Tree,
    first: u64,
    last: u64,
) -> Result<Vec<Entry>, StorageError> {
    let entries = read_entries(logs, first..=last)?;
    for (expected, entry) in (first..=last).zip(&entries) {
        if entry.log_id.index != expected {
            return Err(codec::corrupt(
                ErrorSubject::LogIndex(expected),
                format!("committed log entry {expected} is missing"),
            ));
        }
    }
    let wanted = last.saturating_sub(first).saturating_add(1);
    if entries.len() as u64 != wanted {
        return Err(codec::corrupt(
            ErrorSubject::LogIndex(first.saturating_add(entries.len() as u64)),
            format!("committed log entries {first}..={last} are not all present"),
        ));
    }
    Ok(entries)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.logs, range)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.reader.logs, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> =
            codec::read_meta(&self.meta, codec::KEY_LAST_PURGED, || ErrorSubject::Logs)?;
        let last = self
            .reader
            .logs
            .last()
            .map_err(|e| codec::sto_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let last_log_id = match last {
            Some((key, value)) => {
                let index = codec::key_index(&key).unwrap_or_default();
                let entry: Entry = codec::from_json(&value).map_err(|e| {
                    codec::sto_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e)
                })?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = codec::to_json(vote)
            .map_err(|e| codec::sto_err(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        self.meta
            .insert(codec::KEY_VOTE, bytes)
            .map_err(|e| codec::sto_err(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        // A vote must survive a crash, or this node could vote twice in one term.
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        codec::read_meta(&self.meta, codec::KEY_VOTE, || ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing the last committed id only means re-applying less at startup
        // and waiting for the leader to tell us again. sled's periodic flush persists it.
        let bytes = codec::to_json(&committed)
            .map_err(|e| codec::sto_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.meta
            .insert(codec::KEY_COMMITTED, bytes)
            .map_err(|e| codec::sto_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> =
            codec::read_meta(&self.meta, codec::KEY_COMMITTED, || ErrorSubject::Store)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut count = 0u64;
        for entry in entries {
            let bytes = codec::to_json(&entry).map_err(|e| {
                codec::sto_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e)
            })?;
            batch.insert(&codec::index_key(entry.log_id.index), bytes);
            count += 1;
        }
        // One batch: either all of these entries are in the tree or none, so there is no hole.
        self.reader
            .logs
            .apply_batch(batch)
            .map_err(|e| codec::sto_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        self.stats
            .entries_appended
            .fetch_add(count, Ordering::Relaxed);
        self.flush_then(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.reader.logs.range(codec::index_key(log_id.index)..) {
            let (key, _) =
                item.map_err(|e| codec::sto_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            batch.remove(key);
        }
        self.reader
            .logs
            .apply_batch(batch)
            .map_err(|e| codec::sto_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))?;
        self.flush(ErrorSubject::Log(log_id)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: after a crash between the two steps the log state
        // still says "purged up to here", and the leftover entries are merely garbage.
        let bytes = codec::to_json(&log_id)
            .map_err(|e| codec::sto_err(ErrorSubject::Log(log_id), ErrorVerb::Write, &e))?;
        self.meta
            .insert(codec::KEY_LAST_PURGED, bytes)
            .map_err(|e| codec::sto_err(ErrorSubject::Log(log_id), ErrorVerb::Write, &e))?;
        let mut batch = sled::Batch::default();
        for item in self.reader.logs.range(..=codec::index_key(log_id.index)) {
            let (key, _) =
                item.map_err(|e| codec::sto_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            batch.remove(key);
        }
        self.reader
            .logs
            .apply_batch(batch)
            .map_err(|e| codec::sto_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))?;
        self.flush(ErrorSubject::Log(log_id)).await
    }
}
