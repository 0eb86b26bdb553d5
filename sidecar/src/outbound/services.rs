//! The per-service table: each outbound service's compiled policy, balancer, retry budget,
//! `CircuitBreaker` counters and metric series, and the listener addresses (VIPs) that lead to
//! it. Applying a `SidecarConfig` is a table update and nothing else (no sockets), so it is
//! unit-tested on its own; the caller then prunes the connection pool to what the table
//! returns.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use strait_proto as pb;
use strait_trust::SpiffeId;

use super::metrics::RequestSeries;
use super::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, lock};
use crate::fault::FaultInjector;
use crate::lb::{Balancer, BalancerConfig, Target};
use crate::limits::breaker::{self, Counter};
use crate::limits::idle;
use crate::pool::Remote;
use crate::retry::{Budget, RetryConfig};
use crate::route::RouteTable;

/// How long a gateway's refusal explains a `no-healthy-upstream`.
pub(super) const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

/// The compiled client-side policy of one service.
#[derive(Debug)]
pub(super) struct ServicePolicy {
    pub(super) routes: RouteTable,
    pub(super) fault: Option<FaultInjector>,
    pub(super) retry: RetryConfig,
    pub(super) connect_timeout: Duration,
    /// To the end of a unary response (to the headers of a streaming one).
    pub(super) request_timeout: Duration,
    /// Whether a `Timeout` policy set `request_timeout` (else it is the mesh default, which
    /// holds the response headers only, and not those of calls that stream by nature).
    pub(super) request_timeout_set: bool,
    /// To the response headers (`responseHeaders`), when set.
    pub(super) headers_timeout: Option<Duration>,
    /// To the end of a streaming response (`stream`), when set.
    pub(super) stream_timeout: Option<Duration>,
    /// Downstream connections silent this long are closed.
    pub(super) idle_timeout: Duration,
    pub(super) max_requests: Option<u32>,
    pub(super) max_connections: Option<u32>,
    pub(super) max_pending: Option<u32>,
}

impl ServicePolicy {
    pub(super) fn compile(policy: Option<&pb::RoutePolicy>) -> Result<Self, String> {
        let timeout = policy.and_then(|p| p.timeout.as_ref());
        let breaker = policy.and_then(|p| p.circuit_breaker.as_ref());
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        Ok(Self {
            routes: RouteTable::from_policy(policy).map_err(|e| e.to_string())?,
            fault: FaultInjector::from_policy(policy).map_err(|e| e.to_string())?,
            retry: RetryConfig::from_policy(policy.and_then(|p| p.retry.as_ref())),
            connect_timeout: ms(timeout.map_or(0, |t| t.connect_ms), DEFAULT_CONNECT_TIMEOUT),
            request_timeout: ms(timeout.map_or(0, |t| t.request_ms), DEFAULT_REQUEST_TIMEOUT),
            request_timeout_set: timeout.is_some_and(|t| t.request_ms != 0),
            headers_timeout: timeout
                .map(|t| t.response_headers_ms)
                .filter(|ms| *ms != 0)
                .map(Duration::from_millis),
            stream_timeout: timeout
                .map(|t| t.stream_ms)
                .filter(|ms| *ms != 0)
                .map(Duration::from_millis),
            idle_timeout: idle::from_policy_ms(timeout.map_or(0, |t| t.idle_ms)),
            max_requests: breaker.and_then(|c| breaker::limit(c.max_requests)),
            max_connections: breaker.and_then(|c| breaker::limit(c.max_connections)),
            max_pending: breaker.and_then(|c| breaker::limit(c.max_pending_requests)),
        })
    }
}

/// One outbound service: its balancer, budget and policy, shared by every connection.
#[derive(Debug)]
pub(super) struct ServiceState {
    /// `namespace/name`, the metrics label.
    pub(super) name: String,
    pub(super) balancer: Mutex<Balancer>,
    pub(super) budget: Mutex<Budget>,
    /// The policy of the service as a whole.
    policy: RwLock<Arc<ServicePolicy>>,
    /// Ports whose own policy differs (a resource names the port).
    port_policies: RwLock<HashMap<u16, Arc<ServicePolicy>>>,
    /// Requests in flight (`maxRequests`).
    pub(super) in_flight: Counter,
    /// Upstream connections open (`maxConnections`): pooled HTTP/2 connections and tunnels,
    /// TCP connections.
    pub(super) connections: Arc<Counter>,
    /// Requests and TCP connections waiting for an upstream connection
    /// (`maxPendingRequests`).
    pub(super) pending: Counter,
    /// The last refusal a gateway gave for this service (when, `x-strait-error` code, text):
    /// when every target is ejected, the sidecar's own 503 says what the remote side said.
    pub(super) last_refusal: Mutex<Option<(Instant, &'static str, String)>>,
    /// The port probes of ejected remote zones open their tunnel to (the first one).
    probe_port: AtomicU32,
    pub(super) series: RequestSeries,
}

impl ServiceState {
    /// The policy of requests to `port`: the port's own, or the service's.
    pub(super) fn policy_for(&self, port: u16) -> Arc<ServicePolicy> {
        let ports = self
            .port_policies
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match ports.get(&port) {
            Some(policy) => policy.clone(),
            None => self
                .policy
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// `maxConnections` of the service as a whole.
    pub(super) fn max_connections(&self) -> Option<u32> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .max_connections
    }

    /// The port probes of ejected remote zones use.
    pub(super) fn probe_port(&self) -> u16 {
        u16::try_from(self.probe_port.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// The remote side of a [`Target::Remote`] of this service on `port`.
    pub(super) fn remote<'a>(
        &'a self,
        target: &'a Target,
        port: u16,
        gateway_id: &'a str,
    ) -> Option<Remote<'a>> {
        remote(target, &self.name, port, gateway_id)
    }
}

/// Where a listener's connections go, and so the context of every request and TCP connection
/// accepted there: the service, its port, and the zone of a zone-pinned VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Destination {
    /// `namespace/name`: the key in the table and the metrics label.
    pub(super) service: String,
    pub(super) port: u16,
    /// A port declared `TCP`: not sniffed.
    pub(super) tcp_only: bool,
    /// The zone of a zone-pinned VIP, the only one that may serve what arrives there; `None`
    /// for the locality-aware VIP.
    pub(super) zone: Option<String>,
}

/// What the pool keeps after a config change: this zone's endpoints and gateways, and the
/// zones that still serve some service.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Upstreams {
    pub(super) addresses: HashSet<String>,
    pub(super) zones: HashSet<String>,
}

/// The services of the running config and the listener addresses that lead to them.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// This zone's name as the value of [`crate::headers::ZONE_HEADER`], made once per config
    /// (`None`: not a valid header value, so not sent).
    zone_header: RwLock<Option<HeaderValue>>,
    /// Who this zone's gateways must be (`spiffe://TD/zone/ZONE/gateway`).
    gateway_id: RwLock<String>,
    services: RwLock<HashMap<String, Arc<ServiceState>>>,
    bindings: RwLock<HashMap<SocketAddr, Arc<Destination>>>,
}

impl Table {
    pub(super) fn service(&self, key: &str) -> Option<Arc<ServiceState>> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Every service, for a pass over all of them.
    pub(super) fn services(&self) -> Vec<Arc<ServiceState>> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Where connections to `address` go, if it is a VIP of the running config.
    pub(super) fn destination(&self, address: &SocketAddr) -> Option<Arc<Destination>> {
        self.bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(address)
            .cloned()
    }

    /// Whether `address` is a VIP of the running config.
    pub(super) fn is_bound(&self, address: &SocketAddr) -> bool {
        self.bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(address)
    }

    /// The addresses listeners should be bound on.
    pub(super) fn addresses(&self) -> HashSet<SocketAddr> {
        self.bindings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    pub(super) fn zone_header(&self) -> Option<HeaderValue> {
        self.zone_header
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn gateway_id(&self) -> String {
        self.gateway_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies a config version: services (balancers keep their state), bindings. Returns
    /// what the connection pool should keep.
    pub(super) fn apply(&self, config: &pb::SidecarConfig, now: Instant) -> Upstreams {
        *self
            .zone_header
            .write()
            .unwrap_or_else(PoisonError::into_inner) = HeaderValue::from_str(&config.zone).ok();
        if let Ok(id) = SpiffeId::gateway(&config.trust_domain, &config.zone) {
            *self
                .gateway_id
                .write()
                .unwrap_or_else(PoisonError::into_inner) = id.to_string();
        }
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut seen = HashSet::new();
        let mut bindings = HashMap::new();
        let mut upstreams = Upstreams::default();
        for service in &config.services {
            let key = service_key(service);
            seen.insert(key.clone());
            let policy = match compile_policies(service) {
                Ok(p) => Some(p),
                Err(err) => {
                    // The discovery client validated this already; keep what runs.
                    tracing::error!(service = %key, %err, "outbound policy cannot be loaded");
                    None
                }
            };
            let balancer_config = BalancerConfig::from_policy(service.policy.as_ref());
            match services.get(&key) {
                Some(state) => {
                    lock(&state.balancer).update(&service.localities, balancer_config);
                    if let Some((policy, ports)) = policy {
                        *state.policy.write().unwrap_or_else(PoisonError::into_inner) =
                            Arc::new(policy);
                        *state
                            .port_policies
                            .write()
                            .unwrap_or_else(PoisonError::into_inner) = ports;
                    }
                }
                None => {
                    let (policy, port_policies) =
                        policy.unwrap_or_else(|| (default_policy(), HashMap::new()));
                    let policy = Arc::new(policy);
                    services.insert(
                        key.clone(),
                        Arc::new(ServiceState {
                            name: key.clone(),
                            balancer: Mutex::new(Balancer::for_service(service)),
                            budget: Mutex::new(Budget::from_config(&policy.retry, now)),
                            policy: RwLock::new(policy),
                            port_policies: RwLock::new(port_policies),
                            in_flight: Counter::default(),
                            connections: Arc::default(),
                            pending: Counter::default(),
                            last_refusal: Mutex::new(None),
                            probe_port: AtomicU32::new(0),
                            series: RequestSeries::default(),
                        }),
                    );
                }
            }
            if let (Some(state), Some(port)) = (services.get(&key), service.ports.first()) {
                state.probe_port.store(port.port, Ordering::Relaxed);
            }
            for group in &service.localities {
                upstreams
                    .addresses
                    .extend(group.endpoints.iter().map(|e| e.address.clone()));
                upstreams
                    .addresses
                    .extend(group.local_gateways.iter().cloned());
                upstreams.zones.insert(group.zone.clone());
            }
            let pinned = service
                .zone_vips
                .iter()
                .map(|(zone, vip)| (vip, Some(zone)));
            for (vip, zone) in std::iter::once((&service.vip, None)).chain(pinned) {
                let Ok(vip) = vip.parse::<IpAddr>() else {
                    continue;
                };
                for port in &service.ports {
                    let Ok(number) = u16::try_from(port.port) else {
                        continue;
                    };
                    bindings.insert(
                        SocketAddr::new(vip, number),
                        Arc::new(Destination {
                            service: key.clone(),
                            port: number,
                            tcp_only: port.protocol == pb::Protocol::Tcp as i32,
                            zone: zone.cloned(),
                        }),
                    );
                }
            }
        }
        services.retain(|k, _| seen.contains(k));
        drop(services);
        *self
            .bindings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = bindings;
        upstreams
    }
}

fn service_key(service: &pb::OutboundService) -> String {
    service.service.as_ref().map_or_else(
        || "unknown".to_owned(),
        |s| format!("{}/{}", s.namespace, s.name),
    )
}

/// The service's policy and its ports' own, or the first error.
fn compile_policies(
    service: &pb::OutboundService,
) -> Result<(ServicePolicy, HashMap<u16, Arc<ServicePolicy>>), String> {
    let whole = ServicePolicy::compile(service.policy.as_ref())?;
    let mut ports = HashMap::new();
    for (port, policy) in &service.port_policies {
        let number = u16::try_from(*port).map_err(|_| format!("port {port}"))?;
        let compiled = ServicePolicy::compile(Some(policy))
            .map_err(|e| format!("port_policies[{port}]: {e}"))?;
        ports.insert(number, Arc::new(compiled));
    }
    Ok((whole, ports))
}

/// Every default: what a new service runs when its policy cannot be loaded.
pub(super) fn default_policy() -> ServicePolicy {
    ServicePolicy {
        routes: RouteTable::default(),
        fault: None,
        retry: RetryConfig::default(),
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        request_timeout_set: false,
        headers_timeout: None,
        stream_timeout: None,
        idle_timeout: idle::DEFAULT_IDLE_TIMEOUT,
        max_requests: None,
        max_connections: None,
        max_pending: None,
    }
}

/// The remote side of a [`Target::Remote`] for `service` (`namespace/name`) on `port`.
pub(super) fn remote<'a>(
    target: &'a Target,
    service: &'a str,
    port: u16,
    gateway_id: &'a str,
) -> Option<Remote<'a>> {
    let Target::Remote {
        zone,
        gateways,
        identities,
        subset,
    } = target
    else {
        return None;
    };
    let (namespace, name) = service.split_once('/')?;
    Some(Remote {
        zone,
        namespace,
        name,
        port,
        identities,
        gateways,
        gateway_id,
        subset: subset.as_deref(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn policy_defaults_and_overrides() {
        let default = ServicePolicy::compile(None).unwrap();
        assert_eq!(default.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(default.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(default.max_requests, None);
        assert_eq!((default.max_connections, default.max_pending), (None, None));
        assert_eq!(default.idle_timeout, Duration::from_secs(3600));
        let service = pb::OutboundService {
            policy: Some(pb::RoutePolicy {
                timeout: Some(pb::TimeoutPolicy {
                    connect_ms: 250,
                    request_ms: 0,
                    idle_ms: 0,
                    ..Default::default()
                }),
                circuit_breaker: Some(pb::CircuitBreakerPolicy {
                    max_requests: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = ServicePolicy::compile(service.policy.as_ref()).unwrap();
        assert_eq!(p.connect_timeout, Duration::from_millis(250));
        assert_eq!(p.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(p.max_requests, Some(7));
        assert_eq!((p.max_connections, p.max_pending), (None, None));
        assert_eq!(p.idle_timeout, idle::DEFAULT_IDLE_TIMEOUT);

        let service = pb::OutboundService {
            policy: Some(pb::RoutePolicy {
                timeout: Some(pb::TimeoutPolicy {
                    idle_ms: 90_000,
                    ..Default::default()
                }),
                circuit_breaker: Some(pb::CircuitBreakerPolicy {
                    max_connections: 3,
                    max_pending_requests: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = ServicePolicy::compile(service.policy.as_ref()).unwrap();
        assert_eq!(p.idle_timeout, Duration::from_secs(90));
        assert_eq!(p.max_requests, None);
        assert_eq!((p.max_connections, p.max_pending), (Some(3), Some(2)));
    }

    fn echo(max_requests: u32) -> pb::OutboundService {
        let port = |port: u32, protocol: pb::Protocol| pb::Port {
            name: String::new(),
            port,
            protocol: protocol as i32,
        };
        pb::OutboundService {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            ports: vec![
                port(8080, pb::Protocol::Http),
                port(9000, pb::Protocol::Tcp),
            ],
            vip: "10.96.0.5".into(),
            zone_vips: [("zone-b".to_owned(), "10.97.0.5".to_owned())].into(),
            localities: vec![
                pb::LocalityGroup {
                    zone: "zone-a".into(),
                    endpoints: vec![pb::Endpoint {
                        address: "10.0.1.1:15006".into(),
                        healthy: true,
                        ..Default::default()
                    }],
                    weight: 1,
                    total: 1,
                    ..Default::default()
                },
                pb::LocalityGroup {
                    zone: "zone-b".into(),
                    priority: 1,
                    local_gateways: vec!["10.0.9.9:15008".into()],
                    weight: 1,
                    total: 1,
                    ..Default::default()
                },
            ],
            policy: Some(pb::RoutePolicy {
                circuit_breaker: Some(pb::CircuitBreakerPolicy {
                    max_requests,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn config(services: Vec<pb::OutboundService>) -> pb::SidecarConfig {
        pb::SidecarConfig {
            zone: "zone-a".into(),
            trust_domain: "strait.local".into(),
            services,
            ..Default::default()
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_config_is_a_table_of_services_and_their_vips() {
        let table = Table::default();
        let upstreams = table.apply(&config(vec![echo(7)]), Instant::now());
        assert_eq!(
            upstreams.addresses,
            HashSet::from(["10.0.1.1:15006".to_owned(), "10.0.9.9:15008".to_owned()])
        );
        assert_eq!(
            upstreams.zones,
            HashSet::from(["zone-a".to_owned(), "zone-b".to_owned()])
        );
        assert_eq!(table.zone_header().unwrap(), "zone-a");
        assert_eq!(
            table.gateway_id(),
            "spiffe://strait.local/zone/zone-a/gateway"
        );
        // Every port on the locality-aware VIP and on the zone-pinned one.
        assert_eq!(table.addresses().len(), 4);
        let destination = |a: &str| table.destination(&addr(a)).unwrap();
        assert_eq!(
            *destination("10.96.0.5:8080"),
            Destination {
                service: "demo/echo".into(),
                port: 8080,
                tcp_only: false,
                zone: None,
            }
        );
        assert!(destination("10.96.0.5:9000").tcp_only);
        assert_eq!(
            destination("10.97.0.5:8080").zone.as_deref(),
            Some("zone-b")
        );
        assert!(!table.is_bound(&addr("10.96.0.5:8081")));
        let service = table.service("demo/echo").unwrap();
        assert_eq!(service.policy_for(8080).max_requests, Some(7));
        assert_eq!(service.probe_port(), 8080);
    }

    #[test]
    fn a_new_config_updates_services_in_place_and_drops_removed_ones() {
        let table = Table::default();
        let now = Instant::now();
        table.apply(&config(vec![echo(7)]), now);
        let before = table.service("demo/echo").unwrap();
        // Balancer, budget and counters live on across versions; the policy is replaced.
        table.apply(&config(vec![echo(3)]), now);
        let after = table.service("demo/echo").unwrap();
        assert!(Arc::ptr_eq(&before, &after));
        assert_eq!(after.policy_for(8080).max_requests, Some(3));
        // A policy that does not compile keeps the one that runs.
        let mut broken = echo(5);
        broken
            .port_policies
            .insert(70_000, pb::RoutePolicy::default());
        table.apply(&config(vec![broken]), now);
        assert_eq!(after.policy_for(8080).max_requests, Some(3));
        // Gone from the config: gone from the table, its VIPs with it.
        let upstreams = table.apply(&config(vec![]), now);
        assert!(table.service("demo/echo").is_none());
        assert!(table.addresses().is_empty());
        assert_eq!(upstreams, Upstreams::default());
    }
}
