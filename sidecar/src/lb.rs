//! Locality-aware load balancing for one outbound service: which endpoint, or which remote
//! zone (through the east-west gateways), the next try goes to.
//!
//! # Priority levels and spill-over
//!
//! The zone sends the service's [`pb::LocalityGroup`]s with a `priority` each: this zone's own
//! endpoints first, then the other zones in failover order (`LocalityFailover`, or by default
//! same region first). Groups with the same priority form one **level**. As with Envoy's
//! priority levels:
//!
//! - A level's **health** is its healthy share times the overprovisioning factor
//!   (`overprovisioningFactor`, default 140 %), capped at 100 %. This zone's group counts its
//!   endpoints that are healthy, not ejected by outlier detection and not excluded by the
//!   current retry, out of all its endpoints (of the route's subset, if any); a remote zone
//!   counts `weight` (its healthy endpoints) out of `total`. A **drained** group, an ejected
//!   or excluded remote zone, and a remote zone with no gateway to reach it count as 0 healthy.
//! - Level 0 takes `health₀` percent of the traffic, level 1 takes `health₁` of what is left,
//!   and so on. With factor 140: 2 local endpoints with 1 ejected → 50 % × 1.4 = 70 % stays,
//!   30 % spills to the next level; both out → everything spills.
//! - When the levels' healths add up to less than 100 %, they are scaled up to 100 % (Envoy's
//!   normalization), so a partly healthy service still gets all its traffic.
//! - When no level has any health, the balancer **panics** like Envoy: it first ignores outlier
//!   ejections, then also the retry's exclusions. Health reports, drains and weights are never
//!   ignored: they come from the control plane and are authoritative. Only when nothing at
//!   all can take a request does [`Balancer::pick`] return `None` (the caller answers 503).
//!
//! # Within a level
//!
//! The level's groups share its traffic in proportion to their healthy capacity (healthy
//! endpoints for this zone, `weight` for a remote zone), so a weight-0 zone gets nothing.
//!
//! - **Remote zone**: the pick is [`Target::Remote`], "through this zone's gateways to zone Z";
//!   the remote zone's own proxies choose the endpoint.
//! - **This zone's endpoints**: power of two choices over **peak EWMA** cost (linkerd's
//!   default): each endpoint's cost is its latency estimate × (requests in flight + 1). Peak
//!   EWMA jumps to a higher latency at once and forgets it with a 10 s time constant, so a
//!   slow endpoint is avoided within one request, and the in-flight factor spreads bursts.
//!   Plain least-request was the alternative; it ignores that a federation's endpoints can
//!   sit at very different distances (subzones, overloaded nodes), which latency captures.
//!   An endpoint never tried costs nothing, so it is tried and measured; once a try is under
//!   way it is assumed at 30 ms until its first sample. Fast failures are not penalized
//!   here: outlier detection ejects an endpoint that keeps failing.
//!
//! # Subsets (TrafficRoute)
//!
//! A route's label subset holds in every zone, as Envoy's subset balancer does across
//! priorities. This zone's endpoints are filtered by their labels. A remote zone reports its
//! healthy and total instances per subset the service's routes use (`LocalityGroup.subsets`);
//! for a subset pick its capacity is that count, and a zone that does not report the subset
//! counts as not serving it (0 of 0). So a subset's traffic spills only to zones that serve
//! it, weighted by their instances of it, and the chosen [`Target::Remote`] carries the subset
//! so that the remote zone picks one of its endpoints in it. A subset no zone serves gets
//! `None` (503 `no-healthy-upstream`) at once — never another subset.
//!
//! # Zone-pinned picks
//!
//! A connection to a zone-pinned VIP must be served by that zone or not at all:
//! [`Balancer::pick_within`] with a zone counts every other zone's group as absent, so the
//! levels, the spill-over and the panic passes above all play out inside that one group (this
//! zone's endpoints, or the remote zone through the gateways). Nothing spills to another zone;
//! when the zone is drained, reports no healthy endpoint, has no gateway, or is not in the
//! config at all, the pick is `None` (the caller answers 503) — never a silent fallback.
//!
//! # Retries
//!
//! `exclude` lists the targets a request already tried; they count as unhealthy for that pick
//! only, so a retry goes to another endpoint, and when none is left in the level, it spills
//! to the next locality by the same rule as any capacity loss.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use strait_proto as pb;

use crate::outlier::{Ejection, Outcome, OutlierConfig, OutlierDetector};
use crate::route::Subset;

/// `overprovisioningFactor` when no `LocalityFailover` sets one, in percent.
pub const DEFAULT_OVERPROVISIONING_PERCENT: u32 = 140;
/// Latency assumed for an endpoint that has not answered yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the latency estimate's decay.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// What identifies a target for exclusion, outcome recording and outlier detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKey {
    /// An endpoint of this zone, by address.
    Endpoint(String),
    /// A remote zone, by name.
    Zone(String),
}

/// Where one try goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An endpoint in this zone, sidecar to sidecar over mTLS.
    Endpoint {
        address: String,
        spiffe_id: String,
        instance: String,
    },
    /// Another zone, through one of this zone's east-west gateways. The gateways are
    /// equivalent; which one to use (an open connection, say) is the caller's choice.
    /// `identities` are whom the caller's TLS through the tunnel may reach. Shared, so a
    /// pick does not copy the lists.
    Remote {
        zone: String,
        gateways: Arc<[String]>,
        identities: Arc<[String]>,
        /// The route's subset, as the tunnel header carries it; `None`: any endpoint.
        subset: Option<Arc<str>>,
    },
}

impl Target {
    pub fn key(&self) -> TargetKey {
        match self {
            Target::Endpoint { address, .. } => TargetKey::Endpoint(address.clone()),
            Target::Remote { zone, .. } => TargetKey::Zone(zone.clone()),
        }
    }
}

/// The share of traffic a priority level takes, in percent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelLoad {
    pub priority: u32,
    pub percent: f64,
}

/// Balancer settings from a service's [`pb::RoutePolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    pub overprovisioning_percent: u32,
    pub outlier: OutlierConfig,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            overprovisioning_percent: DEFAULT_OVERPROVISIONING_PERCENT,
            outlier: OutlierConfig::default(),
        }
    }
}

impl BalancerConfig {
    /// The settings in force; 0 (absent) means the default factor. A factor below 100 % would
    /// spill traffic from a fully healthy level, so it is raised to 100.
    pub fn from_policy(policy: Option<&pb::RoutePolicy>) -> Self {
        let factor = policy.map_or(0, |p| p.overprovisioning_percent);
        Self {
            overprovisioning_percent: if factor == 0 {
                DEFAULT_OVERPROVISIONING_PERCENT
            } else {
                factor.max(100)
            },
            outlier: OutlierConfig::from_policy(policy.and_then(|p| p.circuit_breaker.as_ref())),
        }
    }
}

#[derive(Debug, Clone)]
struct Level {
    priority: u32,
    groups: Vec<Group>,
}

#[derive(Debug, Clone)]
struct Group {
    zone: String,
    /// The zone's key (used for remote zones only).
    key: TargetKey,
    drained: bool,
    kind: GroupKind,
}

#[derive(Debug, Clone)]
enum GroupKind {
    Local(Vec<LocalEndpoint>),
    Remote {
        gateways: Arc<[String]>,
        identities: Arc<[String]>,
        weight: u32,
        total: u32,
        /// (labels, healthy, total) per subset the zone reported.
        subsets: Vec<(HashMap<String, String>, u32, u32)>,
    },
}

/// An endpoint with its key built once, so picks do not allocate one per endpoint.
#[derive(Debug, Clone)]
struct LocalEndpoint {
    endpoint: pb::Endpoint,
    key: TargetKey,
}

/// Peak-EWMA latency and in-flight count of one endpoint.
#[derive(Debug, Clone)]
struct EndpointStats {
    outstanding: u32,
    rtt_nanos: f64,
    updated: Instant,
    /// Whether `rtt_nanos` holds a measurement yet, or only the prior.
    sampled: bool,
}

/// What the current pass may ignore (see "panic" in the module docs).
#[derive(Debug, Clone, Copy)]
struct Pass {
    ignore_ejection: bool,
    ignore_exclusion: bool,
}

const PASSES: [Pass; 3] = [
    Pass {
        ignore_ejection: false,
        ignore_exclusion: false,
    },
    Pass {
        ignore_ejection: true,
        ignore_exclusion: false,
    },
    Pass {
        ignore_ejection: true,
        ignore_exclusion: true,
    },
];

/// The load balancer of one outbound service. Pure: time and randomness are passed in.
#[derive(Debug, Clone)]
pub struct Balancer {
    levels: Vec<Level>,
    factor: f64,
    stats: HashMap<String, EndpointStats>,
    outlier: OutlierDetector<TargetKey>,
}

/// One pick's view of a request: its subset, what to avoid, and the time.
#[derive(Clone, Copy)]
struct View<'a> {
    now: Instant,
    /// Only this zone's group may serve (a zone-pinned VIP).
    zone: Option<&'a str>,
    subset: Option<&'a Subset>,
    exclude: &'a [TargetKey],
    pass: Pass,
}

impl Balancer {
    /// A balancer over `groups` (any order; levels are formed by `priority`).
    pub fn new(groups: &[pb::LocalityGroup], config: BalancerConfig) -> Self {
        let mut balancer = Self {
            levels: Vec::new(),
            factor: 1.0,
            stats: HashMap::new(),
            outlier: OutlierDetector::new(config.outlier.clone()),
        };
        balancer.update(groups, config);
        balancer
    }

    /// A balancer for `service`, with its policy's settings.
    pub fn for_service(service: &pb::OutboundService) -> Self {
        Self::new(
            &service.localities,
            BalancerConfig::from_policy(service.policy.as_ref()),
        )
    }

    /// Applies a new config version. Latency estimates, in-flight counts and outlier state of
    /// targets that are still there are kept: a push must neither forget a slow endpoint nor
    /// forgive a failing one.
    pub fn update(&mut self, groups: &[pb::LocalityGroup], config: BalancerConfig) {
        let mut levels: Vec<Level> = Vec::new();
        let mut sorted: Vec<&pb::LocalityGroup> = groups.iter().collect();
        sorted.sort_by_key(|g| g.priority);
        for g in sorted {
            // This zone's group lists endpoints; a remote zone's has none and is reached
            // through gateways.
            let kind = if g.endpoints.is_empty() {
                GroupKind::Remote {
                    gateways: g.local_gateways.as_slice().into(),
                    identities: g.identities.as_slice().into(),
                    weight: g.weight,
                    total: g.total,
                    subsets: g
                        .subsets
                        .iter()
                        .map(|s| (s.labels.clone(), s.healthy, s.total))
                        .collect(),
                }
            } else {
                GroupKind::Local(
                    g.endpoints
                        .iter()
                        .map(|e| LocalEndpoint {
                            endpoint: e.clone(),
                            key: TargetKey::Endpoint(e.address.clone()),
                        })
                        .collect(),
                )
            };
            let group = Group {
                zone: g.zone.clone(),
                key: TargetKey::Zone(g.zone.clone()),
                drained: g.drained,
                kind,
            };
            match levels.last_mut() {
                Some(level) if level.priority == g.priority => level.groups.push(group),
                _ => levels.push(Level {
                    priority: g.priority,
                    groups: vec![group],
                }),
            }
        }
        self.levels = levels;
        self.factor = f64::from(config.overprovisioning_percent) / 100.0;
        let keys: Vec<TargetKey> = self
            .levels
            .iter()
            .flat_map(|l| &l.groups)
            .flat_map(|g| match &g.kind {
                GroupKind::Local(eps) => eps.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
                GroupKind::Remote { .. } => vec![g.key.clone()],
            })
            .collect();
        let addresses: HashSet<&str> = keys
            .iter()
            .filter_map(|k| match k {
                TargetKey::Endpoint(a) => Some(a.as_str()),
                TargetKey::Zone(_) => None,
            })
            .collect();
        self.stats
            .retain(|address, _| addresses.contains(address.as_str()));
        self.outlier.set_config(config.outlier);
        self.outlier.set_members(keys);
    }

    /// The outlier detector, to read ejections (for `/config` and metrics).
    pub fn outlier(&self) -> &OutlierDetector<TargetKey> {
        &self.outlier
    }

    /// The targets a probe may [`reinstate`](Self::reinstate) before their ejection is up:
    /// this zone's endpoints ejected because they could not be connected to (an app that
    /// answers 5xx would pass a connect probe), and every ejected remote zone (whatever ejected
    /// it — a lost path, resets on a dead tunnel — a tunnel through to one of its sidecars is
    /// the test that it is back).
    pub fn probe_candidates(&self, now: Instant) -> Vec<Target> {
        let ejected = self.outlier.ejected_for_connect_failures(now);
        let mut targets = Vec::new();
        for group in self.levels.iter().flat_map(|l| &l.groups) {
            match &group.kind {
                GroupKind::Local(endpoints) => {
                    targets.extend(endpoints.iter().filter(|e| ejected.contains(&&e.key)).map(
                        |e| Target::Endpoint {
                            address: e.endpoint.address.clone(),
                            spiffe_id: e.endpoint.spiffe_id.clone(),
                            instance: e.endpoint.instance.clone(),
                        },
                    ));
                }
                GroupKind::Remote {
                    gateways,
                    identities,
                    ..
                } => {
                    if self.outlier.is_ejected(&group.key, now) {
                        targets.push(Target::Remote {
                            zone: group.zone.clone(),
                            gateways: gateways.clone(),
                            identities: identities.clone(),
                            subset: None,
                        });
                    }
                }
            }
        }
        targets
    }

    /// Ends the ejection of `key` (a probe reached it).
    pub fn reinstate(&mut self, key: &TargetKey, now: Instant) -> bool {
        self.outlier.reinstate(key, now)
    }

    /// The share of traffic each level takes now, for `subset` and with `exclude` avoided
    /// (before any panic). All zero means the balancer is in panic mode.
    pub fn loads(
        &self,
        now: Instant,
        subset: Option<&Subset>,
        exclude: &[TargetKey],
    ) -> Vec<LevelLoad> {
        let view = View {
            now,
            zone: None,
            subset,
            exclude,
            pass: PASSES[0],
        };
        let percents = self
            .level_loads(&view)
            .unwrap_or_else(|| vec![0.0; self.levels.len()]);
        self.levels
            .iter()
            .zip(percents)
            .map(|(l, percent)| LevelLoad {
                priority: l.priority,
                percent,
            })
            .collect()
    }

    /// Chooses the target of the next try. `subset` comes from the route; `exclude` holds the
    /// targets this request already tried. `None` only when nothing can take the request.
    pub fn pick(
        &self,
        now: Instant,
        rng: &mut impl Rng,
        subset: Option<&Subset>,
        exclude: &[TargetKey],
    ) -> Option<Target> {
        self.pick_within(now, rng, None, subset, exclude)
    }

    /// [`Balancer::pick`], restricted to `zone`'s group when `zone` is set (a zone-pinned
    /// VIP; see the module docs): the target is in that zone or there is none.
    pub fn pick_within(
        &self,
        now: Instant,
        rng: &mut impl Rng,
        zone: Option<&str>,
        subset: Option<&Subset>,
        exclude: &[TargetKey],
    ) -> Option<Target> {
        PASSES.iter().find_map(|&pass| {
            let view = View {
                now,
                zone,
                subset,
                exclude,
                pass,
            };
            self.pick_in(&view, rng)
        })
    }

    /// Records that a try to `key` starts (it counts as in flight until `on_complete`).
    pub fn on_start(&mut self, key: &TargetKey, now: Instant) {
        if let TargetKey::Endpoint(address) = key {
            // Looked up first: `entry` would copy the address on every try, not only the first.
            let stats = match self.stats.get_mut(address) {
                Some(stats) => stats,
                None => self
                    .stats
                    .entry(address.clone())
                    .or_insert_with(|| EndpointStats {
                        outstanding: 0,
                        rtt_nanos: nanos(DEFAULT_RTT),
                        updated: now,
                        sampled: false,
                    }),
            };
            stats.outstanding = stats.outstanding.saturating_add(1);
        }
    }

    /// Records how a try to `key` ended and how long it took; returns the ejection it caused.
    pub fn on_complete(
        &mut self,
        key: &TargetKey,
        now: Instant,
        latency: Duration,
        outcome: Outcome,
    ) -> Option<Ejection> {
        // A connect failure or reset says nothing about how fast the endpoint serves.
        let answered = matches!(
            outcome,
            Outcome::Response(_) | Outcome::Grpc(_) | Outcome::Timeout
        );
        self.finished(key, now, latency, answered);
        self.on_outcome(key, outcome, now)
    }

    /// Records that a try to `key` was answered after `latency` but that its outcome comes
    /// later (a gRPC call's status, in the trailers): [`Self::on_outcome`] then.
    pub fn on_answered(&mut self, key: &TargetKey, now: Instant, latency: Duration) {
        self.finished(key, now, latency, true);
    }

    /// Records the outcome of a try to `key` for outlier detection; returns the ejection it
    /// caused.
    pub fn on_outcome(
        &mut self,
        key: &TargetKey,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Ejection> {
        // A try that was in flight across a config push may end after its target left;
        // recording it would put the target back into the set `maxEjectionPercent` counts.
        if !self.outlier.contains(key) {
            return None;
        }
        self.outlier.record(key, outcome, now)
    }

    /// A try to `key` is no longer in flight; `answered`: its latency says how fast the
    /// endpoint serves.
    fn finished(&mut self, key: &TargetKey, now: Instant, latency: Duration, answered: bool) {
        if let TargetKey::Endpoint(address) = key
            && let Some(stats) = self.stats.get_mut(address)
        {
            stats.outstanding = stats.outstanding.saturating_sub(1);
            if answered {
                stats.observe(nanos(latency), now);
            }
        }
    }

    // === internals ===

    fn pick_in(&self, view: &View<'_>, rng: &mut impl Rng) -> Option<Target> {
        let loads = self.level_loads(view)?;
        let mut draw = rng.random::<f64>() * 100.0;
        // The last level with load absorbs rounding at the top of the range.
        let last = loads.iter().rposition(|&l| l > 0.0)?;
        let index = loads
            .iter()
            .position(|&load| {
                if draw < load {
                    true
                } else {
                    draw -= load;
                    false
                }
            })
            .unwrap_or(last);
        self.pick_in_level(&self.levels[index], view, rng)
    }

    /// Envoy's priority load: each level's share in percent, or `None` when no level has any
    /// health in this pass.
    fn level_loads(&self, view: &View<'_>) -> Option<Vec<f64>> {
        let health: Vec<f64> = self
            .levels
            .iter()
            .map(|level| {
                let (healthy, total) = level
                    .groups
                    .iter()
                    .map(|g| self.group_capacity(g, view))
                    .fold((0_u64, 0_u64), |(h, t), (gh, gt)| (h + gh, t + gt));
                if total == 0 {
                    0.0
                } else {
                    (100.0 * self.factor * healthy as f64 / total as f64).min(100.0)
                }
            })
            .collect();
        let sum: f64 = health.iter().sum();
        if sum <= 0.0 {
            return None;
        }
        let normalized_total = sum.min(100.0);
        let mut remaining = 100.0_f64;
        Some(
            health
                .iter()
                .map(|h| {
                    let load = (h * 100.0 / normalized_total).min(remaining);
                    remaining -= load;
                    load
                })
                .collect(),
        )
    }

    /// (healthy, total) of a group in this view.
    fn group_capacity(&self, group: &Group, view: &View<'_>) -> (u64, u64) {
        if view.zone.is_some_and(|zone| zone != group.zone) {
            return (0, 0);
        }
        match &group.kind {
            GroupKind::Local(endpoints) => {
                let mut total = 0_u64;
                let mut healthy = 0_u64;
                for e in endpoints
                    .iter()
                    .filter(|e| in_subset(&e.endpoint, view.subset))
                {
                    total += 1;
                    if !group.drained && self.endpoint_available(e, view) {
                        healthy += 1;
                    }
                }
                (healthy, total)
            }
            GroupKind::Remote {
                gateways,
                weight,
                total,
                subsets,
                ..
            } => {
                let (weight, total) = match view.subset {
                    None => (weight, total),
                    Some(subset) => match subsets.iter().find(|(labels, _, _)| subset.is(labels)) {
                        Some((_, healthy, total)) => (healthy, total),
                        None => return (0, 0),
                    },
                };
                let usable =
                    !group.drained && !gateways.is_empty() && self.usable(&group.key, view);
                let healthy = if usable { u64::from(*weight) } else { 0 };
                // `total` below `weight` would be an inconsistent report; never let a level
                // look more than fully healthy because of it.
                (healthy, u64::from(*total).max(u64::from(*weight)))
            }
        }
    }

    fn endpoint_available(&self, e: &LocalEndpoint, view: &View<'_>) -> bool {
        e.endpoint.healthy && self.usable(&e.key, view)
    }

    /// Neither ejected nor excluded, as far as this pass looks.
    fn usable(&self, key: &TargetKey, view: &View<'_>) -> bool {
        (view.pass.ignore_ejection || !self.outlier.is_ejected(key, view.now))
            && (view.pass.ignore_exclusion || !view.exclude.contains(key))
    }

    fn pick_in_level(&self, level: &Level, view: &View<'_>, rng: &mut impl Rng) -> Option<Target> {
        let capacities: Vec<u64> = level
            .groups
            .iter()
            .map(|g| self.group_capacity(g, view).0)
            .collect();
        let sum: u64 = capacities.iter().sum();
        if sum == 0 {
            return None;
        }
        let mut draw = rng.random_range(0..sum);
        let (group, _) = level.groups.iter().zip(&capacities).find(|(_, c)| {
            if draw < **c {
                true
            } else {
                draw -= **c;
                false
            }
        })?;
        match &group.kind {
            GroupKind::Remote {
                gateways,
                identities,
                ..
            } => Some(Target::Remote {
                zone: group.zone.clone(),
                gateways: gateways.clone(),
                identities: identities.clone(),
                subset: view.subset.map(|s| s.wire().clone()),
            }),
            GroupKind::Local(endpoints) => {
                let candidates: Vec<&pb::Endpoint> = endpoints
                    .iter()
                    .filter(|e| {
                        in_subset(&e.endpoint, view.subset) && self.endpoint_available(e, view)
                    })
                    .map(|e| &e.endpoint)
                    .collect();
                let chosen = self.p2c(&candidates, view.now, rng)?;
                Some(Target::Endpoint {
                    address: chosen.address.clone(),
                    spiffe_id: chosen.spiffe_id.clone(),
                    instance: chosen.instance.clone(),
                })
            }
        }
    }

    /// Power of two choices: the cheaper of two distinct random candidates.
    fn p2c<'e>(
        &self,
        candidates: &[&'e pb::Endpoint],
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<&'e pb::Endpoint> {
        match candidates {
            [] => None,
            [only] => Some(only),
            _ => {
                let n = candidates.len();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (candidates[a], candidates[b]);
                Some(if self.cost(eb, now) < self.cost(ea, now) {
                    eb
                } else {
                    ea
                })
            }
        }
    }

    fn cost(&self, e: &pb::Endpoint, now: Instant) -> f64 {
        match self.stats.get(&e.address) {
            Some(s) => s.decayed(now).max(1.0) * f64::from(s.outstanding.saturating_add(1)),
            // Never tried: optimistic, so a new endpoint gets a first request and a sample. A
            // pessimistic prior would starve it whenever the others answer faster than the
            // prior (always, on a LAN), however long it stays. Its first try creates its stats
            // (`on_start`), so concurrent picks do not all rush to it.
            None => 0.0,
        }
    }
}

impl EndpointStats {
    /// The estimate at `now`: it decays toward 0 while nothing is observed, so an endpoint
    /// that was slow once is tried again eventually (tower's peak EWMA does the same).
    fn decayed(&self, now: Instant) -> f64 {
        self.rtt_nanos * decay_weight(now.saturating_duration_since(self.updated))
    }

    fn observe(&mut self, rtt: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        if !self.sampled {
            // The first measurement replaces the prior: decaying from it would keep a new,
            // fast endpoint looking slow for tens of seconds.
            self.rtt_nanos = rtt;
            self.sampled = true;
        } else if rtt > self.rtt_nanos {
            // Peak sensitivity: a slower response takes effect at once.
            self.rtt_nanos = rtt;
        } else {
            let w = decay_weight(elapsed);
            self.rtt_nanos = self.rtt_nanos * w + rtt * (1.0 - w);
        }
        self.updated = now;
    }
}

fn decay_weight(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp()
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn in_subset(e: &pb::Endpoint, subset: Option<&Subset>) -> bool {
    subset.is_none_or(|s| s.matches(&e.labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::BTreeMap;

    const DRAWS: usize = 10_000;

    fn endpoint(address: &str, healthy: bool, version: &str) -> pb::Endpoint {
        pb::Endpoint {
            address: address.to_owned(),
            instance: format!("i-{address}"),
            labels: [("version".to_owned(), version.to_owned())].into(),
            spiffe_id: "spiffe://strait.local/ns/demo/sa/echo".to_owned(),
            healthy,
        }
    }

    fn local(endpoints: Vec<pb::Endpoint>) -> pb::LocalityGroup {
        let healthy = endpoints.iter().filter(|e| e.healthy).count() as u32;
        pb::LocalityGroup {
            zone: "zone-a".into(),
            region: "eu".into(),
            priority: 0,
            total: endpoints.len() as u32,
            weight: healthy,
            endpoints,
            local_gateways: vec![],
            identities: vec![],
            drained: false,
            ..Default::default()
        }
    }

    fn remote(zone: &str, priority: u32, weight: u32, total: u32) -> pb::LocalityGroup {
        pb::LocalityGroup {
            zone: zone.into(),
            region: "eu".into(),
            priority,
            endpoints: vec![],
            local_gateways: vec!["10.0.0.1:15008".into()],
            identities: vec!["spiffe://strait.local/ns/demo/sa/echo".into()],
            weight,
            total,
            drained: false,
            ..Default::default()
        }
    }

    fn two_local_and_zone_b() -> Vec<pb::LocalityGroup> {
        vec![
            local(vec![endpoint("a1", true, "v1"), endpoint("a2", true, "v2")]),
            remote("zone-b", 1, 3, 3),
        ]
    }

    /// Outlier settings that may eject every target, to test the balancer alone.
    fn eject_all() -> BalancerConfig {
        BalancerConfig {
            outlier: OutlierConfig {
                max_ejection_percent: 100.0,
                ..OutlierConfig::default()
            },
            ..BalancerConfig::default()
        }
    }

    fn eject(b: &mut Balancer, key: &TargetKey, now: Instant) {
        for _ in 0..5 {
            b.on_start(key, now);
            b.on_complete(key, now, Duration::from_millis(1), Outcome::ConnectFailure);
        }
        assert!(b.outlier().is_ejected(key, now), "{key:?} not ejected");
    }

    fn ep(a: &str) -> TargetKey {
        TargetKey::Endpoint(a.to_owned())
    }

    fn zone(z: &str) -> TargetKey {
        TargetKey::Zone(z.to_owned())
    }

    fn where_to(t: &Target) -> String {
        match t {
            Target::Endpoint { address, .. } => address.clone(),
            Target::Remote { zone, .. } => zone.clone(),
        }
    }

    /// How many of `DRAWS` picks went to each endpoint or zone.
    fn histogram(
        b: &Balancer,
        now: Instant,
        subset: Option<&Subset>,
        exclude: &[TargetKey],
    ) -> BTreeMap<String, usize> {
        let mut rng = StdRng::seed_from_u64(9);
        let mut counts = BTreeMap::new();
        for _ in 0..DRAWS {
            let t = b.pick(now, &mut rng, subset, exclude).unwrap();
            *counts.entry(where_to(&t)).or_insert(0) += 1;
        }
        counts
    }

    fn share(counts: &BTreeMap<String, usize>, key: &str) -> f64 {
        100.0 * *counts.get(key).unwrap_or(&0) as f64 / DRAWS as f64
    }

    fn percents(loads: &[LevelLoad]) -> Vec<f64> {
        loads
            .iter()
            .map(|l| (l.percent * 1e6).round() / 1e6)
            .collect()
    }

    /// Sequential requests to fast endpoints must still reach an endpoint never tried (it
    /// starved under a pessimistic prior for unmeasured endpoints).
    #[test]
    fn an_untried_endpoint_gets_traffic_under_sequential_load() {
        let mut b = Balancer::new(
            &[local(vec![endpoint("a1", true, "v1")])],
            BalancerConfig::default(),
        );
        let mut rng = StdRng::seed_from_u64(3);
        let mut now = Instant::now();
        for _ in 0..50 {
            b.on_start(&ep("a1"), now);
            b.on_complete(
                &ep("a1"),
                now,
                Duration::from_micros(500),
                Outcome::Response(200),
            );
            now += Duration::from_millis(1);
        }
        b.update(
            &[local(vec![
                endpoint("a1", true, "v1"),
                endpoint("a2", true, "v2"),
            ])],
            BalancerConfig::default(),
        );
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..200 {
            let target = b.pick(now, &mut rng, None, &[]).expect("a target");
            let key = target.key();
            b.on_start(&key, now);
            b.on_complete(
                &key,
                now,
                Duration::from_micros(500),
                Outcome::Response(200),
            );
            *counts.entry(where_to(&target)).or_default() += 1;
            now += Duration::from_millis(1);
        }
        assert!(
            counts.get("a2").copied().unwrap_or(0) > 50,
            "the new endpoint starved: {counts:?}"
        );
    }

    #[test]
    fn healthy_local_zone_takes_everything() {
        let b = Balancer::new(&two_local_and_zone_b(), BalancerConfig::default());
        let now = Instant::now();
        assert_eq!(percents(&b.loads(now, None, &[])), vec![100.0, 0.0]);
        let counts = histogram(&b, now, None, &[]);
        assert_eq!(share(&counts, "zone-b"), 0.0);
        // P2C with equal costs spreads evenly.
        assert!((share(&counts, "a1") - 50.0).abs() < 3.0, "{counts:?}");
    }

    #[test]
    fn one_of_two_ejected_keeps_70_percent_local() {
        let now = Instant::now();
        let mut b = Balancer::new(&two_local_and_zone_b(), BalancerConfig::default());
        // Default max ejection 50%: 1 of 3 targets may go.
        eject(&mut b, &ep("a1"), now);
        assert_eq!(percents(&b.loads(now, None, &[])), vec![70.0, 30.0]);
        let counts = histogram(&b, now, None, &[]);
        assert_eq!(share(&counts, "a1"), 0.0);
        assert!((share(&counts, "a2") - 70.0).abs() < 2.0, "{counts:?}");
        assert!((share(&counts, "zone-b") - 30.0).abs() < 2.0, "{counts:?}");
        // When the ejection ends, traffic comes home.
        let later = now + Duration::from_secs(30);
        assert_eq!(percents(&b.loads(later, None, &[])), vec![100.0, 0.0]);
    }

    #[test]
    fn both_local_ejected_sends_everything_to_the_next_level() {
        let now = Instant::now();
        let mut b = Balancer::new(&two_local_and_zone_b(), eject_all());
        eject(&mut b, &ep("a1"), now);
        eject(&mut b, &ep("a2"), now);
        assert_eq!(percents(&b.loads(now, None, &[])), vec![0.0, 100.0]);
        let counts = histogram(&b, now, None, &[]);
        assert_eq!(share(&counts, "zone-b"), 100.0);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            b.pick(now, &mut rng, None, &[]),
            Some(Target::Remote {
                zone: "zone-b".into(),
                gateways: vec!["10.0.0.1:15008".to_owned()].into(),
                identities: vec!["spiffe://strait.local/ns/demo/sa/echo".to_owned()].into(),
                subset: None,
            })
        );
    }

    #[test]
    fn unhealthy_reports_count_like_ejections() {
        let groups = vec![
            local(vec![
                endpoint("a1", false, "v1"),
                endpoint("a2", true, "v1"),
                endpoint("a3", true, "v1"),
                endpoint("a4", true, "v1"),
            ]),
            remote("zone-b", 1, 5, 5),
        ];
        let b = Balancer::new(&groups, BalancerConfig::default());
        // 75% healthy × 1.4 = 105% → capped, nothing spills.
        assert_eq!(
            percents(&b.loads(Instant::now(), None, &[])),
            vec![100.0, 0.0]
        );
        // With a factor of 100, 25% spills.
        let b = Balancer::new(
            &groups,
            BalancerConfig {
                overprovisioning_percent: 100,
                ..BalancerConfig::default()
            },
        );
        assert_eq!(
            percents(&b.loads(Instant::now(), None, &[])),
            vec![75.0, 25.0]
        );
    }

    #[test]
    fn failover_order_is_respected() {
        // Priorities decide, not the order of the list.
        let groups = vec![
            remote("zone-d", 3, 4, 4),
            remote("zone-c", 2, 4, 4),
            local(vec![endpoint("a1", false, "v1")]),
            remote("zone-b", 1, 0, 4),
        ];
        let b = Balancer::new(&groups, BalancerConfig::default());
        let now = Instant::now();
        // Local and zone-b are at 0 health: zone-c (priority 2) takes everything, zone-d none.
        let loads = b.loads(now, None, &[]);
        assert_eq!(
            loads.iter().map(|l| l.priority).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(percents(&loads), vec![0.0, 0.0, 100.0, 0.0]);
        let counts = histogram(&b, now, None, &[]);
        assert_eq!(share(&counts, "zone-c"), 100.0);
        // zone-c half healthy: 70% there, 30% on to zone-d.
        let groups = vec![remote("zone-c", 2, 2, 4), remote("zone-d", 3, 4, 4)];
        let b = Balancer::new(&groups, BalancerConfig::default());
        assert_eq!(percents(&b.loads(now, None, &[])), vec![70.0, 30.0]);
    }

    #[test]
    fn drained_and_weight_zero_zones_get_nothing() {
        let mut drained = remote("zone-b", 1, 5, 5);
        drained.drained = true;
        let groups = vec![
            local(vec![endpoint("a1", false, "v1")]),
            drained,
            remote("zone-c", 1, 0, 5),
            remote("zone-d", 1, 5, 5),
        ];
        let b = Balancer::new(&groups, BalancerConfig::default());
        let counts = histogram(&b, Instant::now(), None, &[]);
        assert_eq!(counts.keys().collect::<Vec<_>>(), vec!["zone-d"]);
    }

    #[test]
    fn a_drained_local_zone_spills_everything() {
        let mut groups = two_local_and_zone_b();
        groups[0].drained = true;
        let b = Balancer::new(&groups, BalancerConfig::default());
        let counts = histogram(&b, Instant::now(), None, &[]);
        assert_eq!(share(&counts, "zone-b"), 100.0);
    }

    #[test]
    fn zones_of_one_level_share_by_weight() {
        let groups = vec![remote("zone-b", 0, 1, 1), remote("zone-c", 0, 3, 3)];
        let b = Balancer::new(&groups, BalancerConfig::default());
        let counts = histogram(&b, Instant::now(), None, &[]);
        assert!((share(&counts, "zone-c") - 75.0).abs() < 2.0, "{counts:?}");
        assert!((share(&counts, "zone-b") - 25.0).abs() < 2.0, "{counts:?}");
    }

    #[test]
    fn partly_healthy_levels_are_normalized() {
        // 1 of 4 healthy in each of two levels: 35% + 35% health → 50/50, not 35/35 + errors.
        let groups = vec![remote("zone-b", 0, 1, 4), remote("zone-c", 1, 1, 4)];
        let b = Balancer::new(&groups, BalancerConfig::default());
        assert_eq!(
            percents(&b.loads(Instant::now(), None, &[])),
            vec![50.0, 50.0]
        );
    }

    #[test]
    fn subsets_filter_local_endpoints_and_spill_when_absent() {
        let now = Instant::now();
        let b = Balancer::new(&two_local_and_zone_b(), BalancerConfig::default());
        let v2 = Subset::new([("version".to_owned(), "v2".to_owned())].into());
        let counts = histogram(&b, now, Some(&v2), &[]);
        assert_eq!(share(&counts, "a2"), 100.0);
        // No local v3, and zone b does not report serving it: nobody takes the request (503),
        // never an endpoint of another subset.
        let v3 = Subset::new([("version".to_owned(), "v3".to_owned())].into());
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(b.pick(now, &mut rng, Some(&v3), &[]), None);
        // Once zone b reports v3 instances, the subset's traffic goes there, and the pick
        // carries the subset so that zone b serves it from v3.
        let mut groups = two_local_and_zone_b();
        groups[1].subsets = vec![pb::SubsetCount {
            labels: [("version".to_owned(), "v3".to_owned())].into(),
            healthy: 1,
            total: 1,
        }];
        let b = Balancer::new(&groups, BalancerConfig::default());
        let counts = histogram(&b, now, Some(&v3), &[]);
        assert_eq!(share(&counts, "zone-b"), 100.0);
        match b.pick(now, &mut rng, Some(&v3), &[]) {
            Some(Target::Remote { subset, .. }) => {
                assert_eq!(subset.as_deref(), Some("version=v3"));
            }
            other => panic!("{other:?}"),
        }
        // A reported subset with no healthy instance is not served either.
        groups[1].subsets[0].healthy = 0;
        let b = Balancer::new(&groups, BalancerConfig::default());
        assert_eq!(b.pick(now, &mut rng, Some(&v3), &[]), None);
    }

    #[test]
    fn a_retry_avoids_what_it_tried() {
        let now = Instant::now();
        let b = Balancer::new(&two_local_and_zone_b(), BalancerConfig::default());
        let counts = histogram(&b, now, None, &[ep("a1")]);
        // One of two local endpoints excluded: 70% to a2, 30% to the next locality.
        assert_eq!(share(&counts, "a1"), 0.0);
        assert!((share(&counts, "a2") - 70.0).abs() < 2.0, "{counts:?}");
        // Both excluded: the retry goes to the next locality.
        let counts = histogram(&b, now, None, &[ep("a1"), ep("a2")]);
        assert_eq!(share(&counts, "zone-b"), 100.0);
        // A failed zone is avoided the same way.
        let groups = vec![remote("zone-b", 0, 3, 3), remote("zone-c", 1, 3, 3)];
        let b = Balancer::new(&groups, BalancerConfig::default());
        let counts = histogram(&b, now, None, &[zone("zone-b")]);
        assert_eq!(share(&counts, "zone-c"), 100.0);
    }

    #[test]
    fn panic_mode_prefers_ejected_then_excluded_over_nothing() {
        let now = Instant::now();
        let groups = vec![local(vec![
            endpoint("a1", true, "v1"),
            endpoint("a2", true, "v1"),
        ])];
        let mut b = Balancer::new(&groups, eject_all());
        eject(&mut b, &ep("a1"), now);
        // a2 excluded, a1 ejected: a1 (ejection is only a guess) before a2.
        let counts = histogram(&b, now, None, &[ep("a2")]);
        assert_eq!(share(&counts, "a1"), 100.0);
        eject(&mut b, &ep("a2"), now);
        let counts = histogram(&b, now, None, &[ep("a1"), ep("a2")]);
        assert_eq!(share(&counts, "a1") + share(&counts, "a2"), 100.0);
        // Health reports are never overridden: nothing healthy, nothing picked.
        let b = Balancer::new(&[local(vec![endpoint("a1", false, "v1")])], eject_all());
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(b.pick(now, &mut rng, None, &[]), None);
        let empty = Balancer::new(&[], BalancerConfig::default());
        assert_eq!(empty.pick(now, &mut rng, None, &[]), None);
    }

    #[test]
    fn a_zone_that_keeps_failing_is_ejected_and_traffic_moves() {
        let now = Instant::now();
        let groups = vec![remote("zone-b", 0, 3, 3), remote("zone-c", 1, 3, 3)];
        let mut b = Balancer::new(&groups, BalancerConfig::default());
        for _ in 0..5 {
            b.on_start(&zone("zone-b"), now);
            b.on_complete(&zone("zone-b"), now, Duration::ZERO, Outcome::Response(503));
        }
        let counts = histogram(&b, now, None, &[]);
        assert_eq!(share(&counts, "zone-c"), 100.0);
    }

    #[test]
    fn p2c_avoids_slow_and_busy_endpoints() {
        let now = Instant::now();
        let groups = vec![local(vec![
            endpoint("fast", true, "v1"),
            endpoint("slow", true, "v1"),
        ])];
        let mut b = Balancer::new(&groups, BalancerConfig::default());
        for (address, ms) in [("fast", 5), ("slow", 500)] {
            b.on_start(&ep(address), now);
            b.on_complete(
                &ep(address),
                now,
                Duration::from_millis(ms),
                Outcome::Response(200),
            );
        }
        // With two candidates P2C compares both: the fast one always wins.
        let counts = histogram(&b, now, None, &[]);
        assert_eq!(share(&counts, "fast"), 100.0);
        // Requests piling up on "fast" (5 ms × 200 in flight > 500 ms × 1) shift the choice.
        for _ in 0..200 {
            b.on_start(&ep("fast"), now);
        }
        let counts = histogram(&b, now, None, &[]);
        assert_eq!(share(&counts, "slow"), 100.0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut s = EndpointStats {
            outstanding: 0,
            rtt_nanos: nanos(DEFAULT_RTT),
            updated: t0,
            sampled: false,
        };
        s.observe(nanos(Duration::from_millis(300)), t0);
        assert_eq!(s.rtt_nanos, nanos(Duration::from_millis(300)));
        // A fast sample 10 s later moves the estimate most of the way (1 - e^-1 ≈ 63%).
        let t1 = t0 + EWMA_DECAY;
        s.observe(nanos(Duration::from_millis(10)), t1);
        let expected = 300.0 * (-1.0_f64).exp() + 10.0 * (1.0 - (-1.0_f64).exp());
        assert!((s.rtt_nanos / 1e6 - expected).abs() < 1e-6);
        // Without samples, the estimate fades so the endpoint is probed again.
        assert!(s.decayed(t1 + 10 * EWMA_DECAY) < 0.001 * s.rtt_nanos);
    }

    #[test]
    fn updates_keep_state_of_remaining_targets() {
        let now = Instant::now();
        let mut b = Balancer::new(&two_local_and_zone_b(), BalancerConfig::default());
        eject(&mut b, &ep("a1"), now);
        let mut groups = two_local_and_zone_b();
        groups[1].weight = 2;
        b.update(&groups, BalancerConfig::default());
        assert!(b.outlier().is_ejected(&ep("a1"), now));
        // a1 leaves the config: its state goes with it, and a late answer does not bring it
        // back into the set.
        groups[0].endpoints.remove(0);
        b.update(&groups, BalancerConfig::default());
        assert!(!b.outlier().is_ejected(&ep("a1"), now));
        b.on_complete(&ep("a1"), now, Duration::ZERO, Outcome::ConnectFailure);
        assert!(!b.outlier().contains(&ep("a1")));
    }

    #[test]
    fn config_from_policy() {
        assert_eq!(BalancerConfig::from_policy(None), BalancerConfig::default());
        let p = pb::RoutePolicy {
            overprovisioning_percent: 200,
            ..Default::default()
        };
        assert_eq!(
            BalancerConfig::from_policy(Some(&p)).overprovisioning_percent,
            200
        );
        let p = pb::RoutePolicy {
            overprovisioning_percent: 50,
            ..Default::default()
        };
        assert_eq!(
            BalancerConfig::from_policy(Some(&p)).overprovisioning_percent,
            100
        );
        let service = pb::OutboundService {
            localities: two_local_and_zone_b(),
            ..Default::default()
        };
        let b = Balancer::for_service(&service);
        assert_eq!(b.loads(Instant::now(), None, &[]).len(), 2);
    }

    /// Where `DRAWS` picks pinned to `pinned` went, or `None` for a pick that found nothing.
    fn pinned_histogram(
        b: &Balancer,
        now: Instant,
        pinned: &str,
        exclude: &[TargetKey],
    ) -> BTreeMap<Option<String>, usize> {
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = BTreeMap::new();
        for _ in 0..DRAWS {
            let t = b.pick_within(now, &mut rng, Some(pinned), None, exclude);
            *counts.entry(t.as_ref().map(where_to)).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn pinned_to_a_remote_zone_never_picks_the_healthy_local_level() {
        let b = Balancer::new(&two_local_and_zone_b(), BalancerConfig::default());
        let now = Instant::now();
        let counts = pinned_histogram(&b, now, "zone-b", &[]);
        assert_eq!(counts, BTreeMap::from([(Some("zone-b".to_owned()), DRAWS)]));
        // Unpinned, the same balancer keeps everything local.
        assert_eq!(share(&histogram(&b, now, None, &[]), "zone-b"), 0.0);
    }

    #[test]
    fn pinned_to_this_zone_stays_on_its_endpoints_even_when_all_are_tried() {
        let b = Balancer::new(&two_local_and_zone_b(), BalancerConfig::default());
        let now = Instant::now();
        let counts = pinned_histogram(&b, now, "zone-a", &[]);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(
            counts
                .keys()
                .all(|k| matches!(k.as_deref(), Some("a1" | "a2")))
        );
        // A retry after both endpoints failed goes to one of them again (the last panic
        // pass), not to zone b.
        let counts = pinned_histogram(&b, now, "zone-a", &[ep("a1"), ep("a2")]);
        assert!(
            counts
                .keys()
                .all(|k| matches!(k.as_deref(), Some("a1" | "a2"))),
            "{counts:?}"
        );
        // A retry of a request pinned to zone b stays in zone b too.
        let counts = pinned_histogram(&b, now, "zone-b", &[zone("zone-b")]);
        assert_eq!(counts, BTreeMap::from([(Some("zone-b".to_owned()), DRAWS)]));
    }

    #[test]
    fn pinned_to_a_zone_with_nothing_healthy_gets_none_not_another_zone() {
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let pick = |groups: &[pb::LocalityGroup], zone: &str, rng: &mut StdRng| {
            Balancer::new(groups, BalancerConfig::default()).pick_within(
                now,
                rng,
                Some(zone),
                None,
                &[],
            )
        };
        // Zone b reports no healthy endpoint.
        let mut groups = two_local_and_zone_b();
        groups[1].weight = 0;
        assert_eq!(pick(&groups, "zone-b", &mut rng), None);
        // Zone b drained.
        let mut groups = two_local_and_zone_b();
        groups[1].drained = true;
        assert_eq!(pick(&groups, "zone-b", &mut rng), None);
        // No gateway to reach zone b.
        let mut groups = two_local_and_zone_b();
        groups[1].local_gateways.clear();
        assert_eq!(pick(&groups, "zone-b", &mut rng), None);
        // This zone's endpoints all unhealthy: zone b is healthy, and still not used.
        let groups = vec![
            local(vec![
                endpoint("a1", false, "v1"),
                endpoint("a2", false, "v1"),
            ]),
            remote("zone-b", 1, 3, 3),
        ];
        assert_eq!(pick(&groups, "zone-a", &mut rng), None);
        assert!(pick(&groups, "zone-b", &mut rng).is_some());
        // A zone the service has no group for.
        assert_eq!(pick(&two_local_and_zone_b(), "zone-z", &mut rng), None);
    }

    #[test]
    fn pinned_pick_panics_within_its_zone_when_it_is_ejected() {
        let mut b = Balancer::new(
            &[
                local(vec![endpoint("a1", true, "v1")]),
                remote("zone-b", 1, 3, 3),
                remote("zone-c", 1, 3, 3),
            ],
            eject_all(),
        );
        let now = Instant::now();
        eject(&mut b, &zone("zone-b"), now);
        // Outlier ejection is local knowledge, not the control plane's: like any panic, the
        // pinned pick ignores it rather than answer 503 — but only within zone b.
        let counts = pinned_histogram(&b, now, "zone-b", &[]);
        assert_eq!(counts, BTreeMap::from([(Some("zone-b".to_owned()), DRAWS)]));
    }
}
