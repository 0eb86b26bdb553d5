//! The `strait.v1.Raft` gRPC service: openraft RPCs from peers, forwarded writes and read-index
//! requests. Only global nodes (`spiffe://TD/global/N`) may call it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use strait_proto::RaftPayload;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::auth::require_global_node;
use crate::cluster::{Cluster, MembershipChange};
use crate::state::Command;
use crate::types::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

/// Serves Raft RPCs for one node.
#[derive(Debug, Clone)]
pub struct RaftService {
    cluster: Cluster,
    request_timeout: std::time::Duration,
}

impl RaftService {
    pub fn new(cluster: Cluster, request_timeout: std::time::Duration) -> Self {
        Self {
            cluster,
            request_timeout,
        }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    require_global_node(&request)?;
    serde_json::from_slice(&request.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft payload: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(format!("encode Raft reply: {e}")))
}

#[tonic::async_trait]
impl strait_proto::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest = decode(request)?;
        encode(&self.cluster.raft().append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest = decode(request)?;
        encode(&self.cluster.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest = decode(request)?;
        encode(&self.cluster.raft().install_snapshot(rpc).await)
    }

    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let cmd: Command = decode(request)?;
        let deadline = Instant::now() + self.request_timeout;
        encode(&self.cluster.write_local(cmd, deadline).await)
    }

    async fn read_index(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let () = decode(request)?;
        let deadline = Instant::now() + self.request_timeout;
        encode(&self.cluster.read_index_local(deadline).await)
    }

    async fn change_membership(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let change: MembershipChange = decode(request)?;
        encode(&self.cluster.change_membership_local(change).await)
    }

    async fn node_status(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let () = decode(request)?;
        encode(&self.cluster.node_view())
    }
}
