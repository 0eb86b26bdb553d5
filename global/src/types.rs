//! The openraft type configuration of the global control plane and short aliases for the
//! openraft types that the store, the network layer and the admin API exchange.
//!
//! Everything that travels between global nodes or sits on disk is named here once, so the
//! rest of the crate never spells out openraft's generic parameters.

use std::io::Cursor;

use serde::Deserialize;
use serde::Serialize;

use crate::state::Command;
use crate::state::CommandResult;

/// Identifies a global node in the Raft cluster. Stable across restarts (it names the node in
/// its SPIFFE ID `spiffe://TD/global/NODE`).
pub type NodeId = u64;

/// What the cluster knows about a global node: where its peers reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the node's Raft and zone sync gRPC endpoint (`host:port`).
    pub api: String,
    /// Address of the node's admin API (`host:port`).
    pub admin: String,
}

openraft::declare_raft_types!(
    /// The Raft type configuration of the global control plane: log entries carry
    /// [`Command`]s, applying one yields a [`CommandResult`].
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
/// Term, leader and index of a log entry.
pub type LogId = openraft::LogId<NodeId>;
/// A node's vote (term, candidate, committed flag).
pub type Vote = openraft::Vote<NodeId>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// The payload of a Raft log entry.
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
/// The cluster membership (voters, learners and their [`NodeInfo`]).
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
/// A membership together with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Describes a snapshot: the last log id it covers and the membership at that point.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// A snapshot: its meta and its bytes.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Where the log stands: last purged and last present log id.
pub type LogState = openraft::LogState<TypeConfig>;
/// Raft metrics published by [`Raft::metrics`].
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;

// === RPC messages between global nodes ===

/// AppendEntries request (replication and heartbeats).
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
/// AppendEntries response.
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
/// RequestVote request.
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
/// RequestVote response.
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
/// One chunk of a snapshot sent to a lagging follower.
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
/// Response to one snapshot chunk.
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
/// Response to a whole snapshot (`Raft::install_full_snapshot`).
pub type SnapshotResponse = openraft::raft::SnapshotResponse<NodeId>;
/// What `Raft::client_write` returns once the entry is committed and applied.
pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;

// === Errors ===

/// A storage failure; openraft stops the node when it sees one.
pub type StorageError = openraft::StorageError<NodeId>;
/// An error from a Raft API call; `E` is the API-specific part.
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
/// An error from sending an RPC to a peer; `E` is the remote API-specific part.
pub type RpcError<E = openraft::error::Infallible> = openraft::error::RPCError<NodeId, NodeInfo, E>;
/// A streaming snapshot transfer failed.
pub type StreamingError<E = openraft::error::Infallible> =
    openraft::error::StreamingError<TypeConfig, E>;
/// Why a client write was not accepted (for example: forward to the leader).
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, NodeInfo>;
/// Why a linearizable read could not be served.
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, NodeInfo>;
/// This node is not the leader; the leader, if known, is in here.
pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, NodeInfo>;
/// Why `Raft::initialize` failed.
pub type InitializeError = openraft::error::InitializeError<NodeId, NodeInfo>;
/// Why a membership change failed.
pub type ChangeMembershipError = openraft::error::ChangeMembershipError<NodeId>;
/// Why a snapshot chunk was refused.
pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
/// The Raft node stopped and must be restarted.
pub type Fatal = openraft::error::Fatal<NodeId>;
