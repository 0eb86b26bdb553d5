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

/// What the mapping needs to know about this zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSettings {
    pub zone: String,
    pub region: String,
    pub trust_domain: String,
    /// The sidecar's inbound port on every pod.
    pub endpoint_inbound_port: u16,
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

/// Keeps only what the mapping reads of a Pod: a cluster's pods are the largest watch.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    pod.spec = Some(PodSpec {
        service_account_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        ..PodSpec::default()
    });
    pod.status = Some(PodStatus {
        pod_ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        ..PodStatus::default()
    });
}

/// One watch as a stream of "the cache changed" (`true` once its first list is complete).
fn watch_stream<K>(
    api: Api<K>,
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
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(modify);
    reflector::reflector(writer, stream)
        .map_ok(|event| matches!(event, Event::InitDone))
        .boxed()
}

/// Watches the cluster and publishes the inventory on `inventory` and the cached objects on
/// `state` (the leader's status and import writers read them) until `stopped` completes.
/// Watch errors are logged and retried with backoff: the last published inventory stays.
pub async fn run(
    client: Client,
    settings: SourceSettings,
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
        watch_stream(Api::<Service>::all(client.clone()), services_w, |_| {}),
        watch_stream(Api::<EndpointSlice>::all(client.clone()), slices_w, |s| {
            s.metadata.managed_fields = None;
        }),
        watch_stream(Api::<Pod>::all(client.clone()), pods_w, trim_pod),
        watch_stream(Api::<ServiceExport>::all(client), exports_w, |_| {}),
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
                let next = inventory(&state, &settings);
                inventory_tx.send_if_modified(|current| {
                    if **current == next {
                        false
                    } else {
                        tracing::debug!(services = next.instances.len(), "kubernetes inventory changed");
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

        let exported = inv.exported_services();
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
        assert!(inv.exported_services().is_empty());
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

    #[test]
    fn pods_are_trimmed_to_what_the_mapping_reads() {
        let mut p = pod("demo", "echo-1", "echo-sa", json!({"app": "echo"}));
        p.status = Some(PodStatus {
            pod_ip: Some("10.1.0.1".into()),
            phase: Some("Running".into()),
            ..PodStatus::default()
        });
        trim_pod(&mut p);
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty());
        assert_eq!(spec.service_account_name.as_deref(), Some("echo-sa"));
        assert_eq!(
            p.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.1.0.1")
        );
        assert_eq!(p.labels()["app"], "echo");
    }
}
