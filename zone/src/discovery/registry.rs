//! The universal-mode registry: which workload instances this zone serves, as their sidecars
//! registered them over the discovery stream, and whether they are still there.
//!
//! A pure state machine: every call takes `now`, nothing sleeps or does IO; the server drives
//! the clock ([`Registry::next_deadline`], [`Registry::expire`]) and persistence
//! ([`Registry::take_dirty`], [`Registry::encode`]).
//!
//! # Presence and the grace period
//!
//! An instance is [`Presence::Connected`] while its stream is open. When the stream ends it
//! becomes [`Presence::Leaving`] and stays in the inventory for `grace`: a sidecar that
//! reconnects (or a zone control plane that restarts under it) must never make its endpoint
//! disappear. A registration within the grace takes the instance back, and nothing was ever
//! removed. Instances persisted by a previous run come back as [`Presence::Restored`] with the
//! same grace: the zone's own restart does not show the federation a transient deletion.
//!
//! # Ownership
//!
//! An instance is named by (service, instance name). A new stream may take over an instance
//! that is held by no stream, or by a stream of the same identity (the reconnect that races
//! the server noticing the old stream's end); a *connected* instance of another identity is
//! refused, so one workload cannot hijack another's endpoint. Only the stream that holds an
//! instance can report its health or start its grace.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strait_proto as pb;

use crate::inventory::{Instance, LocalInventory, ServiceKey, gateway_key};

/// Identifies one discovery stream (one sidecar connection).
pub type ConnId = u64;

/// Where an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Held by an open stream.
    Connected(ConnId),
    /// Its stream ended; removed at `deadline` unless it registers again.
    Leaving { deadline: Instant },
    /// Loaded from the store at start; removed at `deadline` unless it registers again.
    Restored { deadline: Instant },
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "instance {instance:?} of {namespace}/{service} is held by a connected sidecar with identity {holder}"
    )]
    HeldByAnother {
        namespace: String,
        service: String,
        instance: String,
        holder: String,
    },
    #[error("persisted discovery registry is unreadable: {0}")]
    Decode(String),
    #[error("persisted discovery registry has format version {found}, this build reads {expected}")]
    FormatVersion { found: u32, expected: u32 },
    #[error("discovery registry could not be encoded: {0}")]
    Encode(String),
}

#[derive(Debug, Clone)]
struct Entry {
    instance: Instance,
    presence: Presence,
}

/// Every instance registered in this zone, with its presence. See the module docs.
#[derive(Debug, Clone)]
pub struct Registry {
    grace: Duration,
    entries: BTreeMap<ServiceKey, BTreeMap<String, Entry>>,
    /// Set when what is persisted (instances and their health) changed since the last
    /// [`Registry::take_dirty`].
    dirty: bool,
}

impl Registry {
    /// An empty registry whose instances stay for `grace` after their stream ends.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            entries: BTreeMap::new(),
            dirty: false,
        }
    }

    /// A registry holding `instances` from a previous run, each removed at `now + grace`
    /// unless its sidecar registers again.
    pub fn restore(grace: Duration, instances: Vec<Instance>, now: Instant) -> Self {
        let mut registry = Self::new(grace);
        let deadline = now + grace;
        for instance in instances {
            registry
                .entries
                .entry(instance.service.clone())
                .or_default()
                .insert(
                    instance.instance.clone(),
                    Entry {
                        instance,
                        presence: Presence::Restored { deadline },
                    },
                );
        }
        registry
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Registers `instance` for stream `conn`, replacing what an earlier registration of the
    /// same (service, instance) said and cancelling its pending removal. Returns whether the
    /// inventory changed.
    pub fn register(&mut self, conn: ConnId, instance: Instance) -> Result<bool, RegistryError> {
        let instances = self.entries.entry(instance.service.clone()).or_default();
        if let Some(existing) = instances.get(&instance.instance) {
            let held_by_other_stream =
                matches!(existing.presence, Presence::Connected(c) if c != conn);
            if held_by_other_stream && existing.instance.identity != instance.identity {
                return Err(RegistryError::HeldByAnother {
                    namespace: instance.service.namespace.clone(),
                    service: instance.service.name.clone(),
                    instance: instance.instance.clone(),
                    holder: existing.instance.identity.clone(),
                });
            }
        }
        let changed = instances
            .get(&instance.instance)
            .is_none_or(|e| e.instance != instance);
        instances.insert(
            instance.instance.clone(),
            Entry {
                instance,
                presence: Presence::Connected(conn),
            },
        );
        self.dirty |= changed;
        Ok(changed)
    }

    /// Stream `conn` ended: if it still holds the instance, its grace starts now. (If a newer
    /// stream took the instance over, nothing happens.)
    pub fn disconnect(&mut self, conn: ConnId, service: &ServiceKey, instance: &str, now: Instant) {
        let deadline = now + self.grace;
        if let Some(entry) = self.entry_mut(service, instance)
            && entry.presence == Presence::Connected(conn)
        {
            entry.presence = Presence::Leaving { deadline };
        }
    }

    /// The instance's health as its sidecar reports it (only the stream holding the instance
    /// may). Returns whether the inventory changed.
    pub fn set_health(
        &mut self,
        conn: ConnId,
        service: &ServiceKey,
        instance: &str,
        healthy: bool,
    ) -> bool {
        let Some(entry) = self.entry_mut(service, instance) else {
            return false;
        };
        if entry.presence != Presence::Connected(conn) || entry.instance.healthy == healthy {
            return false;
        }
        entry.instance.healthy = healthy;
        self.dirty = true;
        true
    }

    /// Removes every instance whose grace ended at or before `now`; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<Instance> {
        let mut removed = Vec::new();
        for instances in self.entries.values_mut() {
            let gone: Vec<String> = instances
                .iter()
                .filter(|(_, e)| matches!(e.presence, Presence::Leaving { deadline } | Presence::Restored { deadline } if deadline <= now))
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                if let Some(entry) = instances.remove(&name) {
                    removed.push(entry.instance);
                }
            }
        }
        self.entries.retain(|_, instances| !instances.is_empty());
        if !removed.is_empty() {
            self.dirty = true;
        }
        removed
    }

    /// When [`Registry::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .flat_map(|m| m.values())
            .filter_map(|e| match e.presence {
                Presence::Leaving { deadline } | Presence::Restored { deadline } => Some(deadline),
                Presence::Connected(_) => None,
            })
            .min()
    }

    pub fn presence(&self, service: &ServiceKey, instance: &str) -> Option<Presence> {
        self.entries.get(service)?.get(instance).map(|e| e.presence)
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The inventory as the rest of the zone sees it: every instance, whatever its presence
    /// (an instance in its grace still serves).
    /// Gateways (registered under [`gateway_key`]) come out in their own map.
    pub fn inventory(&self) -> LocalInventory {
        let gateway = gateway_key();
        let instances_of = |instances: &BTreeMap<String, Entry>| {
            instances
                .iter()
                .map(|(name, e)| (name.clone(), e.instance.clone()))
                .collect()
        };
        LocalInventory {
            instances: self
                .entries
                .iter()
                .filter(|(key, _)| **key != gateway)
                .map(|(key, instances)| (key.clone(), instances_of(instances)))
                .collect(),
            gateways: self
                .entries
                .get(&gateway)
                .map(instances_of)
                .unwrap_or_default(),
        }
    }

    /// Whether the persisted state changed since the last call; clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The persisted form: every instance with its health (presence is not kept: after a
    /// restart every instance is [`Presence::Restored`]).
    pub fn encode(&self) -> Result<Vec<u8>, RegistryError> {
        let persisted = Persisted {
            format: FORMAT_VERSION,
            instances: self
                .entries
                .values()
                .flat_map(|m| m.values())
                .map(|e| PersistedInstance::from(&e.instance))
                .collect(),
        };
        serde_json::to_vec(&persisted).map_err(|e| RegistryError::Encode(e.to_string()))
    }

    /// Reads what [`Registry::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Vec<Instance>, RegistryError> {
        let persisted: Persisted =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::Decode(e.to_string()))?;
        if persisted.format != FORMAT_VERSION {
            return Err(RegistryError::FormatVersion {
                found: persisted.format,
                expected: FORMAT_VERSION,
            });
        }
        Ok(persisted
            .instances
            .into_iter()
            .map(Instance::from)
            .collect())
    }

    fn entry_mut(&mut self, service: &ServiceKey, instance: &str) -> Option<&mut Entry> {
        self.entries.get_mut(service)?.get_mut(instance)
    }
}

// === persistence ===

const FORMAT_VERSION: u32 = 1;

/// Mirror structs, so the stored format is ours (JSON, readable with `jq` when debugging a
/// zone) and not an accident of the wire types.
#[derive(Serialize, Deserialize)]
struct Persisted {
    format: u32,
    instances: Vec<PersistedInstance>,
}

#[derive(Serialize, Deserialize)]
struct PersistedInstance {
    namespace: String,
    service: String,
    instance: String,
    #[serde(default)]
    ports: Vec<PersistedPort>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
    inbound_address: String,
    identity: String,
    healthy: bool,
}

#[derive(Serialize, Deserialize)]
struct PersistedPort {
    #[serde(default)]
    name: String,
    port: u32,
    #[serde(default)]
    protocol: i32,
}

impl From<&Instance> for PersistedInstance {
    fn from(i: &Instance) -> Self {
        Self {
            namespace: i.service.namespace.clone(),
            service: i.service.name.clone(),
            instance: i.instance.clone(),
            ports: i
                .ports
                .iter()
                .map(|p| PersistedPort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            labels: i.labels.clone(),
            region: i.locality.region.clone(),
            zone: i.locality.zone.clone(),
            subzone: i.locality.subzone.clone(),
            inbound_address: i.inbound_address.clone(),
            identity: i.identity.clone(),
            healthy: i.healthy,
        }
    }
}

impl From<PersistedInstance> for Instance {
    fn from(p: PersistedInstance) -> Self {
        Self {
            service: ServiceKey {
                namespace: p.namespace,
                name: p.service,
            },
            instance: p.instance,
            ports: p
                .ports
                .into_iter()
                .map(|port| pb::Port {
                    name: port.name,
                    port: port.port,
                    protocol: port.protocol,
                })
                .collect(),
            labels: p.labels,
            locality: pb::Locality {
                region: p.region,
                zone: p.zone,
                subzone: p.subzone,
            },
            inbound_address: p.inbound_address,
            identity: p.identity,
            healthy: p.healthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    fn instance(service: &str, name: &str, identity: &str) -> Instance {
        Instance {
            service: key(service),
            instance: name.into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: pb::Protocol::Http as i32,
            }],
            labels: BTreeMap::from([("version".into(), "v1".into())]),
            locality: pb::Locality {
                region: "eu".into(),
                zone: "a".into(),
                subzone: String::new(),
            },
            inbound_address: "127.0.0.1:9000".into(),
            identity: identity.into(),
            healthy: true,
        }
    }

    const ECHO_ID: &str = "spiffe://strait.local/ns/demo/sa/echo";

    fn names(r: &Registry) -> Vec<String> {
        r.inventory()
            .instances
            .values()
            .flat_map(|m| m.keys().cloned())
            .collect()
    }

    #[test]
    fn a_registered_instance_is_in_the_inventory() {
        let mut r = Registry::new(GRACE);
        assert_eq!(r.register(1, instance("echo", "e1", ECHO_ID)), Ok(true));
        assert_eq!(names(&r), ["e1"]);
        assert_eq!(r.presence(&key("echo"), "e1"), Some(Presence::Connected(1)));
        assert!(r.take_dirty());
        assert!(!r.take_dirty());
        // The same registration again changes nothing.
        assert_eq!(r.register(1, instance("echo", "e1", ECHO_ID)), Ok(false));
        assert!(!r.take_dirty());
    }

    #[test]
    fn a_disconnected_instance_stays_for_the_grace_then_goes() {
        let t0 = Instant::now();
        let mut r = Registry::new(GRACE);
        r.register(1, instance("echo", "e1", ECHO_ID)).unwrap();
        r.disconnect(1, &key("echo"), "e1", t0);
        assert_eq!(r.next_deadline(), Some(t0 + GRACE));
        assert!(r.expire(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert_eq!(names(&r), ["e1"]);
        let removed = r.expire(t0 + GRACE);
        assert_eq!(removed.len(), 1);
        assert!(r.inventory().instances.is_empty());
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn re_registering_within_the_grace_cancels_the_removal() {
        let t0 = Instant::now();
        let mut r = Registry::new(GRACE);
        r.register(1, instance("echo", "e1", ECHO_ID)).unwrap();
        r.take_dirty();
        r.disconnect(1, &key("echo"), "e1", t0);
        assert_eq!(r.register(2, instance("echo", "e1", ECHO_ID)), Ok(false));
        assert_eq!(r.next_deadline(), None);
        assert!(r.expire(t0 + GRACE * 2).is_empty());
        assert_eq!(names(&r), ["e1"]);
    }

    #[test]
    fn an_old_stream_ending_after_a_takeover_does_not_start_a_grace() {
        let t0 = Instant::now();
        let mut r = Registry::new(GRACE);
        r.register(1, instance("echo", "e1", ECHO_ID)).unwrap();
        // The sidecar reconnected before the server noticed the old stream's end.
        r.register(2, instance("echo", "e1", ECHO_ID)).unwrap();
        r.disconnect(1, &key("echo"), "e1", t0);
        assert_eq!(r.presence(&key("echo"), "e1"), Some(Presence::Connected(2)));
        // Health from the stale stream is ignored too.
        assert!(!r.set_health(1, &key("echo"), "e1", false));
    }

    #[test]
    fn another_identity_cannot_take_a_connected_instance() {
        let t0 = Instant::now();
        let mut r = Registry::new(GRACE);
        r.register(1, instance("echo", "e1", ECHO_ID)).unwrap();
        let thief = instance("echo", "e1", "spiffe://strait.local/ns/demo/sa/other");
        assert!(matches!(
            r.register(2, thief.clone()),
            Err(RegistryError::HeldByAnother { .. })
        ));
        // Once the holder is gone, the name is free (a redeploy under a new account).
        r.disconnect(1, &key("echo"), "e1", t0);
        assert_eq!(r.register(2, thief), Ok(true));
    }

    #[test]
    fn health_reports_flip_the_flag() {
        let mut r = Registry::new(GRACE);
        r.register(1, instance("echo", "e1", ECHO_ID)).unwrap();
        r.take_dirty();
        assert!(r.set_health(1, &key("echo"), "e1", false));
        assert!(r.take_dirty());
        assert!(!r.inventory().instances[&key("echo")]["e1"].healthy);
        assert!(
            !r.set_health(1, &key("echo"), "e1", false),
            "no change, no event"
        );
        assert!(r.set_health(1, &key("echo"), "e1", true));
        assert!(r.inventory().instances[&key("echo")]["e1"].healthy);
        assert!(!r.set_health(1, &key("echo"), "missing", true));
    }

    #[test]
    fn restored_instances_stay_until_the_grace_unless_they_come_back() {
        let t0 = Instant::now();
        let mut before = Registry::new(GRACE);
        before.register(1, instance("echo", "e1", ECHO_ID)).unwrap();
        before.register(2, instance("echo", "e2", ECHO_ID)).unwrap();
        before.set_health(2, &key("echo"), "e2", false);
        let bytes = before.encode().unwrap();

        let restored = Registry::decode(&bytes).unwrap();
        let mut r = Registry::restore(GRACE, restored, t0);
        assert_eq!(
            r.inventory(),
            before.inventory(),
            "health and everything else survive"
        );
        assert!(matches!(
            r.presence(&key("echo"), "e1"),
            Some(Presence::Restored { .. })
        ));
        assert!(!r.take_dirty(), "restoring is not a change to persist");

        r.register(7, instance("echo", "e1", ECHO_ID)).unwrap();
        let removed = r.expire(t0 + GRACE);
        assert_eq!(
            removed
                .iter()
                .map(|i| i.instance.as_str())
                .collect::<Vec<_>>(),
            ["e2"]
        );
        assert_eq!(names(&r), ["e1"]);
        assert!(r.take_dirty());
    }

    #[test]
    fn next_deadline_is_the_earliest() {
        let t0 = Instant::now();
        let mut r = Registry::new(GRACE);
        r.register(1, instance("echo", "e1", ECHO_ID)).unwrap();
        r.register(2, instance("web", "w1", ECHO_ID)).unwrap();
        r.disconnect(2, &key("web"), "w1", t0 + Duration::from_secs(1));
        r.disconnect(1, &key("echo"), "e1", t0 + Duration::from_secs(2));
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(1) + GRACE));
        assert_eq!(r.expire(t0 + Duration::from_secs(1) + GRACE).len(), 1);
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(2) + GRACE));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn garbage_and_other_versions_are_errors_not_panics() {
        assert!(matches!(
            Registry::decode(b"\xff{"),
            Err(RegistryError::Decode(_))
        ));
        assert!(matches!(
            Registry::decode(br#"{"format":99,"instances":[]}"#),
            Err(RegistryError::FormatVersion { found: 99, .. })
        ));
        assert_eq!(
            Registry::decode(br#"{"format":1,"instances":[]}"#),
            Ok(vec![])
        );
    }
}
