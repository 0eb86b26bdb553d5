//! The sync stream's decisions as a pure state machine ([`SyncState`]): events and `now` in,
//! what to send out; with the reconnect [`Backoff`] and the timing constants it applies. Kept
//! apart from the client ([`super::SyncClient`]) so that the rules of the module docs of
//! [`super`] (no transient deletion, debounce, renewal timing) read and test without IO.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use strait_proto as pb;

/// Inventory changes closer together than this go out as one report.
pub const INVENTORY_DEBOUNCE: Duration = Duration::from_millis(50);
/// First reconnect delay; doubled after each failed attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A renewal request without an answer this long is given up and retried.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(30);
/// After a refused or failed renewal, wait this long before asking again.
pub const RENEW_RETRY: Duration = Duration::from_secs(60);

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
