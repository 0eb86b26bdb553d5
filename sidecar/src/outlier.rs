//! Passive outlier detection: endpoints (or remote zones) that keep failing are ejected from
//! load balancing for a while.
//!
//! On by default: without a `CircuitBreaker` policy the documented defaults apply.
//!
//! | setting | default | meaning here |
//! |---|---|---|
//! | `consecutive5xx` | 5 | this many failed responses in a row eject the target; 0 turns the check off |
//! | `consecutiveConnectFailures` | 5 | this many connect failures in a row eject it; 0 turns the check off |
//! | `interval` | 10 s | how often ejections are reviewed: each full interval a target spends back in service takes one off its ejection count |
//! | `baseEjectionTime` | 30 s | the *n*-th ejection lasts *n* × base, at most 10 × base |
//! | `maxEjectionPercent` | 50 % | a target is not ejected if that would put more than this share of the set out at once |
//!
//! What counts:
//!
//! - a **connect failure** (refused, connect timeout, TLS failure) adds to the connect-failure
//!   streak; it leaves the 5xx streak as it is (it is not a success either);
//! - a **5xx response**, a **reset** (connection closed before a response) or a **per-try
//!   timeout** adds to the 5xx streak and ends the connect-failure streak (a connection was
//!   made);
//! - any other response is a **success** and resets both streaks.
//!
//! Ejection happens at the failure that completes a streak; both streaks start again from 0.
//! It ends exactly when its time is up (checked lazily against the `now` each call passes in:
//! there is no timer). Outcomes of requests that were in flight while the target was ejected
//! are not counted against it again. The share limit counts the set given to
//! [`OutlierDetector::set_members`] (plus any target recorded since): with the default 50 %,
//! one target out of two may be ejected, and a lone target never is — ejecting the only way to
//! a service helps nobody. Envoy's outlier detection is the model.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use strait_proto as pb;

/// Default consecutive 5xx responses that eject a target.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Default consecutive connect failures that eject a target.
pub const DEFAULT_CONSECUTIVE_CONNECT_FAILURES: u32 = 5;
/// Default review interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default duration of a first ejection.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Default cap on the share of a set that may be ejected at once, in percent.
pub const DEFAULT_MAX_EJECTION_PERCENT: f64 = 50.0;
/// An ejection lasts at most this many times the base ejection time (Envoy's default cap of
/// 300 s is 10 × its 30 s base), so a flapping target is not gone for hours.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// How one try against a target ended, as the proxy saw it. Shared by the outlier detector,
/// the balancer and the retry logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived with this status.
    Response(u16),
    /// No connection: refused, connect timeout or TLS handshake failure. Nothing reached
    /// the server.
    ConnectFailure,
    /// The connection was closed or reset before a complete response.
    Reset,
    /// The per-try deadline expired before the response (treated as a 504).
    Timeout,
    /// A gRPC call answered *trailers-only* (a status, no message) with this `grpc-status`:
    /// a failure when it says the server failed ([`crate::grpc::is_server_failure`]), as a
    /// 5xx would.
    Grpc(u32),
}

impl Outcome {
    /// Whether this outcome counts as a success for health purposes (any status below 500).
    pub fn is_success(self) -> bool {
        match self {
            Outcome::Response(s) => s < 500,
            Outcome::Grpc(code) => !crate::grpc::is_server_failure(code),
            _ => false,
        }
    }
}

/// Outlier detection settings, from a `CircuitBreakerPolicy` or the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// 0 turns the check off.
    pub consecutive_5xx: u32,
    /// 0 turns the check off.
    pub consecutive_connect_failures: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
            consecutive_connect_failures: DEFAULT_CONSECUTIVE_CONNECT_FAILURES,
            interval: DEFAULT_INTERVAL,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

impl OutlierConfig {
    /// The settings in force for a service: the policy's when there is one, else the defaults.
    ///
    /// The zone always sends every outlier field of a `CircuitBreaker` (defaults filled in),
    /// so the counts and the percentage are taken as written (0 is "off" / "never eject");
    /// a duration of 0 is not a valid setting and means the default.
    pub fn from_policy(policy: Option<&pb::CircuitBreakerPolicy>) -> Self {
        let Some(p) = policy else {
            return Self::default();
        };
        let ms = |v: u64, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(v)
            }
        };
        let percent = if p.max_ejection_percent.is_finite() {
            p.max_ejection_percent.clamp(0.0, 100.0)
        } else {
            DEFAULT_MAX_EJECTION_PERCENT
        };
        Self {
            consecutive_5xx: p.consecutive_5xx,
            consecutive_connect_failures: p.consecutive_connect_failures,
            interval: ms(p.interval_ms, DEFAULT_INTERVAL),
            base_ejection: ms(p.base_ejection_ms, DEFAULT_BASE_EJECTION),
            max_ejection_percent: percent,
        }
    }
}

/// An ejection that [`OutlierDetector::record`] just decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// When the target comes back.
    pub until: Instant,
    /// How many times it has been ejected, this time included (after review decay).
    pub times: u32,
    /// Which streak ejected it.
    pub cause: EjectionCause,
}

/// Why a target was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionCause {
    Consecutive5xx,
    ConsecutiveConnectFailures,
}

#[derive(Debug, Clone, Default)]
struct TargetState {
    consecutive_5xx: u32,
    consecutive_connect: u32,
    /// Ejections so far, decayed by one per review interval spent back in service.
    ejections: u32,
    /// Set while ejected, and kept after expiry (as the moment it came back) for the decay.
    ejected_until: Option<Instant>,
    /// Why the last ejection happened.
    cause: Option<EjectionCause>,
}

/// Passive outlier detection over one set of targets (the endpoints and remote zones of one
/// service), keyed by `K`.
#[derive(Debug, Clone)]
pub struct OutlierDetector<K> {
    config: OutlierConfig,
    targets: HashMap<K, TargetState>,
    /// When the latest ejection ever made ends (a reinstatement does not lower it): before
    /// then a target may be ejected, after it none is. Nothing is ejected most of the time,
    /// and then [`Self::is_ejected`], asked several times per request, needs no lookup.
    ejections_end: Option<Instant>,
}

impl<K: Eq + Hash + Clone> OutlierDetector<K> {
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            targets: HashMap::new(),
            ejections_end: None,
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Replaces the settings, keeping every target's state (a config push must not forgive
    /// an endpoint that is failing).
    pub fn set_config(&mut self, config: OutlierConfig) {
        self.config = config;
    }

    /// Makes the set exactly `members`: new ones start clean, state of the ones that stay
    /// is kept, the others are forgotten. The set is what `maxEjectionPercent` counts.
    pub fn set_members(&mut self, members: impl IntoIterator<Item = K>) {
        let mut next: HashMap<K, TargetState> = HashMap::new();
        for key in members {
            let state = self.targets.remove(&key).unwrap_or_default();
            next.insert(key, state);
        }
        self.targets = next;
    }

    /// Whether `key` is in the set.
    pub fn contains(&self, key: &K) -> bool {
        self.targets.contains_key(key)
    }

    /// Records how a try against `key` ended; returns the ejection it caused, if any. An
    /// unknown `key` joins the set.
    pub fn record(&mut self, key: &K, outcome: Outcome, now: Instant) -> Option<Ejection> {
        if self.is_ejected(key, now) {
            // Late answers from before the ejection say nothing new; a success still clears
            // the streaks so the target comes back with a clean slate.
            if outcome.is_success()
                && let Some(s) = self.targets.get_mut(key)
            {
                s.consecutive_5xx = 0;
                s.consecutive_connect = 0;
            }
            return None;
        }
        let config = &self.config;
        let state = self.targets.entry(key.clone()).or_default();
        let cause = match outcome {
            Outcome::ConnectFailure => {
                state.consecutive_connect = state.consecutive_connect.saturating_add(1);
                (config.consecutive_connect_failures > 0
                    && state.consecutive_connect >= config.consecutive_connect_failures)
                    .then_some(EjectionCause::ConsecutiveConnectFailures)
            }
            Outcome::Response(_) | Outcome::Grpc(_) if outcome.is_success() => {
                state.consecutive_5xx = 0;
                state.consecutive_connect = 0;
                None
            }
            Outcome::Response(_) | Outcome::Grpc(_) | Outcome::Reset | Outcome::Timeout => {
                state.consecutive_connect = 0;
                state.consecutive_5xx = state.consecutive_5xx.saturating_add(1);
                (config.consecutive_5xx > 0 && state.consecutive_5xx >= config.consecutive_5xx)
                    .then_some(EjectionCause::Consecutive5xx)
            }
        }?;
        if !self.may_eject_one_more(now) {
            // The streak stays where it is, so the next failure tries again once another
            // target has come back.
            return None;
        }
        let interval = self.config.interval;
        let base = self.config.base_ejection;
        let state = self.targets.get_mut(key)?;
        // Envoy-style forgiveness: each full review interval spent back in service since the
        // last ejection ended takes one off the count.
        if let Some(back_at) = state.ejected_until {
            let quiet = now.saturating_duration_since(back_at);
            let reviews = quiet.as_nanos() / interval.as_nanos().max(1);
            let reviews = u32::try_from(reviews).unwrap_or(u32::MAX);
            state.ejections = state.ejections.saturating_sub(reviews);
        }
        state.ejections = state.ejections.saturating_add(1);
        let multiplier = state.ejections.min(MAX_EJECTION_MULTIPLIER);
        let until = now + base.saturating_mul(multiplier);
        state.ejected_until = Some(until);
        self.ejections_end = Some(self.ejections_end.map_or(until, |end| end.max(until)));
        state.cause = Some(cause);
        state.consecutive_5xx = 0;
        state.consecutive_connect = 0;
        Some(Ejection {
            until,
            times: state.ejections,
            cause,
        })
    }

    /// Whether `key` is ejected at `now`; unknown targets are not.
    pub fn is_ejected(&self, key: &K, now: Instant) -> bool {
        if self.ejections_end.is_none_or(|end| now >= end) {
            return false;
        }
        self.targets
            .get(key)
            .and_then(|s| s.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// The targets ejected at `now` because they could not be connected to: a successful
    /// connect probe may [`reinstate`](Self::reinstate) them before their time is up.
    pub fn ejected_for_connect_failures(&self, now: Instant) -> Vec<&K> {
        self.targets
            .iter()
            .filter(|(_, s)| {
                s.ejected_until.is_some_and(|u| now < u)
                    && s.cause == Some(EjectionCause::ConsecutiveConnectFailures)
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Ends `key`'s ejection at `now` (a probe reached it again: the process behind it came
    /// back). Its ejection count stays, so a target that keeps failing is ejected for longer.
    pub fn reinstate(&mut self, key: &K, now: Instant) -> bool {
        match self.targets.get_mut(key) {
            Some(s) if s.ejected_until.is_some_and(|u| now < u) => {
                s.ejected_until = Some(now);
                true
            }
            _ => false,
        }
    }

    /// The targets ejected at `now`, with the time each comes back.
    pub fn ejected(&self, now: Instant) -> Vec<(&K, Instant)> {
        self.targets
            .iter()
            .filter_map(|(k, s)| s.ejected_until.filter(|&u| now < u).map(|u| (k, u)))
            .collect()
    }

    /// How many targets are ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        self.targets
            .values()
            .filter(|s| s.ejected_until.is_some_and(|u| now < u))
            .count()
    }

    /// Whether ejecting one more target keeps the ejected share within the limit.
    fn may_eject_one_more(&self, now: Instant) -> bool {
        let total = self.targets.len() as f64;
        let after = (self.ejected_count(now) + 1) as f64;
        after * 100.0 <= self.config.max_ejection_percent * total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn detector(members: &[&'static str]) -> OutlierDetector<&'static str> {
        let mut d = OutlierDetector::new(OutlierConfig::default());
        d.set_members(members.iter().copied());
        d
    }

    /// Records `n` outcomes and returns the last result.
    fn feed(
        d: &mut OutlierDetector<&'static str>,
        key: &'static str,
        outcome: Outcome,
        n: u32,
        now: Instant,
    ) -> Option<Ejection> {
        (0..n).fold(None, |_, _| d.record(&key, outcome, now))
    }

    #[test]
    fn a_connect_ejection_can_be_ended_by_a_probe_and_a_5xx_one_is_not_offered() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c", "d"]);
        feed(&mut d, "a", Outcome::ConnectFailure, 5, t0);
        feed(&mut d, "b", Outcome::Response(503), 5, t0);
        assert!(d.is_ejected(&"a", t0) && d.is_ejected(&"b", t0));
        assert_eq!(d.ejected_for_connect_failures(t0), vec![&"a"]);
        assert!(d.reinstate(&"a", t0 + S));
        assert!(!d.is_ejected(&"a", t0 + S));
        assert!(!d.reinstate(&"a", t0 + S), "not ejected any more");
        // Failing again right away ejects it for twice as long.
        let e = feed(&mut d, "a", Outcome::ConnectFailure, 5, t0 + 2 * S).unwrap();
        assert_eq!(e.times, 2);
    }

    #[test]
    fn five_consecutive_connect_failures_eject_for_30s() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        assert_eq!(feed(&mut d, "a", Outcome::ConnectFailure, 4, t0), None);
        assert!(!d.is_ejected(&"a", t0));
        let e = d.record(&"a", Outcome::ConnectFailure, t0);
        assert_eq!(
            e,
            Some(Ejection {
                until: t0 + 30 * S,
                times: 1,
                cause: EjectionCause::ConsecutiveConnectFailures
            })
        );
        assert!(d.is_ejected(&"a", t0 + 29 * S));
        assert!(
            !d.is_ejected(&"a", t0 + 30 * S),
            "back exactly when time is up"
        );
        assert_eq!(d.ejected(t0 + S), vec![(&"a", t0 + 30 * S)]);
        assert!(d.ejected(t0 + 30 * S).is_empty());
    }

    #[test]
    fn five_consecutive_5xx_resets_or_timeouts_eject() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        for o in [
            Outcome::Response(500),
            Outcome::Reset,
            Outcome::Timeout,
            Outcome::Response(503),
        ] {
            assert_eq!(d.record(&"a", o, t0), None);
        }
        let e = d.record(&"a", Outcome::Response(502), t0);
        assert_eq!(e.map(|e| e.cause), Some(EjectionCause::Consecutive5xx));
    }

    #[test]
    fn a_success_resets_the_streaks() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        feed(&mut d, "a", Outcome::ConnectFailure, 4, t0);
        feed(&mut d, "a", Outcome::Response(500), 4, t0);
        // A 404 is the app answering: a success for health purposes.
        assert_eq!(d.record(&"a", Outcome::Response(404), t0), None);
        // gRPC, trailers-only: NOT_FOUND is a healthy answer, UNAVAILABLE a failure.
        assert!(Outcome::Grpc(5).is_success() && Outcome::Grpc(0).is_success());
        assert!(!Outcome::Grpc(14).is_success() && !Outcome::Grpc(13).is_success());
        assert_eq!(feed(&mut d, "a", Outcome::ConnectFailure, 4, t0), None);
        assert_eq!(feed(&mut d, "a", Outcome::Response(500), 4, t0), None);
        assert!(!d.is_ejected(&"a", t0));
    }

    #[test]
    fn a_5xx_ends_the_connect_failure_streak() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        feed(&mut d, "a", Outcome::ConnectFailure, 4, t0);
        d.record(&"a", Outcome::Response(503), t0);
        assert_eq!(feed(&mut d, "a", Outcome::ConnectFailure, 4, t0), None);
        assert!(d.record(&"a", Outcome::ConnectFailure, t0).is_some());
    }

    #[test]
    fn zero_turns_a_check_off() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(OutlierConfig {
            consecutive_5xx: 0,
            ..OutlierConfig::default()
        });
        d.set_members(["a", "b", "c"]);
        assert_eq!(feed(&mut d, "a", Outcome::Response(500), 100, t0), None);
        assert!(feed(&mut d, "a", Outcome::ConnectFailure, 5, t0).is_some());
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        let mut now = t0;
        for times in 1..=12_u32 {
            let e = feed(&mut d, "a", Outcome::ConnectFailure, 5, now).unwrap();
            assert_eq!(e.times, times);
            let expected = 30 * S * times.min(MAX_EJECTION_MULTIPLIER);
            assert_eq!(e.until - now, expected, "ejection {times}");
            // Fail again as soon as it is back: no quiet interval, no forgiveness.
            now = e.until;
        }
    }

    #[test]
    fn quiet_review_intervals_forgive_past_ejections() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        let e1 = feed(&mut d, "a", Outcome::ConnectFailure, 5, t0).unwrap();
        let e2 = feed(&mut d, "a", Outcome::ConnectFailure, 5, e1.until).unwrap();
        assert_eq!(e2.times, 2);
        // Back at e2.until; one full 10 s interval of good behaviour takes one off.
        let later = e2.until + 15 * S;
        let e3 = feed(&mut d, "a", Outcome::ConnectFailure, 5, later).unwrap();
        assert_eq!(e3.times, 2);
        assert_eq!(e3.until - later, 60 * S);
        // A long quiet spell forgives everything.
        let much_later = e3.until + 1000 * S;
        let e4 = feed(&mut d, "a", Outcome::ConnectFailure, 5, much_later).unwrap();
        assert_eq!((e4.times, e4.until - much_later), (1, 30 * S));
    }

    #[test]
    fn never_more_than_max_ejection_percent() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c", "d"]);
        assert!(feed(&mut d, "a", Outcome::ConnectFailure, 5, t0).is_some());
        assert!(feed(&mut d, "b", Outcome::ConnectFailure, 5, t0).is_some());
        // A third would be 75% > 50%.
        assert_eq!(feed(&mut d, "c", Outcome::ConnectFailure, 5, t0), None);
        assert_eq!(d.ejected_count(t0), 2);
        // Once one is back, the next failure of "c" ejects it: its streak was kept.
        let back = t0 + 30 * S;
        assert!(d.record(&"c", Outcome::ConnectFailure, back).is_some());
        assert!(d.is_ejected(&"c", back));
    }

    #[test]
    fn a_shorter_later_ejection_does_not_hide_a_longer_earlier_one() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c", "d"]);
        let first = feed(&mut d, "a", Outcome::ConnectFailure, 5, t0).unwrap();
        // "a" fails again as soon as it is back: 60 s this time.
        let long = feed(&mut d, "a", Outcome::ConnectFailure, 5, first.until).unwrap();
        assert_eq!(long.until - first.until, 60 * S);
        let short = feed(&mut d, "b", Outcome::ConnectFailure, 5, first.until + S).unwrap();
        assert!(short.until < long.until);
        let between = short.until + S;
        assert!(
            d.is_ejected(&"a", between),
            "the longer ejection still runs"
        );
        assert!(!d.is_ejected(&"b", between));
        assert!(d.reinstate(&"a", between));
        assert!(!d.is_ejected(&"a", between));
        assert!(!d.is_ejected(&"a", long.until));
    }

    #[test]
    fn a_lone_target_is_never_ejected_by_default() {
        let t0 = Instant::now();
        let mut d = detector(&["only"]);
        assert_eq!(feed(&mut d, "only", Outcome::ConnectFailure, 50, t0), None);
        let mut two = detector(&["a", "b"]);
        assert!(feed(&mut two, "a", Outcome::ConnectFailure, 5, t0).is_some());
        assert_eq!(feed(&mut two, "b", Outcome::ConnectFailure, 5, t0), None);
    }

    #[test]
    fn outcomes_while_ejected_do_not_extend_the_ejection() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        let e = feed(&mut d, "a", Outcome::ConnectFailure, 5, t0).unwrap();
        assert_eq!(feed(&mut d, "a", Outcome::ConnectFailure, 20, t0 + S), None);
        assert_eq!(d.ejected(t0 + S), vec![(&"a", e.until)]);
        // Back with clean streaks: 4 failures are not enough.
        assert_eq!(feed(&mut d, "a", Outcome::ConnectFailure, 4, e.until), None);
    }

    #[test]
    fn membership_changes_keep_state_of_staying_targets() {
        let t0 = Instant::now();
        let mut d = detector(&["a", "b", "c"]);
        feed(&mut d, "a", Outcome::ConnectFailure, 5, t0);
        d.set_members(["a", "b", "c", "d"]);
        assert!(d.is_ejected(&"a", t0));
        d.set_members(["b", "c"]);
        assert!(!d.is_ejected(&"a", t0));
        assert_eq!(d.ejected_count(t0), 0);
    }

    #[test]
    fn config_from_policy() {
        assert_eq!(OutlierConfig::from_policy(None), OutlierConfig::default());
        let p = pb::CircuitBreakerPolicy {
            consecutive_5xx: 0,
            consecutive_connect_failures: 3,
            interval_ms: 0,
            base_ejection_ms: 5_000,
            max_ejection_percent: 100.0,
            ..Default::default()
        };
        assert_eq!(
            OutlierConfig::from_policy(Some(&p)),
            OutlierConfig {
                consecutive_5xx: 0,
                consecutive_connect_failures: 3,
                interval: DEFAULT_INTERVAL,
                base_ejection: Duration::from_secs(5),
                max_ejection_percent: 100.0,
            }
        );
    }
}
