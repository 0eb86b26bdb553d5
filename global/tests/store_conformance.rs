//! openraft's storage conformance suite against the sled store: the one suite every Raft
//! store of Strait passes. Each case gets a fresh temporary directory.

use openraft::AnyError;
use openraft::StorageIOError;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use strait_global::store::LogStore;
use strait_global::store::StateMachineStore;
use strait_global::store::StoreOptions;
use strait_global::store::open;
use strait_global::types::StorageError;
use strait_global::types::TypeConfig;
use tempfile::TempDir;

/// Builds a store in a new temporary directory; the directory lives as long as the guard.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm, _reader) = open(dir.path(), StoreOptions::default())
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_openraft_conformance_suite() -> anyhow::Result<()> {
    Suite::test_all(SledStoreBuilder)?;
    Ok(())
}
