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
//! The decisions are made by [`SyncState`], a pure state machine fed with events and `now`;
//! [`SyncClient`] is the IO around it.
//!
//! [`registration_grace`]: crate::config::ZoneConfig::registration_grace

use std::collections::BTreeMap;
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

/// Inventory changes closer together than this go out as one report.
pub const INVENTORY_DEBOUNCE: Duration = Duration::from_millis(50);
/// First reconnect delay; doubled after each failed attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long connecting (TCP and TLS) to a global node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A renewal request without an answer this long is given up and retried.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(30);
/// After a refused or failed renewal, wait this long before asking again.
pub const RENEW_RETRY: Duration = Duration::from_secs(60);
/// Snapshots carry the whole federation; allow far more than tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = strait_proto::transport::MAX_CONTROL_MESSAGE;
/// Store key of the last inventory report sent (protobuf `InventoryReport`).
const LAST_REPORT_KEY: &str = "sync/last_inventory_report";

// === pure state machine ===

/// What the sync client knows at start: the persisted snapshot's version and last report.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    pub snapshot_version: u64,
    pub last_report: Option<pb::InventoryReport>,
}

/// What to do with a snapshot from global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotDecision {
    /// Newer than the current view: persist, publish, ack.
    Apply,
    /// Not newer: ack only.
    Stale,
}

/// The sync stream's decisions, without IO or clocks of its own: every method takes `now`.
#[derive(Debug)]
pub struct SyncState {
    zone: String,
    region: String,
    vip_cidr: String,
    grace_until: Instant,
    view_version: u64,
    /// The inventory as discovery has it now.
    current: Vec<pb::ExportedService>,
    /// This zone's gateways as discovery has them now (reported with the services).
    gateways: Vec<pb::GatewayEndpoint>,
    /// What global was last told (persisted): a report smaller than this waits for the grace.
    last_reported: Vec<pb::ExportedService>,
    last_version: u64,
    /// Since when an unreported change has been waiting (reports are due `INVENTORY_DEBOUNCE`
    /// after it, so a storm of changes still gets reported regularly).
    dirty_since: Option<Instant>,
    connected: bool,
    /// Whether this replica speaks for the zone (reports, renews) or only observes.
    primary: bool,
    renew_in_flight: Option<Instant>,
    renew_not_before: Option<Instant>,
}

impl SyncState {
    pub fn new(
        zone: impl Into<String>,
        region: impl Into<String>,
        vip_cidr: impl Into<String>,
        grace: Duration,
        persisted: Persisted,
        current: Vec<pb::ExportedService>,
        now: Instant,
    ) -> Self {
        let (last_version, last_reported) = match persisted.last_report {
            Some(report) => (report.version, report.services),
            None => (0, Vec::new()),
        };
        Self {
            zone: zone.into(),
            region: region.into(),
            vip_cidr: vip_cidr.into(),
            grace_until: now + grace,
            view_version: persisted.snapshot_version,
            current,
            gateways: Vec::new(),
            last_reported,
            last_version,
            dirty_since: None,
            connected: false,
            primary: true,
            renew_in_flight: None,
            renew_not_before: None,
        }
    }

    /// Sets the role of the next stream: the primary reports and renews, an observer (a
    /// standby control plane replica) only receives snapshots.
    pub fn set_primary(&mut self, primary: bool) {
        self.primary = primary;
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Connected as the zone's primary: the only state in which anything is sent up.
    fn speaking(&self) -> bool {
        self.connected && self.primary
    }

    /// The version of the federation view being served.
    pub fn view_version(&self) -> u64 {
        self.view_version
    }

    /// The last inventory version sent (or persisted from a previous run).
    pub fn last_inventory_version(&self) -> u64 {
        self.last_version
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The first message of a stream.
    pub fn hello(&self, now_unix_ms: u64) -> pb::SyncHello {
        pb::SyncHello {
            zone: self.zone.clone(),
            known_version: self.view_version,
            inventory_version: self.next_version(now_unix_ms),
            vip_cidr: self.vip_cidr.clone(),
            region: self.region.clone(),
            role: if self.primary {
                pb::SyncRole::Primary
            } else {
                pb::SyncRole::Observer
            }
            .into(),
        }
    }

    /// A stream is up: the inventory is reported at once (subject to the grace rule).
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.dirty_since = Some(now.checked_sub(INVENTORY_DEBOUNCE).unwrap_or(now));
    }

    /// The stream ended. A renewal in flight is forgotten, and so is the pause after a
    /// refused one: the next stream may be to a global node that can answer.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.renew_in_flight = None;
        self.renew_not_before = None;
    }

    /// Whether a snapshot of `version` is to be applied. Equal versions are the same global
    /// revision, hence the same content: nothing to persist.
    pub fn on_snapshot(&self, version: u64) -> SnapshotDecision {
        if version < self.view_version || (version == self.view_version && self.view_version != 0) {
            SnapshotDecision::Stale
        } else {
            SnapshotDecision::Apply
        }
    }

    /// The snapshot of `version` is persisted and published.
    pub fn snapshot_applied(&mut self, version: u64) {
        self.view_version = self.view_version.max(version);
    }

    /// Discovery's gateways changed. Reported like a service change (a report carries both);
    /// the grace rule does not hold it back: gateways are addresses, not capacity.
    pub fn gateways_changed(&mut self, gateways: Vec<pb::GatewayEndpoint>, now: Instant) {
        if gateways == self.gateways {
            return;
        }
        self.gateways = gateways;
        self.dirty_since.get_or_insert(now);
    }

    /// Discovery's inventory changed.
    pub fn inventory_changed(&mut self, services: Vec<pb::ExportedService>, now: Instant) {
        if services == self.current {
            return;
        }
        self.current = services;
        self.dirty_since.get_or_insert(now);
    }

    /// Global acknowledged a report. If it holds a *newer* version than ours (our clock went
    /// back, or our store was lost), our report was ignored: jump past it and report again.
    pub fn inventory_acked(&mut self, ack_version: u64, now: Instant) {
        if ack_version > self.last_version {
            self.last_version = ack_version;
            self.dirty_since.get_or_insert(now);
        }
    }

    /// The report to send now, if one is due; the caller persists it, then sends it.
    pub fn poll_inventory(
        &mut self,
        now: Instant,
        now_unix_ms: u64,
    ) -> Option<pb::InventoryReport> {
        let since = self.dirty_since?;
        if !self.speaking() || now < since + INVENTORY_DEBOUNCE || self.held_by_grace(now) {
            return None;
        }
        let version = self.next_version(now_unix_ms);
        self.last_version = version;
        self.last_reported = self.current.clone();
        self.dirty_since = None;
        Some(pb::InventoryReport {
            version,
            services: self.current.clone(),
            gateways: self.gateways.clone(),
        })
    }

    /// When [`poll_inventory`](Self::poll_inventory) may next have something to send.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let since = self.dirty_since?;
        if !self.speaking() {
            return None;
        }
        let due = since + INVENTORY_DEBOUNCE;
        if self.held_by_grace(now.max(due)) {
            return Some(self.grace_until);
        }
        Some(due)
    }

    /// During the grace after start, a report that would shrink what global has waits.
    fn held_by_grace(&self, now: Instant) -> bool {
        now < self.grace_until && !covers(&self.current, &self.last_reported)
    }

    fn next_version(&self, now_unix_ms: u64) -> u64 {
        (self.last_version + 1).max(now_unix_ms)
    }

    /// Whether to ask for renewal now: `(ca, cp)` flags, or `None`.
    pub fn poll_renewal(
        &mut self,
        now: Instant,
        wall: SystemTime,
        ca_renew_at: SystemTime,
        cp_renew_at: SystemTime,
    ) -> Option<(bool, bool)> {
        if !self.speaking() {
            return None;
        }
        if let Some(sent) = self.renew_in_flight {
            if now < sent + RENEW_TIMEOUT {
                return None;
            }
            self.renew_in_flight = None;
        }
        if self.renew_not_before.is_some_and(|t| now < t) {
            return None;
        }
        let (ca, cp) = (wall >= ca_renew_at, wall >= cp_renew_at);
        if !(ca || cp) {
            return None;
        }
        self.renew_in_flight = Some(now);
        Some((ca, cp))
    }

    /// A renewal answer arrived; after a failure the next attempt waits [`RENEW_RETRY`].
    pub fn renewal_done(&mut self, ok: bool, now: Instant) {
        self.renew_in_flight = None;
        self.renew_not_before = (!ok).then_some(now + RENEW_RETRY);
    }
}

/// Whether `current` reports at least what `previous` did: every service, and in each of its
/// localities at least as many instances. Health is not compared: it is live news.
pub fn covers(current: &[pb::ExportedService], previous: &[pb::ExportedService]) -> bool {
    let totals = |services: &[pb::ExportedService]| {
        let mut map: BTreeMap<(String, String, String, String, String), u32> = BTreeMap::new();
        let mut names = BTreeMap::new();
        for s in services {
            let (ns, name) = s
                .service
                .as_ref()
                .map(|r| (r.namespace.clone(), r.name.clone()))
                .unwrap_or_default();
            names.insert((ns.clone(), name.clone()), ());
            for l in &s.localities {
                let loc = l.locality.clone().unwrap_or_default();
                *map.entry((ns.clone(), name.clone(), loc.region, loc.zone, loc.subzone))
                    .or_default() += l.total;
            }
        }
        (names, map)
    };
    let (now_names, now_totals) = totals(current);
    let (prev_names, prev_totals) = totals(previous);
    prev_names.keys().all(|k| now_names.contains_key(k))
        && prev_totals
            .iter()
            .all(|(k, total)| now_totals.get(k).copied().unwrap_or(0) >= *total)
}

/// Reconnect delays: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; `jitter` in `[0, 1)`
/// takes up to a fifth off, so zones that lost global together do not return in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, zone: &str, total: u32) -> pb::ExportedService {
        pb::ExportedService {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: name.into(),
            }),
            ports: vec![],
            localities: vec![pb::LocalityEndpoints {
                locality: Some(pb::Locality {
                    region: "r".into(),
                    zone: zone.into(),
                    subzone: String::new(),
                }),
                healthy: total,
                total,
            }],
            identities: vec![],
            subsets: vec![],
        }
    }

    fn state(
        grace: Duration,
        last: Option<pb::InventoryReport>,
        current: Vec<pb::ExportedService>,
        now: Instant,
    ) -> SyncState {
        SyncState::new(
            "a",
            "r",
            "127.240.0.0/16",
            grace,
            Persisted {
                snapshot_version: 5,
                last_report: last,
            },
            current,
            now,
        )
    }

    #[test]
    fn hello_carries_the_persisted_version() {
        let now = Instant::now();
        let s = state(
            Duration::ZERO,
            Some(pb::InventoryReport {
                version: 9,
                ..Default::default()
            }),
            vec![],
            now,
        );
        let hello = s.hello(3);
        assert_eq!(
            (
                hello.zone.as_str(),
                hello.known_version,
                hello.inventory_version
            ),
            ("a", 5, 10)
        );
        assert_eq!(s.hello(1_000).inventory_version, 1_000);
    }

    #[test]
    fn snapshots_older_or_equal_are_stale() {
        let now = Instant::now();
        let mut s = state(Duration::ZERO, None, vec![], now);
        assert_eq!(s.on_snapshot(4), SnapshotDecision::Stale);
        assert_eq!(s.on_snapshot(5), SnapshotDecision::Stale);
        assert_eq!(s.on_snapshot(6), SnapshotDecision::Apply);
        s.snapshot_applied(6);
        assert_eq!(s.view_version(), 6);
        let fresh = SyncState::new(
            "a",
            "r",
            "c",
            Duration::ZERO,
            Persisted::default(),
            vec![],
            now,
        );
        assert_eq!(fresh.on_snapshot(0), SnapshotDecision::Apply);
    }

    #[test]
    fn reports_on_connect_then_debounced_with_increasing_versions() {
        let t0 = Instant::now();
        let mut s = state(Duration::ZERO, None, vec![service("echo", "a", 1)], t0);
        assert!(s.poll_inventory(t0, 100).is_none(), "not connected");
        s.connected(t0);
        let r1 = s.poll_inventory(t0, 100).unwrap();
        assert_eq!((r1.version, r1.services.len()), (100, 1));
        assert!(s.poll_inventory(t0, 100).is_none());

        s.inventory_changed(vec![service("echo", "a", 2)], t0);
        assert!(
            s.poll_inventory(t0 + Duration::from_millis(10), 100)
                .is_none(),
            "debounced"
        );
        assert_eq!(s.next_deadline(t0), Some(t0 + INVENTORY_DEBOUNCE));
        s.inventory_changed(
            vec![service("echo", "a", 3)],
            t0 + Duration::from_millis(20),
        );
        let r2 = s.poll_inventory(t0 + INVENTORY_DEBOUNCE, 100).unwrap();
        assert_eq!(
            r2.version, 101,
            "strictly increasing even if the clock did not move"
        );
        assert_eq!(
            r2.services[0].localities[0].total, 3,
            "coalesced to the latest"
        );
    }

    #[test]
    fn a_newer_version_at_global_makes_us_jump_past_it() {
        let t0 = Instant::now();
        let mut s = state(Duration::ZERO, None, vec![], t0);
        s.connected(t0);
        let r = s.poll_inventory(t0, 10).unwrap();
        s.inventory_acked(r.version, t0);
        assert!(
            s.poll_inventory(t0 + INVENTORY_DEBOUNCE, 10).is_none(),
            "an ack of our own version changes nothing"
        );
        s.inventory_acked(500, t0);
        assert_eq!(
            s.poll_inventory(t0 + INVENTORY_DEBOUNCE, 10)
                .unwrap()
                .version,
            501
        );
    }

    #[test]
    fn no_smaller_inventory_during_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let last = pb::InventoryReport {
            version: 7,
            services: vec![service("echo", "a", 2), service("web", "a", 1)],
            gateways: vec![],
        };
        // Restored registry lacks `web` and one echo instance: the sidecars have not come back.
        let mut s = state(grace, Some(last), vec![service("echo", "a", 1)], t0);
        s.connected(t0);
        assert!(s.poll_inventory(t0 + Duration::from_secs(1), 0).is_none());
        assert_eq!(
            s.next_deadline(t0 + Duration::from_secs(1)),
            Some(t0 + grace)
        );

        // Growth to at least the old inventory is reported at once, even during the grace.
        s.inventory_changed(
            vec![
                service("echo", "a", 2),
                service("web", "a", 1),
                service("new", "a", 1),
            ],
            t0 + Duration::from_secs(2),
        );
        let r = s
            .poll_inventory(t0 + Duration::from_secs(2) + INVENTORY_DEBOUNCE, 0)
            .unwrap();
        assert_eq!((r.version, r.services.len()), (8, 3));

        // A shrink during the grace waits for its end, then goes out.
        s.inventory_changed(vec![service("echo", "a", 2)], t0 + Duration::from_secs(3));
        assert!(s.poll_inventory(t0 + Duration::from_secs(4), 0).is_none());
        let r = s.poll_inventory(t0 + grace, 0).unwrap();
        assert_eq!(r.services.len(), 1);
    }

    #[test]
    fn covers_compares_services_and_totals_per_locality() {
        assert!(covers(&[service("a", "z", 2)], &[service("a", "z", 2)]));
        assert!(covers(
            &[service("a", "z", 3), service("b", "z", 1)],
            &[service("a", "z", 2)]
        ));
        assert!(!covers(&[service("a", "z", 1)], &[service("a", "z", 2)]));
        assert!(!covers(&[service("a", "y", 2)], &[service("a", "z", 2)]));
        assert!(!covers(&[], &[service("a", "z", 2)]));
        assert!(covers(&[], &[]));
    }

    #[test]
    fn renewal_is_asked_once_until_answered() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut s = state(Duration::ZERO, None, vec![], t0);
        let later = wall + Duration::from_secs(3600);
        assert_eq!(s.poll_renewal(t0, wall, wall, later), None, "not connected");
        s.connected(t0);
        assert_eq!(s.poll_renewal(t0, wall, later, later), None, "not due");
        assert_eq!(s.poll_renewal(t0, wall, wall, later), Some((true, false)));
        assert_eq!(s.poll_renewal(t0, wall, wall, later), None, "in flight");
        s.renewal_done(false, t0);
        assert_eq!(
            s.poll_renewal(t0 + Duration::from_secs(1), wall, wall, wall),
            None,
            "retry later"
        );
        assert_eq!(
            s.poll_renewal(t0 + RENEW_RETRY, wall, wall, wall),
            Some((true, true))
        );
        // An unanswered request times out.
        assert_eq!(
            s.poll_renewal(t0 + RENEW_RETRY + RENEW_TIMEOUT, wall, wall, wall),
            Some((true, true))
        );
        // A disconnect forgets the request in flight.
        s.disconnected();
        s.connected(t0);
        assert!(
            s.poll_renewal(t0 + RENEW_RETRY + RENEW_TIMEOUT, wall, wall, wall)
                .is_some()
        );
    }

    #[test]
    fn an_observer_reports_nothing_and_renews_nothing_until_it_is_primary() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut s = state(Duration::ZERO, None, vec![service("echo", "a", 1)], t0);
        s.set_primary(false);
        assert_eq!(s.hello(100).role(), pb::SyncRole::Observer);
        s.connected(t0);
        assert!(
            s.poll_inventory(t0, 100).is_none(),
            "observers do not report"
        );
        assert_eq!(s.next_deadline(t0), None, "nothing to wake up for");
        assert_eq!(s.poll_renewal(t0, wall, wall, wall), None, "nor renew");
        s.inventory_changed(vec![service("echo", "a", 2)], t0);
        assert!(s.poll_inventory(t0 + INVENTORY_DEBOUNCE, 100).is_none());

        // Promoted (the client reconnects in the new role): the current inventory goes up at
        // once, with a version past anything an earlier primary could have used.
        s.disconnected();
        s.set_primary(true);
        assert_eq!(s.hello(200).role(), pb::SyncRole::Primary);
        s.connected(t0);
        let report = s.poll_inventory(t0, 200).expect("reported on promotion");
        assert_eq!((report.version, report.services.len()), (200, 1));
        assert_eq!(report.services[0].localities[0].healthy, 2);
        assert_eq!(s.poll_renewal(t0, wall, wall, wall), Some((true, true)));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| b.next_delay(0.0)).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        assert!(b.next_delay(0.99) >= BACKOFF_MAX.mul_f64(0.8));
        b.reset();
        assert_eq!(b.next_delay(0.0), BACKOFF_MIN);
    }
}
