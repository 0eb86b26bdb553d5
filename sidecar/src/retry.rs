//! Retries: which failed tries may be retried, how long to wait, and the budget that keeps
//! retries from multiplying the load on a service that is already failing.
//!
//! Retries are on by default. Without a `Retry` policy the mesh default is 2 retries with
//! the documented default conditions, backoff and budget; a policy replaces all of it.
//!
//! | setting | default | meaning here |
//! |---|---|---|
//! | `attempts` | 2 without a policy | retries after the first try |
//! | `perTryTimeout` | none | deadline of each try ([`Outcome::Timeout`] when it expires) |
//! | `retryOn` | `connect-failure`, `reset`, `gateway-error` | the conditions below |
//! | `backoff.base` / `backoff.max` | 25 ms / 10 × base | the *n*-th retry waits a uniformly random time in `[0, min(max, base × 2ⁿ⁻¹)]` (full jitter) |
//! | `budget.percent` | 20 | retries may add this share of the requests of the last 10 s |
//! | `budget.minRetriesPerSecond` | 10 | plus this many per second of the window, so quiet services can retry at all |
//!
//! Conditions:
//!
//! - `connect-failure` (refused, connect timeout, TLS failure): retried for **every** method,
//!   since nothing reached the server;
//! - the response-based ones only for **idempotent** methods (GET, HEAD, OPTIONS, PUT, DELETE,
//!   TRACE), since retrying a POST could run it twice: `reset` (closed before a response),
//!   `5xx`, `gateway-error` (502, 503, 504), `retriable-status-codes` (the listed statuses).
//!   A per-try timeout counts as a 504.
//!
//! - the gRPC ones, `unavailable`, `cancelled`, `deadline-exceeded`, `resource-exhausted`,
//!   `internal`: a gRPC call answered *trailers-only* with that `grpc-status` (the server sent a
//!   status and no message, so nothing reached the caller yet), for any method.
//!
//! Unknown `retryOn` names (from a newer zone) are ignored.
//!
//! Connect failures are retried without touching the budget: the request never reached a
//! server, so the retry adds no load where the budget guards against it, and a dead endpoint
//! that outlier detection has not ejected yet (or may not eject: `maxEjectionPercent`) must not
//! fail requests. `attempts` still bounds them.
//!
//! The budget is linkerd's (and Finagle's): every original request deposits one; a retry may
//! withdraw one when `min_retries_per_second × 10 + percent/100 × deposits − withdrawals ≥ 1`
//! over a sliding 10 s window (ten 1 s slots). Retries do not deposit, so they can never
//! finance more retries.
//!
//! [`RetryState`] is the per-request state machine: feed it each failed try, it answers
//! "retry after this backoff, avoiding these targets" or "stop, and why".

use std::time::{Duration, Instant};

use http::Method;
use rand::Rng;
use strait_proto as pb;

use crate::grpc;
use crate::lb::TargetKey;
use crate::outlier::Outcome;

/// Retries after the first try when no `Retry` policy applies.
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// Default first backoff.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Default budget share, in percent of requests.
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
/// Default retries always allowed per second.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
/// The budget's sliding window.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUDGET_SLOTS: usize = 10;

/// The `retryOn` conditions of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub status_5xx: bool,
    pub gateway_error: bool,
    pub retriable_status_codes: bool,
    /// gRPC codes (`unavailable`, `cancelled`, `deadline-exceeded`, `resource-exhausted`,
    /// `internal`) that may be retried, as a bit per code number.
    pub grpc_codes: u32,
}

impl RetryOn {
    /// The documented default: connect-failure, reset, gateway-error.
    pub const DEFAULT: RetryOn = RetryOn {
        connect_failure: true,
        reset: true,
        status_5xx: false,
        gateway_error: true,
        retriable_status_codes: false,
        grpc_codes: 0,
    };

    /// Reads the names users write (`connect-failure`, `5xx`, ...); unknown names are
    /// ignored, and an empty list means the default.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Self {
        if names.is_empty() {
            return Self::DEFAULT;
        }
        let mut on = RetryOn::default();
        for name in names {
            match name.as_ref() {
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "5xx" => on.status_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "unavailable" => on.grpc_codes |= 1 << grpc::code::UNAVAILABLE,
                "cancelled" => on.grpc_codes |= 1 << grpc::code::CANCELLED,
                "deadline-exceeded" => on.grpc_codes |= 1 << grpc::code::DEADLINE_EXCEEDED,
                "resource-exhausted" => on.grpc_codes |= 1 << grpc::code::RESOURCE_EXHAUSTED,
                "internal" => on.grpc_codes |= 1 << grpc::code::INTERNAL,
                _ => {}
            }
        }
        on
    }
}

/// The retry settings of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first try.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    pub retriable_status_codes: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget_percent: f64,
    pub min_retries_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_ATTEMPTS,
            per_try_timeout: None,
            retry_on: RetryOn::DEFAULT,
            retriable_status_codes: Vec::new(),
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_BASE.saturating_mul(10),
            budget_percent: DEFAULT_BUDGET_PERCENT,
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
        }
    }
}

impl RetryConfig {
    /// The settings in force: the policy's, with 0 (absent on the wire) read as the default.
    pub fn from_policy(policy: Option<&pb::RetryPolicy>) -> Self {
        let Some(p) = policy else {
            return Self::default();
        };
        let d = Self::default();
        let base = if p.backoff_base_ms == 0 {
            d.backoff_base
        } else {
            Duration::from_millis(p.backoff_base_ms)
        };
        let max = if p.backoff_max_ms == 0 {
            base.saturating_mul(10)
        } else {
            Duration::from_millis(p.backoff_max_ms).max(base)
        };
        let budget_percent = if p.budget_percent.is_finite() && p.budget_percent > 0.0 {
            p.budget_percent.min(100.0)
        } else {
            d.budget_percent
        };
        Self {
            attempts: if p.attempts == 0 {
                d.attempts
            } else {
                p.attempts
            },
            per_try_timeout: (p.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(p.per_try_timeout_ms)),
            retry_on: RetryOn::parse(&p.retry_on),
            retriable_status_codes: p
                .retriable_status_codes
                .iter()
                .filter_map(|&c| u16::try_from(c).ok())
                .collect(),
            backoff_base: base,
            backoff_max: max,
            budget_percent,
            min_retries_per_second: if p.min_retries_per_second == 0 {
                d.min_retries_per_second
            } else {
                p.min_retries_per_second
            },
        }
    }

    /// Whether a try of a `method` request that ended with `outcome` may be retried (budget
    /// and attempts aside).
    pub fn is_retriable(&self, method: &Method, outcome: Outcome) -> bool {
        let on = &self.retry_on;
        let status = match outcome {
            Outcome::ConnectFailure => return on.connect_failure,
            // Any method: see `is_retriable_grpc`.
            Outcome::Grpc(code) => return self.is_retriable_grpc(code),
            _ if !is_idempotent(method) => return false,
            Outcome::Reset => return on.reset,
            Outcome::Timeout => 504,
            Outcome::Response(status) => status,
        };
        (on.status_5xx && (500..=599).contains(&status))
            || (on.gateway_error && matches!(status, 502..=504))
            || (on.retriable_status_codes && self.retriable_status_codes.contains(&status))
    }

    /// Whether a gRPC call whose response was *trailers-only* with `code` (the server answered
    /// a status and no message, so nothing reached the caller yet) may be retried, budget and
    /// attempts aside. Whatever the method (every gRPC call is a POST): listing a code in
    /// `retryOn` says the service's calls are safe to repeat on it, as gRPC's own retry policy
    /// does.
    pub fn is_retriable_grpc(&self, code: u32) -> bool {
        code < 32 && self.retry_on.grpc_codes & (1 << code) != 0
    }

    /// The wait before retry number `retry` (1 for the first retry): full jitter, uniform in
    /// `[0, min(max, base × 2^(retry-1))]`.
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let exponent = retry.saturating_sub(1).min(31);
        let cap = self
            .backoff_base
            .saturating_mul(1_u32 << exponent)
            .min(self.backoff_max);
        let cap_nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=cap_nanos))
    }
}

/// GET, HEAD, OPTIONS, PUT, DELETE and TRACE: methods whose repetition has the effect of one
/// call (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

// === Budget ===

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which second since the epoch this slot holds.
    second: u64,
    deposits: u64,
    withdrawals: u64,
}

/// The retry budget of one service, shared by all its requests.
#[derive(Debug, Clone)]
pub struct Budget {
    epoch: Instant,
    ratio: f64,
    reserve: f64,
    slots: [Slot; BUDGET_SLOTS],
}

impl Budget {
    /// A budget allowing `percent` % of requests plus `min_retries_per_second` per second.
    pub fn new(percent: f64, min_retries_per_second: u32, now: Instant) -> Self {
        Self {
            epoch: now,
            ratio: percent / 100.0,
            reserve: f64::from(min_retries_per_second) * BUDGET_WINDOW.as_secs_f64(),
            slots: [Slot::default(); BUDGET_SLOTS],
        }
    }

    pub fn from_config(config: &RetryConfig, now: Instant) -> Self {
        Self::new(config.budget_percent, config.min_retries_per_second, now)
    }

    /// Records an original request (not a retry).
    pub fn deposit(&mut self, now: Instant) {
        let slot = self.slot(now);
        slot.deposits = slot.deposits.saturating_add(1);
    }

    /// Takes one retry from the budget if it allows one.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        // The epsilon keeps float rounding (0.2 × 5 = 0.999…) from denying an earned retry.
        if self.balance(now) < 1.0 - 1e-9 {
            return false;
        }
        let slot = self.slot(now);
        slot.withdrawals = slot.withdrawals.saturating_add(1);
        true
    }

    /// Retries the budget allows at `now`.
    pub fn balance(&self, now: Instant) -> f64 {
        let current = self.second(now);
        let (deposits, withdrawals) = self
            .slots
            .iter()
            .filter(|s| s.second + BUDGET_SLOTS as u64 > current && s.second <= current)
            .fold((0_u64, 0_u64), |(d, w), s| {
                (d + s.deposits, w + s.withdrawals)
            });
        self.reserve + self.ratio * deposits as f64 - withdrawals as f64
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = self.second(now);
        let slot = &mut self.slots[(second % BUDGET_SLOTS as u64) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot
    }
}

// === RetryState ===

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then try again on a target not in [`RetryState::tried`].
    RetryAfter(Duration),
    /// Give up and return the failure to the client.
    Stop(StopReason),
}

/// Why a request is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The outcome is not retriable for this method under the policy.
    NotRetriable,
    /// Every allowed retry was used.
    AttemptsExhausted,
    /// The retry budget is spent.
    BudgetExhausted,
}

/// One request's retry state: the tries so far and the targets they went to.
#[derive(Debug, Clone)]
pub struct RetryState {
    method: Method,
    retries: u32,
    tried: Vec<TargetKey>,
}

impl RetryState {
    /// The state of a new request; deposits it in the budget.
    pub fn new(method: Method, budget: &mut Budget, now: Instant) -> Self {
        budget.deposit(now);
        Self {
            method,
            retries: 0,
            tried: Vec::new(),
        }
    }

    /// Records the target of the try that is about to start.
    pub fn on_try(&mut self, target: TargetKey) {
        if !self.tried.contains(&target) {
            self.tried.push(target);
        }
    }

    /// The targets tried so far: the `exclude` of the next pick.
    pub fn tried(&self) -> &[TargetKey] {
        &self.tried
    }

    /// Retries done so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Decides what follows a failed try. A retry is withdrawn from the budget only when it
    /// is otherwise allowed.
    pub fn on_failure(
        &mut self,
        config: &RetryConfig,
        budget: &mut Budget,
        outcome: Outcome,
        now: Instant,
        rng: &mut impl Rng,
    ) -> RetryDecision {
        if !config.is_retriable(&self.method, outcome) {
            return RetryDecision::Stop(StopReason::NotRetriable);
        }
        if self.retries >= config.attempts {
            return RetryDecision::Stop(StopReason::AttemptsExhausted);
        }
        // A connect failure never reached a server: retrying it elsewhere adds no load to an
        // overloaded upstream (what the budget guards against), and a dead endpoint that is
        // not ejected yet must not fail requests once the budget is spent. `attempts` still
        // bounds it.
        if outcome != Outcome::ConnectFailure && !budget.try_withdraw(now) {
            return RetryDecision::Stop(StopReason::BudgetExhausted);
        }
        self.retries += 1;
        RetryDecision::RetryAfter(config.backoff(self.retries, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn defaults_without_a_policy() {
        let c = RetryConfig::from_policy(None);
        assert_eq!(c.attempts, 2);
        assert_eq!(c.retry_on, RetryOn::DEFAULT);
        assert_eq!((c.backoff_base, c.backoff_max), (25 * MS, 250 * MS));
        assert_eq!((c.budget_percent, c.min_retries_per_second), (20.0, 10));
        assert_eq!(c.per_try_timeout, None);
    }

    #[test]
    fn config_from_policy() {
        let p = pb::RetryPolicy {
            attempts: 3,
            per_try_timeout_ms: 500,
            retry_on: vec![
                "5xx".into(),
                "retriable-status-codes".into(),
                "future".into(),
            ],
            retriable_status_codes: vec![409, 70_000],
            backoff_base_ms: 10,
            backoff_max_ms: 0,
            budget_percent: 0.0,
            min_retries_per_second: 0,
        };
        let c = RetryConfig::from_policy(Some(&p));
        assert_eq!(c.attempts, 3);
        assert_eq!(c.per_try_timeout, Some(500 * MS));
        assert_eq!(
            c.retry_on,
            RetryOn {
                status_5xx: true,
                retriable_status_codes: true,
                ..RetryOn::default()
            }
        );
        assert_eq!(c.retriable_status_codes, vec![409]);
        assert_eq!((c.backoff_base, c.backoff_max), (10 * MS, 100 * MS));
        assert_eq!((c.budget_percent, c.min_retries_per_second), (20.0, 10));
    }

    #[test]
    fn grpc_codes_are_retried_only_when_listed() {
        let c = RetryConfig {
            retry_on: RetryOn::parse(&["unavailable", "resource-exhausted", "connect-failure"]),
            ..RetryConfig::default()
        };
        assert!(c.is_retriable_grpc(grpc::code::UNAVAILABLE));
        assert!(c.is_retriable_grpc(grpc::code::RESOURCE_EXHAUSTED));
        for code in [0, 1, 2, 4, 13, 31, 32, u32::MAX] {
            assert!(!c.is_retriable_grpc(code), "{code}");
        }
        let all = RetryOn::parse(&[
            "unavailable",
            "cancelled",
            "deadline-exceeded",
            "resource-exhausted",
            "internal",
        ]);
        assert_eq!(all.grpc_codes, 1 << 14 | 1 << 1 | 1 << 4 | 1 << 8 | 1 << 13);
        assert_eq!(
            RetryConfig::default().retry_on.grpc_codes,
            0,
            "none by default"
        );
    }

    #[test]
    fn connect_failures_are_retried_for_every_method() {
        let c = RetryConfig::default();
        for m in [Method::GET, Method::POST, Method::PATCH] {
            assert!(c.is_retriable(&m, Outcome::ConnectFailure), "{m}");
        }
        let no_connect = RetryConfig {
            retry_on: RetryOn::parse(&["5xx"]),
            ..RetryConfig::default()
        };
        assert!(!no_connect.is_retriable(&Method::GET, Outcome::ConnectFailure));
    }

    #[test]
    fn response_conditions_only_for_idempotent_methods() {
        let c = RetryConfig::default();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(c.is_retriable(&m, Outcome::Response(503)), "{m}");
            assert!(c.is_retriable(&m, Outcome::Reset), "{m}");
            assert!(c.is_retriable(&m, Outcome::Timeout), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!c.is_retriable(&m, Outcome::Response(503)), "{m}");
            assert!(!c.is_retriable(&m, Outcome::Reset), "{m}");
        }
    }

    #[test]
    fn which_statuses_each_condition_retries() {
        let get = Method::GET;
        let gateway = RetryConfig::default();
        assert!(gateway.is_retriable(&get, Outcome::Response(502)));
        assert!(gateway.is_retriable(&get, Outcome::Response(504)));
        assert!(!gateway.is_retriable(&get, Outcome::Response(500)));
        assert!(!gateway.is_retriable(&get, Outcome::Response(200)));
        let any_5xx = RetryConfig {
            retry_on: RetryOn::parse(&["5xx"]),
            ..RetryConfig::default()
        };
        assert!(any_5xx.is_retriable(&get, Outcome::Response(500)));
        assert!(!any_5xx.is_retriable(&get, Outcome::Response(429)));
        assert!(!any_5xx.is_retriable(&get, Outcome::Reset));
        let codes = RetryConfig {
            retry_on: RetryOn::parse(&["retriable-status-codes"]),
            retriable_status_codes: vec![409],
            ..RetryConfig::default()
        };
        assert!(codes.is_retriable(&get, Outcome::Response(409)));
        assert!(!codes.is_retriable(&get, Outcome::Response(503)));
    }

    #[test]
    fn backoff_is_full_jitter_doubling_up_to_max() {
        let c = RetryConfig::default();
        let mut rng = StdRng::seed_from_u64(5);
        for retry in 1..=8_u32 {
            let cap = (25 * MS * 2_u32.pow(retry - 1)).min(250 * MS);
            let waits: Vec<Duration> = (0..500).map(|_| c.backoff(retry, &mut rng)).collect();
            assert!(waits.iter().all(|w| *w <= cap), "retry {retry}");
            // Spread over the whole range: some near 0, some near the cap.
            assert!(waits.iter().any(|w| *w < cap / 10), "retry {retry}");
            assert!(waits.iter().any(|w| *w > cap * 9 / 10), "retry {retry}");
        }
        // Huge retry numbers do not overflow.
        assert!(c.backoff(u32::MAX, &mut rng) <= 250 * MS);
    }

    #[test]
    fn budget_allows_the_reserve_then_a_share_of_requests() {
        let t0 = Instant::now();
        // No reserve: exactly 20% of requests.
        let mut b = Budget::new(20.0, 0, t0);
        assert!(!b.try_withdraw(t0), "nothing deposited, no reserve");
        for _ in 0..100 {
            b.deposit(t0);
        }
        let granted = (0..100).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 20);

        // The reserve alone: 10/s over the 10 s window.
        let mut b = Budget::new(20.0, 10, t0);
        let granted = (0..1000).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 100);
    }

    #[test]
    fn budget_window_slides() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Budget::new(50.0, 0, t0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw(t0)).count(), 5);
        // 9 s later the window still holds them, all spent.
        assert!(!b.try_withdraw(t0 + 9 * s));
        // At 10 s those deposits and withdrawals leave the window together.
        for _ in 0..4 {
            b.deposit(t0 + 10 * s);
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw(t0 + 10 * s)).count(), 2);
        // A steady 100 requests/s at 20% allows about 20 retries/s over a long run.
        let mut b = Budget::new(20.0, 0, t0);
        let mut granted = 0;
        for second in 0..60_u32 {
            let now = t0 + s * second;
            for _ in 0..100 {
                b.deposit(now);
            }
            granted += (0..100).filter(|_| b.try_withdraw(now)).count();
        }
        assert_eq!(granted, 20 * 60);
    }

    #[test]
    fn connect_failures_are_retried_with_the_budget_spent_and_others_are_not() {
        let t0 = Instant::now();
        let config = RetryConfig::default();
        let mut empty = Budget::new(0.0, 0, t0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut state = RetryState::new(Method::GET, &mut empty, t0);
        let d = state.on_failure(&config, &mut empty, Outcome::ConnectFailure, t0, &mut rng);
        assert!(matches!(d, RetryDecision::RetryAfter(_)), "{d:?}");
        let d = state.on_failure(&config, &mut empty, Outcome::Response(503), t0, &mut rng);
        assert_eq!(d, RetryDecision::Stop(StopReason::BudgetExhausted));
    }

    #[test]
    fn retry_state_walks_attempts_and_avoids_tried_targets() {
        let t0 = Instant::now();
        let config = RetryConfig::default();
        let mut budget = Budget::from_config(&config, t0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut state = RetryState::new(Method::GET, &mut budget, t0);
        state.on_try(TargetKey::Endpoint("a1".into()));
        let d = state.on_failure(&config, &mut budget, Outcome::ConnectFailure, t0, &mut rng);
        assert!(
            matches!(d, RetryDecision::RetryAfter(w) if w <= 25 * MS),
            "{d:?}"
        );
        state.on_try(TargetKey::Zone("zone-b".into()));
        let d = state.on_failure(&config, &mut budget, Outcome::Response(503), t0, &mut rng);
        assert!(
            matches!(d, RetryDecision::RetryAfter(w) if w <= 50 * MS),
            "{d:?}"
        );
        assert_eq!(
            state.tried(),
            &[
                TargetKey::Endpoint("a1".into()),
                TargetKey::Zone("zone-b".into())
            ]
        );
        let d = state.on_failure(&config, &mut budget, Outcome::Response(503), t0, &mut rng);
        assert_eq!(d, RetryDecision::Stop(StopReason::AttemptsExhausted));
        assert_eq!(state.retries(), 2);

        let mut post = RetryState::new(Method::POST, &mut budget, t0);
        let d = post.on_failure(&config, &mut budget, Outcome::Response(503), t0, &mut rng);
        assert_eq!(d, RetryDecision::Stop(StopReason::NotRetriable));
    }

    #[test]
    fn retry_state_stops_when_the_budget_is_spent() {
        let t0 = Instant::now();
        let config = RetryConfig {
            attempts: 10,
            min_retries_per_second: 0,
            ..RetryConfig::default()
        };
        let mut budget = Budget::new(20.0, 0, t0);
        let mut rng = StdRng::seed_from_u64(1);
        // Five requests earn exactly one retry.
        let mut states: Vec<RetryState> = (0..5)
            .map(|_| RetryState::new(Method::GET, &mut budget, t0))
            .collect();
        let decisions: Vec<RetryDecision> = states
            .iter_mut()
            .map(|s| s.on_failure(&config, &mut budget, Outcome::Reset, t0, &mut rng))
            .collect();
        let retried = decisions
            .iter()
            .filter(|d| matches!(d, RetryDecision::RetryAfter(_)))
            .count();
        assert_eq!(retried, 1);
        assert!(decisions.contains(&RetryDecision::Stop(StopReason::BudgetExhausted)));
    }
}
