//! Raft RPCs to peer global nodes: openraft's network traits over gRPC with mutual TLS.
//!
//! Payloads are openraft's serde types as JSON inside `strait.v1.RaftPayload` (see
//! `raft.proto` for why). The TLS configuration per peer comes from a [`PeerTls`] the node
//! passes in, so this module never reads credentials itself and tests can hand it anything.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;
use strait_proto::RaftPayload;
use strait_proto::raft_client::RaftClient;
use tonic::transport::Channel;

use crate::types::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    NodeId, NodeInfo, TypeConfig, VoteRequest, VoteResponse,
};

/// Largest Raft message accepted or sent: snapshot chunks and entry batches stay far below it,
/// but the default 4 MiB of tonic is too tight for a big inventory batch.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Builds the client TLS configuration to reach global node `target` (it must present the
/// certificate of `spiffe://TD/global/TARGET`).
pub trait PeerTls: Send + Sync + 'static {
    fn client_config(&self, target: NodeId) -> Result<Arc<rustls::ClientConfig>, String>;
}

/// Creates one [`PeerClient`] per peer for openraft.
#[derive(Clone)]
pub struct Network {
    tls: Arc<dyn PeerTls>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Network {
    pub fn new(tls: Arc<dyn PeerTls>, connect_timeout: Duration) -> Self {
        Self {
            tls,
            connect_timeout,
        }
    }

    /// A gRPC client for node `target` at `addr`, for callers outside openraft (write
    /// forwarding, read index, status fan-out).
    pub fn client(&self, target: NodeId, addr: &str) -> Result<RaftClient<Channel>, tonic::Status> {
        let tls = self.tls.client_config(target).map_err(|e| {
            tonic::Status::unavailable(format!("no TLS config for node {target}: {e}"))
        })?;
        let channel = strait_proto::transport::channel(addr, tls, self.connect_timeout);
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            client: self.client(target, &node.api),
        }
    }
}

/// The RPC client openraft uses to talk to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    client: Result<RaftClient<Channel>, tonic::Status>,
}

/// Why an RPC did not get an answer from the peer.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("encode request: {0}")]
    Encode(serde_json::Error),
    #[error("decode response: {0}")]
    Decode(serde_json::Error),
    #[error("gRPC: {0}")]
    Status(#[from] tonic::Status),
}

type Rpc =
    fn(
        RaftClient<Channel>,
        tonic::Request<RaftPayload>,
    )
        -> futures::future::BoxFuture<'static, Result<tonic::Response<RaftPayload>, tonic::Status>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let json = serde_json::to_vec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Encode(e))))?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(option.hard_ttl());
        let client = self
            .client
            .clone()
            .map_err(|s| RPCError::Unreachable(Unreachable::new(&TransportError::Status(s))))?;
        let reply = match rpc(client, request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                let err = TransportError::Status(status);
                // Unavailable means the peer is down or unreachable: openraft backs off instead of
                // retrying at once.
                return Err(match &err {
                    TransportError::Status(s) if s.code() == tonic::Code::Unavailable => {
                        RPCError::Unreachable(Unreachable::new(&err))
                    }
                    _ => RPCError::Network(NetworkError::new(&err)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Decode(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(
            |mut c, r| Box::pin(async move { c.append_entries(r).await }),
            &rpc,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            |mut c, r| Box::pin(async move { c.install_snapshot(r).await }),
            &rpc,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(
            |mut c, r| Box::pin(async move { c.vote(r).await }),
            &rpc,
            &option,
        )
        .await
    }
}
