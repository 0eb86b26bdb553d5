//! Snapshots are built from the builder's own replica of the state (the commands applied
//! since its last snapshot replayed on it), not from the live state: each snapshot must still
//! hold exactly the state applied at its log id, also after a snapshot was installed.

use std::collections::BTreeMap;

use anyhow::ensure;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use strait_global::state::Command;
use strait_global::state::FederationState;
use strait_global::state::PolicyKey;
use strait_global::store::StateMachineStore;
use strait_global::store::StoreOptions;
use strait_global::store::open;
use strait_global::types::Entry;
use strait_global::types::LogId;
use strait_global::types::Snapshot;

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn policies(index: u64) -> Entry {
    let key = |n: u64| PolicyKey {
        kind: "Timeout".into(),
        namespace: "default".into(),
        name: format!("p{n}"),
    };
    // A batch too, so replay covers batches; the second policy replaces an earlier one.
    let command = Command::Batch(vec![
        Command::ApplyPolicies {
            policies: vec![(key(index), format!("{{\"n\":{index}}}"))],
        },
        Command::ApplyPolicies {
            policies: vec![(key(index / 2), format!("{{\"again\":{index}}}"))],
        },
        Command::CreateZone {
            name: format!("z{}", index % 3),
            region: String::new(),
            labels: BTreeMap::new(),
            now_ms: index,
        },
    ]);
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

async fn apply(
    sm: &mut StateMachineStore,
    indexes: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<()> {
    sm.apply(indexes.map(policies).collect::<Vec<_>>()).await?;
    Ok(())
}

fn decode(snapshot: &Snapshot) -> anyhow::Result<FederationState> {
    Ok(serde_json::from_slice(snapshot.snapshot.get_ref())?)
}

#[tokio::test]
async fn every_snapshot_holds_the_state_applied_at_its_log_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (log, mut sm, reader) = open(dir.path(), StoreOptions::default())?;

    apply(&mut sm, 1..=40).await?;
    let first = sm.get_snapshot_builder().await.build_snapshot().await?;
    ensure!(first.meta.last_log_id == Some(log_id(40)));
    let at_40 = reader.read(Clone::clone);
    ensure!(
        decode(&first)? == at_40,
        "first snapshot differs from the applied state"
    );

    apply(&mut sm, 41..=90).await?;
    let second = sm.get_snapshot_builder().await.build_snapshot().await?;
    ensure!(second.meta.last_log_id == Some(log_id(90)));
    ensure!(
        decode(&second)? == reader.read(Clone::clone),
        "replayed snapshot differs"
    );
    ensure!(reader.stats().snapshots_built == 2);

    // Install the older snapshot: the next one starts from it, not from the replica.
    sm.install_snapshot(&first.meta, first.snapshot.clone())
        .await?;
    ensure!(reader.read(Clone::clone) == at_40);
    apply(&mut sm, 41..=55).await?;
    let third = sm.get_snapshot_builder().await.build_snapshot().await?;
    ensure!(third.meta.last_log_id == Some(log_id(55)));
    ensure!(
        decode(&third)? == reader.read(Clone::clone),
        "snapshot after install differs"
    );

    // Reopened, the builder starts from the recovered state.
    drop((log, sm, reader));
    let (_log, mut sm, reader) = open(dir.path(), StoreOptions::default())?;
    apply(&mut sm, 56..=60).await?;
    let fourth = sm.get_snapshot_builder().await.build_snapshot().await?;
    ensure!(
        decode(&fourth)? == reader.read(Clone::clone),
        "snapshot after reopen differs"
    );
    Ok(())
}
