//! The IO of the Kubernetes source: the four watches and their caches ([`Stores`]), the pod
//! trimming that keeps the largest cache small, and [`run`], which publishes the pure mapping
//! of [`super`] whenever the caches change.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::inventory::LocalInventory;
use crate::kubernetes::crd::ServiceExport;

use super::{
    COALESCE, ClusterState, GATEWAY_LABEL, GatewayPods, SourceSettings, gateways, inventory,
};

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
pub(super) fn trim_pod(pod: &mut Pod) {
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
