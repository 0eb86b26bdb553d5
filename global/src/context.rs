//! What every API service of a global node shares: the cluster handle, the replicated state,
//! the node's credentials and metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

use crate::cluster::{Cluster, ClusterError, MembershipChange};
use crate::config::GlobalConfig;
use crate::credentials::NodeCredentials;
use crate::metrics::Metrics;
use crate::state::FederationState;
use crate::store::StateReader;
use crate::types::{NodeId, NodeInfo};

/// Shared by the gRPC services, the HTTP admin server and the background tasks of one node.
#[derive(Debug)]
pub struct NodeContext {
    pub config: GlobalConfig,
    pub cluster: Cluster,
    pub creds: NodeCredentials,
    pub state: StateReader,
    pub metrics: Metrics,
}

/// Milliseconds since the Unix epoch, the clock of every command (set by the proposer, so
/// replicas agree).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Metadata key set on "no quorum" errors, so clients can tell them from a node being down.
pub const NO_QUORUM_METADATA: &str = "strait-no-quorum";

/// Maps a cluster failure to the gRPC status a client sees.
pub fn cluster_status(err: ClusterError) -> Status {
    match err {
        ClusterError::NoQuorum(_) => {
            let mut status = Status::unavailable(err.to_string());
            status.metadata_mut().insert(
                NO_QUORUM_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            status
        }
        ClusterError::Fatal(_) => Status::unavailable(err.to_string()),
        ClusterError::Internal(_) => Status::internal(err.to_string()),
    }
}

impl NodeContext {
    /// Runs `f` on the replicated state as this node has applied it (possibly behind the
    /// leader; call `cluster.read_barrier()` first for a fresh read).
    pub fn read<R>(&self, f: impl FnOnce(&FederationState) -> R) -> R {
        self.state.read(f)
    }

    /// Ids of every node in the membership (voters and learners).
    pub fn raft_members(&self) -> BTreeSet<NodeId> {
        self.cluster
            .members()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect()
    }

    /// Every node with its addresses.
    pub fn raft_nodes(&self) -> Vec<(NodeId, NodeInfo)> {
        self.cluster
            .members()
            .into_iter()
            .map(|(id, info, _)| (id, info))
            .collect()
    }

    /// Adds a node that has just been given its credentials, once it is up: in the background,
    /// because the node starts serving only after the join reply reaches it.
    pub fn add_node_when_reachable(self: &Arc<Self>, id: NodeId, info: NodeInfo) {
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            match cluster
                .change_membership(MembershipChange::Add {
                    id,
                    info,
                    learner_only: false,
                })
                .await
            {
                Ok(()) => tracing::info!(node_id = id, "node added as voter"),
                Err(err) => {
                    tracing::error!(node_id = id, %err, "adding the joined node to the cluster failed")
                }
            }
        });
    }
}
