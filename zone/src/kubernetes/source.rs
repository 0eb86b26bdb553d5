//! The Kubernetes inventory source: what this zone exports, read from the cluster.
//!
//! Four watches (kube-runtime reflectors, all namespaces) fill a [`ClusterState`]: Services,
//! EndpointSlices, Pods and MCS `ServiceExport`s. [`inventory`] maps a `ClusterState` to the
//! same [`LocalInventory`] the universal registry produces, so that sync with global, config
//! compilation and DNS work unchanged. The mapping is pure; [`run`] is the IO around it.
//!
//! The mapping lives here; the watches and [`run`] in `source/watches.rs`.
//!
//! # Rules
//!
//! - A Service is exported only when a `ServiceExport` of the same namespace and name exists,
//!   and the export is valid ([`validate_export`]): the Service exists, is not `ExternalName`,
//!   and has at least one TCP port (UDP and SCTP ports are left out: the mesh carries TCP).
//! - Each endpoint of the Service's EndpointSlices (label `kubernetes.io/service-name`) is one
//!   instance, healthy when its `ready` condition is (absent counts as ready, as Kubernetes
//!   says). Its instance name is its pod's name (one instance per pod across the IPv4 and
//!   IPv6 slices of a dual-stack Service), else its address.
//! - An instance is reached at `podIP:endpoint_inbound_port` (the injected sidecar's inbound
//!   listener); its identity is `spiffe://TD/ns/NS/sa/SA` from its pod's service account
//!   (`default` until the pod is known); its labels are its pod's; its locality is this zone
//!   with the endpoint's topology zone (`topology.kubernetes.io/zone` of its node) as subzone.
//! - Ports are the Service's ports; the protocol comes from `appProtocol` (or, as Istio does,
//!   the port name's prefix): `http`, `http2`/`h2c`, `grpc`, else TCP.
//!
//! # Gateways
//!
//! With [`GatewayPods`] (see [`run`]), the zone's east-west gateways come from the
//! cluster as well, so that every control plane replica sees every gateway, whichever replica
//! the gateway happens to stream its config from. A gateway is a pod in the zone's own
//! namespace labelled [`GATEWAY_LABEL`]` = ZONE` (pods elsewhere are ignored: whoever can create
//! pods in some namespace must not be able to announce a way into the zone). Each is one
//! gateway instance named after the pod ([`gateway_instance`]):
//!
//! - local address (where this zone's sidecars open HTTP/2 CONNECT tunnels):
//!   `podIP:`[`GATEWAY_LOCAL_PORT_ANNOTATION`];
//! - public address (what other zones dial over QUIC): [`PUBLIC_ADDRESS_ANNOTATION`] verbatim
//!   when set (a load balancer's address), else `podIP:`[`GATEWAY_QUIC_PORT_ANNOTATION`], else
//!   none (the gateway then serves this zone's sidecars but is not announced to other zones);
//! - healthy when the pod is `Ready` and not terminating; a pod without an IP yet, or finished,
//!   is no gateway at all;
//! - identity `spiffe://TD/zone/ZONE/gateway`, locality this zone.
//!
//! # Publishing
//!
//! Nothing is published until every watch has listed once, so a restart never reports a
//! half-listed cluster (for example Services without their endpoints) to global; changes are
//! coalesced for [`COALESCE`] and published only when the inventory differs.

mod watches;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use strait_proto as pb;

use crate::inventory::{Instance, LocalInventory, ServiceKey};
use crate::kubernetes::crd::ServiceExport;

pub(crate) use self::watches::watch_stream;
pub use self::watches::{Stores, run};
/// How long changes are collected before the inventory is rebuilt: a rolling deployment
/// becomes a few publications, not one per endpoint.
pub const COALESCE: Duration = Duration::from_millis(100);

/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The pod label that makes a pod of the zone's namespace a gateway of zone (its value).
pub const GATEWAY_LABEL: &str = "strait.dev/gateway";
/// Gateway pod annotation: the port of its local HTTP/2 CONNECT listener on the pod IP.
pub const GATEWAY_LOCAL_PORT_ANNOTATION: &str = "strait.dev/gateway-local-port";
/// Gateway pod annotation: the port of its QUIC listener on the pod IP, announced to other
/// zones as `podIP:PORT` unless [`PUBLIC_ADDRESS_ANNOTATION`] says otherwise.
pub const GATEWAY_QUIC_PORT_ANNOTATION: &str = "strait.dev/gateway-quic-port";
/// Gateway pod annotation: the `host:port` other zones reach it at, verbatim (the same key as
/// the registry's [`PUBLIC_ADDRESS_LABEL`](crate::inventory::PUBLIC_ADDRESS_LABEL)).
pub const PUBLIC_ADDRESS_ANNOTATION: &str = crate::inventory::PUBLIC_ADDRESS_LABEL;

/// What the mapping needs to know about this zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSettings {
    pub zone: String,
    pub region: String,
    pub trust_domain: String,
    /// The sidecar's inbound port on every pod.
    pub endpoint_inbound_port: u16,
}

/// Where this zone's gateway pods are: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPods {
    /// The zone's own namespace (the control plane's, `kubernetes.namespace`).
    pub namespace: String,
}

/// The watched objects, as cached.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub exports: Vec<Arc<ServiceExport>>,
}

/// Why an export is not valid: the `reason` and `message` of its `Valid=False` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

fn key_of(namespace: Option<&str>, name: Option<&str>) -> Option<ServiceKey> {
    Some(ServiceKey {
        namespace: namespace?.to_owned(),
        name: name?.to_owned(),
    })
}

/// The namespace and name of an object.
pub fn object_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ServiceKey> {
    key_of(meta.namespace.as_deref(), meta.name.as_deref())
}

// === impl ClusterState ===

impl ClusterState {
    /// The Service an export names.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| object_key(&s.metadata).as_ref() == Some(key))
            .map(AsRef::as_ref)
    }

    /// The namespaces and names that have a `ServiceExport`, sorted.
    pub fn export_keys(&self) -> BTreeSet<ServiceKey> {
        self.exports
            .iter()
            .filter_map(|e| object_key(&e.metadata))
            .collect()
    }

    /// The exports that are valid, with their ports.
    pub fn valid_exports(&self) -> BTreeMap<ServiceKey, Vec<pb::Port>> {
        self.export_keys()
            .into_iter()
            .filter_map(|key| {
                let ports = validate_export(self.service(&key)).ok()?;
                Some((key, ports))
            })
            .collect()
    }
}

/// Whether a `ServiceExport` can be exported, given the Service of the same name (if any);
/// its mesh ports when it can.
pub fn validate_export(service: Option<&Service>) -> Result<Vec<pb::Port>, Invalid> {
    let Some(service) = service else {
        return Err(Invalid {
            reason: "ServiceNotFound",
            message: "no Service of the same name exists in this namespace".to_owned(),
        });
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(Invalid {
            reason: "ServiceTypeUnsupported",
            message: "an ExternalName Service has no endpoints to export".to_owned(),
        });
    }
    let mut ports: Vec<pb::Port> = spec
        .ports
        .unwrap_or_default()
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| {
            let number = u32::try_from(p.port)
                .ok()
                .filter(|n| (1..=65_535).contains(n))?;
            let name = p.name.clone().unwrap_or_default();
            Some(pb::Port {
                protocol: protocol_of(p.app_protocol.as_deref(), &name) as i32,
                name,
                port: number,
            })
        })
        .collect();
    if ports.is_empty() {
        return Err(Invalid {
            reason: "NoTCPPorts",
            message: "the Service has no TCP port: the mesh carries TCP only".to_owned(),
        });
    }
    ports.sort_by_key(|p| p.port);
    ports.dedup_by_key(|p| p.port);
    Ok(ports)
}

/// A port's protocol from its `appProtocol`, or else from its name's prefix (`http-web`).
pub fn protocol_of(app_protocol: Option<&str>, name: &str) -> pb::Protocol {
    let word = match app_protocol {
        Some(app) => app.to_ascii_lowercase(),
        None => name
            .split('-')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase(),
    };
    match word.as_str() {
        "http" | "kubernetes.io/http" => pb::Protocol::Http,
        "http2" | "h2c" | "kubernetes.io/h2c" => pb::Protocol::Http2,
        "grpc" => pb::Protocol::Grpc,
        _ => pb::Protocol::Tcp,
    }
}

/// This zone's inventory from the cluster's objects: see the module docs for the rules.
pub fn inventory(state: &ClusterState, settings: &SourceSettings) -> LocalInventory {
    let pods: HashMap<(&str, &str), &Pod> = state
        .pods
        .iter()
        .filter_map(|p| {
            Some((
                (
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                ),
                p.as_ref(),
            ))
        })
        .collect();
    let mut slices: Vec<&EndpointSlice> = state.endpoint_slices.iter().map(AsRef::as_ref).collect();
    // IPv4 slices first, so that a dual-stack pod is reached on its IPv4 address; then by name,
    // so that the result does not depend on the watch's order.
    slices.sort_by(|a, b| {
        (a.address_type != "IPv4", &a.metadata.name)
            .cmp(&(b.address_type != "IPv4", &b.metadata.name))
    });

    let mut out = LocalInventory::default();
    for (key, ports) in state.valid_exports() {
        let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
        let of_service = slices.iter().filter(|s| {
            s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && s.labels().get(SERVICE_NAME_LABEL) == Some(&key.name)
                && (s.address_type == "IPv4" || s.address_type == "IPv6")
        });
        for slice in of_service {
            for endpoint in &slice.endpoints {
                let healthy = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                let pod_name = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.as_deref());
                let pod = pod_name.and_then(|name| pods.get(&(key.namespace.as_str(), name)));
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<std::net::IpAddr>() else {
                        continue;
                    };
                    let name = match (pod_name, endpoint.addresses.len()) {
                        (Some(pod), 1) => pod.to_owned(),
                        (Some(pod), _) => format!("{pod}-{address}"),
                        (None, _) => address.clone(),
                    };
                    if instances.contains_key(&name) {
                        continue; // the same pod in the other address family's slice
                    }
                    let service_account = pod
                        .and_then(|p| p.spec.as_ref())
                        .and_then(|s| s.service_account_name.clone())
                        .filter(|sa| !sa.is_empty())
                        .unwrap_or_else(|| "default".to_owned());
                    let instance = Instance {
                        service: key.clone(),
                        instance: name.clone(),
                        ports: ports.clone(),
                        labels: pod
                            .and_then(|p| p.metadata.labels.clone())
                            .unwrap_or_default(),
                        locality: pb::Locality {
                            region: settings.region.clone(),
                            zone: settings.zone.clone(),
                            subzone: endpoint.zone.clone().unwrap_or_default(),
                        },
                        inbound_address: std::net::SocketAddr::new(
                            ip,
                            settings.endpoint_inbound_port,
                        )
                        .to_string(),
                        identity: format!(
                            "spiffe://{}/ns/{}/sa/{service_account}",
                            settings.trust_domain, key.namespace
                        ),
                        healthy,
                    };
                    instances.insert(name, instance);
                }
            }
        }
        out.instances.insert(key, instances);
    }
    out
}

/// Whether `pod` is `Ready` (its condition says so).
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The gateway instance of `pod`: `Ok(None)` when it is not a gateway of this zone (or not one
/// yet: no IP; or any more: finished), `Err` with the reason when it is labelled as one but
/// cannot be used. See the module docs for the rules.
pub fn gateway_instance(
    pod: &Pod,
    settings: &SourceSettings,
    gateways: &GatewayPods,
) -> Result<Option<Instance>, String> {
    let meta = &pod.metadata;
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(GATEWAY_LABEL))
        .is_some_and(|zone| *zone == settings.zone);
    if !labelled || meta.namespace.as_deref() != Some(gateways.namespace.as_str()) {
        return Ok(None);
    }
    let Some(name) = meta.name.clone() else {
        return Ok(None);
    };
    let status = pod.status.as_ref();
    if status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| matches!(phase, "Succeeded" | "Failed"))
    {
        return Ok(None);
    }
    let Some(ip) = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    else {
        return Ok(None);
    };
    let annotation = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let port = |key: &str| -> Result<Option<u16>, String> {
        annotation(key)
            .map(|v| {
                v.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("annotation {key}: {v:?} is not a port"))
            })
            .transpose()
    };
    let local_port = port(GATEWAY_LOCAL_PORT_ANNOTATION)?
        .ok_or_else(|| format!("annotation {GATEWAY_LOCAL_PORT_ANNOTATION} is missing"))?;
    let public_address = match annotation(PUBLIC_ADDRESS_ANNOTATION) {
        Some(address) => {
            crate::discovery::check_address(address).map_err(|_| {
                format!("annotation {PUBLIC_ADDRESS_ANNOTATION}: {address:?} is not host:port")
            })?;
            address.to_owned()
        }
        None => port(GATEWAY_QUIC_PORT_ANNOTATION)?
            .map(|p| std::net::SocketAddr::new(ip, p).to_string())
            .unwrap_or_default(),
    };
    let mut gateway = Instance::gateway(
        name,
        pb::Locality {
            region: settings.region.clone(),
            zone: settings.zone.clone(),
            subzone: String::new(),
        },
        std::net::SocketAddr::new(ip, local_port).to_string(),
        public_address,
        strait_trust::SpiffeId::gateway(&settings.trust_domain, &settings.zone)
            .map_err(|e| e.to_string())?
            .to_string(),
    );
    gateway.healthy = is_ready(pod) && meta.deletion_timestamp.is_none();
    Ok(Some(gateway))
}

/// This zone's gateways among the cluster's pods, by pod name, and the pods labelled as
/// gateways that cannot be used (pod name → why).
pub fn gateways(
    state: &ClusterState,
    settings: &SourceSettings,
    gateways: &GatewayPods,
) -> (BTreeMap<String, Instance>, BTreeMap<String, String>) {
    let mut found = BTreeMap::new();
    let mut unusable = BTreeMap::new();
    for pod in &state.pods {
        match gateway_instance(pod, settings, gateways) {
            Ok(Some(gateway)) => {
                found.insert(gateway.instance.clone(), gateway);
            }
            Ok(None) => {}
            Err(reason) => {
                unusable.insert(pod.name_any(), reason);
            }
        }
    }
    (found, unusable)
}

#[cfg(test)]
pub(crate) mod tests;
