//! Why the state machine refused a command, worded for the operator who typed it.

use serde::Deserialize;
use serde::Serialize;

use super::model::PolicyKey;
use super::time::Rfc3339;

/// A command the state machine refused. The state is unchanged when a command is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    #[error("the federation is already initialized (trust domain {trust_domain:?})")]
    AlreadyInitialized { trust_domain: String },
    #[error("the federation is not initialized yet")]
    NotInitialized,
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("zone {zone:?} already exists")]
    ZoneExists { zone: String },
    #[error(
        "zone {zone:?} was removed at {}; the name of a removed zone cannot be reused",
        Rfc3339(*.removed_at_ms)
    )]
    ZoneNameRetired { zone: String, removed_at_ms: u64 },
    #[error("zone {zone:?} does not exist")]
    ZoneNotFound { zone: String },
    #[error("zone {zone:?} was removed at {}", Rfc3339(*.removed_at_ms))]
    ZoneRemoved { zone: String, removed_at_ms: u64 },
    #[error("join token {token_id:?} already exists")]
    TokenExists { token_id: String },
    #[error(transparent)]
    Token(#[from] TokenRejection),
    #[error("policy {key} does not exist")]
    PolicyNotFound { key: PolicyKey },
    #[error("policy {key} appears more than once in one apply")]
    DuplicatePolicy { key: PolicyKey },
    #[error(
        "inventory version {version} from zone {zone:?} is older than the stored version {stored_version}; ignored"
    )]
    StaleInventory {
        zone: String,
        version: u64,
        stored_version: u64,
    },
    #[error("no free VIP index is left for service {service}")]
    VipSpaceExhausted { service: String },
}

/// Why a join token was not accepted.
///
/// Checks run in a fixed order and everything after `SecretMismatch` is only reported to a
/// caller who proved they hold the secret, so a guessed token id reveals nothing about the
/// token's zone, use or expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum TokenRejection {
    #[error("unknown join token")]
    Unknown,
    #[error("join token secret does not match")]
    SecretMismatch,
    #[error("join token was already used at {}", Rfc3339(*.used_at_ms))]
    AlreadyUsed { used_at_ms: u64 },
    #[error("join token expired at {}", Rfc3339(*.expired_at_ms))]
    Expired { expired_at_ms: u64 },
    #[error("join token is for zone {token_zone:?}, not zone {requested_zone:?}")]
    WrongZone {
        token_zone: String,
        requested_zone: String,
    },
    #[error("join token is for global node {token_node}, not global node {requested_node}")]
    WrongNode {
        token_node: u64,
        requested_node: u64,
    },
    #[error("join token is for joining a {token_purpose}, not a {requested_purpose}")]
    WrongPurpose {
        token_purpose: String,
        requested_purpose: String,
    },
    #[error("join token is void: zone {zone:?} was removed")]
    ZoneRemoved { zone: String },
}
