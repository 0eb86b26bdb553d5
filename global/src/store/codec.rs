//! How records are laid out in sled: key encodings, JSON values, the snapshot framing, and
//! the mapping of every read or write failure to openraft's `StorageError`.

use std::ops::Bound;

use openraft::AnyError;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::StorageIOError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::SnapshotMeta;
use crate::types::StorageError;

/// Tree of log entries: key = index as big-endian u64 (so sled's byte order is log order),
/// value = JSON of the entry.
pub(crate) const TREE_LOG: &str = "raft_log";
/// Tree of small Raft records: vote, committed log id, last purged log id.
pub(crate) const TREE_META: &str = "raft_meta";
/// Tree holding the current snapshot under one key.
pub(crate) const TREE_SNAPSHOT: &str = "raft_snapshot";

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged_log_id";
pub(crate) const KEY_SNAPSHOT: &[u8] = b"current";

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn key_index(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

pub(crate) fn key_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// A storage error about `subject`, caused by `source`.
pub(crate) fn sto_err<E>(subject: ErrorSubject<u64>, verb: ErrorVerb, source: &E) -> StorageError
where
    E: std::error::Error + 'static,
{
    StorageIOError::new(subject, verb, AnyError::new(source)).into()
}

/// A storage error for data that is on disk but makes no sense.
pub(crate) fn corrupt(subject: ErrorSubject<u64>, what: impl ToString) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, AnyError::error(what)).into()
}

/// Reads and decodes one JSON record of the meta tree.
pub(crate) fn read_meta<T: DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
    subject: impl Fn() -> ErrorSubject<u64>,
) -> Result<Option<T>, StorageError> {
    let Some(bytes) = meta
        .get(key)
        .map_err(|e| sto_err(subject(), ErrorVerb::Read, &e))?
    else {
        return Ok(None);
    };
    from_json(&bytes)
        .map(Some)
        .map_err(|e| sto_err(subject(), ErrorVerb::Read, &e))
}

/// The snapshot record: `meta length (u64 BE) | meta JSON | state JSON`. One sled value, so
/// the meta and the data it describes are always replaced together.
pub(crate) fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, StorageError> {
    let meta_json = to_json(meta).map_err(|e| {
        sto_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            &e,
        )
    })?;
    let mut out = Vec::with_capacity(8 + meta_json.len() + data.len());
    out.extend_from_slice(&(meta_json.len() as u64).to_be_bytes());
    out.extend_from_slice(&meta_json);
    out.extend_from_slice(data);
    Ok(out)
}

pub(crate) fn decode_snapshot(record: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
    let subject = || ErrorSubject::Snapshot(None);
    let (len, rest) = record
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt(subject(), "snapshot record is shorter than its header"))?;
    let meta_len = usize::try_from(u64::from_be_bytes(*len))
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or_else(|| corrupt(subject(), "snapshot record is shorter than its meta length"))?;
    let (meta_json, data) = rest.split_at(meta_len);
    let meta: SnapshotMeta =
        from_json(meta_json).map_err(|e| sto_err(subject(), ErrorVerb::Read, &e))?;
    Ok((meta, data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_like_indices() {
        let mut keys: Vec<[u8; 8]> = [300u64, 2, 256, 1, u64::MAX].map(index_key).to_vec();
        keys.sort();
        let back: Vec<Option<u64>> = keys.iter().map(|k| key_index(k)).collect();
        assert_eq!(
            back,
            vec![Some(1), Some(2), Some(256), Some(300), Some(u64::MAX)]
        );
        assert_eq!(key_index(b"short"), None);
    }

    #[test]
    fn snapshot_framing_round_trips_and_rejects_garbage() {
        let meta = SnapshotMeta::default();
        let record = encode_snapshot(&meta, b"{\"x\":1}").unwrap_or_default();
        let decoded = decode_snapshot(&record).ok();
        assert_eq!(decoded, Some((meta, b"{\"x\":1}".to_vec())));

        assert!(decode_snapshot(b"").is_err());
        assert!(decode_snapshot(&u64::MAX.to_be_bytes()).is_err());
        let mut bad = 3u64.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{{{rest");
        assert!(decode_snapshot(&bad).is_err());
    }
}
