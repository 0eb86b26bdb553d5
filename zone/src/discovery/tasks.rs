//! The discovery server's background tasks: recompiling the world, expiring graces and
//! persisting the registry, and (Kubernetes mode) following the cluster's workloads. Each ends
//! when the server is gone.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::federation::FederationWatch;
use crate::inventory::{InventoryWatch, LocalInventory};
use crate::store::ZoneStore;

use super::server::Inner;
use super::world::{World, WorldContext, same_configs};
use super::{REGISTRY_KEY, lock};

/// How long changes are collected before compiling: a burst (a deployment rolling, a
/// snapshot and the inventory it causes) becomes one push per sidecar.
const COALESCE: Duration = Duration::from_millis(20);

/// How long to wait before retrying a failed registry write.
const PERSIST_RETRY: Duration = Duration::from_secs(1);

/// Republishes the inventory whenever the cluster's workloads change. Ends with the server
/// or the source.
pub(super) async fn workloads_task(inner: Weak<Inner>, mut workloads: InventoryWatch) {
    while workloads.changed().await.is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        inner.mutate(|_| ((), true));
    }
}

/// Recompiles the world when the inventory or the federation view changes, coalescing
/// bursts. Ends when the server is gone (the inventory sender is dropped).
pub(super) async fn world_task(
    context: WorldContext,
    mut inventory: watch::Receiver<Arc<LocalInventory>>,
    mut federation: FederationWatch,
    worlds: watch::Sender<Arc<World>>,
) {
    let mut federation_open = true;
    loop {
        tokio::select! {
            changed = inventory.changed() => if changed.is_err() { return },
            changed = federation.changed(), if federation_open => if changed.is_err() {
                // The sync client is gone: keep serving the last view (static stability).
                federation_open = false;
                continue;
            },
        }
        let changed_at = Instant::now();
        tokio::time::sleep(COALESCE).await;
        let view = federation.borrow_and_update().clone();
        let current = inventory.borrow_and_update().clone();
        let previous = worlds.borrow().clone();
        let next = context.build(view, current, changed_at, Some(&previous));
        if same_configs(&previous, &next) {
            tracing::debug!("change compiles to the same configs; streams not woken");
            continue;
        }
        worlds.send_replace(Arc::new(next));
    }
}

/// Expires graces and persists the registry after changes. Ends when the server is gone.
pub(super) async fn registry_task(
    inner: Weak<Inner>,
    wake: Arc<Notify>,
    mut alive: watch::Receiver<()>,
    store: ZoneStore,
) {
    let mut unsaved = false;
    let mut retry_at: Option<Instant> = None;
    loop {
        let deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let next = lock(&inner.registry).next_deadline();
            [next, retry_at].into_iter().flatten().min()
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = alive.changed() => return,
            () = wake.notified() => {}
            () = sleep => {}
        }
        let bytes = {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            let due = lock(&inner.registry)
                .next_deadline()
                .is_some_and(|at| at <= now);
            let removed = if due {
                inner.mutate(|r| {
                    let removed = r.expire(now);
                    let changed = !removed.is_empty();
                    (removed, changed)
                })
            } else {
                Vec::new()
            };
            inner.metrics.expired.inc_by(removed.len() as u64);
            for gone in &removed {
                tracing::info!(
                    service = %format!("{}/{}", gone.service.namespace, gone.service.name),
                    instance = %gone.instance,
                    "instance removed: its sidecar did not come back within the grace"
                );
            }
            let mut registry = lock(&inner.registry);
            unsaved |= registry.take_dirty();
            if !unsaved || retry_at.is_some_and(|at| at > now) {
                continue;
            }
            match registry.encode() {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::error!(%err, "cannot encode the discovery registry");
                    unsaved = false;
                    continue;
                }
            }
        };
        let store = store.clone();
        let saved = tokio::task::spawn_blocking(move || store.put(REGISTRY_KEY, &bytes)).await;
        match saved {
            Ok(Ok(())) => {
                unsaved = false;
                retry_at = None;
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot persist the discovery registry; retrying");
                retry_at = Some(Instant::now() + PERSIST_RETRY);
            }
            Err(err) => {
                tracing::warn!(%err, "registry write task failed; retrying");
                retry_at = Some(Instant::now() + PERSIST_RETRY);
            }
        }
    }
}
