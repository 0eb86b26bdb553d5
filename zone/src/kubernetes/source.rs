//! The Kubernetes inventory source: what this zone exports, read from the cluster.
//!
//! Four watches (kube-runtime reflectors, all namespaces) fill a [`ClusterState`]: Services,
//! EndpointSlices, Pods and MCS `ServiceExport`s. [`inventory`] maps a `ClusterState` to the
//! same [`LocalInventory`] the universal registry produces, so that sync with global, config
//! compilation and DNS work unchanged. The mapping is pure; [`run`] is the IO around it.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use strait_proto as pb;
use tokio::sync::watch;

use crate::inventory::{Instance, LocalInventory, ServiceKey};
use crate::kubernetes::crd::ServiceExport;

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

// === IO ===

/// The watches' caches; [`Stores::state`] reads them all.
#[derive(Debug, Clone)]
pub struct Stores {
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    exports: Store<ServiceExport>,
}

impl Stores {
    pub fn state(&self) -> ClusterState {
        ClusterState {
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            pods: self.pods.state(),
            exports: self.exports.state(),
        }
    }
}

/// Keeps only what the mapping reads of a Pod: a cluster's pods are the largest watch. Gateway
/// pods (a handful) also keep their `strait.dev/` annotations, phase and `Ready` condition.
fn trim_pod(pod: &mut Pod) {
    let gateway = pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(GATEWAY_LABEL));
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    pod.metadata.annotations = pod
        .metadata
        .annotations
        .take()
        .filter(|_| gateway)
        .map(|mut a| {
            a.retain(|k, _| k.starts_with("strait.dev/"));
            a
        });
    pod.spec = Some(PodSpec {
        service_account_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        ..PodSpec::default()
    });
    let status = pod.status.take().unwrap_or_default();
    pod.status = Some(if gateway {
        PodStatus {
            pod_ip: status.pod_ip,
            phase: status.phase,
            conditions: status
                .conditions
                .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect()),
            ..PodStatus::default()
        }
    } else {
        PodStatus {
            pod_ip: status.pod_ip,
            ..PodStatus::default()
        }
    });
}

/// One watch, with a label or field selector in `config`, as a stream of "the cache changed"
/// (`true` once its first list is complete).
pub(crate) fn watch_stream<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    modify: impl FnMut(&mut K) + Send + 'static,
) -> futures::stream::BoxStream<'static, Result<bool, watcher::Error>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .modify(modify);
    reflector::reflector(writer, stream)
        .map_ok(|event| matches!(event, Event::InitDone))
        .boxed()
}

/// Watches the cluster and publishes the inventory on `inventory` and the cached objects on
/// `state` (the leader's status and import writers read them) until `stopped` completes.
/// Watch errors are logged and retried with backoff: the last published inventory stays.
/// With `gateway_pods` the inventory's gateways are the zone's gateway pods (see the module
/// docs); without, it has none: they register with the discovery server.
pub async fn run(
    client: Client,
    settings: SourceSettings,
    gateway_pods: Option<GatewayPods>,
    inventory_tx: watch::Sender<Arc<LocalInventory>>,
    state_tx: watch::Sender<Option<Arc<ClusterState>>>,
    stopped: impl std::future::Future<Output = ()>,
) {
    let (services, services_w) = reflector::store();
    let (endpoint_slices, slices_w) = reflector::store();
    let (pods, pods_w) = reflector::store();
    let (exports, exports_w) = reflector::store();
    let stores = Stores {
        services,
        endpoint_slices,
        pods,
        exports,
    };
    let streams = vec![
        watch_stream(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            services_w,
            |_| {},
        ),
        watch_stream(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            slices_w,
            |s| {
                s.metadata.managed_fields = None;
            },
        ),
        watch_stream(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            pods_w,
            trim_pod,
        ),
        watch_stream(
            Api::<ServiceExport>::all(client),
            watcher::Config::default(),
            exports_w,
            |_| {},
        ),
    ];
    let kinds = ["Service", "EndpointSlice", "Pod", "ServiceExport"];
    let mut events = futures::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |r| (i, r))),
    );
    let mut listed = [false; 4];
    let mut due: Option<tokio::time::Instant> = None;
    let mut unusable_gateways = BTreeMap::new();
    tokio::pin!(stopped);
    loop {
        let publish = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stopped => return,
            () = publish => {
                due = None;
                let state = stores.state();
                let mut next = inventory(&state, &settings);
                if let Some(gateway_pods) = &gateway_pods {
                    let (found, unusable) = gateways(&state, &settings, gateway_pods);
                    next.gateways = found;
                    if unusable != unusable_gateways {
                        for (pod, reason) in &unusable {
                            tracing::warn!(namespace = %gateway_pods.namespace, %pod, %reason, "a pod labelled as this zone's gateway is left out");
                        }
                        unusable_gateways = unusable;
                    }
                }
                inventory_tx.send_if_modified(|current| {
                    if **current == next {
                        false
                    } else {
                        tracing::debug!(services = next.instances.len(), gateways = next.gateways.len(), "kubernetes inventory changed");
                        *current = Arc::new(next);
                        true
                    }
                });
                state_tx.send_replace(Some(Arc::new(state)));
            }
            event = events.next() => match event {
                None => return, // the watchers never end; only if the runtime is going away
                Some((i, Ok(init_done))) => {
                    if init_done && !listed[i] {
                        listed[i] = true;
                        tracing::info!(kind = kinds[i], "listed");
                    }
                    if listed.iter().all(|l| *l) && due.is_none() {
                        due = Some(tokio::time::Instant::now() + COALESCE);
                    }
                }
                Some((i, Err(err))) => {
                    // Without the MCS CRDs the ServiceExport watch fails and nothing is ever
                    // published: say what to fix.
                    let hint = if kinds[i] == "ServiceExport" {
                        "is the MCS ServiceExport CRD (multicluster.x-k8s.io) installed?"
                    } else {
                        ""
                    };
                    tracing::warn!(kind = kinds[i], %err, hint, "watch failed; retrying with backoff");
                }
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn settings() -> SourceSettings {
        SourceSettings {
            zone: "eu-1".into(),
            region: "eu".into(),
            trust_domain: "strait.local".into(),
            endpoint_inbound_port: 15008,
        }
    }

    pub(crate) fn service(ns: &str, name: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "spec": {"ports": ports, "clusterIP": "10.0.0.10"}
        }))
        .unwrap()
    }

    /// `endpoints`: (pod name, address, ready, topology zone).
    pub(crate) fn slice(
        ns: &str,
        service: &str,
        name: &str,
        family: &str,
        endpoints: &[(&str, &str, Option<bool>, &str)],
    ) -> EndpointSlice {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(pod, address, ready, zone)| {
                let mut e = json!({
                    "addresses": [address],
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": ns},
                    "zone": zone,
                });
                if let Some(ready) = ready {
                    e["conditions"] = json!({"ready": ready});
                }
                e
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
                "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    pub(crate) fn pod(ns: &str, name: &str, sa: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1", "labels": labels},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "echo"}]},
        }))
        .unwrap()
    }

    pub(crate) fn export(ns: &str, name: &str) -> ServiceExport {
        serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        }))
        .unwrap()
    }

    pub(crate) fn gateway_settings() -> GatewayPods {
        GatewayPods {
            namespace: "strait-system".into(),
        }
    }

    /// A gateway pod of zone `zone` in `ns` with IP `ip` (none: `""`), `Ready` or not, and
    /// `annotations` (the local port one unless overridden).
    pub(crate) fn gateway_pod(
        ns: &str,
        name: &str,
        zone: &str,
        ip: &str,
        ready: bool,
        annotations: serde_json::Value,
    ) -> Pod {
        let mut all = json!({GATEWAY_LOCAL_PORT_ANNOTATION: "7601",
                             GATEWAY_QUIC_PORT_ANNOTATION: "7600",
                             "prometheus.io/scrape": "true"});
        for (k, v) in annotations.as_object().unwrap() {
            all[k] = v.clone();
        }
        all.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        let mut status = json!({
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": if ready { "True" } else { "False" }},
            ],
        });
        if !ip.is_empty() {
            status["podIP"] = json!(ip);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
                "labels": {GATEWAY_LABEL: zone, "app.kubernetes.io/component": "gateway"},
                "annotations": all},
            "spec": {"serviceAccountName": "strait-gateway",
                "containers": [{"name": "gateway", "image": "strait"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn echo_state() -> ClusterState {
        ClusterState {
            services: vec![Arc::new(service(
                "demo",
                "echo",
                json!([{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
                       {"name": "dns", "port": 53, "protocol": "UDP"},
                       {"name": "grpc-api", "port": 9090}]),
            ))],
            endpoint_slices: vec![Arc::new(slice(
                "demo",
                "echo",
                "echo-abc",
                "IPv4",
                &[
                    ("echo-1", "10.1.0.1", Some(true), "eu-1a"),
                    ("echo-2", "10.1.0.2", Some(false), "eu-1b"),
                    ("echo-3", "10.1.0.3", None, "eu-1a"),
                ],
            ))],
            pods: vec![
                Arc::new(pod(
                    "demo",
                    "echo-1",
                    "echo-sa",
                    json!({"app": "echo", "version": "v1"}),
                )),
                Arc::new(pod(
                    "demo",
                    "echo-2",
                    "echo-sa",
                    json!({"app": "echo", "version": "v2"}),
                )),
            ],
            exports: vec![Arc::new(export("demo", "echo"))],
        }
    }

    #[test]
    fn an_exported_service_becomes_instances_with_health_labels_and_identity() {
        let inv = inventory(&echo_state(), &settings());
        let echo = inv.service(&key("demo", "echo")).unwrap();
        assert_eq!(
            echo.keys().collect::<Vec<_>>(),
            ["echo-1", "echo-2", "echo-3"]
        );
        let one = &echo["echo-1"];
        assert!(one.healthy);
        assert_eq!(one.inbound_address, "10.1.0.1:15008");
        assert_eq!(one.identity, "spiffe://strait.local/ns/demo/sa/echo-sa");
        assert_eq!(one.labels["version"], "v1");
        assert_eq!(
            one.locality,
            pb::Locality {
                region: "eu".into(),
                zone: "eu-1".into(),
                subzone: "eu-1a".into()
            }
        );
        // UDP is left out; protocols from appProtocol and from the name's prefix.
        let ports: Vec<_> = one
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("http", 80, pb::Protocol::Http as i32),
                ("grpc-api", 9090, pb::Protocol::Grpc as i32)
            ]
        );
        assert!(!echo["echo-2"].healthy);
        // No `ready` condition counts as ready; an unknown pod gets the default account.
        assert!(echo["echo-3"].healthy);
        assert_eq!(
            echo["echo-3"].identity,
            "spiffe://strait.local/ns/demo/sa/default"
        );
        assert!(echo["echo-3"].labels.is_empty());

        let exported = inv.exported_services(&Default::default());
        assert_eq!(exported.len(), 1);
        let counts: Vec<_> = exported[0]
            .localities
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().subzone.as_str(),
                    l.healthy,
                    l.total,
                )
            })
            .collect();
        assert_eq!(counts, [("eu-1a", 2, 2), ("eu-1b", 0, 1)]);
        assert_eq!(exported[0].identities.len(), 2);
    }

    #[test]
    fn only_services_with_a_service_export_are_exported() {
        let mut state = echo_state();
        state.exports.clear();
        assert!(inventory(&state, &settings()).instances.is_empty());
        // An export in another namespace does not count.
        state.exports.push(Arc::new(export("other", "echo")));
        let inv = inventory(&state, &settings());
        assert!(inv.service(&key("demo", "echo")).is_none());
        assert!(inv.exported_services(&Default::default()).is_empty());
    }

    #[test]
    fn slices_of_other_services_and_dual_stack_duplicates() {
        let mut state = echo_state();
        state.endpoint_slices.push(Arc::new(slice(
            "demo",
            "echo",
            "echo-v6",
            "IPv6",
            &[("echo-1", "fd00::1", Some(true), "eu-1a")],
        )));
        state.endpoint_slices.push(Arc::new(slice(
            "demo",
            "other",
            "other-x",
            "IPv4",
            &[("other-1", "10.9.0.1", Some(true), "eu-1a")],
        )));
        let inv = inventory(&state, &settings());
        let echo = inv.service(&key("demo", "echo")).unwrap();
        assert_eq!(echo.len(), 3);
        assert_eq!(echo["echo-1"].inbound_address, "10.1.0.1:15008");
        // Only IPv6: bracketed.
        state.endpoint_slices.remove(0);
        let inv = inventory(&state, &settings());
        assert_eq!(
            inv.service(&key("demo", "echo")).unwrap()["echo-1"].inbound_address,
            "[fd00::1]:15008"
        );
    }

    #[test]
    fn invalid_exports() {
        assert_eq!(validate_export(None).unwrap_err().reason, "ServiceNotFound");
        let udp = service("demo", "dns", json!([{"port": 53, "protocol": "UDP"}]));
        assert_eq!(
            validate_export(Some(&udp)).unwrap_err().reason,
            "NoTCPPorts"
        );
        let mut external = service("demo", "ext", json!([{"port": 80}]));
        external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert_eq!(
            validate_export(Some(&external)).unwrap_err().reason,
            "ServiceTypeUnsupported"
        );
        let mut state = echo_state();
        state.services = vec![Arc::new(udp)];
        state.exports = vec![Arc::new(export("demo", "dns"))];
        assert!(inventory(&state, &settings()).instances.is_empty());
    }

    fn gateway_of(pod: &Pod) -> Result<Option<Instance>, String> {
        gateway_instance(pod, &settings(), &gateway_settings())
    }

    #[test]
    fn a_ready_gateway_pod_is_a_healthy_gateway_with_both_addresses() {
        let pod = gateway_pod("strait-system", "gw-a", "eu-1", "10.2.0.7", true, json!({}));
        let gw = gateway_of(&pod).unwrap().unwrap();
        assert_eq!(gw.instance, "gw-a");
        assert_eq!(gw.service, crate::inventory::gateway_key());
        assert!(gw.healthy);
        assert_eq!(gw.inbound_address, "10.2.0.7:7601");
        assert_eq!(gw.public_address(), "10.2.0.7:7600");
        assert_eq!(gw.identity, "spiffe://strait.local/zone/eu-1/gateway");
        assert_eq!(
            gw.locality,
            pb::Locality {
                region: "eu".into(),
                zone: "eu-1".into(),
                subzone: String::new()
            }
        );
        // What the discovery server makes of a registration says the same.
        let registered = Instance::gateway(
            "gw-a".into(),
            gw.locality.clone(),
            "10.2.0.7:7601".into(),
            "10.2.0.7:7600".into(),
            "spiffe://strait.local/zone/eu-1/gateway".into(),
        );
        assert_eq!(gw, registered);
    }

    #[test]
    fn the_public_address_annotation_is_taken_verbatim_else_none_is_announced() {
        let lb = gateway_pod(
            "strait-system",
            "gw-a",
            "eu-1",
            "fd00::7",
            true,
            json!({PUBLIC_ADDRESS_ANNOTATION: "gw.eu-1.example.com:443"}),
        );
        let gw = gateway_of(&lb).unwrap().unwrap();
        assert_eq!(gw.public_address(), "gw.eu-1.example.com:443");
        assert_eq!(gw.inbound_address, "[fd00::7]:7601");

        // No QUIC port either: sidecars of this zone use it, other zones are not told of it.
        let local_only = gateway_pod(
            "strait-system",
            "gw-b",
            "eu-1",
            "10.2.0.8",
            true,
            json!({GATEWAY_QUIC_PORT_ANNOTATION: null}),
        );
        let gw = gateway_of(&local_only).unwrap().unwrap();
        assert_eq!(gw.public_address(), "");
        let mut inventory = LocalInventory::default();
        inventory.gateways.insert(gw.instance.clone(), gw);
        assert!(inventory.gateway_endpoints().is_empty());
        assert_eq!(inventory.local_gateway_addresses(), ["10.2.0.8:7601"]);
    }

    #[test]
    fn not_ready_or_terminating_is_unhealthy_and_no_ip_or_finished_is_absent() {
        let gw = |ip: &str, ready: bool| {
            gateway_pod("strait-system", "gw-a", "eu-1", ip, ready, json!({}))
        };
        let not_ready = gw("10.2.0.7", false);
        assert!(!gateway_of(&not_ready).unwrap().unwrap().healthy);

        let mut terminating = gw("10.2.0.7", true);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_750_000_000).unwrap(),
            ));
        assert!(!gateway_of(&terminating).unwrap().unwrap().healthy);

        let pending = gw("", false);
        assert_eq!(gateway_of(&pending), Ok(None));

        let mut failed = gw("10.2.0.7", false);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        assert_eq!(gateway_of(&failed), Ok(None));
    }

    #[test]
    fn only_this_zones_label_in_this_zones_namespace_makes_a_gateway() {
        let elsewhere = gateway_pod("demo", "gw-a", "eu-1", "10.2.0.7", true, json!({}));
        assert_eq!(gateway_of(&elsewhere), Ok(None));
        let other_zone = gateway_pod("strait-system", "gw-a", "us-1", "10.2.0.7", true, json!({}));
        assert_eq!(gateway_of(&other_zone), Ok(None));
        let workload = pod("strait-system", "echo-1", "echo", json!({"app": "echo"}));
        assert_eq!(gateway_of(&workload), Ok(None));
    }

    #[test]
    fn a_labelled_pod_with_bad_annotations_is_reported_not_used() {
        let cases = [
            (json!({GATEWAY_LOCAL_PORT_ANNOTATION: null}), "is missing"),
            (json!({GATEWAY_LOCAL_PORT_ANNOTATION: "0"}), "is not a port"),
            (
                json!({GATEWAY_QUIC_PORT_ANNOTATION: "quic"}),
                "is not a port",
            ),
            (
                json!({PUBLIC_ADDRESS_ANNOTATION: "no-port"}),
                "is not host:port",
            ),
        ];
        for (annotations, why) in cases {
            let pod = gateway_pod(
                "strait-system",
                "gw-a",
                "eu-1",
                "10.2.0.7",
                true,
                annotations.clone(),
            );
            let err = gateway_of(&pod).unwrap_err();
            assert!(err.contains(why), "{annotations}: {err}");
        }
        let state = ClusterState {
            pods: vec![
                Arc::new(gateway_pod(
                    "strait-system",
                    "gw-bad",
                    "eu-1",
                    "10.2.0.7",
                    true,
                    json!({GATEWAY_LOCAL_PORT_ANNOTATION: "x"}),
                )),
                Arc::new(gateway_pod(
                    "strait-system",
                    "gw-ok",
                    "eu-1",
                    "10.2.0.8",
                    true,
                    json!({}),
                )),
            ],
            ..ClusterState::default()
        };
        let (found, unusable) = gateways(&state, &settings(), &gateway_settings());
        assert_eq!(found.keys().collect::<Vec<_>>(), ["gw-ok"]);
        assert_eq!(unusable.keys().collect::<Vec<_>>(), ["gw-bad"]);
    }

    #[test]
    fn gateway_pods_keep_what_the_gateway_mapping_reads_through_trimming() {
        let mut gw = gateway_pod("strait-system", "gw-a", "eu-1", "10.2.0.7", true, json!({}));
        let before = gateway_of(&gw).unwrap();
        trim_pod(&mut gw);
        assert_eq!(gateway_of(&gw).unwrap(), before);
        let annotations = gw.metadata.annotations.as_ref().unwrap();
        assert!(!annotations.contains_key("prometheus.io/scrape"));
        let conditions = gw.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1, "only Ready is kept");
    }

    #[test]
    fn pods_are_trimmed_to_what_the_mapping_reads() {
        let mut p = pod("demo", "echo-1", "echo-sa", json!({"app": "echo"}));
        p.status = Some(PodStatus {
            pod_ip: Some("10.1.0.1".into()),
            phase: Some("Running".into()),
            ..PodStatus::default()
        });
        // A workload's annotations (even `strait.dev/` ones) are not read: dropped.
        p.metadata.annotations = Some(BTreeMap::from([(
            "strait.dev/injected".to_owned(),
            "true".to_owned(),
        )]));
        trim_pod(&mut p);
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty());
        assert_eq!(spec.service_account_name.as_deref(), Some("echo-sa"));
        assert_eq!(
            p.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.1.0.1")
        );
        assert_eq!(p.labels()["app"], "echo");
        assert!(p.metadata.annotations.is_none());
    }
}
