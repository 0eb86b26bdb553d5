//! The federation state replicated by Raft, and the only code that changes it.
//!
//! [`FederationState::apply`] is a pure function of the state, the log index and the
//! [`Command`]: no IO, no clock (time arrives in the command as `now_ms`, read by the
//! proposer), no randomness, and only ordered collections, so every global node that applies
//! the same log reaches a byte-identical state. A command is checked completely before
//! anything is changed, so a rejected command leaves the state untouched.

mod command;
mod model;
mod pairs;
mod rejection;
mod time;
mod validate;
mod vip;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;
use subtle::ConstantTimeEq;

pub use self::command::Command;
pub use self::command::CommandResult;
pub use self::command::Detail;
pub use self::model::Connection;
pub use self::model::ExportedService;
pub use self::model::FederationCa;
pub use self::model::HeldVip;
pub use self::model::JoinToken;
pub use self::model::LocalityCount;
pub use self::model::PolicyKey;
pub use self::model::Port;
pub use self::model::PrivateKeyPem;
pub use self::model::ServiceKey;
pub use self::model::StoredPolicy;
pub use self::model::SubsetCount;
pub use self::model::TokenPurpose;
pub use self::model::Zone;
pub use self::model::ZoneInventory;
pub use self::model::ZoneStatus;
pub use self::rejection::Rejection;
pub use self::rejection::TokenRejection;
pub use self::time::Rfc3339;
use self::validate::invalid;
use self::validate::non_empty;
use self::validate::sha256_hex;
pub use self::validate::validate_zone_name;
pub use self::vip::MAX_VIP_INDEX;
pub use self::vip::VIP_HOLD_MS;
use self::vip::VipOwner;

/// Everything the global control plane agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationState {
    /// Log index of the last entry that changed the state; 0 for a fresh state. Watchers (the
    /// zone sync server) compare it to know whether there is anything new to push.
    pub revision: u64,
    /// Trust material; `None` until `InitFederation`.
    pub ca: Option<FederationCa>,
    /// Every zone ever created, removed ones included (they form the deny list).
    pub zones: BTreeMap<String, Zone>,
    /// Join tokens by id, until `PurgeExpiredTokens` drops them after expiry.
    pub tokens: BTreeMap<String, JoinToken>,
    #[serde(with = "pairs")]
    pub policies: BTreeMap<PolicyKey, StoredPolicy>,
    /// Last inventory of each active zone. Kept while the zone is disconnected.
    pub inventories: BTreeMap<String, ZoneInventory>,
    /// VIP index of every exported service.
    #[serde(with = "pairs")]
    pub vips: BTreeMap<ServiceKey, u32>,
    /// Zone-pinned VIP index of every (service, zone exporting it) pair, from the same index
    /// space as `vips` (see the `vip` module). Absent in states written before zone-pinned
    /// VIPs existed; the pairs then get their indices at their zones' next reports.
    #[serde(default, with = "pairs")]
    pub zone_vips: BTreeMap<(ServiceKey, String), u32>,
    /// Released VIP indices (of both kinds) that nobody else may get yet (see the `vip` module).
    pub held_vips: BTreeMap<u32, HeldVip>,
    /// (service, zone) pairs taken out of the service's endpoints.
    pub drains: BTreeSet<(ServiceKey, String)>,
}

/// Whether a handler changed the state, and what to tell the caller.
enum Applied {
    Changed(Detail),
    Unchanged(Detail),
}

impl FederationState {
    /// Applies one command committed at `log_index` and says what happened.
    pub fn apply(&mut self, log_index: u64, command: &Command) -> CommandResult {
        self.apply_with_vip_limit(log_index, command, MAX_VIP_INDEX)
    }

    fn apply_with_vip_limit(
        &mut self,
        log_index: u64,
        command: &Command,
        max_vip: u32,
    ) -> CommandResult {
        let outcome = match command {
            Command::Batch(commands) => {
                // Each command is checked and applied on its own, at this entry's index, so
                // the revision rules are those of separate entries.
                let results = commands
                    .iter()
                    .map(|command| self.apply_with_vip_limit(log_index, command, max_vip))
                    .collect();
                return CommandResult::Ok {
                    revision: self.revision,
                    detail: Detail::Batch(results),
                };
            }
            Command::InitFederation {
                trust_domain,
                root_cert_pem,
                root_key_pem,
                bundle_pem,
                now_ms: _,
            } => self.init_federation(trust_domain, root_cert_pem, root_key_pem, bundle_pem),
            Command::SetTrustBundle { bundle_pem } => self.set_trust_bundle(bundle_pem),
            Command::CreateZone {
                name,
                region,
                labels,
                now_ms,
            } => self.create_zone(name, region, labels, *now_ms),
            Command::RemoveZone { name, now_ms } => self.remove_zone(name, *now_ms, max_vip),
            Command::CreateJoinToken {
                token_id,
                secret_sha256,
                purpose,
                expires_at_ms,
                now_ms,
            } => self.create_join_token(token_id, secret_sha256, purpose, *expires_at_ms, *now_ms),
            Command::ConsumeJoinToken {
                token_id,
                secret_sha256,
                purpose,
                now_ms,
            } => self.consume_join_token(token_id, secret_sha256, purpose, *now_ms),
            Command::PurgeExpiredTokens { now_ms } => Ok(self.purge_expired_tokens(*now_ms)),
            Command::ApplyPolicies { policies } => self.apply_policies(log_index, policies),
            Command::DeletePolicy { key } => self.delete_policy(key),
            Command::ReportInventory {
                zone,
                version,
                services,
                gateways,
                now_ms,
            } => self.report_inventory(zone, *version, services, gateways, *now_ms, max_vip),
            Command::SetZoneConnection {
                zone,
                connected,
                node_id,
                session,
                now_ms,
            } => self.set_zone_connection(zone, *connected, (*node_id, *session), *now_ms),
            Command::SetZoneVipCidr { zone, vip_cidr } => self.set_zone_vip_cidr(zone, vip_cidr),
            Command::SetDrain {
                namespace,
                service,
                zone,
                drained,
            } => self.set_drain(namespace, service, zone, *drained),
        };
        match outcome {
            Ok(Applied::Changed(detail)) => {
                // Never backwards, so watchers can rely on a monotonic revision.
                self.revision = self.revision.max(log_index);
                CommandResult::Ok {
                    revision: self.revision,
                    detail,
                }
            }
            Ok(Applied::Unchanged(detail)) => CommandResult::Ok {
                revision: self.revision,
                detail,
            },
            Err(rejection) => CommandResult::Rejected(rejection),
        }
    }

    // === Trust ===

    fn init_federation(
        &mut self,
        trust_domain: &str,
        root_cert_pem: &str,
        root_key_pem: &PrivateKeyPem,
        bundle_pem: &str,
    ) -> Result<Applied, Rejection> {
        if let Some(ca) = &self.ca {
            return Err(Rejection::AlreadyInitialized {
                trust_domain: ca.trust_domain.clone(),
            });
        }
        non_empty("trust domain", trust_domain)?;
        // SPIFFE trust domain charset; anything else would yield unparsable SPIFFE IDs.
        if !trust_domain
            .bytes()
            .all(strait_proto::names::is_trust_domain_byte)
        {
            return Err(invalid(
                format!("trust domain {trust_domain:?}"),
                "may only contain lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        non_empty("root certificate", root_cert_pem)?;
        non_empty("root key", &root_key_pem.0)?;
        let bundle_pem = if bundle_pem.trim().is_empty() {
            root_cert_pem
        } else {
            bundle_pem
        };
        self.ca = Some(FederationCa {
            trust_domain: trust_domain.to_owned(),
            root_cert_pem: root_cert_pem.to_owned(),
            root_key_pem: root_key_pem.clone(),
            bundle_pem: bundle_pem.to_owned(),
        });
        Ok(Applied::Changed(Detail::Done))
    }

    fn set_trust_bundle(&mut self, bundle_pem: &str) -> Result<Applied, Rejection> {
        let Some(ca) = &mut self.ca else {
            return Err(Rejection::NotInitialized);
        };
        non_empty("trust bundle", bundle_pem)?;
        if ca.bundle_pem == bundle_pem {
            return Ok(Applied::Unchanged(Detail::Unchanged));
        }
        bundle_pem.clone_into(&mut ca.bundle_pem);
        Ok(Applied::Changed(Detail::Done))
    }

    // === Zones ===

    fn create_zone(
        &mut self,
        name: &str,
        region: &str,
        labels: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<Applied, Rejection> {
        validate_zone_name(name)?;
        if let Some(zone) = self.zones.get(name) {
            return Err(match zone.removed_at_ms {
                Some(removed_at_ms) if !zone.is_active() => Rejection::ZoneNameRetired {
                    zone: name.to_owned(),
                    removed_at_ms,
                },
                _ => Rejection::ZoneExists {
                    zone: name.to_owned(),
                },
            });
        }
        self.zones.insert(
            name.to_owned(),
            Zone {
                name: name.to_owned(),
                region: region.to_owned(),
                labels: labels.clone(),
                status: ZoneStatus::Active,
                created_at_ms: now_ms,
                removed_at_ms: None,
                connection: None,
                vip_cidr: None,
            },
        );
        Ok(Applied::Changed(Detail::Done))
    }

    fn remove_zone(&mut self, name: &str, now_ms: u64, max_vip: u32) -> Result<Applied, Rejection> {
        self.active_zone(name)?;
        let exported = self.vip_owners(Some(name), None);
        let plan = vip::plan(
            &self.vip_allocations(),
            &self.held_vips,
            &exported,
            now_ms,
            max_vip,
        )?;

        let mut tokens_revoked = 0u32;
        for token in self.tokens.values_mut() {
            let for_zone = matches!(&token.purpose, TokenPurpose::Zone { zone } if zone == name);
            if for_zone && token.used_at_ms.is_none() && token.revoked_at_ms.is_none() {
                token.revoked_at_ms = Some(now_ms);
                tokens_revoked = tokens_revoked.saturating_add(1);
            }
        }
        self.inventories.remove(name);
        self.drains.retain(|(_, zone)| zone != name);
        self.commit_vips(&plan, now_ms);
        if let Some(zone) = self.zones.get_mut(name) {
            zone.status = ZoneStatus::Removed;
            zone.removed_at_ms = Some(now_ms);
            if let Some(connection) = &mut zone.connection {
                connection.connected = false;
            }
        }
        Ok(Applied::Changed(Detail::ZoneRemoved {
            tokens_revoked,
            vips_released: plan.released,
            zone_vips_released: plan.zone_released,
        }))
    }

    fn set_zone_connection(
        &mut self,
        name: &str,
        connected: bool,
        (node_id, session): (u64, u64),
        now_ms: u64,
    ) -> Result<Applied, Rejection> {
        self.active_zone(name)?;
        let Some(zone) = self.zones.get_mut(name) else {
            return Err(Rejection::ZoneNotFound {
                zone: name.to_owned(),
            });
        };
        // A zone that moved to another global node, or whose primary moved to another of its
        // replicas, may have its old stream end after the new one started; that late
        // disconnect must not mark the zone as gone.
        if let Some(current) = &zone.connection
            && !connected
            && current.connected
            && (current.node_id, current.session) != (node_id, session)
        {
            return Ok(Applied::Unchanged(Detail::Unchanged));
        }
        zone.connection = Some(Connection {
            connected,
            node_id,
            session,
            last_seen_ms: now_ms,
        });
        Ok(Applied::Changed(Detail::Done))
    }

    fn set_zone_vip_cidr(&mut self, name: &str, vip_cidr: &str) -> Result<Applied, Rejection> {
        self.active_zone(name)?;
        let Some(zone) = self.zones.get_mut(name) else {
            return Err(Rejection::ZoneNotFound {
                zone: name.to_owned(),
            });
        };
        if zone.vip_cidr.as_deref() == Some(vip_cidr) {
            return Ok(Applied::Unchanged(Detail::Unchanged));
        }
        zone.vip_cidr = Some(vip_cidr.to_owned());
        Ok(Applied::Changed(Detail::Done))
    }

    /// The zone, if it exists and is active; otherwise the rejection that says why not.
    fn active_zone(&self, name: &str) -> Result<&Zone, Rejection> {
        let zone = self
            .zones
            .get(name)
            .ok_or_else(|| Rejection::ZoneNotFound {
                zone: name.to_owned(),
            })?;
        if !zone.is_active() {
            return Err(Rejection::ZoneRemoved {
                zone: name.to_owned(),
                removed_at_ms: zone.removed_at_ms.unwrap_or_default(),
            });
        }
        Ok(zone)
    }

    // === Join tokens ===

    fn create_join_token(
        &mut self,
        token_id: &str,
        secret_sha256: &str,
        purpose: &TokenPurpose,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<Applied, Rejection> {
        non_empty("join token id", token_id)?;
        if self.tokens.contains_key(token_id) {
            return Err(Rejection::TokenExists {
                token_id: token_id.to_owned(),
            });
        }
        let digest = sha256_hex("join token secret hash", secret_sha256)?;
        if expires_at_ms <= now_ms {
            return Err(invalid(
                "join token expiry",
                format!("{} is not in the future", Rfc3339(expires_at_ms)),
            ));
        }
        if let TokenPurpose::Zone { zone } = purpose {
            self.active_zone(zone)?;
        }
        self.tokens.insert(
            token_id.to_owned(),
            JoinToken {
                id: token_id.to_owned(),
                secret_sha256: hex::encode(digest),
                purpose: purpose.clone(),
                created_at_ms: now_ms,
                expires_at_ms,
                used_at_ms: None,
                revoked_at_ms: None,
            },
        );
        Ok(Applied::Changed(Detail::Done))
    }

    fn consume_join_token(
        &mut self,
        token_id: &str,
        secret_sha256: &str,
        requested: &TokenPurpose,
        now_ms: u64,
    ) -> Result<Applied, Rejection> {
        let token = self.tokens.get(token_id).ok_or(TokenRejection::Unknown)?;

        // Compare digests in constant time so the response time reveals nothing about how
        // much of a guessed secret matched. Malformed input simply does not match.
        let mut presented = [0u8; 32];
        let mut stored = [0u8; 32];
        let decoded = hex::decode_to_slice(secret_sha256, &mut presented).is_ok()
            & hex::decode_to_slice(&token.secret_sha256, &mut stored).is_ok();
        if !(decoded & bool::from(presented.ct_eq(&stored))) {
            return Err(TokenRejection::SecretMismatch.into());
        }

        // From here on the caller holds the secret, so details may be told.
        if token.revoked_at_ms.is_some() {
            let zone = match &token.purpose {
                TokenPurpose::Zone { zone } => zone.clone(),
                TokenPurpose::Node { .. } => String::new(),
            };
            return Err(TokenRejection::ZoneRemoved { zone }.into());
        }
        if let Some(used_at_ms) = token.used_at_ms {
            return Err(TokenRejection::AlreadyUsed { used_at_ms }.into());
        }
        if token.is_expired(now_ms) {
            return Err(TokenRejection::Expired {
                expired_at_ms: token.expires_at_ms,
            }
            .into());
        }
        match (&token.purpose, requested) {
            (
                TokenPurpose::Zone { zone: token_zone },
                TokenPurpose::Zone {
                    zone: requested_zone,
                },
            ) => {
                if token_zone != requested_zone {
                    return Err(TokenRejection::WrongZone {
                        token_zone: token_zone.clone(),
                        requested_zone: requested_zone.clone(),
                    }
                    .into());
                }
                match self.zones.get(token_zone) {
                    Some(zone) if zone.is_active() => {}
                    Some(_) => {
                        return Err(TokenRejection::ZoneRemoved {
                            zone: token_zone.clone(),
                        }
                        .into());
                    }
                    None => {
                        return Err(Rejection::ZoneNotFound {
                            zone: token_zone.clone(),
                        });
                    }
                }
            }
            (
                TokenPurpose::Node {
                    node_id: token_node,
                },
                TokenPurpose::Node {
                    node_id: requested_node,
                },
            ) => {
                if token_node != requested_node {
                    return Err(TokenRejection::WrongNode {
                        token_node: *token_node,
                        requested_node: *requested_node,
                    }
                    .into());
                }
            }
            (token_purpose, requested_purpose) => {
                return Err(TokenRejection::WrongPurpose {
                    token_purpose: token_purpose.kind().to_owned(),
                    requested_purpose: requested_purpose.kind().to_owned(),
                }
                .into());
            }
        }

        let purpose = token.purpose.clone();
        if let Some(token) = self.tokens.get_mut(token_id) {
            token.used_at_ms = Some(now_ms);
        }
        Ok(Applied::Changed(Detail::TokenConsumed {
            token_id: token_id.to_owned(),
            purpose,
        }))
    }

    fn purge_expired_tokens(&mut self, now_ms: u64) -> Applied {
        let before = self.tokens.len();
        self.tokens.retain(|_, token| !token.is_expired(now_ms));
        let count = u32::try_from(before - self.tokens.len()).unwrap_or(u32::MAX);
        if count == 0 {
            Applied::Unchanged(Detail::TokensPurged { count })
        } else {
            Applied::Changed(Detail::TokensPurged { count })
        }
    }

    // === Policies ===

    fn apply_policies(
        &mut self,
        log_index: u64,
        policies: &[(PolicyKey, String)],
    ) -> Result<Applied, Rejection> {
        // Check the whole batch first: nothing is half-applied.
        let mut seen = BTreeSet::new();
        for (key, json) in policies {
            non_empty("policy kind", &key.kind)?;
            non_empty(&format!("name of {} policy", key.kind), &key.name)?;
            if !seen.insert(key) {
                return Err(Rejection::DuplicatePolicy { key: key.clone() });
            }
            // Bodies were validated against their schema before proposing; this only guards
            // the invariant that what is stored is JSON at all.
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(json) {
                return Err(invalid(
                    format!("policy {key}"),
                    format!("body is not JSON: {e}"),
                ));
            }
        }

        let (mut created, mut updated, mut unchanged) = (0u32, 0u32, 0u32);
        for (key, json) in policies {
            let counter = match self.policies.get(key) {
                None => &mut created,
                Some(stored) if stored.json != *json => &mut updated,
                Some(_) => {
                    unchanged = unchanged.saturating_add(1);
                    continue;
                }
            };
            *counter = counter.saturating_add(1);
            self.policies.insert(
                key.clone(),
                StoredPolicy {
                    key: key.clone(),
                    json: json.clone(),
                    revision: log_index,
                },
            );
        }
        let detail = Detail::PoliciesApplied {
            created,
            updated,
            unchanged,
        };
        Ok(if created == 0 && updated == 0 {
            Applied::Unchanged(detail)
        } else {
            Applied::Changed(detail)
        })
    }

    fn delete_policy(&mut self, key: &PolicyKey) -> Result<Applied, Rejection> {
        match self.policies.remove(key) {
            Some(_) => Ok(Applied::Changed(Detail::Done)),
            None => Err(Rejection::PolicyNotFound { key: key.clone() }),
        }
    }

    // === Inventories, VIPs, drains ===

    fn report_inventory(
        &mut self,
        zone: &str,
        version: u64,
        services: &BTreeMap<ServiceKey, ExportedService>,
        gateways: &[String],
        now_ms: u64,
        max_vip: u32,
    ) -> Result<Applied, Rejection> {
        self.active_zone(zone)?;
        if let Some(stored) = self.inventories.get(zone)
            && version < stored.version
        {
            return Err(Rejection::StaleInventory {
                zone: zone.to_owned(),
                version,
                stored_version: stored.version,
            });
        }
        for key in services.keys() {
            non_empty(
                &format!("namespace of service {key} from zone {zone:?}"),
                &key.namespace,
            )?;
            non_empty(
                &format!("name of service {key} from zone {zone:?}"),
                &key.name,
            )?;
        }
        let exported = self.vip_owners(Some(zone), Some(services));
        let plan = vip::plan(
            &self.vip_allocations(),
            &self.held_vips,
            &exported,
            now_ms,
            max_vip,
        )?;

        self.inventories.insert(
            zone.to_owned(),
            ZoneInventory {
                version,
                services: services.clone(),
                gateways: gateways.to_vec(),
                reported_at_ms: now_ms,
            },
        );
        self.commit_vips(&plan, now_ms);
        Ok(Applied::Changed(Detail::InventoryAccepted {
            vips_allocated: plan.allocated,
            vips_released: plan.released,
            zone_vips_allocated: plan.zone_allocated,
            zone_vips_released: plan.zone_released,
        }))
    }

    /// What needs a VIP index: every service some zone exports, and every (service, zone)
    /// pair, with `replaced_zone`'s inventory swapped for `replacement` (or left out when
    /// there is none).
    fn vip_owners(
        &self,
        replaced_zone: Option<&str>,
        replacement: Option<&BTreeMap<ServiceKey, ExportedService>>,
    ) -> BTreeSet<VipOwner> {
        let kept = self
            .inventories
            .iter()
            .filter(|(zone, _)| Some(zone.as_str()) != replaced_zone)
            .map(|(zone, inventory)| (zone.as_str(), &inventory.services));
        let replaced = replaced_zone.zip(replacement);
        let mut owners = BTreeSet::new();
        for (zone, services) in kept.chain(replaced) {
            for service in services.keys() {
                owners.insert(VipOwner::Service(service.clone()));
                owners.insert(VipOwner::Pinned {
                    service: service.clone(),
                    zone: zone.to_owned(),
                });
            }
        }
        owners
    }

    fn vip_allocations(&self) -> vip::Allocations<'_> {
        vip::Allocations {
            vips: &self.vips,
            zone_vips: &self.zone_vips,
        }
    }

    fn commit_vips(&mut self, plan: &vip::VipPlan, now_ms: u64) {
        vip::commit(
            plan,
            &mut self.vips,
            &mut self.zone_vips,
            &mut self.held_vips,
            now_ms,
        );
    }

    fn set_drain(
        &mut self,
        namespace: &str,
        service: &str,
        zone: &str,
        drained: bool,
    ) -> Result<Applied, Rejection> {
        non_empty("service namespace", namespace)?;
        non_empty("service name", service)?;
        if drained {
            self.active_zone(zone)?;
        } else if !self.zones.contains_key(zone) {
            return Err(Rejection::ZoneNotFound {
                zone: zone.to_owned(),
            });
        }
        let entry = (ServiceKey::new(namespace, service), zone.to_owned());
        let changed = if drained {
            self.drains.insert(entry)
        } else {
            self.drains.remove(&entry)
        };
        Ok(if changed {
            Applied::Changed(Detail::Done)
        } else {
            Applied::Unchanged(Detail::Unchanged)
        })
    }

    // === Queries for the admin API and the zone sync server ===

    /// Whether `InitFederation` has been applied.
    pub fn is_initialized(&self) -> bool {
        self.ca.is_some()
    }

    pub fn zone(&self, name: &str) -> Option<&Zone> {
        self.zones.get(name)
    }

    /// Whether a zone is on the deny list (it was removed). Gateways refuse denied zones.
    pub fn is_denied(&self, zone: &str) -> bool {
        self.zones.get(zone).is_some_and(|z| !z.is_active())
    }

    /// Names of removed zones, sorted. Derived from the zones so it can never disagree with
    /// them.
    pub fn deny_list(&self) -> Vec<&str> {
        self.zones
            .values()
            .filter(|z| !z.is_active())
            .map(|z| z.name.as_str())
            .collect()
    }

    pub fn vip(&self, service: &ServiceKey) -> Option<u32> {
        self.vips.get(service).copied()
    }

    /// The index of `service`'s VIP pinned to `zone`, while `zone` exports it.
    pub fn zone_vip(&self, service: &ServiceKey, zone: &str) -> Option<u32> {
        self.zone_vips
            .range((service.clone(), zone.to_owned())..)
            .next()
            .filter(|((s, z), _)| s == service && z == zone)
            .map(|(_, index)| *index)
    }

    pub fn is_drained(&self, service: &ServiceKey, zone: &str) -> bool {
        // Avoids building a tuple key (and cloning) per lookup.
        self.drains
            .range((service.clone(), zone.to_owned())..)
            .next()
            .is_some_and(|(s, z)| s == service && z == zone)
    }

    /// Every exported service joined across zones: its VIP and, per zone, endpoint counts,
    /// drain and connection state. Sorted by service, then zone.
    pub fn services(&self) -> Vec<ServiceView> {
        let mut views: BTreeMap<&ServiceKey, Vec<ServiceZoneView>> = BTreeMap::new();
        for (zone, inventory) in &self.inventories {
            let connected = self.zones.get(zone).is_some_and(Zone::is_connected);
            for (service, exported) in &inventory.services {
                views.entry(service).or_default().push(ServiceZoneView {
                    zone: zone.clone(),
                    healthy: exported.healthy(),
                    total: exported.total(),
                    drained: self.is_drained(service, zone),
                    connected,
                    ports: exported.ports.clone(),
                    pinned_vip: self.zone_vip(service, zone),
                });
            }
        }
        views
            .into_iter()
            .map(|(service, zones)| ServiceView {
                service: service.clone(),
                vip: self.vip(service),
                zones,
            })
            .collect()
    }
}

/// One exported service across the federation, for `strait services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: ServiceKey,
    pub vip: Option<u32>,
    pub zones: Vec<ServiceZoneView>,
}

/// One zone's share of an exported service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceZoneView {
    pub zone: String,
    pub healthy: u64,
    pub total: u64,
    pub drained: bool,
    /// False when the zone's sync stream is down: the counts are its last report.
    pub connected: bool,
    pub ports: Vec<Port>,
    /// The index of the service's VIP pinned to this zone.
    #[serde(default)]
    pub pinned_vip: Option<u32>,
}
