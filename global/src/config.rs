//! Configuration of one global node: typed, validated once at start, dumped at `/config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Everything `strait global run` needs. Read from flags or a YAML file (`--config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct GlobalConfig {
    /// This node's Raft id (also its identity, `spiffe://TD/global/ID`). Never reuse an id.
    pub node_id: NodeId,
    /// Where the Raft log, the state machine snapshots and the node's credentials live.
    pub data_dir: PathBuf,
    /// gRPC listener: Admin, ZoneSync, Raft and NodeJoin, all over TLS.
    pub listen: SocketAddr,
    /// HTTP listener for `/metrics`, `/ready`, `/healthz` and `/config`.
    pub admin_listen: SocketAddr,
    /// How peers, zones and the CLI reach `listen` (default: `listen`). A DNS name is fine.
    #[serde(default)]
    pub advertise: Option<String>,
    /// How others reach `admin_listen` (default: `admin_listen`).
    #[serde(default)]
    pub advertise_admin: Option<String>,
    /// Trust domain of a new federation (first node's first start only).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The operator's own root CA certificate and key (first node's first start only);
    /// without them a root is generated.
    #[serde(default)]
    pub root_cert: Option<PathBuf>,
    #[serde(default)]
    pub root_key: Option<PathBuf>,
    /// Existing nodes to join (`host:port`); empty means "bootstrap a new federation" on the
    /// first start. Ignored once the node has credentials.
    #[serde(default)]
    pub join: Vec<String>,
    /// File holding the node join token (with `join`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where the first node writes the operator's admin credential (default `DATA/admin`).
    #[serde(default)]
    pub admin_credentials_dir: Option<PathBuf>,
    #[serde(default)]
    pub raft: RaftTuning,
    /// How long a write or a fresh read may wait for a quorum before failing with "no quorum".
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Lifetime of a zone's intermediate CA (renewed by the zone at 2/3 of it). A global outage
    /// shorter than what is left of it breaks nothing.
    #[serde(default = "default_zone_ca_validity", with = "humantime_serde")]
    pub zone_ca_validity: Duration,
    /// Lifetime of a zone control plane's own certificate (renewed at 2/3 of it).
    #[serde(default = "default_zone_cp_validity", with = "humantime_serde")]
    pub zone_cp_validity: Duration,
}

fn default_zone_ca_validity() -> Duration {
    strait_trust::ca::DEFAULT_INTERMEDIATE_VALIDITY
}

fn default_zone_cp_validity() -> Duration {
    strait_trust::ca::DEFAULT_LEAF_VALIDITY
}

/// Raft timing and log bounds. The defaults suit a LAN or loopback; raise the timeouts for
/// nodes spread over a WAN (election timeout well above the round-trip time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", default)]
pub struct RaftTuning {
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind the latest snapshot, so a briefly lagging follower catches up
    /// from the log instead of a snapshot.
    pub keep_entries_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_after_entries: crate::store::SNAPSHOT_EVERY_ENTRIES,
            keep_entries_after_snapshot: crate::store::KEEP_ENTRIES_BEHIND_SNAPSHOT,
        }
    }
}

fn default_trust_domain() -> String {
    "strait.local".to_owned()
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A configuration that cannot work, with the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid global node config: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

impl GlobalConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(
        node_id: NodeId,
        data_dir: PathBuf,
        listen: SocketAddr,
        admin_listen: SocketAddr,
    ) -> Self {
        Self {
            node_id,
            data_dir,
            listen,
            admin_listen,
            advertise: None,
            advertise_admin: None,
            trust_domain: default_trust_domain(),
            root_cert: None,
            root_key: None,
            join: Vec::new(),
            token_file: None,
            admin_credentials_dir: None,
            raft: RaftTuning::default(),
            request_timeout: default_request_timeout(),
            zone_ca_validity: default_zone_ca_validity(),
            zone_cp_validity: default_zone_cp_validity(),
        }
    }

    /// Parses a YAML config file's text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| invalid("(file)", format!("{source}: {e}")))
    }

    /// Checks everything that can be checked before touching the disk or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be 1 or more (0 is reserved)"));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(invalid("admin_listen", "must differ from listen"));
        }
        strait_trust::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        match (&self.root_cert, &self.root_key) {
            (Some(_), None) => return Err(invalid("root_key", "root_cert needs root_key too")),
            (None, Some(_)) => return Err(invalid("root_cert", "root_key needs root_cert too")),
            _ => {}
        }
        if !self.join.is_empty() {
            if self.token_file.is_none() {
                return Err(invalid(
                    "token_file",
                    "joining a federation (join) needs a node join token",
                ));
            }
            if self.root_cert.is_some() {
                return Err(invalid(
                    "root_cert",
                    "only the first node of a new federation takes a root CA",
                ));
            }
        }
        let r = &self.raft;
        if r.heartbeat_interval.is_zero() {
            return Err(invalid("raft.heartbeat_interval", "must be above zero"));
        }
        if r.election_timeout_min < r.heartbeat_interval * 3 {
            return Err(invalid(
                "raft.election_timeout_min",
                "must be at least 3 heartbeat intervals",
            ));
        }
        if r.election_timeout_max <= r.election_timeout_min {
            return Err(invalid(
                "raft.election_timeout_max",
                "must be above election_timeout_min",
            ));
        }
        if r.snapshot_after_entries == 0 {
            return Err(invalid("raft.snapshot_after_entries", "must be above zero"));
        }
        if self.request_timeout < r.election_timeout_max {
            return Err(invalid(
                "request_timeout",
                "must exceed raft.election_timeout_max, or no write survives an election",
            ));
        }
        if self.zone_ca_validity < Duration::from_secs(10)
            || self.zone_cp_validity < Duration::from_secs(10)
        {
            return Err(invalid(
                "zone_ca_validity",
                "zone certificate lifetimes must be at least 10s",
            ));
        }
        Ok(())
    }

    pub fn advertised_api(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn advertised_admin(&self) -> String {
        self.advertise_admin
            .clone()
            .unwrap_or_else(|| self.admin_listen.to_string())
    }

    pub fn admin_credentials_dir(&self) -> PathBuf {
        self.admin_credentials_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin"))
    }

    /// The openraft configuration these settings make.
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let r = &self.raft;
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "strait-global".to_owned(),
            heartbeat_interval: millis(r.heartbeat_interval),
            election_timeout_min: millis(r.election_timeout_min),
            election_timeout_max: millis(r.election_timeout_max),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
            max_in_snapshot_log_to_keep: r.keep_entries_after_snapshot,
            purge_batch_size: crate::store::PURGE_BATCH_SIZE,
            ..Default::default()
        }
        .validate()
        .map_err(|e| invalid("raft", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GlobalConfig {
        GlobalConfig::new(
            1,
            "/tmp/x".into(),
            "127.0.0.1:7400"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7400))),
            SocketAddr::from(([127, 0, 0, 1], 7401)),
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
        assert!(config().openraft().is_ok());
    }

    #[test]
    fn each_mistake_names_its_field() {
        type Mutation = fn(&mut GlobalConfig);
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.node_id = 0, "node_id"),
            (|c| c.trust_domain = "Bad Domain".into(), "trust_domain"),
            (|c| c.root_cert = Some("/r.crt".into()), "root_key"),
            (|c| c.join = vec!["127.0.0.1:1".into()], "token_file"),
            (
                |c| c.raft.election_timeout_min = Duration::from_millis(100),
                "raft.election_timeout_min",
            ),
            (
                |c| c.raft.election_timeout_max = Duration::from_millis(400),
                "raft.election_timeout_max",
            ),
            (
                |c| c.request_timeout = Duration::from_millis(200),
                "request_timeout",
            ),
        ];
        for (mutate, field) in cases {
            let mut c = config();
            mutate(&mut c);
            assert_eq!(c.validate().map_err(|e| e.field), Err(field));
        }
    }

    #[test]
    fn yaml_round_trips_and_refuses_unknown_fields() {
        let c = config();
        let Ok(yaml) = serde_saphyr::to_string(&c) else {
            panic!("serialize")
        };
        assert_eq!(GlobalConfig::from_yaml(&yaml, "t.yaml"), Ok(c));
        let err = GlobalConfig::from_yaml("node_id: 1\nbogus: 2\n", "t.yaml");
        assert!(err.is_err_and(|e| e.reason.contains("bogus")));
    }
}
