//! The write and read paths every API of a global node goes through.
//!
//! Any node accepts requests. A write is proposed locally when this node leads, otherwise
//! forwarded to the leader over the `Raft.Propose` RPC; either way the caller is answered only
//! once the entry is committed (durable on a majority) and applied. A fresh read waits for a
//! read index from the leader (`ensure_linearizable`) and for this node to have applied it.
//! When no majority is reachable both fail within `request_timeout` with
//! [`ClusterError::NoQuorum`] instead of hanging.
//!
//! Writes proposed on this node go through the [`batcher`]: while one Raft entry is being
//! committed, the writes that arrive are queued and proposed together as the next one.

mod batcher;

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use strait_proto::RaftPayload;
use tokio::time::Instant;

pub use self::batcher::BatchStats;
use self::batcher::{BatchLimits, Batcher, Missed, Propose};
use crate::network::Network;
use crate::state::{Command, CommandResult};
use crate::types::{NodeId, NodeInfo, Raft};

/// How often to look again for a leader while an election is under way.
const LEADER_POLL: Duration = Duration::from_millis(50);

/// Why a write or a fresh read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader with a reachable majority within the deadline. The write may still commit if a
    /// majority returns, so callers must not assume it failed for good.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// This node's Raft core stopped (storage failure or shutdown): the node must restart.
    #[error("this global node is shutting down or failed: {0}")]
    Fatal(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The answer to a forwarded proposal or read-index request, as JSON in a `RaftPayload`.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply<T> {
    Done(T),
    NotLeader { leader: Option<NodeId> },
    NoQuorum(String),
    Fatal(String),
}

/// A global node's handle on its Raft group, for the API services.
#[derive(Clone)]
pub struct Cluster {
    id: NodeId,
    raft: Raft,
    network: Network,
    request_timeout: Duration,
    /// Batches the writes proposed on this node (its own and forwarded ones).
    batcher: Batcher<RaftProposer>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(id: NodeId, raft: Raft, network: Network, request_timeout: Duration) -> Self {
        Self {
            id,
            network,
            request_timeout,
            batcher: Batcher::new(
                RaftProposer {
                    raft: raft.clone(),
                    request_timeout,
                },
                BatchLimits::default(),
            ),
            raft,
        }
    }

    /// Raft entries proposed for writes on this node and the writes they carried.
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The leader this node currently knows of, with its addresses.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let info = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .unwrap_or_default();
        Some((leader, info))
    }

    /// Commits `cmd` through the leader and returns the state machine's result.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            match self.leader() {
                Some((leader, _)) if leader == self.id => {
                    match self.write_local(cmd.clone(), deadline).await {
                        ForwardReply::Done(result) => return Ok(result),
                        ForwardReply::NotLeader { .. } => {}
                        ForwardReply::NoQuorum(why) => return Err(ClusterError::NoQuorum(why)),
                        ForwardReply::Fatal(why) => return Err(ClusterError::Fatal(why)),
                    }
                }
                Some((leader, info)) => {
                    let reply = self
                        .forward(leader, &info, "propose", &cmd, deadline)
                        .await?;
                    match reply {
                        Some(ForwardReply::Done(result)) => return Ok(result),
                        Some(ForwardReply::NoQuorum(why)) => {
                            return Err(ClusterError::NoQuorum(why));
                        }
                        // The leader changed or is unreachable: look again until the deadline.
                        Some(ForwardReply::NotLeader { .. } | ForwardReply::Fatal(_)) | None => {}
                    }
                }
                None => {}
            }
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(self.no_quorum("the write was not committed"));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Proposes on this node, which believes it leads. Used by [`Cluster::write`] and by the
    /// `Raft.Propose` handler for forwarded writes. The write is batched with the others
    /// proposed here meanwhile; the answer is this command's own result.
    pub async fn write_local(
        &self,
        cmd: Command,
        deadline: Instant,
    ) -> ForwardReply<CommandResult> {
        match self.batcher.submit(cmd, deadline).await {
            Ok(reply) => reply,
            Err(Missed::Deadline) => ForwardReply::NoQuorum(not_committed(self.request_timeout)),
            Err(Missed::Stopped) => ForwardReply::Fatal(
                "this node's write batcher stopped (the node is shutting down)".to_owned(),
            ),
        }
    }

    /// Waits until this node's state reflects every write committed before the call (a
    /// linearizable read barrier).
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let index = match self.leader() {
                Some((leader, _)) if leader == self.id => {
                    match self.read_index_local(deadline).await {
                        ForwardReply::Done(index) => Some(index),
                        ForwardReply::NoQuorum(why) => return Err(ClusterError::NoQuorum(why)),
                        ForwardReply::Fatal(why) => return Err(ClusterError::Fatal(why)),
                        ForwardReply::NotLeader { .. } => None,
                    }
                }
                Some((leader, info)) => match self
                    .forward(leader, &info, "read_index", &(), deadline)
                    .await?
                {
                    Some(ForwardReply::Done(index)) => Some(index),
                    Some(ForwardReply::NoQuorum(why)) => return Err(ClusterError::NoQuorum(why)),
                    Some(ForwardReply::NotLeader { .. } | ForwardReply::Fatal(_)) | None => None,
                },
                None => None,
            };
            if let Some(index) = index {
                let remaining = deadline.saturating_duration_since(Instant::now());
                return match self
                    .raft
                    .wait(Some(remaining))
                    .applied_index_at_least(index, "read barrier")
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => Err(ClusterError::NoQuorum(format!(
                        "this node did not catch up with the leader: {e}"
                    ))),
                };
            }
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(self.no_quorum("a fresh read could not be served"));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// The leader's side of a read barrier: confirms leadership with a majority and returns the
    /// index a reader must have applied.
    pub async fn read_index_local(&self, deadline: Instant) -> ForwardReply<Option<u64>> {
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => ForwardReply::Done(log_id.map(|l| l.index)),
            Ok(Err(RaftError::APIError(e))) => match e {
                openraft::error::CheckIsLeaderError::ForwardToLeader(f) => {
                    ForwardReply::NotLeader {
                        leader: f.leader_id,
                    }
                }
                openraft::error::CheckIsLeaderError::QuorumNotEnough(q) => {
                    ForwardReply::NoQuorum(q.to_string())
                }
            },
            Ok(Err(RaftError::Fatal(fatal))) => ForwardReply::Fatal(fatal.to_string()),
            Err(_) => ForwardReply::NoQuorum(format!(
                "leadership could not be confirmed within {:?}: fewer than a majority of global nodes are reachable",
                self.request_timeout
            )),
        }
    }

    /// Sends `body` to the leader's `Propose` or `ReadIndex`. `Ok(None)` means the leader could
    /// not be reached (the caller looks for a leader again).
    async fn forward<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        what: &str,
        body: &B,
        deadline: Instant,
    ) -> Result<Option<ForwardReply<T>>, ClusterError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| ClusterError::Internal(format!("encode {what}: {e}")))?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut client = match self.network.client(leader, &info.api) {
            Ok(client) => client,
            Err(status) => {
                tracing::warn!(leader, %status, "cannot reach the leader");
                return Ok(None);
            }
        };
        let reply = match what {
            "propose" => client.propose(request).await,
            "change_membership" => client.change_membership(request).await,
            _ => client.read_index(request).await,
        };
        match reply {
            Ok(reply) => serde_json::from_slice(&reply.into_inner().json)
                .map(Some)
                .map_err(|e| {
                    ClusterError::Internal(format!("decode {what} reply from node {leader}: {e}"))
                }),
            Err(status) => {
                tracing::debug!(leader, %status, "forwarding {what} failed");
                Ok(None)
            }
        }
    }

    fn no_quorum(&self, what: &str) -> ClusterError {
        let metrics = self.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        ClusterError::NoQuorum(format!(
            "{what} within {:?}: no leader is reachable from node {} (voters {voters:?}); fewer than a majority of \
             global nodes are up",
            self.request_timeout, self.id
        ))
    }
}

/// Proposes entries on the local Raft node, for the [`Batcher`].
struct RaftProposer {
    raft: Raft,
    request_timeout: Duration,
}

impl Propose for RaftProposer {
    async fn propose(&self, command: Command, deadline: Instant) -> ForwardReply<CommandResult> {
        match tokio::time::timeout_at(deadline, self.raft.client_write(command)).await {
            Ok(Ok(response)) => ForwardReply::Done(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                ForwardReply::NotLeader {
                    leader: f.leader_id,
                }
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                ForwardReply::Fatal(format!("unexpected membership error: {e}"))
            }
            Ok(Err(RaftError::Fatal(fatal))) => ForwardReply::Fatal(fatal.to_string()),
            // A leader cut off from its followers keeps believing it leads; the timeout is what
            // turns that into an answer.
            Err(_) => ForwardReply::NoQuorum(not_committed(self.request_timeout)),
        }
    }
}

/// What a caller is told when its write was not committed in time.
fn not_committed(request_timeout: Duration) -> String {
    format!(
        "the write was not committed within {request_timeout:?}: fewer than a majority of global nodes are reachable \
         (it may still be applied if they return)"
    )
}

/// A membership change, run by the leader (forwarded there by any node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node as a learner, wait until it has caught up, then make it a voter (unless
    /// `learner_only`).
    Add {
        id: NodeId,
        info: NodeInfo,
        learner_only: bool,
    },
    /// Remove a node (voter or learner) from the cluster.
    Remove { id: NodeId },
}

/// One node's own view of Raft, as `Raft.NodeStatus` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    /// `leader`, `follower`, `learner` or `candidate`.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
}

/// How long a membership change may take: a new node first has to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// This node's own Raft view.
    pub fn node_view(&self) -> NodeView {
        let m = self.raft.metrics().borrow().clone();
        let is_voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.id);
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Candidate => "candidate",
            _ if !is_voter => "learner",
            _ => "follower",
        };
        NodeView {
            id: self.id,
            role: role.to_owned(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
        }
    }

    /// Every node in the membership config with its addresses, voters and learners.
    pub fn members(&self) -> Vec<(NodeId, NodeInfo, bool)> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| (*id, info.clone(), voters.contains(id)))
            .collect()
    }

    /// Runs `change` on the leader (here or forwarded).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ClusterError> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            match self.leader() {
                Some((leader, _)) if leader == self.id => {
                    match self.change_membership_local(change.clone()).await {
                        ForwardReply::Done(()) => return Ok(()),
                        ForwardReply::NotLeader { .. } => {}
                        ForwardReply::NoQuorum(why) => return Err(ClusterError::NoQuorum(why)),
                        ForwardReply::Fatal(why) => return Err(ClusterError::Fatal(why)),
                    }
                }
                Some((leader, info)) => {
                    match self
                        .forward(leader, &info, "change_membership", &change, deadline)
                        .await?
                    {
                        Some(ForwardReply::Done(())) => return Ok(()),
                        Some(ForwardReply::NoQuorum(why)) => {
                            return Err(ClusterError::NoQuorum(why));
                        }
                        Some(ForwardReply::Fatal(why)) => return Err(ClusterError::Internal(why)),
                        Some(ForwardReply::NotLeader { .. }) | None => {}
                    }
                }
                None => {}
            }
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(self.no_quorum("the membership change was not committed"));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// The leader's side of [`Cluster::change_membership`].
    pub async fn change_membership_local(&self, change: MembershipChange) -> ForwardReply<()> {
        use openraft::ChangeMembers;
        let result = tokio::time::timeout(MEMBERSHIP_TIMEOUT, async {
            match change {
                MembershipChange::Add {
                    id,
                    info,
                    learner_only,
                } => {
                    // Blocking: returns once the learner has caught up with the log, so the
                    // promotion below never stalls the cluster on a node that is far behind.
                    self.raft.add_learner(id, info, true).await?;
                    if !learner_only {
                        self.raft
                            .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                            .await?;
                    }
                }
                MembershipChange::Remove { id } => {
                    let is_voter = self
                        .raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == id);
                    if is_voter {
                        self.raft
                            .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                            .await?;
                    } else {
                        self.raft
                            .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                            .await?;
                    }
                }
            }
            Ok::<(), RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>(())
        })
        .await;
        match result {
            Ok(Ok(())) => ForwardReply::Done(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                ForwardReply::NotLeader {
                    leader: f.leader_id,
                }
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                ForwardReply::Fatal(format!("membership change refused: {e}"))
            }
            Ok(Err(RaftError::Fatal(fatal))) => ForwardReply::Fatal(fatal.to_string()),
            Err(_) => ForwardReply::NoQuorum(format!(
                "membership change not done within {MEMBERSHIP_TIMEOUT:?} (is the new node reachable?)"
            )),
        }
    }

    /// Asks node `id` for its own view; `None` if it does not answer within `timeout`.
    pub async fn peer_view(
        &self,
        id: NodeId,
        info: &NodeInfo,
        timeout: Duration,
    ) -> Option<NodeView> {
        if id == self.id {
            return Some(self.node_view());
        }
        let mut request = tonic::Request::new(RaftPayload {
            json: b"null".to_vec(),
        });
        request.set_timeout(timeout);
        let mut client = self.network.client(id, &info.api).ok()?;
        let reply = tokio::time::timeout(timeout, client.node_status(request)).await;
        match reply {
            Ok(Ok(reply)) => serde_json::from_slice(&reply.into_inner().json).ok(),
            _ => None,
        }
    }
}
