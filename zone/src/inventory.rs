//! This zone's own inventory (universal mode): the instances its sidecars registered over the
//! discovery stream. The discovery server owns it and publishes it through an
//! [`InventoryWatch`]; the sync client reports it to global.

use std::collections::BTreeMap;

use std::sync::Arc;
use strait_policy::PolicySet;

use strait_proto as pb;
use tokio::sync::watch;

/// A service's name, the same in every zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

/// One registered workload instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub service: ServiceKey,
    /// Unique within the service (the sidecar chooses it, e.g. `echo-v1-a`).
    pub instance: String,
    pub ports: Vec<pb::Port>,
    pub labels: BTreeMap<String, String>,
    pub locality: pb::Locality,
    /// Where other sidecars and the local gateway reach it (mTLS).
    pub inbound_address: String,
    /// The SPIFFE ID from its certificate.
    pub identity: String,
    /// The app's health as its sidecar reports it.
    pub healthy: bool,
}

/// Every instance registered in this zone, by service then instance name, and the zone's
/// east-west gateways by instance name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalInventory {
    pub instances: BTreeMap<ServiceKey, BTreeMap<String, Instance>>,
    pub gateways: BTreeMap<String, Instance>,
}

/// Gateways register in the same registry as workload instances, so they get the same grace,
/// persistence and takeover rules, under this reserved key: namespaces are DNS labels, so an
/// empty one never names a workload's service.
pub fn gateway_key() -> ServiceKey {
    ServiceKey {
        namespace: String::new(),
        name: "gateway".to_owned(),
    }
}

/// The label that carries a gateway's public (QUIC) address; its `inbound_address` is the
/// local (HTTP/2 CONNECT) address this zone's sidecars use.
pub const PUBLIC_ADDRESS_LABEL: &str = "strait.dev/public-address";

impl Instance {
    /// A gateway replica of zone `locality.zone`, as the registry keeps it.
    pub fn gateway(
        instance: String,
        locality: pb::Locality,
        local_address: String,
        public_address: String,
        identity: String,
    ) -> Self {
        Instance {
            service: gateway_key(),
            instance,
            ports: Vec::new(),
            labels: BTreeMap::from([(PUBLIC_ADDRESS_LABEL.to_owned(), public_address)]),
            locality,
            inbound_address: local_address,
            identity,
            healthy: true,
        }
    }

    /// The instance as an endpoint of a sidecar config or a gateway config.
    pub fn endpoint(&self) -> pb::Endpoint {
        pb::Endpoint {
            address: self.inbound_address.clone(),
            instance: self.instance.clone(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            spiffe_id: self.identity.clone(),
            healthy: self.healthy,
        }
    }

    /// A gateway's public address (empty for a workload instance).
    pub fn public_address(&self) -> &str {
        self.labels
            .get(PUBLIC_ADDRESS_LABEL)
            .map_or("", String::as_str)
    }
}

/// Receives every change of the [`LocalInventory`].
pub type InventoryWatch = watch::Receiver<Arc<LocalInventory>>;

impl LocalInventory {
    /// What this zone exports to the federation: every service with at least one instance,
    /// with healthy/total counts per locality and per label subset that a `TrafficRoute` in
    /// `policies` uses. Universal mode exports every registered service.
    pub fn exported_services(&self, policies: &PolicySet) -> Vec<pb::ExportedService> {
        self.instances
            .iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|(key, instances)| {
                let subsets =
                    crate::discovery::compile::route_subsets(policies, &key.namespace, &key.name)
                        .into_iter()
                        .map(|labels| {
                            let matching = instances
                                .values()
                                .filter(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)));
                            let (healthy, total) = matching.fold((0_u32, 0_u32), |(h, t), i| {
                                (h.saturating_add(u32::from(i.healthy)), t.saturating_add(1))
                            });
                            pb::SubsetCount {
                                labels: labels.into_iter().collect(),
                                healthy,
                                total,
                            }
                        })
                        .collect();
                let mut localities: BTreeMap<(String, String, String), (u32, u32)> =
                    BTreeMap::new();
                let mut ports: Vec<pb::Port> = Vec::new();
                let mut identities: Vec<String> = Vec::new();
                for instance in instances.values() {
                    if !identities.contains(&instance.identity) {
                        identities.push(instance.identity.clone());
                    }
                    let l = &instance.locality;
                    let counts = localities
                        .entry((l.region.clone(), l.zone.clone(), l.subzone.clone()))
                        .or_default();
                    counts.1 += 1;
                    if instance.healthy {
                        counts.0 += 1;
                    }
                    for port in &instance.ports {
                        if !ports.iter().any(|p| p.port == port.port) {
                            ports.push(port.clone());
                        }
                    }
                }
                ports.sort_by_key(|p| p.port);
                identities.sort();
                pb::ExportedService {
                    service: Some(pb::ServiceRef {
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                    }),
                    ports,
                    localities: localities
                        .into_iter()
                        .map(
                            |((region, zone, subzone), (healthy, total))| pb::LocalityEndpoints {
                                locality: Some(pb::Locality {
                                    region,
                                    zone,
                                    subzone,
                                }),
                                healthy,
                                total,
                            },
                        )
                        .collect(),
                    identities,
                    subsets,
                }
            })
            .collect()
    }

    /// The gateways other zones reach this zone through (their public QUIC addresses).
    pub fn gateway_endpoints(&self) -> Vec<pb::GatewayEndpoint> {
        self.gateways
            .values()
            .filter(|g| g.healthy && !g.public_address().is_empty())
            .map(|g| pb::GatewayEndpoint {
                address: g.public_address().to_owned(),
                instance: g.instance.clone(),
                locality: Some(g.locality.clone()),
            })
            .collect()
    }

    /// Where this zone's sidecars reach its gateways (HTTP/2 CONNECT over mTLS), sorted.
    pub fn local_gateway_addresses(&self) -> Vec<String> {
        self.gateways
            .values()
            .filter(|g| g.healthy)
            .map(|g| g.inbound_address.clone())
            .collect()
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&BTreeMap<String, Instance>> {
        self.instances.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, healthy: bool) -> Instance {
        Instance {
            service: ServiceKey {
                namespace: "demo".into(),
                name: "echo".into(),
            },
            instance: name.into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: pb::Protocol::Http as i32,
            }],
            labels: BTreeMap::new(),
            locality: pb::Locality {
                region: "r1".into(),
                zone: "a".into(),
                subzone: String::new(),
            },
            inbound_address: "127.0.0.1:1".into(),
            identity: "spiffe://strait.local/ns/demo/sa/echo".into(),
            healthy,
        }
    }

    #[test]
    fn exports_counts_per_locality() {
        let mut inv = LocalInventory::default();
        let key = ServiceKey {
            namespace: "demo".into(),
            name: "echo".into(),
        };
        let entry = inv.instances.entry(key).or_default();
        entry.insert("v1".into(), instance("v1", true));
        entry.insert("v2".into(), instance("v2", false));
        let exported = inv.exported_services(&Default::default());
        assert_eq!(exported.len(), 1);
        assert_eq!(exported[0].localities.len(), 1);
        assert_eq!(
            (
                exported[0].localities[0].healthy,
                exported[0].localities[0].total
            ),
            (1, 2)
        );
        assert_eq!(exported[0].ports.len(), 1);
    }

    #[test]
    fn a_service_without_instances_is_not_exported() {
        let mut inv = LocalInventory::default();
        inv.instances.insert(
            ServiceKey {
                namespace: "demo".into(),
                name: "gone".into(),
            },
            BTreeMap::new(),
        );
        assert!(inv.exported_services(&Default::default()).is_empty());
    }
}
