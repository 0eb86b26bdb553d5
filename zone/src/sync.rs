//! The ZoneSync client: the zone's one long-lived stream to global.
//!
//! One bidirectional `Sync` stream at a time, to one global node, over mutual TLS as
//! `spiffe://TD/zone/Z/cp`. When it fails the client reconnects with backoff (100 ms doubling
//! to 5 s, with jitter) to the next address. On every stream:
//!
//! 1. the zone sends `SyncHello` (its zone, the version of its persisted snapshot, so global
//!    can skip resending it, and the inventory version it will report next);
//! 2. global sends a full `FederationSnapshot` whenever something changed. The zone persists
//!    it (flushed), publishes it to every consumer at once through the federation watch, and
//!    only then acks it. A snapshot older than the current one is acked and ignored.
//! 3. the zone sends its complete inventory (`InventoryReport`, a replacement, never a delta)
//!    on connect and on every change (debounced, [`INVENTORY_DEBOUNCE`]), with versions that
//!    only increase, across restarts too (the last one is persisted; a new one is at least
//!    the wall clock in ms).
//! 4. at 2/3 of the intermediate CA's life (or of the control plane leaf's), the zone sends
//!    `RenewRequest` with CSRs from fresh keys; the `RenewResponse` is persisted and swapped
//!    in without interrupting anything. A refusal (the zone was removed) is logged and the
//!    zone keeps serving until its certificates expire.
//!
//! # No transient deletion after a restart
//!
//! Global keeps each zone's last inventory and other zones route by it. After this zone
//! restarts, its sidecars take a moment to reconnect; reporting the inventory of that moment
//! would make other zones drop its services briefly. So the discovery server restores the
//! registry from the store, and this client, for [`registration_grace`] after it started,
//! does not report an inventory *smaller* than the last one it reported (persisted with its
//! version): a service missing, or fewer instances in a locality. Such a report waits until
//! the inventory is whole again or the grace has passed, whichever comes first. Growth is
//! reported at once.
//!
//! The decisions are made by [`SyncState`] (in `sync/state.rs`), a pure state machine fed with
//! events and `now`; [`SyncClient`] is the IO around it.
//!
//! [`registration_grace`]: crate::config::ZoneConfig::registration_grace

mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge, Opts, Registry};
use prost::Message;
use strait_proto as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::credentials::{
    ALPN_H2, CredentialsError, GlobalNodeAuthorizer, PendingKeys, ZoneCredentials, status_detail,
};
use crate::federation::FederationView;
use crate::inventory::InventoryWatch;
use crate::store::{StoreError, ZoneStore};

pub use self::state::{
    BACKOFF_MAX, BACKOFF_MIN, Backoff, INVENTORY_DEBOUNCE, Persisted, RENEW_RETRY, RENEW_TIMEOUT,
    SnapshotDecision, SyncState, covers,
};

/// How long connecting (TCP and TLS) to a global node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Snapshots carry the whole federation; allow far more than tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = strait_proto::transport::MAX_CONTROL_MESSAGE;
/// Store key of the last inventory report sent (protobuf `InventoryReport`).
const LAST_REPORT_KEY: &str = "sync/last_inventory_report";

// === metrics ===

/// The sync client's metrics (fixed label sets).
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    pub connected: IntGauge,
    pub primary: IntGauge,
    pub snapshot_version: IntGauge,
    pub reconnects: IntCounter,
    pub inventory_reports: IntCounter,
    pub ca_expiry: IntGauge,
    pub cp_expiry: IntGauge,
}

impl SyncMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            connected: gauge(
                "strait_zone_sync_connected",
                "1 while the sync stream to global is up.",
            )?,
            primary: gauge(
                "strait_zone_sync_primary",
                "1 while this replica speaks for the zone (reports inventory, renews); 0 while it only observes.",
            )?,
            snapshot_version: gauge(
                "strait_zone_sync_snapshot_version",
                "Global revision of the federation snapshot this zone serves.",
            )?,
            reconnects: counter(
                "strait_zone_sync_reconnects_total",
                "Sync streams that ended and were retried.",
            )?,
            inventory_reports: counter(
                "strait_zone_inventory_reports_total",
                "Inventory reports sent to global.",
            )?,
            ca_expiry: gauge(
                "strait_zone_ca_cert_expiry_timestamp_seconds",
                "When the zone intermediate CA expires (Unix time).",
            )?,
            cp_expiry: gauge(
                "strait_zone_cp_cert_expiry_timestamp_seconds",
                "When the control plane's own certificate expires (Unix time).",
            )?,
        })
    }

    fn observe_expiry(&self, creds: &ZoneCredentials) {
        let t = creds.renewal_times();
        self.ca_expiry.set(unix_secs(t.ca_not_after));
        self.cp_expiry.set(unix_secs(t.cp_not_after));
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// === IO ===

/// Why the sync client cannot start (a failing stream, by contrast, is retried for ever).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync client TLS setup: {0}")]
    Tls(#[from] strait_trust::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the sync client needs to know about this zone.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub zone: String,
    pub region: String,
    pub vip_cidr: String,
    /// Global addresses, tried in this order.
    pub global: Vec<String>,
    pub registration_grace: Duration,
    pub renew_check_interval: Duration,
}

/// The sync stream's IO: connects, reconnects, persists and publishes; [`SyncState`] decides.
#[derive(Debug)]
pub struct SyncClient {
    config: SyncConfig,
    creds: ZoneCredentials,
    store: ZoneStore,
    federation: watch::Sender<Arc<FederationView>>,
    inventory: InventoryWatch,
    metrics: SyncMetrics,
    state: SyncState,
    tls: Arc<rustls::ClientConfig>,
    pending_renewal: Option<PendingKeys>,
    inventory_open: bool,
    /// Whether this replica is the zone's primary (Kubernetes mode with several replicas:
    /// the Lease holder); `None`: always primary.
    primary: Option<watch::Receiver<bool>>,
}

/// How a stream ended.
enum StreamEnd {
    /// It got at least one message from global: the connection was good.
    AfterProgress(String),
    Failed(String),
    /// This replica became, or stopped being, the zone's primary: reconnect at once in the
    /// new role.
    RoleChanged,
}

impl SyncClient {
    /// Loads the persisted sync state; `federation` should already hold the persisted view.
    pub fn new(
        config: SyncConfig,
        creds: ZoneCredentials,
        store: ZoneStore,
        federation: watch::Sender<Arc<FederationView>>,
        inventory: InventoryWatch,
        metrics: SyncMetrics,
    ) -> Result<Self, SyncError> {
        let last_report = match store.get(LAST_REPORT_KEY)? {
            Some(bytes) => match pb::InventoryReport::decode(bytes.as_slice()) {
                Ok(report) => Some(report),
                Err(e) => {
                    return Err(SyncError::Store(StoreError::Corrupt {
                        key: LAST_REPORT_KEY.to_owned(),
                        reason: e.to_string(),
                    }));
                }
            },
            None => None,
        };
        let snapshot_version = federation.borrow().version();
        let (current, gateways) = {
            let inventory = inventory.borrow();
            let policies = federation.borrow().policies();
            (
                inventory.exported_services(&policies),
                inventory.gateway_endpoints(),
            )
        };
        let mut state = SyncState::new(
            config.zone.clone(),
            config.region.clone(),
            config.vip_cidr.clone(),
            config.registration_grace,
            Persisted {
                snapshot_version,
                last_report,
            },
            current,
            Instant::now(),
        );
        state.gateways_changed(gateways, Instant::now());
        metrics
            .snapshot_version
            .set(i64::try_from(snapshot_version).unwrap_or(i64::MAX));
        metrics.observe_expiry(&creds);
        // Built once: the stores behind it are live, so renewals and bundle updates apply to
        // the next handshake without rebuilding.
        let tls = Arc::new(strait_trust::tls::client_config(
            &creds.creds,
            &creds.trust,
            Arc::new(GlobalNodeAuthorizer),
            vec![ALPN_H2.to_vec()],
        )?);
        Ok(Self {
            tls,
            config,
            creds,
            store,
            federation,
            inventory,
            metrics,
            state,
            pending_renewal: None,
            inventory_open: true,
            primary: None,
        })
    }

    /// Makes the stream's role follow `primary`: reports and renewals only while it is true,
    /// snapshots always.
    pub fn with_primary(mut self, primary: watch::Receiver<bool>) -> Self {
        self.primary = Some(primary);
        self
    }

    /// Runs until `shutdown` completes: one stream at a time, reconnecting for ever.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let tls = self.tls.clone();
        let addresses = self.config.global.clone();
        tokio::pin!(shutdown);
        let mut backoff = Backoff::default();
        let mut index = 0_usize;
        loop {
            let Some(addr) = addresses.get(index % addresses.len().max(1)).cloned() else {
                tracing::error!("no global address to sync with");
                shutdown.as_mut().await;
                return;
            };
            let end = tokio::select! {
                () = shutdown.as_mut() => return,
                end = self.stream(&addr, tls.clone()) => end,
            };
            self.state.disconnected();
            self.pending_renewal = None;
            self.metrics.connected.set(0);
            self.metrics.reconnects.inc();
            let reason = match end {
                StreamEnd::AfterProgress(reason) => {
                    backoff.reset();
                    reason
                }
                StreamEnd::Failed(reason) => reason,
                StreamEnd::RoleChanged => {
                    backoff.reset();
                    continue;
                }
            };
            let delay = backoff.next_delay(rand::random::<f64>());
            tracing::warn!(global = %addr, %reason, retry_in = ?delay, "sync stream with global ended; serving the persisted state meanwhile");
            index = index.wrapping_add(1);
            tokio::select! {
                () = shutdown.as_mut() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream to `addr`, until it fails.
    async fn stream(&mut self, addr: &str, tls: Arc<rustls::ClientConfig>) -> StreamEnd {
        let channel = strait_proto::transport::channel(addr, tls, CONNECT_TIMEOUT);
        let mut client = pb::zone_sync_client::ZoneSyncClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<pb::ZoneMessage>(64);
        let primary = self.primary.as_mut().is_none_or(|p| *p.borrow_and_update());
        self.state.set_primary(primary);
        let hello = self.state.hello(unix_ms(SystemTime::now()));
        if tx
            .send(msg(pb::zone_message::Msg::Hello(hello)))
            .await
            .is_err()
        {
            return StreamEnd::Failed("outbound queue closed".to_owned());
        }
        let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return StreamEnd::Failed(status_detail(&status)),
        };
        tracing::info!(global = %addr, known_version = self.state.view_version(), primary, "sync stream with global up");
        self.state.connected(Instant::now());
        self.metrics.connected.set(1);
        self.metrics.primary.set(i64::from(primary));
        let mut progressed = false;
        let mut renew_tick = tokio::time::interval(self.config.renew_check_interval);
        renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = |progressed: bool, reason: String| {
            if progressed {
                StreamEnd::AfterProgress(reason)
            } else {
                StreamEnd::Failed(reason)
            }
        };
        loop {
            if let Err(reason) = self.flush_due(&tx).await {
                return end(progressed, reason);
            }
            let deadline = self.state.next_deadline(Instant::now());
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let inventory_open = self.inventory_open;
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        progressed = true;
                        if let Err(reason) = self.handle(message, &tx).await {
                            return end(progressed, reason);
                        }
                    }
                    Ok(None) => return end(progressed, "global closed the stream".to_owned()),
                    Err(status) => return end(progressed, status_detail(&status)),
                },
                changed = self.inventory.changed(), if inventory_open => match changed {
                    Ok(()) => {
                        let inventory = self.inventory.borrow_and_update().clone();
                        let now = Instant::now();
                        let policies = self.federation.borrow().policies();
                        self.state.inventory_changed(inventory.exported_services(&policies), now);
                        self.state.gateways_changed(inventory.gateway_endpoints(), now);
                    }
                    Err(_) => {
                        // Discovery stopped (shutdown): keep what global has.
                        self.inventory_open = false;
                    }
                },
                () = sleep => {}
                _ = renew_tick.tick() => {
                    self.metrics.observe_expiry(&self.creds);
                }
                now_primary = role_change(&mut self.primary, primary) => {
                    tracing::info!(primary = now_primary, "this replica's role changed; reconnecting in the new role");
                    return StreamEnd::RoleChanged;
                }
            }
        }
    }

    /// Sends what is due: an inventory report, a renewal request.
    async fn flush_due(&mut self, tx: &mpsc::Sender<pb::ZoneMessage>) -> Result<(), String> {
        let now = Instant::now();
        if let Some(report) = self.state.poll_inventory(now, unix_ms(SystemTime::now())) {
            // Persisted first: the version must never be reused after a restart, and the
            // report is the baseline of the grace rule.
            if let Err(err) = self.store.put(LAST_REPORT_KEY, &report.encode_to_vec()) {
                tracing::error!(%err, "persisting the inventory report");
            }
            tracing::debug!(
                version = report.version,
                services = report.services.len(),
                "reporting inventory"
            );
            tx.send(msg(pb::zone_message::Msg::Inventory(report)))
                .await
                .map_err(|_| "outbound stream closed".to_owned())?;
            self.metrics.inventory_reports.inc();
        }
        let times = self.creds.renewal_times();
        if let Some((ca, cp)) =
            self.state
                .poll_renewal(now, SystemTime::now(), times.ca_renew_at, times.cp_renew_at)
        {
            match self.creds.renew_request(ca, cp) {
                Ok((keys, request)) => {
                    tracing::info!(ca, cp, "asking global to renew this zone's certificates");
                    self.pending_renewal = Some(keys);
                    tx.send(msg(pb::zone_message::Msg::Renew(request)))
                        .await
                        .map_err(|_| "outbound stream closed".to_owned())?;
                }
                Err(err) => {
                    tracing::error!(%err, "preparing a renewal request");
                    self.state.renewal_done(false, now);
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        message: pb::GlobalMessage,
        tx: &mpsc::Sender<pb::ZoneMessage>,
    ) -> Result<(), String> {
        match message.msg {
            Some(pb::global_message::Msg::Snapshot(snapshot)) => {
                let version = snapshot.version;
                let nonce = snapshot.nonce.clone();
                let error = match self.state.on_snapshot(version) {
                    SnapshotDecision::Stale => {
                        tracing::debug!(
                            version,
                            current = self.state.view_version(),
                            "ignoring a snapshot that is not newer"
                        );
                        None
                    }
                    SnapshotDecision::Apply => match self.apply_snapshot(snapshot) {
                        Ok(()) => None,
                        Err(err) => {
                            tracing::error!(version, %err, "could not persist the federation snapshot; still serving the previous one");
                            Some(pb::ErrorDetail {
                                message: err.to_string(),
                                ..Default::default()
                            })
                        }
                    },
                };
                let ack = pb::SnapshotAck {
                    version,
                    nonce,
                    error,
                };
                tx.send(msg(pb::zone_message::Msg::Ack(ack)))
                    .await
                    .map_err(|_| "outbound stream closed".to_owned())?;
            }
            Some(pb::global_message::Msg::InventoryAck(ack)) => {
                if let Some(error) = ack.error {
                    tracing::warn!(version = ack.version, error = %error.message, "global refused the inventory report");
                } else {
                    tracing::debug!(version = ack.version, "global stored the inventory report");
                }
                self.state.inventory_acked(ack.version, Instant::now());
            }
            Some(pb::global_message::Msg::Renew(reply)) => {
                let now = Instant::now();
                let keys = self.pending_renewal.take();
                if let Some(error) = &reply.error {
                    tracing::warn!(error = %error.message, "global refused to renew this zone's certificates (was the zone removed?); serving until they expire");
                    self.state.renewal_done(false, now);
                } else if let Some(keys) = keys {
                    match self.creds.apply_renewal(keys, &reply) {
                        Ok(()) => {
                            self.state.renewal_done(true, now);
                            self.metrics.observe_expiry(&self.creds);
                        }
                        Err(err) => {
                            tracing::error!(%err, "installing renewed certificates");
                            self.state.renewal_done(false, now);
                        }
                    }
                } else {
                    tracing::warn!("renewal answer without a pending request; ignored");
                }
            }
            None => tracing::debug!("empty message from global"),
        }
        Ok(())
    }

    /// Persist, then publish: what consumers see is always what a restart would load.
    fn apply_snapshot(&mut self, snapshot: pb::FederationSnapshot) -> Result<(), StoreError> {
        let version = snapshot.version;
        self.store.save_federation(&snapshot)?;
        if !snapshot.trust_bundle_pem.is_empty()
            && let Err(err) = self.creds.update_bundle(&snapshot.trust_bundle_pem)
        {
            log_bundle_error(&err);
        }
        let view = Arc::new(FederationView::new(snapshot));
        // Routes decide which subsets this zone reports counts for: a new route's subset is
        // reported as soon as the route arrives (unchanged exports send nothing).
        let exports = self.inventory.borrow().exported_services(&view.policies());
        self.federation.send_replace(view);
        self.state.snapshot_applied(version);
        self.state.inventory_changed(exports, Instant::now());
        self.metrics
            .snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        tracing::info!(version, "federation snapshot applied");
        Ok(())
    }
}

/// Resolves with the new value once `primary` differs from `current`; never without a watch
/// (or once its sender is gone: the last role stays).
async fn role_change(primary: &mut Option<watch::Receiver<bool>>, current: bool) -> bool {
    let Some(primary) = primary else {
        return std::future::pending().await;
    };
    let changed = primary
        .wait_for(|p| *p != current)
        .await
        .map(|value| *value);
    match changed {
        Ok(value) => value,
        Err(_) => std::future::pending().await,
    }
}

fn log_bundle_error(err: &CredentialsError) {
    tracing::warn!(%err, "the snapshot's trust bundle is unusable; keeping the current one");
}

fn msg(m: pb::zone_message::Msg) -> pb::ZoneMessage {
    pb::ZoneMessage { msg: Some(m) }
}
