//! The federation's trust bundle in every namespace the injector serves, so that an injected
//! sidecar verifies its zone control plane from its very first connection (`--bundle-file`)
//! instead of trusting it on first use — as Istio does with `istio-ca-root-cert`.
//!
//! # Rules
//!
//! - The leader keeps one ConfigMap [`CONFIGMAP_NAME`] with key [`BUNDLE_KEY`] (the bundle's
//!   PEM roots) in every namespace labelled [`INJECT_KEY`]` = `[`INJECT_ENABLED`] (the
//!   webhook's `namespaceSelector`) that is not terminating. It creates it where missing and
//!   updates it when the bundle changes (root rotation), when someone edits it, or when it is
//!   deleted; a namespace that is labelled later gets it at once.
//! - Ownership: what the zone creates carries `app.kubernetes.io/managed-by: strait`. A
//!   ConfigMap of that name without the label is someone else's: it is never written, only
//!   reported (pods there mount whatever it holds).
//! - Nothing is written before the bundle is known (an empty bundle would make every new
//!   sidecar fail its bootstrap), nor before both watches have listed once (a half-listed
//!   cache would look like missing ConfigMaps and make creates that fail).
//! - A namespace that loses its label keeps its ConfigMap, no longer updated: pods injected
//!   there still mount it, and deleting needs a permission the zone otherwise does without.
//!
//! Every replica watches (a takeover then needs no relist); only the Lease holder writes.
//! The watches are as narrow as the chart's RBAC: namespaces by label, ConfigMaps by the field
//! selector `metadata.name=`[`CONFIGMAP_NAME`] (RBAC matches it against `resourceNames`).
//!
//! [`plan`] is pure; [`apply`] and [`run`] do the IO; [`follow_trust_store`] turns the zone's
//! trust store into the bundle [`run`] takes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use strait_trust::TrustStore;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::kubernetes::imports::{MANAGED_BY, MANAGED_BY_LABEL, is_managed};
use crate::kubernetes::source::watch_stream;
use crate::kubernetes::status::FIELD_MANAGER;
use crate::kubernetes::webhook::INJECT_KEY;

/// The ConfigMap injected sidecars mount.
pub const CONFIGMAP_NAME: &str = "strait-trust-bundle";
/// Its key: the PEM roots of the federation.
pub const BUNDLE_KEY: &str = "bundle.pem";
pub const INJECT_ENABLED: &str = "enabled";

/// How long changes are collected before the ConfigMaps are reconciled: a burst of namespace
/// events becomes one pass.
const COALESCE: Duration = Duration::from_millis(200);

/// How soon a failed write is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum BundleAction {
    /// No ConfigMap of that name in the namespace: create the zone's.
    Create(ConfigMap),
    /// The zone's, holding another bundle: replace it. It carries the cached
    /// `resourceVersion`, so a concurrent change (someone took the object over) is refused
    /// with a conflict rather than overwritten.
    Update(ConfigMap),
}

impl BundleAction {
    pub fn namespace(&self) -> &str {
        let (Self::Create(cm) | Self::Update(cm)) = self;
        cm.metadata.namespace.as_deref().unwrap_or_default()
    }

    fn verb(&self) -> &'static str {
        match self {
            Self::Create(_) => "create",
            Self::Update(_) => "update",
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BundlePlan {
    pub actions: Vec<BundleAction>,
    /// Namespaces where a ConfigMap of that name is not the zone's (left alone), sorted.
    pub foreign: BTreeSet<String>,
}

/// Whether the injector serves `namespace`, and it can take new objects.
fn is_served(namespace: &Namespace) -> bool {
    let labelled = namespace
        .labels()
        .get(INJECT_KEY)
        .is_some_and(|v| v == INJECT_ENABLED);
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    labelled && !terminating
}

/// The ConfigMap the zone creates in `namespace`.
pub fn configmap(namespace: &str, bundle: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(BUNDLE_KEY.to_owned(), bundle.to_owned())])),
        ..ConfigMap::default()
    }
}

/// The writes that make every served namespace hold `bundle`. `namespaces` and `configmaps`
/// are the watches' caches (anything else in them is ignored).
pub fn plan(
    bundle: &str,
    namespaces: &[Arc<Namespace>],
    configmaps: &[Arc<ConfigMap>],
) -> BundlePlan {
    let mut out = BundlePlan::default();
    if bundle.trim().is_empty() {
        return out;
    }
    let existing: HashMap<&str, &ConfigMap> = configmaps
        .iter()
        .filter(|cm| cm.metadata.name.as_deref() == Some(CONFIGMAP_NAME))
        .filter_map(|cm| Some((cm.metadata.namespace.as_deref()?, cm.as_ref())))
        .collect();
    let mut served: Vec<&str> = namespaces
        .iter()
        .filter(|ns| is_served(ns))
        .filter_map(|ns| ns.metadata.name.as_deref())
        .collect();
    served.sort_unstable();
    served.dedup();
    for namespace in served {
        match existing.get(namespace) {
            None => out
                .actions
                .push(BundleAction::Create(configmap(namespace, bundle))),
            Some(current) if !is_managed(*current) => {
                out.foreign.insert(namespace.to_owned());
            }
            Some(current) => {
                let holds = current
                    .data
                    .as_ref()
                    .and_then(|d| d.get(BUNDLE_KEY))
                    .is_some_and(|pem| pem == bundle);
                if !holds {
                    let mut next = (*current).clone();
                    next.metadata.managed_fields = None;
                    next.data
                        .get_or_insert_with(BTreeMap::new)
                        .insert(BUNDLE_KEY.to_owned(), bundle.to_owned());
                    out.actions.push(BundleAction::Update(next));
                }
            }
        }
    }
    out
}

/// Sends the writes. One that fails (a conflict, a namespace being deleted) is logged and
/// does not stop the others; returns how many failed.
pub async fn apply(client: &Client, actions: &[BundleAction]) -> usize {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut failed = 0;
    for action in actions {
        let namespace = action.namespace();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let result = match action {
            BundleAction::Create(cm) => api.create(&params, cm).await,
            BundleAction::Update(cm) => api.replace(CONFIGMAP_NAME, &params, cm).await,
        };
        match result {
            Ok(_) => {
                tracing::info!(%namespace, name = CONFIGMAP_NAME, action = action.verb(), "trust bundle ConfigMap written");
            }
            Err(err) => {
                failed += 1;
                tracing::warn!(%namespace, name = CONFIGMAP_NAME, action = action.verb(), %err, "trust bundle ConfigMap write failed; retrying");
            }
        }
    }
    failed
}

/// Keeps the ConfigMaps (see the module docs) while `leader` is true, with the PEM roots
/// `bundle` holds (empty: not known yet), until `stopped` completes. Watch errors are logged
/// and retried with backoff.
pub async fn run(
    client: Client,
    mut bundle: watch::Receiver<String>,
    mut leader: watch::Receiver<bool>,
    stopped: impl Future<Output = ()>,
) {
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let (configmaps, configmaps_w) = reflector::store::<ConfigMap>();
    let streams = vec![
        watch_stream(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default().labels(&format!("{INJECT_KEY}={INJECT_ENABLED}")),
            namespaces_w,
            |ns| ns.metadata.managed_fields = None,
        ),
        watch_stream(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}")),
            configmaps_w,
            |cm| cm.metadata.managed_fields = None,
        ),
    ];
    let kinds = ["Namespace", "ConfigMap"];
    let mut events = futures::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |r| (i, r))),
    );
    let mut listed = [false; 2];
    let mut bundle_open = true;
    let mut due: Option<Instant> = None;
    let mut foreign = BTreeSet::new();
    tokio::pin!(stopped);
    loop {
        let reconcile = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let soon = || Some(Instant::now() + COALESCE);
        tokio::select! {
            () = &mut stopped => return,
            changed = leader.changed() => {
                if changed.is_err() {
                    return; // the elector is gone: so is the node
                }
                due = soon();
            }
            changed = bundle.changed(), if bundle_open => {
                if changed.is_err() {
                    bundle_open = false; // keeps the last bundle
                }
                due = soon();
            }
            event = events.next() => match event {
                None => return,
                Some((i, Ok(init_done))) => {
                    if init_done && !listed[i] {
                        listed[i] = true;
                        tracing::debug!(kind = kinds[i], "listed");
                    }
                    if due.is_none() {
                        due = soon();
                    }
                }
                Some((i, Err(err))) => {
                    tracing::warn!(kind = kinds[i], %err, "trust bundle watch failed; retrying with backoff");
                }
            },
            () = reconcile => {
                due = None;
                let pem = bundle.borrow().clone();
                if !*leader.borrow() || !listed.iter().all(|l| *l) || pem.trim().is_empty() {
                    continue;
                }
                let plan = plan(&pem, &namespaces.state(), &configmaps.state());
                if plan.foreign != foreign {
                    for namespace in plan.foreign.difference(&foreign) {
                        tracing::warn!(%namespace, name = CONFIGMAP_NAME, "a ConfigMap of this name not managed by strait exists; leaving it alone (injected sidecars there mount it)");
                    }
                    foreign = plan.foreign.clone();
                }
                if apply(&client, &plan.actions).await > 0 {
                    due = Some(Instant::now() + RETRY);
                }
            }
        }
    }
}

/// How often [`follow_trust_store`] looks at the trust store.
pub const TRUST_STORE_CHECK: Duration = Duration::from_secs(10);

/// Publishes the PEM of `trust`'s bundle on `bundle` whenever it changes (root rotation
/// arrives in global's snapshots and in renewals, or from the Secret on replicas that do not
/// lead), checking every `every`, until `stopped`. The store has no change notification, and a
/// look every few seconds at a handful of roots costs nothing.
pub async fn follow_trust_store(
    trust: TrustStore,
    bundle: watch::Sender<String>,
    every: Duration,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {
                let pem = trust.current().to_pem();
                bundle.send_if_modified(|current| {
                    if *current == pem {
                        false
                    } else {
                        *current = pem;
                        true
                    }
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Mutex;

    use http::Method;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::*;
    use crate::kubernetes::fake_api::{self, ApiServer, list};

    const ROOT_1: &str = "-----BEGIN CERTIFICATE-----\nMIIB...root1\n-----END CERTIFICATE-----\n";
    const ROOT_2: &str = "-----BEGIN CERTIFICATE-----\nMIIB...root2\n-----END CERTIFICATE-----\n";

    fn namespace(name: &str, inject: Option<&str>) -> Namespace {
        let labels = match inject {
            Some(v) => json!({INJECT_KEY: v}),
            None => json!({}),
        };
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "resourceVersion": "1", "labels": labels},
            "status": {"phase": "Active"},
        }))
        .unwrap()
    }

    fn existing(ns: &str, managed: bool, pem: &str) -> ConfigMap {
        let mut cm = configmap(ns, pem);
        if !managed {
            cm.metadata.labels = Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                "Helm".to_owned(),
            )]));
        }
        cm.metadata.resource_version = Some("5".into());
        cm
    }

    fn arcs<T>(items: Vec<T>) -> Vec<Arc<T>> {
        items.into_iter().map(Arc::new).collect()
    }

    fn summary(plan: &BundlePlan) -> Vec<(&'static str, String)> {
        plan.actions
            .iter()
            .map(|a| (a.verb(), a.namespace().to_owned()))
            .collect()
    }

    #[test]
    fn every_served_namespace_gets_the_bundle_and_foreign_configmaps_are_left_alone() {
        let mut terminating = namespace("leaving", Some("enabled"));
        terminating.status.as_mut().unwrap().phase = Some("Terminating".into());
        let namespaces = arcs(vec![
            namespace("demo", Some("enabled")),
            namespace("shop", Some("enabled")),
            namespace("same", Some("enabled")),
            namespace("theirs", Some("enabled")),
            namespace("off", Some("disabled")),
            namespace("plain", None),
            terminating,
        ]);
        let configmaps = arcs(vec![
            existing("shop", true, ROOT_1),
            existing("same", true, ROOT_2),
            existing("theirs", false, "their own roots"),
            // Another name in a served namespace, and the name in a namespace not served.
            {
                let mut other = configmap("demo", ROOT_1);
                other.metadata.name = Some("app-config".into());
                other
            },
            existing("plain", true, ROOT_1),
        ]);
        let plan = plan(ROOT_2, &namespaces, &configmaps);
        assert_eq!(
            summary(&plan),
            [("create", "demo".into()), ("update", "shop".into())]
        );
        assert_eq!(plan.foreign, BTreeSet::from(["theirs".to_owned()]));

        let BundleAction::Create(created) = &plan.actions[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(created.metadata.name.as_deref(), Some(CONFIGMAP_NAME));
        assert_eq!(created.labels()[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(created.data.as_ref().unwrap()[BUNDLE_KEY], ROOT_2);
        assert!(created.metadata.resource_version.is_none());
        // The update replaces exactly what was read: a concurrent change is a conflict.
        let BundleAction::Update(updated) = &plan.actions[1] else {
            panic!("{plan:?}")
        };
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(updated.data.as_ref().unwrap()[BUNDLE_KEY], ROOT_2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_trust_stores_bundle_is_followed() {
        let root = || {
            strait_trust::RootCa::generate("strait.local", Duration::from_secs(3600))
                .unwrap()
                .cert_pem()
        };
        let (first, second) = (root(), root());
        let trust =
            TrustStore::new(strait_trust::TrustBundle::from_pem("strait.local", &first).unwrap());
        let (tx, mut rx) = watch::channel(String::new());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(follow_trust_store(
            trust.clone(),
            tx,
            TRUST_STORE_CHECK,
            async move {
                let _ = stop_rx.await;
            },
        ));
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), trust.current().to_pem());
        // A rotation: both roots, then the new one only.
        trust.update(|b| b.add_pem(&second).map(|_| ())).unwrap();
        rx.changed().await.unwrap();
        let both = rx.borrow_and_update().clone();
        assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2);
        trust
            .replace(strait_trust::TrustBundle::from_pem("strait.local", &second).unwrap())
            .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), trust.current().to_pem());
        // Unchanged: no publication. On the paused clock this sleep returns once the three
        // checks due in it have run (the clock moves only when every task is idle), so it
        // waits for those checks, not for wall-clock time.
        tokio::time::sleep(TRUST_STORE_CHECK * 3).await;
        assert!(!rx.has_changed().unwrap());
        let _ = stop_tx.send(());
        task.await.unwrap();
    }

    #[test]
    fn an_unknown_bundle_writes_nothing() {
        let namespaces = arcs(vec![namespace("demo", Some("enabled"))]);
        assert_eq!(plan("", &namespaces, &[]), BundlePlan::default());
        assert_eq!(plan(" \n", &namespaces, &[]), BundlePlan::default());
    }

    #[test]
    fn a_managed_configmap_missing_its_key_is_repaired() {
        let namespaces = arcs(vec![namespace("demo", Some("enabled"))]);
        let mut edited = existing("demo", true, ROOT_1);
        edited.data = Some(BTreeMap::from([("note".to_owned(), "hi".to_owned())]));
        let plan = plan(ROOT_1, &namespaces, &arcs(vec![edited]));
        let [BundleAction::Update(cm)] = plan.actions.as_slice() else {
            panic!("{plan:?}")
        };
        let data = cm.data.as_ref().unwrap();
        assert_eq!(data[BUNDLE_KEY], ROOT_1);
        assert_eq!(data["note"], "hi");
    }

    // === against the scripted API server ===

    const CONFIGMAPS: &str = "/api/v1/configmaps";
    const NAMESPACES: &str = "/api/v1/namespaces";

    /// A small API server for namespaces and ConfigMaps: lists from its state, watches as
    /// streams (writes come back on the ConfigMap watch, as from a real server), creates and
    /// replaces with optimistic concurrency. Records every write as `VERB namespace`.
    struct Cluster {
        namespaces: Vec<Value>,
        configmaps: BTreeMap<String, Value>,
        version: u64,
        writes: Vec<String>,
        namespace_watch: Option<mpsc::Sender<Value>>,
        configmap_watch: Option<mpsc::Sender<Value>>,
    }

    fn configmap_path(ns: &str) -> String {
        format!("/api/v1/namespaces/{ns}/configmaps")
    }

    async fn serve(mut server: ApiServer, cluster: Arc<Mutex<Cluster>>) {
        loop {
            let Ok(call) = tokio::time::timeout(Duration::from_secs(30), server.next()).await
            else {
                return;
            };
            // The watch event a write causes, sent once the lock is released.
            let echo = answer(call, &mut cluster.lock().unwrap());
            if let Some((watch, event)) = echo {
                let _ = watch.send(event).await;
            }
        }
    }

    fn answer(call: fake_api::Call, c: &mut Cluster) -> Option<(mpsc::Sender<Value>, Value)> {
        let path = call.path.clone();
        match (call.method.clone(), path.as_str()) {
            (Method::GET, NAMESPACES) => {
                assert!(
                    call.query
                        .contains("labelSelector=strait.dev%2Finject%3Denabled"),
                    "namespaces are watched by label only: {call:?}"
                );
                if call.is_watch() {
                    c.namespace_watch = Some(call.stream());
                } else {
                    call.json(200, list("Namespace", "v1", c.namespaces.clone()));
                }
                None
            }
            (Method::GET, CONFIGMAPS) => {
                assert!(
                    call.query
                        .contains("fieldSelector=metadata.name%3Dstrait-trust-bundle"),
                    "ConfigMaps are watched by name only: {call:?}"
                );
                if call.is_watch() {
                    c.configmap_watch = Some(call.stream());
                } else {
                    let items = c.configmaps.values().cloned().collect();
                    call.json(200, list("ConfigMap", "v1", items));
                }
                None
            }
            (Method::POST, p) if p.ends_with("/configmaps") => {
                let ns = call.body["metadata"]["namespace"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(p, configmap_path(&ns));
                assert!(call.query.contains("fieldManager=strait-zone"), "{call:?}");
                c.writes.push(format!("POST {ns}"));
                if c.configmaps.contains_key(&ns) {
                    call.error(409, "AlreadyExists");
                    return None;
                }
                c.version += 1;
                let mut stored = call.body.clone();
                stored["metadata"]["resourceVersion"] = json!(c.version.to_string());
                c.configmaps.insert(ns, stored.clone());
                call.json(201, stored.clone());
                let event = json!({"type": "ADDED", "object": stored});
                c.configmap_watch.clone().map(|w| (w, event))
            }
            (Method::PUT, p) if p.ends_with("/configmaps/strait-trust-bundle") => {
                let ns = call.body["metadata"]["namespace"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                c.writes.push(format!("PUT {ns}"));
                let current = c
                    .configmaps
                    .get(&ns)
                    .cloned()
                    .expect("PUT of a missing ConfigMap");
                if current["metadata"]["resourceVersion"]
                    != call.body["metadata"]["resourceVersion"]
                {
                    call.error(409, "Conflict");
                    return None;
                }
                c.version += 1;
                let mut stored = call.body.clone();
                stored["metadata"]["resourceVersion"] = json!(c.version.to_string());
                c.configmaps.insert(ns, stored.clone());
                call.json(200, stored.clone());
                let event = json!({"type": "MODIFIED", "object": stored});
                c.configmap_watch.clone().map(|w| (w, event))
            }
            _ => panic!("unexpected request {call:?}"),
        }
    }

    async fn eventually(cluster: &Mutex<Cluster>, what: &str, done: impl Fn(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&cluster.lock().unwrap()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn take_writes(cluster: &Mutex<Cluster>) -> Vec<String> {
        let mut writes = std::mem::take(&mut cluster.lock().unwrap().writes);
        writes.sort();
        writes
    }

    /// Nothing written by the passes that the last change made due (the writer is settled,
    /// or must not write). On the paused clock of these tests, a sleep returns only once every
    /// task is idle and the clock has reached its end: the pass due one coalescing period
    /// after the change has run to completion, with its API calls, before this looks. So this
    /// waits for that pass, not for wall-clock time.
    async fn no_writes(cluster: &Mutex<Cluster>) -> bool {
        tokio::time::sleep(COALESCE * 3).await;
        cluster.lock().unwrap().writes.is_empty()
    }

    fn held(cluster: &Mutex<Cluster>, ns: &str) -> Option<String> {
        cluster.lock().unwrap().configmaps.get(ns).map(|cm| {
            cm["data"][BUNDLE_KEY]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_keeps_the_bundle_in_every_labelled_namespace() {
        let (client, server) = fake_api::client();
        let to_value = |v: &ConfigMap| serde_json::to_value(v).unwrap();
        let cluster = Arc::new(Mutex::new(Cluster {
            namespaces: vec![
                serde_json::to_value(namespace("demo", Some("enabled"))).unwrap(),
                serde_json::to_value(namespace("theirs", Some("enabled"))).unwrap(),
            ],
            configmaps: BTreeMap::from([(
                "theirs".to_owned(),
                to_value(&existing("theirs", false, "their own roots")),
            )]),
            version: 10,
            writes: Vec::new(),
            namespace_watch: None,
            configmap_watch: None,
        }));
        let server_task = tokio::spawn(serve(server, cluster.clone()));
        let (bundle_tx, bundle) = watch::channel(String::new());
        let (leader_tx, leader) = watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(client, bundle, leader, async move {
            let _ = stop_rx.await;
        }));
        eventually(&cluster, "both watches", |c| {
            c.namespace_watch.is_some() && c.configmap_watch.is_some()
        })
        .await;

        // A replica that does not lead writes nothing; nor does the leader before it knows
        // the bundle.
        bundle_tx.send_replace(ROOT_1.to_owned());
        assert!(no_writes(&cluster).await, "a follower wrote");
        bundle_tx.send_replace(String::new());
        leader_tx.send_replace(true);
        assert!(no_writes(&cluster).await, "an empty bundle was written");

        // The bundle is known: created where missing, someone else's left alone.
        bundle_tx.send_replace(ROOT_1.to_owned());
        eventually(&cluster, "the demo ConfigMap", |c| {
            c.configmaps.contains_key("demo")
        })
        .await;
        assert_eq!(held(&cluster, "demo").as_deref(), Some(ROOT_1));
        assert_eq!(held(&cluster, "theirs").as_deref(), Some("their own roots"));
        {
            let c = cluster.lock().unwrap();
            assert_eq!(
                c.configmaps["demo"]["metadata"]["labels"][MANAGED_BY_LABEL],
                MANAGED_BY
            );
        }
        // Its own write, back through the watch, needs nothing more.
        assert_eq!(take_writes(&cluster), ["POST demo"]);
        assert!(no_writes(&cluster).await, "the writer repeated itself");

        // A namespace is labelled for injection: it gets the bundle too.
        let shop = serde_json::to_value(namespace("shop", Some("enabled"))).unwrap();
        let namespace_watch = cluster.lock().unwrap().namespace_watch.clone().unwrap();
        namespace_watch
            .send(json!({"type": "ADDED", "object": shop}))
            .await
            .unwrap();
        eventually(&cluster, "the shop ConfigMap", |c| {
            c.configmaps.contains_key("shop")
        })
        .await;
        assert_eq!(take_writes(&cluster), ["POST shop"]);

        // The root rotates: every managed ConfigMap is updated, the foreign one still not.
        let rotated = format!("{ROOT_1}{ROOT_2}");
        bundle_tx.send_replace(rotated.clone());
        eventually(&cluster, "the rotated bundle", |c| {
            ["demo", "shop"]
                .iter()
                .all(|ns| c.configmaps[*ns]["data"][BUNDLE_KEY] == rotated)
        })
        .await;
        assert_eq!(take_writes(&cluster), ["PUT demo", "PUT shop"]);
        assert_eq!(held(&cluster, "theirs").as_deref(), Some("their own roots"));

        // Someone deletes one: it comes back.
        let deleted = cluster.lock().unwrap().configmaps.remove("demo").unwrap();
        let configmap_watch = cluster.lock().unwrap().configmap_watch.clone().unwrap();
        configmap_watch
            .send(json!({"type": "DELETED", "object": deleted}))
            .await
            .unwrap();
        eventually(&cluster, "demo's ConfigMap again", |c| {
            c.configmaps.contains_key("demo")
        })
        .await;
        assert_eq!(held(&cluster, "demo"), Some(rotated));

        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops")
            .unwrap();
        server_task.abort();
    }
}
