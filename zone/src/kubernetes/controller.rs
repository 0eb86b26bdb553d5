//! Kubernetes mode's tasks, tied together: the source (every replica), leader election
//! (every replica) and the writer (the leader only), which reconciles `ServiceExport` status
//! and `ServiceImport`s whenever the cluster or the federation changes, and every
//! [`RESYNC`] in case a write was lost or someone edited an object by hand.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use strait_proto::vip::VipCidr;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::federation::{FederationView, FederationWatch};
use crate::inventory::{InventoryWatch, LocalInventory};
use crate::kubernetes::lease::LeaseElector;
use crate::kubernetes::source::{self, ClusterState, SourceSettings};
use crate::kubernetes::{imports, status};

/// How often the leader reconciles even without a change.
pub const RESYNC: Duration = Duration::from_secs(60);

/// How soon the leader tries again after a failed write.
const RETRY: Duration = Duration::from_secs(5);

/// How long the writer collects changes before it reconciles.
const WRITER_COALESCE: Duration = Duration::from_millis(200);

/// The cluster as the source last listed it; `None` until every watch has listed once.
pub type ClusterWatch = watch::Receiver<Option<Arc<ClusterState>>>;

/// Everything Kubernetes mode needs to know.
#[derive(Debug, Clone)]
pub struct KubernetesContext {
    pub source: SourceSettings,
    /// This zone's VIP range (the `ips` of its `ServiceImport`s).
    pub vip_cidr: VipCidr,
    /// Where the leader-election Lease lives.
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub replica: String,
    pub lease_duration: Duration,
    pub lease_renew_interval: Duration,
}

/// The running tasks; abort them (or complete the `stopped` futures) to stop.
#[derive(Debug)]
pub struct Running {
    /// This zone's workload instances, from the cluster.
    pub inventory: InventoryWatch,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// Whether this replica speaks for the zone towards global: it leads *and* its watches
    /// have listed the cluster once, so a new leader never reports a half-read inventory.
    pub primary: watch::Receiver<bool>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// The leader election, started on its own: it runs before the zone has credentials (the
/// Lease holder is the replica that joins).
#[derive(Debug)]
pub struct Election {
    pub leader: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// Starts contending for the Lease.
pub fn elect<F>(client: Client, context: &KubernetesContext, stopped: F) -> Election
where
    F: Future<Output = ()> + Send + 'static,
{
    let (leader_tx, leader) = watch::channel(false);
    let elector = LeaseElector::new(
        client,
        &context.namespace,
        context.lease_name.clone(),
        context.replica.clone(),
        context.lease_duration,
        context.lease_renew_interval,
    );
    tracing::info!(replica = %context.replica, lease = %format!("{}/{}", context.namespace, context.lease_name), "contending for the zone's leader Lease");
    Election {
        leader,
        task: tokio::spawn(elector.run(leader_tx, stopped)),
    }
}

/// Publishes `leader && listed` on `primary` until either input is gone or `stopped`.
async fn track_primary(
    mut leader: watch::Receiver<bool>,
    mut cluster: ClusterWatch,
    primary: watch::Sender<bool>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        let value = *leader.borrow_and_update() && cluster.borrow_and_update().is_some();
        primary.send_if_modified(|p| std::mem::replace(p, value) != value);
        tokio::select! {
            () = &mut stopped => return,
            changed = leader.changed() => if changed.is_err() { return },
            changed = cluster.changed() => if changed.is_err() { return },
        }
    }
}

/// One reconcile of everything the leader writes. Nothing is written for the imports while
/// the federation view is empty (nothing received or persisted yet): an empty view would
/// otherwise delete every import. Returns the number of writes that failed.
pub async fn reconcile(
    client: &Client,
    state: &ClusterState,
    view: &FederationView,
    zone: &str,
    vip_cidr: VipCidr,
) -> Result<usize, kube::Error> {
    reconcile_status(client, state, view, zone).await?;
    reconcile_imports(client, state, view, zone, vip_cidr).await
}

/// The `ServiceExport` status part of [`reconcile`]: writes only what differs from the cache.
pub async fn reconcile_status(
    client: &Client,
    state: &ClusterState,
    view: &FederationView,
    zone: &str,
) -> Result<(), kube::Error> {
    let now = Timestamp::now().to_string();
    status::apply(client, &status::plan(state, view, zone, &now)).await
}

/// The `ServiceImport` part of [`reconcile`] (lists the imports: one call, then the writes).
pub async fn reconcile_imports(
    client: &Client,
    state: &ClusterState,
    view: &FederationView,
    zone: &str,
    vip_cidr: VipCidr,
) -> Result<usize, kube::Error> {
    if view.version() == 0 {
        return Ok(0);
    }
    let own: BTreeSet<_> = state.valid_exports().into_keys().collect();
    let desired = imports::desired(view, zone, &own, vip_cidr);
    let existing = imports::list(client).await?;
    let (actions, foreign) = imports::plan(&desired, &existing);
    for key in foreign {
        tracing::warn!(namespace = %key.namespace, name = %key.name, "a ServiceImport not managed by strait exists for a remote service; leaving it alone");
    }
    Ok(imports::apply(client, &actions).await)
}

/// Reconciles while this replica leads, until `stopped`. Status is planned against the cache
/// at every change (cheap, and writes only differences); imports, which need a list call, are
/// reconciled when what they depend on changed (the federation view's version, this zone's
/// valid exports), after a failure, on becoming leader and every [`RESYNC`].
pub async fn run_writer(
    client: Client,
    zone: String,
    vip_cidr: VipCidr,
    mut cluster: ClusterWatch,
    mut federation: FederationWatch,
    mut leader: watch::Receiver<bool>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut federation_open = true;
    // What the imports were last reconciled for, and when; none: due.
    let mut imports_done: Option<(u64, BTreeSet<crate::inventory::ServiceKey>, Instant)> = None;
    loop {
        let leading = *leader.borrow_and_update();
        let state = cluster.borrow_and_update().clone();
        let mut wait = RESYNC;
        if !leading {
            imports_done = None;
        } else if let Some(state) = state {
            let view = federation.borrow_and_update().clone();
            if let Err(err) = reconcile_status(&client, &state, &view, &zone).await {
                tracing::warn!(%err, "ServiceExport status update failed; retrying");
                wait = RETRY;
            }
            let own: BTreeSet<_> = state.valid_exports().into_keys().collect();
            let due = imports_done.as_ref().is_none_or(|(version, exports, at)| {
                *version != view.version() || *exports != own || at.elapsed() >= RESYNC
            });
            if due {
                match reconcile_imports(&client, &state, &view, &zone, vip_cidr).await {
                    Ok(0) => imports_done = Some((view.version(), own, Instant::now())),
                    Ok(failed) => {
                        tracing::warn!(failed, "some ServiceImport writes failed; retrying");
                        wait = RETRY;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "listing ServiceImports failed; retrying");
                        wait = RETRY;
                    }
                }
            }
        }
        tokio::select! {
            () = &mut stopped => return,
            changed = leader.changed() => if changed.is_err() { return },
            changed = cluster.changed() => if changed.is_err() { return },
            changed = federation.changed(), if federation_open => if changed.is_err() {
                federation_open = false;
            },
            () = tokio::time::sleep(wait) => {}
        }
        tokio::time::sleep(WRITER_COALESCE).await;
    }
}

/// Starts the source and the writer beside a running [`Election`]. `stopped` makes a future
/// that completes at shutdown (one per task).
pub fn spawn<S, F>(
    client: Client,
    context: KubernetesContext,
    election: Election,
    federation: FederationWatch,
    stopped: S,
) -> Running
where
    S: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let (inventory_tx, inventory) = watch::channel(Arc::new(LocalInventory::default()));
    let (cluster_tx, cluster) = watch::channel(None);
    let (primary_tx, primary) = watch::channel(false);
    let leader = election.leader;
    tracing::info!(
        "kubernetes mode: watching Services, EndpointSlices, Pods (workloads and this zone's gateways) and ServiceExports"
    );
    let tasks = vec![
        tokio::spawn(source::run(
            client.clone(),
            context.source.clone(),
            Some(source::GatewayPods {
                namespace: context.namespace.clone(),
            }),
            inventory_tx,
            cluster_tx,
            stopped(),
        )),
        election.task,
        tokio::spawn(track_primary(
            leader.clone(),
            cluster.clone(),
            primary_tx,
            stopped(),
        )),
        tokio::spawn(run_writer(
            client,
            context.source.zone.clone(),
            context.vip_cidr,
            cluster,
            federation,
            leader.clone(),
            stopped(),
        )),
    ];
    Running {
        inventory,
        leader,
        primary,
        tasks,
    }
}
