//! The gateway's view of its [`pb::GatewayConfig`], indexed for the per-tunnel decisions, and
//! those decisions as pure functions: may this peer zone connect, may this header be served
//! (and by which endpoints), where does a sidecar's tunnel to a zone go.

use std::collections::{HashMap, HashSet};

use strait_proto as pb;
use strait_proto::TunnelStatus;
use strait_proto::tunnel::TUNNEL_VERSION;

/// A tunnel refused, with the code and the reason the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: TunnelStatus,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: TunnelStatus, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// One of this zone's services as tunnels see it.
#[derive(Debug, Clone, Default)]
pub struct ServiceView {
    pub ports: Vec<u32>,
    pub endpoints: Vec<pb::Endpoint>,
    pub drained: bool,
}

/// An indexed [`pb::GatewayConfig`].
#[derive(Debug, Clone, Default)]
pub struct ConfigView {
    pub version: u64,
    /// This gateway's zone.
    pub zone: String,
    /// `(namespace, name)` → service.
    pub services: HashMap<(String, String), ServiceView>,
    /// Peer zone → its gateways.
    pub zones: HashMap<String, Vec<pb::GatewayEndpoint>>,
    pub deny: HashSet<String>,
}

impl ConfigView {
    /// Indexes `config` for a gateway of `own_zone` (the config names its zone too; the
    /// gateway's own setting wins, so a confused control plane cannot move it).
    pub fn new(own_zone: &str, config: &pb::GatewayConfig) -> Self {
        let mut services = HashMap::new();
        for s in &config.services {
            let Some(r) = &s.service else { continue };
            services.insert(
                (r.namespace.clone(), r.name.clone()),
                ServiceView {
                    ports: s.ports.iter().map(|p| p.port).collect(),
                    endpoints: s.endpoints.clone(),
                    drained: s.drained,
                },
            );
        }
        let deny: HashSet<String> = config.deny_list.iter().cloned().collect();
        let zones = config
            .zones
            .iter()
            // Never this zone, never a denied one, whatever the control plane sent.
            .filter(|z| z.name != own_zone && !deny.contains(&z.name))
            .map(|z| (z.name.clone(), z.gateways.clone()))
            .collect();
        Self {
            version: config.version,
            zone: own_zone.to_owned(),
            services,
            zones,
            deny,
        }
    }

    /// Whether gateways of `zone` may connect to this one: federated and not denied.
    pub fn peer_allowed(&self, zone: &str) -> Result<(), String> {
        if self.deny.contains(zone) {
            return Err(format!("zone {zone:?} is on the deny list"));
        }
        if !self.zones.contains_key(zone) {
            return Err(format!(
                "zone {zone:?} is not federated with {:?}",
                self.zone
            ));
        }
        Ok(())
    }

    /// Checks an inbound tunnel header and returns the service's endpoints to try.
    pub fn route_inbound(&self, header: &pb::TunnelHeader) -> Result<ServiceView, Refusal> {
        if header.version != TUNNEL_VERSION {
            return Err(Refusal::new(
                TunnelStatus::UnsupportedVersion,
                format!(
                    "tunnel header version {} is not supported (this gateway speaks {TUNNEL_VERSION})",
                    header.version
                ),
            ));
        }
        let Some(service) = header.service.as_ref().filter(|s| !s.name.is_empty()) else {
            return Err(Refusal::new(
                TunnelStatus::BadHeader,
                "the header names no service",
            ));
        };
        let port = u16::try_from(header.port).ok().filter(|p| *p != 0);
        if port.is_none() {
            return Err(Refusal::new(
                TunnelStatus::BadHeader,
                format!("port {} is not a valid port", header.port),
            ));
        }
        if !header.target_zone.is_empty() && header.target_zone != self.zone {
            return Err(Refusal::new(
                TunnelStatus::ZoneUnreachable,
                format!(
                    "this gateway serves zone {:?}, not {:?}",
                    self.zone, header.target_zone
                ),
            ));
        }
        let key = (service.namespace.clone(), service.name.clone());
        let Some(view) = self.services.get(&key) else {
            return Err(Refusal::new(
                TunnelStatus::UnknownService,
                format!(
                    "service {}.{} is not exported by zone {:?}",
                    service.name, service.namespace, self.zone
                ),
            ));
        };
        if !view.ports.is_empty() && !view.ports.contains(&header.port) {
            return Err(Refusal::new(
                TunnelStatus::NotExported,
                format!(
                    "port {} of {}.{} is not exported (ports: {:?})",
                    header.port, service.name, service.namespace, view.ports
                ),
            ));
        }
        if view.drained {
            return Err(Refusal::new(TunnelStatus::NoHealthyUpstream, "drained"));
        }
        // A route's subset: only endpoints carrying every label may serve, never another
        // subset. Checked by the header's own rules (the map came off the wire).
        strait_proto::tunnel::check_subset(&header.subset)
            .map_err(|e| Refusal::new(TunnelStatus::BadHeader, e))?;
        let subset = strait_proto::tunnel::encode_subset(&header.subset);
        let endpoints: Vec<pb::Endpoint> = view
            .endpoints
            .iter()
            .filter(|e| {
                header
                    .subset
                    .iter()
                    .all(|(k, v)| e.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        if !endpoints.iter().any(|e| e.healthy) {
            let within = if subset.is_empty() {
                String::new()
            } else {
                format!(" in subset {subset}")
            };
            return Err(Refusal::new(
                TunnelStatus::NoHealthyUpstream,
                format!(
                    "no healthy endpoint of {}.{}{within} in zone {:?}",
                    service.name, service.namespace, self.zone
                ),
            ));
        }
        Ok(ServiceView {
            ports: view.ports.clone(),
            endpoints,
            drained: false,
        })
    }

    /// The gateways of `target_zone` for a sidecar's tunnel.
    pub fn route_outbound(&self, target_zone: &str) -> Result<&[pb::GatewayEndpoint], Refusal> {
        if self.deny.contains(target_zone) {
            return Err(Refusal::new(
                TunnelStatus::Denied,
                format!("zone {target_zone:?} is on the deny list"),
            ));
        }
        match self.zones.get(target_zone) {
            None => Err(Refusal::new(
                TunnelStatus::ZoneUnreachable,
                format!("zone {target_zone} is not federated"),
            )),
            Some(g) if g.is_empty() => Err(Refusal::new(
                TunnelStatus::ZoneUnreachable,
                format!("zone {target_zone} has no gateway"),
            )),
            Some(g) => Ok(g),
        }
    }

    /// A label for metrics: the zone when it is federated (bounded by the config), else
    /// `unknown`, so a peer cannot grow label sets with made-up names.
    pub fn zone_label(&self, zone: &str) -> String {
        if self.zones.contains_key(zone) || self.deny.contains(zone) || zone == self.zone {
            zone.to_owned()
        } else {
            "unknown".to_owned()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn config() -> pb::GatewayConfig {
        pb::GatewayConfig {
            version: 3,
            zone: "b".into(),
            trust_domain: "strait.local".into(),
            services: vec![
                pb::GatewayService {
                    service: Some(pb::ServiceRef {
                        namespace: "demo".into(),
                        name: "echo".into(),
                    }),
                    ports: vec![pb::Port {
                        port: 8080,
                        ..Default::default()
                    }],
                    endpoints: vec![
                        pb::Endpoint {
                            address: "127.0.0.1:1".into(),
                            healthy: true,
                            labels: [("version".to_owned(), "v1".to_owned())].into(),
                            ..Default::default()
                        },
                        pb::Endpoint {
                            address: "127.0.0.1:4".into(),
                            healthy: false,
                            labels: [("version".to_owned(), "v2".to_owned())].into(),
                            ..Default::default()
                        },
                    ],
                    drained: false,
                },
                pb::GatewayService {
                    service: Some(pb::ServiceRef {
                        namespace: "demo".into(),
                        name: "sick".into(),
                    }),
                    endpoints: vec![pb::Endpoint {
                        address: "127.0.0.1:2".into(),
                        healthy: false,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                pb::GatewayService {
                    service: Some(pb::ServiceRef {
                        namespace: "demo".into(),
                        name: "gone".into(),
                    }),
                    endpoints: vec![pb::Endpoint {
                        address: "127.0.0.1:3".into(),
                        healthy: true,
                        ..Default::default()
                    }],
                    drained: true,
                    ..Default::default()
                },
            ],
            zones: vec![
                pb::GatewayPeerZone {
                    name: "a".into(),
                    region: "eu".into(),
                    gateways: vec![pb::GatewayEndpoint {
                        address: "127.0.0.1:9".into(),
                        ..Default::default()
                    }],
                },
                pb::GatewayPeerZone {
                    name: "c".into(),
                    ..Default::default()
                },
                pb::GatewayPeerZone {
                    name: "x".into(),
                    ..Default::default()
                },
            ],
            deny_list: vec!["x".into()],
        }
    }

    fn header(name: &str, port: u32) -> pb::TunnelHeader {
        pb::TunnelHeader {
            version: 1,
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: name.into(),
            }),
            port,
            source_zone: "a".into(),
            target_zone: "b".into(),
            trace: None,
            subset: Default::default(),
        }
    }

    #[test]
    fn inbound_decisions() {
        let v = ConfigView::new("b", &config());
        assert!(v.route_inbound(&header("echo", 8080)).is_ok());
        let status = |h: pb::TunnelHeader| v.route_inbound(&h).unwrap_err().status;
        assert_eq!(status(header("nope", 8080)), TunnelStatus::UnknownService);
        assert_eq!(status(header("echo", 9)), TunnelStatus::NotExported);
        assert_eq!(status(header("echo", 0)), TunnelStatus::BadHeader);
        assert_eq!(status(header("sick", 80)), TunnelStatus::NoHealthyUpstream);
        let drained = v.route_inbound(&header("gone", 80)).unwrap_err();
        assert_eq!(drained.status, TunnelStatus::NoHealthyUpstream);
        assert_eq!(drained.reason, "drained");
        let mut h = header("echo", 8080);
        h.version = 2;
        assert_eq!(status(h), TunnelStatus::UnsupportedVersion);
        let mut h = header("echo", 8080);
        h.service = None;
        assert_eq!(status(h), TunnelStatus::BadHeader);
        let mut h = header("echo", 8080);
        h.target_zone = "c".into();
        assert_eq!(status(h), TunnelStatus::ZoneUnreachable);
        let mut h = header("echo", 8080);
        h.target_zone = String::new();
        assert!(v.route_inbound(&h).is_ok(), "empty target = this zone");
    }

    #[test]
    fn a_subset_is_served_only_by_its_endpoints() {
        let v = ConfigView::new("b", &config());
        let with = |labels: &[(&str, &str)]| {
            let mut h = header("echo", 8080);
            h.subset = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            v.route_inbound(&h)
        };
        let v1 = with(&[("version", "v1")]).unwrap();
        let addresses: Vec<&str> = v1.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, vec!["127.0.0.1:1"]);
        // v2's only endpoint is unhealthy: refused at once, never served by v1.
        let refused = with(&[("version", "v2")]).unwrap_err();
        assert_eq!(refused.status, TunnelStatus::NoHealthyUpstream);
        assert!(
            refused.reason.contains("subset version=v2"),
            "{}",
            refused.reason
        );
        assert_eq!(
            with(&[("version", "v3")]).unwrap_err().status,
            TunnelStatus::NoHealthyUpstream
        );
        assert_eq!(
            with(&[("version", "v 1")]).unwrap_err().status,
            TunnelStatus::BadHeader
        );
        assert_eq!(
            with(&[]).unwrap().endpoints.len(),
            2,
            "no subset: every endpoint"
        );
    }

    #[test]
    fn peers_and_outbound() {
        let v = ConfigView::new("b", &config());
        assert!(v.peer_allowed("a").is_ok());
        assert!(v.peer_allowed("x").unwrap_err().contains("deny"));
        assert!(v.peer_allowed("q").unwrap_err().contains("not federated"));
        assert!(v.peer_allowed("b").is_err(), "never its own zone");
        assert_eq!(v.route_outbound("a").unwrap().len(), 1);
        assert_eq!(
            v.route_outbound("x").unwrap_err().status,
            TunnelStatus::Denied
        );
        let unknown = v.route_outbound("q").unwrap_err();
        assert_eq!(unknown.status, TunnelStatus::ZoneUnreachable);
        assert_eq!(unknown.reason, "zone q is not federated");
        assert_eq!(
            v.route_outbound("c").unwrap_err().status,
            TunnelStatus::ZoneUnreachable
        );
        assert_eq!(v.zone_label("a"), "a");
        assert_eq!(v.zone_label("made-up"), "unknown");
    }
}
