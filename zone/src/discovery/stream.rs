//! One sidecar's discovery stream: pushes its group's config when it changes, matches ACKs
//! and NACKs to pushed versions, relays health; the instance's grace starts when it ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use strait_proto as pb;
use strait_proto::sidecar_message::Msg;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::inventory::{Instance, ServiceKey};

use super::lock;
use super::registry::ConnId;
use super::server::Inner;
use super::world::Assembled;

/// Pushed versions kept for matching ACKs; older ones are forgotten (their ACK is stale).
const PENDING_ACKS: usize = 16;

/// One sidecar's stream: pushes its config when it changes, handles its ACKs and health.
pub(super) struct Session {
    pub(super) guard: SessionGuard,
    pub(super) sidecar: Instance,
    /// The last version pushed (starts at the sidecar's `known_version`, so versions keep
    /// increasing across a control plane restart).
    pub(super) version: u64,
    pub(super) registered_at: Instant,
}

/// Ends the session's bookkeeping however the session ends (stream closed, error, client
/// gone, task dropped at shutdown): the instance's grace starts.
pub(super) struct SessionGuard {
    pub(super) inner: Arc<Inner>,
    pub(super) conn: ConnId,
    pub(super) service: ServiceKey,
    pub(super) instance: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        self.inner.mutate(|r| {
            r.disconnect(self.conn, &self.service, &self.instance, now);
            // The instance stays in the inventory through its grace.
            ((), false)
        });
        self.inner.metrics.connected.dec();
        lock(&self.inner.sidecars).remove(&self.conn);
        tracing::info!("sidecar stream ended; its instance stays for the registration grace");
    }
}

type ConfigSender = mpsc::Sender<Result<pb::SidecarConfig, Status>>;

impl Session {
    pub(super) async fn run(
        mut self,
        mut inbound: Streaming<pb::SidecarMessage>,
        tx: ConfigSender,
    ) {
        let inner = self.guard.inner.clone();
        let mut worlds = inner.world.clone();
        let mut world = worlds.borrow_and_update().clone();
        // The first push answers the registration.
        let mut changed_at = self.registered_at;
        let mut last: Option<Arc<Assembled>> = None;
        // version -> (nonce, when the change it carries happened)
        let mut pending: BTreeMap<u64, (String, Instant)> = BTreeMap::new();
        loop {
            let config = world.assembled(&inner.config, &self.sidecar);
            if !last.as_ref().is_some_and(|last| last.same_config(&config)) {
                self.version += 1;
                let nonce = format!("{:032x}", rand::random::<u128>());
                // The one deep copy per push: tonic encodes (and drops) what it is given.
                let mut stamped = config.config.clone();
                stamped.version = self.version;
                stamped.nonce.clone_from(&nonce);
                if tx.send(Ok(stamped)).await.is_err() {
                    return;
                }
                inner.metrics.pushes.inc();
                tracing::debug!(version = self.version, "config pushed");
                pending.insert(self.version, (nonce, changed_at));
                while pending.len() > PENDING_ACKS {
                    pending.pop_first();
                }
                if let Some(status) = lock(&inner.sidecars).get_mut(&self.guard.conn) {
                    status.pushed_version = self.version;
                }
                last = Some(config);
            }
            tokio::select! {
                changed = worlds.changed() => {
                    if changed.is_err() {
                        return; // the server is shutting down
                    }
                    world = worlds.borrow_and_update().clone();
                    changed_at = world.changed_at;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(status) = self.handle(message, &mut pending) {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), message = status.message(), "sidecar stream failed");
                        return;
                    }
                },
                () = tx.closed() => return,
            }
        }
    }

    fn handle(
        &mut self,
        message: pb::SidecarMessage,
        pending: &mut BTreeMap<u64, (String, Instant)>,
    ) -> Result<(), Status> {
        let inner = &self.guard.inner;
        match message.msg {
            Some(Msg::Ack(ack)) => {
                let Some((nonce, changed_at)) = pending.get(&ack.version).cloned() else {
                    tracing::debug!(
                        version = ack.version,
                        "ACK for a version not pending; ignored"
                    );
                    return Ok(());
                };
                if nonce != ack.nonce {
                    tracing::debug!(version = ack.version, "ACK with a stale nonce; ignored");
                    return Ok(());
                }
                if ack.accepted {
                    inner
                        .metrics
                        .latency
                        .observe(changed_at.elapsed().as_secs_f64());
                    // Older pushes were superseded by this one.
                    pending.retain(|&v, _| v > ack.version);
                    if let Some(status) = lock(&inner.sidecars).get_mut(&self.guard.conn) {
                        status.acked_version = ack.version;
                    }
                    tracing::debug!(version = ack.version, "config accepted");
                } else {
                    pending.remove(&ack.version);
                    inner.metrics.nacks.inc();
                    if let Some(status) = lock(&inner.sidecars).get_mut(&self.guard.conn) {
                        status.last_nack = Some((ack.version, ack.error.clone()));
                    }
                    tracing::warn!(
                        version = ack.version,
                        reason = %ack.error,
                        "sidecar rejected its config and keeps running its previous version"
                    );
                }
            }
            Some(Msg::Health(health)) => {
                let (conn, service, instance) =
                    (self.guard.conn, &self.guard.service, &self.guard.instance);
                let changed = inner.mutate(|r| {
                    let changed = r.set_health(conn, service, instance, health.healthy);
                    (changed, changed)
                });
                if changed {
                    tracing::info!(healthy = health.healthy, reason = %health.reason, "instance health changed");
                }
            }
            Some(Msg::Register(_)) => {
                return Err(Status::invalid_argument(
                    "Register may only be the first message of a stream; open a new stream to register another instance",
                ));
            }
            // A message kind from a newer sidecar: ignoring it keeps old control planes usable.
            None => tracing::debug!("unknown sidecar message ignored"),
        }
        Ok(())
    }
}
