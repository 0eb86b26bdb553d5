//! The sled store under a real openraft node (single voter, so no network is needed):
//! commands are committed and applied, rejections come back as results, snapshots are built
//! and the log purged behind them, and a restarted node comes back with its state and leads
//! again.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use openraft::error::InstallSnapshotError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use strait_global::state::Command;
use strait_global::state::CommandResult;
use strait_global::state::PrivateKeyPem;
use strait_global::state::Rejection;
use strait_global::store::StoreOptions;
use strait_global::store::open;
use strait_global::store::with_log_compaction;
use strait_global::types::AppendEntriesRequest;
use strait_global::types::AppendEntriesResponse;
use strait_global::types::InstallSnapshotRequest;
use strait_global::types::InstallSnapshotResponse;
use strait_global::types::NodeId;
use strait_global::types::NodeInfo;
use strait_global::types::Raft;
use strait_global::types::TypeConfig;
use strait_global::types::VoteRequest;
use strait_global::types::VoteResponse;

/// A network with no peers: a single-voter cluster never sends an RPC.
struct NoPeers;

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Unreachable(Unreachable::new(&io::Error::other("no peers in this test")))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: NodeId, _node: &NodeInfo) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest,
        _option: RPCOption,
    ) -> Result<VoteResponse, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        Err(unreachable())
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn config() -> anyhow::Result<Arc<openraft::Config>> {
    let mut config = with_log_compaction(openraft::Config {
        cluster_name: "store-raft-test".into(),
        ..Default::default()
    });
    // Small numbers so the test sees a snapshot and a purge.
    config.snapshot_policy = SnapshotPolicy::LogsSinceLast(10);
    config.max_in_snapshot_log_to_keep = 0;
    config.purge_batch_size = 1;
    Ok(Arc::new(config.validate()?))
}

fn create_zone(name: &str) -> Command {
    Command::CreateZone {
        name: name.into(),
        region: "eu".into(),
        labels: BTreeMap::new(),
        now_ms: 1,
    }
}

async fn write(raft: &Raft, command: Command) -> anyhow::Result<CommandResult> {
    Ok(raft.client_write(command).await?.data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_commits_snapshots_purges_and_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = NodeInfo {
        api: "127.0.0.1:1".into(),
        admin: "127.0.0.1:2".into(),
    };

    let revision_before_restart = {
        let (log, sm, handle) = open(dir.path(), StoreOptions::default())?;
        let mut revisions = handle.subscribe();
        let raft = Raft::new(1, config()?, NoPeers, log, sm).await?;
        raft.initialize(BTreeMap::from([(1, node.clone())])).await?;
        raft.wait(Some(TIMEOUT))
            .state(ServerState::Leader, "leader")
            .await?;

        let init = Command::InitFederation {
            trust_domain: "strait.local".into(),
            root_cert_pem: "CERT".into(),
            root_key_pem: PrivateKeyPem("KEY".into()),
            bundle_pem: String::new(),
            now_ms: 1,
        };
        ensure!(write(&raft, init).await?.is_ok());
        for i in 0..15 {
            let result = write(&raft, create_zone(&format!("z{i}"))).await?;
            ensure!(result.is_ok(), "{result:?}");
        }
        // An application-level refusal is a committed entry with a rejected result.
        let again = write(&raft, create_zone("z0")).await?;
        ensure!(
            again.rejection() == Some(&Rejection::ZoneExists { zone: "z0".into() }),
            "{again:?}"
        );

        ensure!(handle.read(|s| s.zones.len()) == 15);
        ensure!(revisions.has_changed()?, "no revision published");
        let revision = *revisions.borrow_and_update();
        ensure!(revision == handle.revision() && revision > 0);

        raft.wait(Some(TIMEOUT))
            .metrics(
                |m| m.snapshot.is_some() && m.purged.is_some(),
                "snapshot and purge",
            )
            .await?;
        let stats = handle.stats();
        ensure!(stats.snapshots_built >= 1, "{stats:?}");
        ensure!(stats.last_snapshot_bytes > 0, "{stats:?}");
        ensure!(
            stats.log_flushes >= 1 && stats.log_flushes <= stats.entries_appended,
            "{stats:?}"
        );

        raft.shutdown().await?;
        revision
    };

    let (log, sm, handle) = open(dir.path(), StoreOptions::default())?;
    ensure!(handle.read(|s| s.zones.len()) == 15, "state not rebuilt");
    ensure!(handle.revision() == revision_before_restart);

    let raft = Raft::new(1, config()?, NoPeers, log, sm).await?;
    raft.wait(Some(TIMEOUT))
        .state(ServerState::Leader, "leader after restart")
        .await?;
    let result = write(&raft, create_zone("after-restart")).await?;
    ensure!(result.is_ok(), "{result:?}");
    ensure!(handle.read(|s| s.zone("z14").is_some() && s.zone("after-restart").is_some()));
    ensure!(handle.revision() > revision_before_restart);
    raft.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_entry_answers_per_command_and_replays_the_same_after_restart() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let node = NodeInfo {
        api: "127.0.0.1:1".into(),
        admin: "127.0.0.1:2".into(),
    };
    let batch = Command::Batch(vec![create_zone("a"), create_zone("a"), create_zone("b")]);

    let state_before_restart = {
        let (log, sm, handle) = open(dir.path(), StoreOptions::default())?;
        let raft = Raft::new(1, config()?, NoPeers, log, sm).await?;
        raft.initialize(BTreeMap::from([(1, node.clone())])).await?;
        raft.wait(Some(TIMEOUT))
            .state(ServerState::Leader, "leader")
            .await?;
        let response = raft.client_write(batch).await?;
        let index = response.log_id.index;
        let CommandResult::Ok {
            detail: strait_global::state::Detail::Batch(results),
            revision,
        } = response.data
        else {
            anyhow::bail!("a batch entry answers per command: {:?}", response.data);
        };
        ensure!(revision == index, "revision {revision}, entry {index}");
        let verdicts: Vec<bool> = results.iter().map(CommandResult::is_ok).collect();
        ensure!(verdicts == [true, false, true], "{results:?}");
        ensure!(
            results[1].rejection() == Some(&Rejection::ZoneExists { zone: "a".into() }),
            "{results:?}"
        );
        let stats = handle.stats();
        ensure!(stats.entries_appended >= 2, "{stats:?}"); // membership + the batch
        let state = handle.read(Clone::clone);
        raft.shutdown().await?;
        state
    };

    // No snapshot yet: the batch entry is re-applied from the log at open.
    let (_log, _sm, handle) = open(dir.path(), StoreOptions::default())?;
    ensure!(handle.stats().snapshots_built == 0);
    ensure!(
        handle.read(|s| *s == state_before_restart),
        "replay differs"
    );
    ensure!(handle.read(|s| s.zone("a").is_some() && s.zone("b").is_some()));
    Ok(())
}
