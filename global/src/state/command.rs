//! The commands carried by Raft log entries and what applying one returns.
//!
//! Commands carry every input the state machine needs, including the time (`now_ms`, read by
//! the proposer), so that every node applying the same entry reaches the same state.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use super::model::ExportedService;
use super::model::PolicyKey;
use super::model::PrivateKeyPem;
use super::model::ServiceKey;
use super::model::TokenPurpose;
use super::rejection::Rejection;

/// A change to the federation state. Each one is a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Set the trust domain and root CA once, at the first start of the federation.
    InitFederation {
        trust_domain: String,
        root_cert_pem: String,
        root_key_pem: PrivateKeyPem,
        /// Roots peers accept; empty means "just the root certificate".
        bundle_pem: String,
        now_ms: u64,
    },
    /// Replace the trust bundle (root rotation adds the new root first, drops the old later).
    SetTrustBundle {
        bundle_pem: String,
    },
    CreateZone {
        name: String,
        region: String,
        labels: BTreeMap<String, String>,
        now_ms: u64,
    },
    /// Remove a zone: deny-list it, void its unused join tokens, drop its inventory and drains,
    /// release the VIPs only it exported.
    RemoveZone {
        name: String,
        now_ms: u64,
    },
    CreateJoinToken {
        token_id: String,
        /// Lowercase hex SHA-256 of the token secret; the secret itself is never replicated.
        secret_sha256: String,
        purpose: TokenPurpose,
        expires_at_ms: u64,
        now_ms: u64,
    },
    /// Use a join token once. `secret_sha256` is the hash of the secret the joiner presented.
    ConsumeJoinToken {
        token_id: String,
        secret_sha256: String,
        purpose: TokenPurpose,
        now_ms: u64,
    },
    /// Forget tokens that expired (used or not).
    PurgeExpiredTokens {
        now_ms: u64,
    },
    /// Create or replace policies, all or nothing. Bodies were validated before proposing.
    ApplyPolicies {
        policies: Vec<(PolicyKey, String)>,
    },
    DeletePolicy {
        key: PolicyKey,
    },
    /// Replace a zone's inventory wholesale. The sender's identity was checked by the caller.
    ReportInventory {
        zone: String,
        version: u64,
        #[serde(with = "super::pairs")]
        services: BTreeMap<ServiceKey, ExportedService>,
        gateways: Vec<String>,
        now_ms: u64,
    },
    /// Record that a zone's sync stream connected to or disconnected from a global node.
    SetZoneConnection {
        zone: String,
        connected: bool,
        node_id: u64,
        /// Which stream on that node (random per stream; 0 in entries written before it was
        /// recorded): a zone's primary can move between its control plane replicas on the
        /// same global node, and the old stream's late end must not count.
        #[serde(default)]
        session: u64,
        now_ms: u64,
    },
    /// Record the VIP range a zone maps service indexes into (it reports it when it connects),
    /// so global can show every zone's VIPs.
    SetZoneVipCidr {
        zone: String,
        vip_cidr: String,
    },
    /// Take a zone out of (or back into) the endpoints of one service.
    SetDrain {
        namespace: String,
        service: String,
        zone: String,
        drained: bool,
    },
    /// Several commands in one log entry, applied in order as if each were its own entry at
    /// this entry's index: each one is all or nothing on its own (a rejected one changes
    /// nothing and does not stop the rest). The leader's write batcher proposes these so that
    /// concurrent writes share one append, one flush and one replication round.
    Batch(Vec<Command>),
}

impl Command {
    /// A short name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Command::InitFederation { .. } => "init_federation",
            Command::SetTrustBundle { .. } => "set_trust_bundle",
            Command::CreateZone { .. } => "create_zone",
            Command::RemoveZone { .. } => "remove_zone",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::ConsumeJoinToken { .. } => "consume_join_token",
            Command::PurgeExpiredTokens { .. } => "purge_expired_tokens",
            Command::ApplyPolicies { .. } => "apply_policies",
            Command::DeletePolicy { .. } => "delete_policy",
            Command::ReportInventory { .. } => "report_inventory",
            Command::SetZoneConnection { .. } => "set_zone_connection",
            Command::SetZoneVipCidr { .. } => "set_zone_vip_cidr",
            Command::SetDrain { .. } => "set_drain",
            Command::Batch(_) => "batch",
        }
    }
}

/// The outcome of applying one log entry. Application-level refusals are results, not Raft
/// errors: the entry is committed either way, and every node reaches the same verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandResult {
    Ok {
        /// The state's revision after this entry (unchanged if the entry changed nothing).
        revision: u64,
        detail: Detail,
    },
    Rejected(Rejection),
}

impl CommandResult {
    /// Whether the command was accepted; for a [`Command::Batch`], whether every command in it
    /// was.
    pub fn is_ok(&self) -> bool {
        match self {
            CommandResult::Ok {
                detail: Detail::Batch(results),
                ..
            } => results.iter().all(CommandResult::is_ok),
            CommandResult::Ok { .. } => true,
            CommandResult::Rejected(_) => false,
        }
    }

    /// Why the command was refused; for a [`Command::Batch`], the first refusal in it.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            CommandResult::Ok {
                detail: Detail::Batch(results),
                ..
            } => results.iter().find_map(CommandResult::rejection),
            CommandResult::Ok { .. } => None,
            CommandResult::Rejected(r) => Some(r),
        }
    }

    /// As a `Result`, for `?` in the admin API.
    pub fn into_result(self) -> Result<(u64, Detail), Rejection> {
        match self {
            CommandResult::Ok { revision, detail } => Ok((revision, detail)),
            CommandResult::Rejected(r) => Err(r),
        }
    }
}

/// What an accepted command did, for the caller's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// The change was made.
    Done,
    /// The state already was as requested; nothing changed.
    Unchanged,
    ZoneRemoved {
        tokens_revoked: u32,
        vips_released: Vec<(ServiceKey, u32)>,
        /// Zone-pinned indices released: (service, zone, index).
        #[serde(default)]
        zone_vips_released: Vec<(ServiceKey, String, u32)>,
    },
    TokenConsumed {
        token_id: String,
        purpose: TokenPurpose,
    },
    TokensPurged {
        count: u32,
    },
    PoliciesApplied {
        created: u32,
        updated: u32,
        unchanged: u32,
    },
    InventoryAccepted {
        vips_allocated: Vec<(ServiceKey, u32)>,
        vips_released: Vec<(ServiceKey, u32)>,
        /// Zone-pinned indices: (service, zone, index).
        #[serde(default)]
        zone_vips_allocated: Vec<(ServiceKey, String, u32)>,
        #[serde(default)]
        zone_vips_released: Vec<(ServiceKey, String, u32)>,
    },
    /// The results of a [`Command::Batch`], one per command, in order. The entry itself is
    /// always `Ok` (with the revision after its last command); each command's own verdict is
    /// in here.
    Batch(Vec<CommandResult>),
}
