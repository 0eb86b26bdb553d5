//! The sled store across restarts and against damaged data: what was acknowledged comes
//! back, and corrupt records are errors, not panics.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use anyhow::Context as _;
use anyhow::ensure;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use strait_global::state::Command;
use strait_global::state::CommandResult;
use strait_global::state::ExportedService;
use strait_global::state::PrivateKeyPem;
use strait_global::state::ServiceKey;
use strait_global::store::LogStore;
use strait_global::store::StateMachineStore;
use strait_global::store::StoreError;
use strait_global::store::StoreOptions;
use strait_global::store::open;
use strait_global::types::Entry;
use strait_global::types::LogId;
use strait_global::types::Membership;
use strait_global::types::NodeInfo;
use strait_global::types::StoredMembership;
use strait_global::types::Vote;
use tempfile::TempDir;

const T0: u64 = 1_795_255_200_000;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(2, 1), index)
}

fn normal(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

fn membership() -> Membership {
    let node = NodeInfo {
        api: "127.0.0.1:7001".into(),
        admin: "127.0.0.1:7101".into(),
    };
    Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, node)]))
}

fn create_zone(name: &str) -> Command {
    Command::CreateZone {
        name: name.into(),
        region: "eu".into(),
        labels: BTreeMap::new(),
        now_ms: T0,
    }
}

/// Entries 1..=6: membership, init, zone a, a's inventory, zone b, zone c.
fn entries() -> Vec<Entry> {
    vec![
        Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership()),
        },
        normal(
            2,
            Command::InitFederation {
                trust_domain: "strait.local".into(),
                root_cert_pem: "CERT".into(),
                root_key_pem: PrivateKeyPem("KEY".into()),
                bundle_pem: String::new(),
                now_ms: T0,
            },
        ),
        normal(3, create_zone("a")),
        normal(
            4,
            Command::ReportInventory {
                zone: "a".into(),
                version: 1,
                services: BTreeMap::from([(
                    ServiceKey::new("default", "web"),
                    ExportedService::default(),
                )]),
                gateways: vec!["127.0.0.1:15443".into()],
                now_ms: T0,
            },
        ),
        normal(5, create_zone("b")),
        normal(6, create_zone("c")),
    ]
}

type Store = (LogStore, StateMachineStore);

/// Opens the store in `dir`; tests take readers from the state machine when they need one.
fn open_dir(dir: &TempDir) -> Result<Store, StoreError> {
    retry_while_locked(|| {
        let (log, sm, _reader) = open(dir.path(), StoreOptions::default())?;
        Ok((log, sm))
    })
}

/// sled's flusher thread lets go of the database's file lock a moment after the last handle is
/// dropped (later on a loaded machine): a reopen in a test waits for it, as a restarted process
/// would find the lock free.
fn retry_while_locked<T, E: std::fmt::Display>(
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn sled_open(dir: &TempDir) -> sled::Result<sled::Db> {
    retry_while_locked(|| sled::open(dir.path()))
}

#[tokio::test]
async fn vote_logs_committed_snapshot_and_state_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let all = entries();
    let vote = Vote::new_committed(2, 1);

    {
        let (mut log, mut sm) = open_dir(&dir)?;
        let handle = sm.reader();
        let mut revisions = handle.subscribe();

        log.save_vote(&vote).await?;
        log.blocking_append(all.clone()).await?;

        let results = sm.apply(all[..3].to_vec()).await?;
        ensure!(results.iter().all(CommandResult::is_ok), "{results:?}");
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
        ensure!(snapshot.meta.last_log_id == Some(log_id(3)));

        sm.apply(all[3..5].to_vec()).await?;
        log.save_committed(Some(log_id(5))).await?;
        log.purge(log_id(2)).await?;

        ensure!(revisions.has_changed()?, "apply did not publish a revision");
        ensure!(*revisions.borrow_and_update() == 5);
        ensure!(handle.stats().snapshots_built == 1);
        ensure!(handle.stats().entries_appended == 6);
        // Entry 6 was appended but never committed: it must not be applied after restart.
    }

    let (mut log, mut sm) = open_dir(&dir).context("reopening the store")?;
    let handle = sm.reader();

    ensure!(log.read_vote().await? == Some(vote), "vote lost");
    let state = log.get_log_state().await?;
    ensure!(state.last_purged_log_id == Some(log_id(2)), "{state:?}");
    ensure!(state.last_log_id == Some(log_id(6)), "{state:?}");
    let read = log.try_get_log_entries(3..=6).await?;
    ensure!(
        read == all[2..].to_vec(),
        "log entries differ after restart"
    );
    ensure!(
        log.try_get_log_entries(1..3).await?.is_empty(),
        "purged entries came back"
    );
    ensure!(log.read_committed().await? == Some(log_id(5)));

    let snapshot = sm.get_current_snapshot().await?.context("snapshot lost")?;
    ensure!(snapshot.meta.last_log_id == Some(log_id(3)));
    ensure!(
        snapshot.meta.last_membership == StoredMembership::new(Some(log_id(1)), membership()),
        "snapshot membership differs"
    );

    // The state is the snapshot plus the committed entries 4 and 5 re-applied.
    let (last_applied, last_membership) = sm.applied_state().await?;
    ensure!(last_applied == Some(log_id(5)), "{last_applied:?}");
    ensure!(last_membership.membership() == &membership());
    ensure!(handle.revision() == 5);
    handle.read(|s| -> anyhow::Result<()> {
        ensure!(s.is_initialized());
        ensure!(s.zone("a").is_some() && s.zone("b").is_some());
        ensure!(s.zone("c").is_none(), "an uncommitted entry was applied");
        ensure!(s.vip(&ServiceKey::new("default", "web")) == Some(1));
        Ok(())
    })?;
    Ok(())
}

#[tokio::test]
async fn installed_snapshot_survives_a_restart() -> anyhow::Result<()> {
    let leader_dir = tempfile::tempdir()?;
    let follower_dir = tempfile::tempdir()?;
    let (_leader_log, mut leader) = open_dir(&leader_dir)?;
    leader.apply(entries()).await?;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await?;

    {
        let (_log, mut follower) = open_dir(&follower_dir)?;
        let handle = follower.reader();
        let mut data = follower.begin_receiving_snapshot().await?;
        *data = *snapshot.snapshot.clone();
        follower.install_snapshot(&snapshot.meta, data).await?;
        ensure!(handle.revision() == 6);
        ensure!(handle.stats().snapshots_installed == 1);
    }

    let (_log, follower) = open_dir(&follower_dir)?;
    let handle = follower.reader();
    ensure!(handle.last_applied() == Some(log_id(6)));
    let leader_state = leader.reader().read(|s| s.clone());
    ensure!(
        handle.read(|s| s == &leader_state),
        "installed state differs"
    );
    ensure!(handle.read(|s| s.zone("c").is_some()));
    Ok(())
}

/// Overwrites a record in one of the store's trees, as a disk fault or a bad edit would.
fn damage(dir: &TempDir, tree: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    let db = sled_open(dir)?;
    db.open_tree(tree)?.insert(key, value)?;
    db.flush()?;
    Ok(())
}

#[tokio::test]
async fn corrupt_log_entry_is_an_error_not_a_panic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let (mut log, _sm) = open_dir(&dir)?;
        log.blocking_append(entries()).await?;
    }
    damage(
        &dir,
        "raft_log",
        &2u64.to_be_bytes(),
        b"{\"not\": \"an entry\"",
    )?;
    damage(&dir, "raft_log", &6u64.to_be_bytes(), &[0xff, 0x00])?;

    // Nothing committed to re-apply, so the store opens; reading the damage fails cleanly.
    let (mut log, _sm) = open_dir(&dir)?;
    let err = match log.try_get_log_entries(1..4).await {
        Err(e) => e,
        Ok(entries) => anyhow::bail!("read a corrupt entry: {entries:?}"),
    };
    ensure!(err.to_string().contains("LogIndex(2)"), "{err}");
    ensure!(
        log.get_log_state().await.is_err(),
        "corrupt last entry not reported"
    );
    let mut reader = log.get_log_reader().await;
    ensure!(
        reader.try_get_log_entries(3..5).await?.len() == 2,
        "intact entries unreadable"
    );
    Ok(())
}

#[tokio::test]
async fn corrupt_committed_entry_fails_open_with_the_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let (mut log, _sm) = open_dir(&dir)?;
        log.blocking_append(entries()).await?;
        log.save_committed(Some(log_id(4))).await?;
    }
    damage(&dir, "raft_log", &3u64.to_be_bytes(), b"garbage")?;
    match open_dir(&dir) {
        Err(StoreError::Unreadable { path, source }) => {
            ensure!(path == dir.path());
            ensure!(source.to_string().contains("LogIndex(3)"), "{source}");
        }
        other => anyhow::bail!("expected Unreadable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn missing_committed_entry_fails_open() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let (mut log, _sm) = open_dir(&dir)?;
        log.blocking_append(entries()).await?;
        log.save_committed(Some(log_id(5))).await?;
    }
    {
        let db = sled_open(&dir)?;
        db.open_tree("raft_log")?.remove(3u64.to_be_bytes())?;
        db.flush()?;
    }
    let result = open_dir(&dir);
    ensure!(
        matches!(result, Err(StoreError::Unreadable { .. })),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn corrupt_snapshot_and_vote_are_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let (mut log, mut sm) = open_dir(&dir)?;
        log.save_vote(&Vote::new(1, 1)).await?;
        sm.apply(entries()).await?;
        sm.get_snapshot_builder().await.build_snapshot().await?;
    }
    damage(&dir, "raft_meta", b"vote", b"[1,2")?;
    {
        let (mut log, _sm) = open_dir(&dir)?;
        ensure!(log.read_vote().await.is_err(), "corrupt vote not reported");
    }

    // A truncated snapshot record: its length header promises more than is there.
    let mut record = 1_000u64.to_be_bytes().to_vec();
    record.extend_from_slice(b"{}");
    damage(&dir, "raft_snapshot", b"current", &record)?;
    let result = open_dir(&dir);
    ensure!(
        matches!(result, Err(StoreError::Unreadable { .. })),
        "{result:?}"
    );

    Ok(())
}

#[tokio::test]
async fn installing_a_snapshot_that_is_not_a_state_fails_and_keeps_the_old_state()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_log, mut sm) = open_dir(&dir)?;
    sm.apply(entries()).await?;
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
    let before = sm.reader().read(|s| s.clone());

    let mut data = sm.begin_receiving_snapshot().await?;
    data.get_mut().extend_from_slice(b"\"not a state\"");
    let mut meta = snapshot.meta.clone();
    meta.snapshot_id = "bogus".into();
    ensure!(
        sm.install_snapshot(&meta, data).await.is_err(),
        "installed garbage"
    );
    ensure!(sm.reader().read(|s| s == &before), "state changed");
    let current = sm.get_current_snapshot().await?.context("snapshot lost")?;
    ensure!(
        current.meta == snapshot.meta,
        "stored snapshot replaced by garbage"
    );
    Ok(())
}

#[tokio::test]
async fn open_waits_for_a_previous_instance_then_gives_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = open_dir(&dir)?;
    let impatient = StoreOptions {
        lock_timeout_ms: 50,
        ..StoreOptions::default()
    };
    let result = open(dir.path(), impatient).map(|_| ());
    ensure!(matches!(result, Err(StoreError::Open { .. })), "{result:?}");

    // An instance that is still shutting down releases the lock a moment later.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(first);
    });
    open_dir(&dir).context("open did not wait for the lock")?;
    release
        .join()
        .map_err(|_| anyhow::anyhow!("release thread panicked"))?;
    Ok(())
}

#[cfg(unix)]
#[test]
fn store_directory_is_private() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir()?;
    let dir = parent.path().join("raft");
    let _store = open(&dir, StoreOptions::default())?;
    let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "store directory mode is {mode:o}");
    Ok(())
}
