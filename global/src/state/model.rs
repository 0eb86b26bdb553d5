//! The records the federation state is made of: CA material, zones, join tokens, policies,
//! zone inventories and VIP holds (service and zone-pinned). Plain data; the rules that change them live in the parent
//! module.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// A PEM-encoded private key. Its `Debug` output is redacted so that the root key, which is
/// replicated to every global node so any leader can sign, never lands in a log line.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrivateKeyPem(pub String);

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// The federation's trust material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationCa {
    /// SPIFFE trust domain, for example `strait.local`.
    pub trust_domain: String,
    /// The root CA certificate that signs zone intermediates.
    pub root_cert_pem: String,
    /// The root CA's private key.
    pub root_key_pem: PrivateKeyPem,
    /// Every root that peers must accept (several during a root rotation).
    pub bundle_pem: String,
}

/// Whether a zone is part of the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneStatus {
    Active,
    /// Removed zones stay in the state: their name is on the deny list and cannot be reused,
    /// so a stale credential of the old zone can never pass for a new zone of the same name.
    Removed,
}

/// A zone's sync connection to global, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connected: bool,
    /// The global node that holds (or last held) the zone's sync stream.
    pub node_id: u64,
    /// The stream on that node (see `Command::SetZoneConnection`).
    #[serde(default)]
    pub session: u64,
    pub last_seen_ms: u64,
}

/// A federated zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    pub name: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub status: ZoneStatus,
    pub created_at_ms: u64,
    pub removed_at_ms: Option<u64>,
    /// `None` until the zone's control plane first connects.
    pub connection: Option<Connection>,
    /// The zone's VIP range as it last reported it (`None` before its first connection).
    #[serde(default)]
    pub vip_cidr: Option<String>,
}

impl Zone {
    pub fn is_active(&self) -> bool {
        self.status == ZoneStatus::Active
    }

    /// Whether the zone's sync stream is up right now. When it is not, the zone's inventory is
    /// still served (static stability), but it is stale.
    pub fn is_connected(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.connected)
    }
}

/// What a join token lets its bearer do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenPurpose {
    /// Join the named zone's control plane to the federation.
    Zone { zone: String },
    /// Join a global node to the Raft cluster.
    Node { node_id: u64 },
}

impl TokenPurpose {
    /// A short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenPurpose::Zone { .. } => "zone",
            TokenPurpose::Node { .. } => "global node",
        }
    }
}

impl fmt::Display for TokenPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenPurpose::Zone { zone } => write!(f, "zone {zone:?}"),
            TokenPurpose::Node { node_id } => write!(f, "global node {node_id}"),
        }
    }
}

/// A single-use, expiring join token. Only the SHA-256 of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    /// Lowercase hex SHA-256 of the token's secret.
    pub secret_sha256: String,
    pub purpose: TokenPurpose,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub used_at_ms: Option<u64>,
    /// Set when the token was voided before use (its zone was removed).
    pub revoked_at_ms: Option<u64>,
}

impl JoinToken {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// Names a policy resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    /// Resource kind, for example `TrafficRoute`.
    pub kind: String,
    /// Empty for mesh-wide resources.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A policy body as applied. The JSON was validated by `strait-policy` before it was proposed;
/// the state machine only stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub key: PolicyKey,
    pub json: String,
    /// Revision (log index) at which this body was last written.
    pub revision: u64,
}

/// Names a service across the federation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub port: u16,
    /// Application protocol as the zone reports it (`tcp`, `http`, `http2`, `grpc`, ...).
    pub protocol: String,
}

/// Endpoint counts of a service in one locality of a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalityCount {
    pub locality: String,
    pub healthy: u32,
    pub total: u32,
}

/// A service as one zone exports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedService {
    pub ports: Vec<Port>,
    pub localities: Vec<LocalityCount>,
    /// The SPIFFE IDs of the zone's instances: other zones' sidecars require one of them at
    /// the end of a tunnel.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Healthy and total instances per label subset its routes use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetCount>,
}

/// Instances carrying every label of a subset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsetCount {
    pub labels: BTreeMap<String, String>,
    pub healthy: u32,
    pub total: u32,
}

impl ExportedService {
    pub fn healthy(&self) -> u64 {
        self.localities.iter().map(|l| u64::from(l.healthy)).sum()
    }

    pub fn total(&self) -> u64 {
        self.localities.iter().map(|l| u64::from(l.total)).sum()
    }
}

/// Everything a zone last reported: exported services and its east-west gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneInventory {
    /// The zone's own version counter; a report with a lower one is stale.
    pub version: u64,
    #[serde(with = "super::pairs")]
    pub services: BTreeMap<ServiceKey, ExportedService>,
    /// Gateway addresses (`host:port`) other zones reach this zone through.
    pub gateways: Vec<String>,
    pub reported_at_ms: u64,
}

/// A VIP index that was released and is held back for a while (see `VIP_HOLD_MS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldVip {
    /// The service that had the index; it gets the same index back if it returns in time.
    pub service: ServiceKey,
    /// For a zone-pinned index, the zone it was pinned to: only the same (service, zone) pair
    /// gets it back. `None` for the service's own (locality-aware) index, and in states
    /// written before zone-pinned VIPs existed.
    #[serde(default)]
    pub zone: Option<String>,
    pub released_at_ms: u64,
}
