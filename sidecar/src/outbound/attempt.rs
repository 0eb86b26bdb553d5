//! The attempt machine: the tries of one request (or one TCP connect), without IO.
//!
//! It owns what happens between tries: which picks are taken (a target offered again after a
//! `CircuitBreaker` limit passed over it means every target left is over a limit), which
//! failures are retried ([`RetryState`], with the service's [`Budget`]), how long to back off,
//! whether the request's deadline cuts the backoff short, and what the app gets in the end.
//! The caller does the IO: it picks targets ([`crate::lb::Balancer::pick_within`], excluding
//! [`Attempt::tried`]), admits and sends each try, sleeps, and feeds back what happened with
//! `now`; the machine answers with the next [`Action`]. Time only enters as the `now` values the
//! caller passes, so the tests below run it on a hand-advanced clock.
//!
//! ```text
//!            ┌──────────── overflowed ───────────┐
//!            ▼                                   │
//!  Pick ─ picked(Some) ─► Try ─ tried_once ─► BackOff ─ backed_off ─► Pick
//!    │                     │        │                       │
//!    └ picked(None) ─► Respond ◄────┘ (success, stop)       └ (deadline) ─► Respond
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use rand::Rng;

use super::lock;
use super::metrics::{NONE, ZoneLabel, zone_label};
use crate::lb::{Target, TargetKey};
use crate::limits::breaker::Overflow;
use crate::outlier::Outcome;
use crate::retry::{Budget, RetryConfig, RetryDecision, RetryState, StopReason};

/// What the caller does next.
#[derive(Debug)]
pub(super) enum Action<R> {
    /// Pick a target, excluding [`Attempt::tried`], and pass it to [`Attempt::picked`].
    Pick,
    /// Admit and send one try to `target`; its response headers must arrive within
    /// `per_try_timeout` of the request leaving (the connect is bounded by its own timeout).
    /// Then [`Attempt::tried_once`], or [`Attempt::overflowed`] when a limit passed it over.
    Try {
        target: Target,
        per_try_timeout: Option<Duration>,
    },
    /// Wait until then, then [`Attempt::backed_off`].
    BackOff { until: Instant },
    /// The request is over: answer this.
    Respond(Answer<R>),
}

/// What the app gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer<R> {
    /// A try's response: the upstream's (success, or a failure that is not retried), or a
    /// gateway's refusal; with the zone that gave it.
    Response(R, ZoneLabel),
    /// The sidecar's answer for a try that got no response (`no-healthy-upstream`,
    /// `upstream-timeout`, `upstream-reset`, by outcome), with the zone tried.
    Failed(Outcome, ZoneLabel),
    /// `503` `overflow`: a `CircuitBreaker` limit passed over every target left.
    Overflow(Overflow),
    /// `503` `no-healthy-upstream`: nothing was there to try.
    NoHealthyUpstream,
    /// `504` `request-timeout`: the request's deadline passed while it waited to retry.
    RequestTimeout,
}

/// How a try ended.
#[derive(Debug)]
pub(super) struct Tried<R> {
    pub(super) outcome: Outcome,
    /// What came back, if anything: the upstream's response, or a refusal to show the app.
    pub(super) response: Option<R>,
    /// Whether the request body can still be sent (buffered, or a stream not yet sent).
    pub(super) can_replay: bool,
}

/// The tries of one request. `R` is the response type (a fake one in the tests).
#[derive(Debug)]
pub(super) struct Attempt<'a, R> {
    config: &'a RetryConfig,
    budget: &'a Mutex<Budget>,
    retry: RetryState,
    /// When the request times out, if it can (`None` for a TCP connect).
    deadline: Option<Instant>,
    /// The target of the try under way (or the last one).
    current: Option<TargetKey>,
    /// What the last failed try answered, for when no target is left to try.
    last_failure: Option<Answer<R>>,
    /// The `CircuitBreaker` limit that passed over a target, for when no target is left, and
    /// the targets passed over: the balancer offers tried targets again when it has nothing
    /// else, so one of these offered again means every target left is over a limit.
    overflowed: Option<Overflow>,
    passed_over: Vec<TargetKey>,
}

impl<'a, R> Attempt<'a, R> {
    /// A new request at `now` (deposited in `budget`), answered by `deadline` if set.
    pub(super) fn new(
        method: Method,
        config: &'a RetryConfig,
        budget: &'a Mutex<Budget>,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Self {
        let retry = RetryState::new(method, &mut lock(budget), now);
        Self {
            config,
            budget,
            retry,
            deadline,
            current: None,
            last_failure: None,
            overflowed: None,
            passed_over: Vec::new(),
        }
    }

    /// The targets tried so far: the `exclude` of the next pick.
    pub(super) fn tried(&self) -> &[TargetKey] {
        self.retry.tried()
    }

    /// The target of the try under way.
    pub(super) fn current(&self) -> Option<&TargetKey> {
        self.current.as_ref()
    }

    /// The balancer's pick: `None` when nothing can take the request.
    pub(super) fn picked(&mut self, pick: Option<Target>) -> Action<R> {
        let Some(target) = pick else {
            let answer = self.last_failure.take().unwrap_or(match self.overflowed {
                Some(limit) => Answer::Overflow(limit),
                None => Answer::NoHealthyUpstream,
            });
            return Action::Respond(answer);
        };
        let key = target.key();
        if let Some(limit) = self.overflowed
            && self.passed_over.contains(&key)
        {
            return Action::Respond(self.last_failure.take().unwrap_or(Answer::Overflow(limit)));
        }
        self.retry.on_try(key.clone());
        self.current = Some(key);
        Action::Try {
            target,
            per_try_timeout: self.config.per_try_timeout,
        }
    }

    /// The try's target is over `limit`: not a try (no outlier or retry accounting), another
    /// target with an open connection may still take the request.
    pub(super) fn overflowed(&mut self, limit: Overflow) -> Action<R> {
        self.overflowed = Some(limit);
        if let Some(key) = self.current.take() {
            tracing::debug!(target = ?key, limit = limit.label(), "target over a circuit breaker limit");
            self.passed_over.push(key);
        }
        Action::Pick
    }

    /// The try ended at `now`.
    pub(super) fn tried_once(
        &mut self,
        tried: Tried<R>,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Action<R> {
        let Tried {
            outcome,
            response,
            can_replay,
        } = tried;
        let zone = self.current.as_ref().map_or(NONE, zone_label);
        // A healthy answer is final, unless it is a gRPC status the policy retries.
        let retry_grpc =
            matches!(outcome, Outcome::Grpc(code) if self.config.is_retriable_grpc(code));
        let response = match response {
            Some(response) if outcome.is_success() && !retry_grpc => {
                return Action::Respond(Answer::Response(response, zone));
            }
            other => other,
        };
        // A streaming body that left cannot be sent again.
        let decision = if outcome == Outcome::ConnectFailure || can_replay {
            self.retry
                .on_failure(self.config, &mut lock(self.budget), outcome, now, rng)
        } else {
            RetryDecision::Stop(StopReason::NotRetriable)
        };
        let failure = match response {
            Some(response) => Answer::Response(response, zone),
            None => Answer::Failed(outcome, zone),
        };
        let target = self.current.as_ref();
        match decision {
            RetryDecision::RetryAfter(backoff) => {
                tracing::debug!(?target, ?outcome, ?backoff, "retrying");
                self.last_failure = Some(failure);
                let until = now + backoff;
                Action::BackOff {
                    until: self.deadline.map_or(until, |deadline| until.min(deadline)),
                }
            }
            RetryDecision::Stop(reason) => {
                tracing::debug!(?target, ?outcome, ?reason, "not retried");
                Action::Respond(failure)
            }
        }
    }

    /// The backoff ended at `now`.
    pub(super) fn backed_off(&mut self, now: Instant) -> Action<R> {
        match self.deadline {
            Some(deadline) if now >= deadline => Action::Respond(Answer::RequestTimeout),
            _ => Action::Pick,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    //! The machine on a hand-advanced clock: plain `Instant`s, no runtime, no sockets. The
    //! balancer is the real one ([`Balancer`]), fed the same events the IO driver feeds it.

    use super::*;
    use crate::lb::{Balancer, BalancerConfig};
    use crate::outlier::OutlierConfig;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::borrow::Cow;
    use strait_proto as pb;

    const MS: Duration = Duration::from_millis(1);
    const ECHO: &str = "spiffe://strait.local/ns/demo/sa/echo";

    /// A response as the tests see it: its status.
    type Status = u16;

    fn endpoint(address: &str) -> pb::Endpoint {
        pb::Endpoint {
            address: address.to_owned(),
            instance: format!("i-{address}"),
            spiffe_id: ECHO.to_owned(),
            healthy: true,
            ..Default::default()
        }
    }

    /// This zone with `addresses`, priority 0.
    fn local(addresses: &[&str]) -> pb::LocalityGroup {
        pb::LocalityGroup {
            zone: "zone-a".into(),
            priority: 0,
            total: addresses.len() as u32,
            weight: addresses.len() as u32,
            endpoints: addresses.iter().map(|a| endpoint(a)).collect(),
            ..Default::default()
        }
    }

    /// Another zone behind a gateway, at `priority`.
    fn remote(zone: &str, priority: u32) -> pb::LocalityGroup {
        pb::LocalityGroup {
            zone: zone.into(),
            priority,
            local_gateways: vec!["10.0.0.1:15008".into()],
            identities: vec![ECHO.into()],
            weight: 3,
            total: 3,
            ..Default::default()
        }
    }

    /// A balancer that never ejects (ejection is the balancer's own test's business).
    fn balancer(groups: &[pb::LocalityGroup]) -> Balancer {
        let config = BalancerConfig {
            outlier: OutlierConfig {
                max_ejection_percent: 0.0,
                ..OutlierConfig::default()
            },
            ..BalancerConfig::default()
        };
        Balancer::new(groups, config)
    }

    /// Two retries, backoff at most 10 ms, a budget that allows retries.
    fn config() -> RetryConfig {
        RetryConfig {
            backoff_base: 10 * MS,
            backoff_max: 10 * MS,
            ..RetryConfig::default()
        }
    }

    fn failed(outcome: Outcome) -> Tried<Status> {
        Tried {
            outcome,
            response: None,
            can_replay: true,
        }
    }

    fn answered(status: Status) -> Tried<Status> {
        Tried {
            outcome: Outcome::Response(status),
            response: Some(status),
            can_replay: true,
        }
    }

    /// A pick from `balancer` as the driver makes it.
    fn pick(
        attempt: &mut Attempt<'_, Status>,
        balancer: &Balancer,
        now: Instant,
    ) -> Action<Status> {
        let mut rng = StdRng::seed_from_u64(7);
        let target = balancer.pick_within(now, &mut rng, None, None, attempt.tried());
        attempt.picked(target)
    }

    fn expect_try(action: Action<Status>) -> (Target, Option<Duration>) {
        match action {
            Action::Try {
                target,
                per_try_timeout,
            } => (target, per_try_timeout),
            other => panic!("expected a try, got {other:?}"),
        }
    }

    fn expect_backoff(action: Action<Status>) -> Instant {
        match action {
            Action::BackOff { until } => until,
            other => panic!("expected a backoff, got {other:?}"),
        }
    }

    fn expect_answer(action: Action<Status>) -> Answer<Status> {
        match action {
            Action::Respond(answer) => answer,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn address(target: &Target) -> &str {
        match target {
            Target::Endpoint { address, .. } => address,
            Target::Remote { zone, .. } => zone,
        }
    }

    #[test]
    fn a_success_is_answered_at_once() {
        let t0 = Instant::now();
        let (config, budget) = (config(), Mutex::new(Budget::from_config(&config(), t0)));
        let lb = balancer(&[local(&["a1"])]);
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        let (target, _) = expect_try(pick(&mut attempt, &lb, t0));
        assert_eq!(address(&target), "a1");
        let answer = expect_answer(attempt.tried_once(answered(200), t0 + MS, &mut rand::rng()));
        assert_eq!(answer, Answer::Response(200, Cow::Borrowed("local")));
    }

    #[test]
    fn failures_are_retried_on_other_targets_until_attempts_run_out() {
        let t0 = Instant::now();
        let (config, budget) = (config(), Mutex::new(Budget::from_config(&config(), t0)));
        let lb = balancer(&[local(&["a1", "a2", "a3", "a4"])]);
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        let mut now = t0;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (target, _) = expect_try(pick(&mut attempt, &lb, now));
            seen.push(address(&target).to_owned());
            now += MS;
            let until = expect_backoff(attempt.tried_once(answered(503), now, &mut rand::rng()));
            assert!(until >= now && until <= now + 10 * MS, "{until:?}");
            now = until;
            assert!(matches!(attempt.backed_off(now), Action::Pick));
        }
        let (target, _) = expect_try(pick(&mut attempt, &lb, now));
        seen.push(address(&target).to_owned());
        // Three tries (two retries), each on a target not tried before.
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "{seen:?}");
        // The last failure is what the app gets: the upstream's own 503.
        let answer = expect_answer(attempt.tried_once(answered(503), now + MS, &mut rand::rng()));
        assert_eq!(answer, Answer::Response(503, Cow::Borrowed("local")));
    }

    #[test]
    fn grpc_statuses_are_retried_only_when_the_policy_lists_them() {
        let t0 = Instant::now();
        let grpc = |code: u32| Tried {
            outcome: Outcome::Grpc(code),
            response: Some(200),
            can_replay: true,
        };
        let lb = balancer(&[local(&["a1", "a2"])]);
        // Not listed: a trailers-only UNAVAILABLE is the app's answer, even for a POST.
        let plain = config();
        let budget = Mutex::new(Budget::from_config(&plain, t0));
        let mut attempt = Attempt::new(Method::POST, &plain, &budget, t0, None);
        expect_try(pick(&mut attempt, &lb, t0));
        let answer = expect_answer(attempt.tried_once(grpc(14), t0 + MS, &mut rand::rng()));
        assert_eq!(answer, Answer::Response(200, Cow::Borrowed("local")));
        // Listed: retried on the other target, whatever the method; an OK is final.
        let listed = RetryConfig {
            retry_on: crate::retry::RetryOn::parse(&["unavailable", "resource-exhausted"]),
            ..config()
        };
        let budget = Mutex::new(Budget::from_config(&listed, t0));
        let mut attempt = Attempt::new(Method::POST, &listed, &budget, t0, None);
        let (first, _) = expect_try(pick(&mut attempt, &lb, t0));
        let until = expect_backoff(attempt.tried_once(grpc(14), t0 + MS, &mut rand::rng()));
        assert!(matches!(attempt.backed_off(until), Action::Pick));
        let (second, _) = expect_try(pick(&mut attempt, &lb, until));
        assert_ne!(address(&first), address(&second));
        // RESOURCE_EXHAUSTED is no server failure, but listed: retried too.
        let until = expect_backoff(attempt.tried_once(grpc(8), until + MS, &mut rand::rng()));
        assert!(matches!(attempt.backed_off(until), Action::Pick));
        expect_try(pick(&mut attempt, &lb, until));
        let answer = expect_answer(attempt.tried_once(grpc(0), until + MS, &mut rand::rng()));
        assert_eq!(answer, Answer::Response(200, Cow::Borrowed("local")));
    }

    #[test]
    fn a_spent_budget_answers_with_the_last_failure() {
        let t0 = Instant::now();
        // No retries financed: neither a share of requests nor a floor per second.
        let config = RetryConfig {
            budget_percent: 0.0,
            min_retries_per_second: 0,
            ..config()
        };
        let budget = Mutex::new(Budget::from_config(&config, t0));
        let lb = balancer(&[local(&["a1", "a2"])]);
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        expect_try(pick(&mut attempt, &lb, t0));
        let answer =
            expect_answer(attempt.tried_once(failed(Outcome::Reset), t0 + MS, &mut rand::rng()));
        assert_eq!(
            answer,
            Answer::Failed(Outcome::Reset, Cow::Borrowed("local"))
        );
        // A connect failure costs no budget: it is still retried.
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        expect_try(pick(&mut attempt, &lb, t0));
        let action = attempt.tried_once(failed(Outcome::ConnectFailure), t0 + MS, &mut rand::rng());
        expect_backoff(action);
    }

    #[test]
    fn a_per_try_timeout_is_handed_out_and_its_timeout_retried() {
        let t0 = Instant::now();
        let config = RetryConfig {
            per_try_timeout: Some(100 * MS),
            ..config()
        };
        let budget = Mutex::new(Budget::from_config(&config, t0));
        let lb = balancer(&[local(&["a1", "a2"])]);
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        let (first, per_try) = expect_try(pick(&mut attempt, &lb, t0));
        assert_eq!(per_try, Some(100 * MS));
        // The driver's timer fired: the try timed out.
        let now = t0 + 100 * MS;
        let until =
            expect_backoff(attempt.tried_once(failed(Outcome::Timeout), now, &mut rand::rng()));
        assert!(matches!(attempt.backed_off(until), Action::Pick));
        let (second, per_try) = expect_try(pick(&mut attempt, &lb, until));
        assert_ne!(first, second);
        assert_eq!(per_try, Some(100 * MS));
        // The retry times out too and so does the next: 504 upstream-timeout in the end.
        let until = expect_backoff(attempt.tried_once(
            failed(Outcome::Timeout),
            until + 100 * MS,
            &mut rand::rng(),
        ));
        assert!(matches!(attempt.backed_off(until), Action::Pick));
        expect_try(pick(&mut attempt, &lb, until));
        let answer = expect_answer(attempt.tried_once(
            failed(Outcome::Timeout),
            until + 100 * MS,
            &mut rand::rng(),
        ));
        assert_eq!(
            answer,
            Answer::Failed(Outcome::Timeout, Cow::Borrowed("local"))
        );
    }

    #[test]
    fn every_target_over_a_limit_is_503_overflow() {
        let t0 = Instant::now();
        let (config, budget) = (config(), Mutex::new(Budget::from_config(&config(), t0)));
        let lb = balancer(&[local(&["a1", "a2"])]);
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        let mut passed_over = Vec::new();
        let answer = loop {
            match pick(&mut attempt, &lb, t0) {
                Action::Try { target, .. } => {
                    passed_over.push(address(&target).to_owned());
                    assert!(matches!(
                        attempt.overflowed(Overflow::Pending),
                        Action::Pick
                    ));
                }
                Action::Respond(answer) => break answer,
                other => panic!("unexpected {other:?}"),
            }
            assert!(passed_over.len() <= 2, "{passed_over:?}");
        };
        // Both passed over, not tried: the balancer offered one of them again.
        passed_over.sort();
        assert_eq!(passed_over, ["a1", "a2"]);
        assert_eq!(answer, Answer::Overflow(Overflow::Pending));
    }

    #[test]
    fn a_failed_try_beats_a_later_overflow() {
        let t0 = Instant::now();
        let (config, budget) = (config(), Mutex::new(Budget::from_config(&config(), t0)));
        let lb = balancer(&[local(&["a1", "a2"])]);
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        expect_try(pick(&mut attempt, &lb, t0));
        let until = expect_backoff(attempt.tried_once(answered(502), t0 + MS, &mut rand::rng()));
        assert!(matches!(attempt.backed_off(until), Action::Pick));
        expect_try(pick(&mut attempt, &lb, until));
        assert!(matches!(
            attempt.overflowed(Overflow::Connections),
            Action::Pick
        ));
        // Only the tried and the passed-over target are left: the tried one's answer.
        let answer = loop {
            match pick(&mut attempt, &lb, until) {
                Action::Respond(answer) => break answer,
                Action::Try { .. } => {
                    assert!(matches!(
                        attempt.overflowed(Overflow::Connections),
                        Action::Pick
                    ));
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(answer, Answer::Response(502, Cow::Borrowed("local")));
    }

    #[test]
    fn nothing_to_pick_is_no_healthy_upstream() {
        let t0 = Instant::now();
        let (config, budget) = (config(), Mutex::new(Budget::from_config(&config(), t0)));
        let mut attempt: Attempt<'_, Status> =
            Attempt::new(Method::GET, &config, &budget, t0, Some(t0 + 15_000 * MS));
        assert_eq!(
            expect_answer(attempt.picked(None)),
            Answer::NoHealthyUpstream
        );
    }

    #[test]
    fn failures_in_the_first_locality_spill_to_the_next() {
        let t0 = Instant::now();
        let (config, budget) = (config(), Mutex::new(Budget::from_config(&config(), t0)));
        let mut lb = balancer(&[local(&["a1"]), remote("zone-b", 1)]);
        let mut attempt = Attempt::new(Method::POST, &config, &budget, t0, Some(t0 + 15_000 * MS));
        let (target, _) = expect_try(pick(&mut attempt, &lb, t0));
        assert_eq!(address(&target), "a1");
        lb.on_start(attempt.current().unwrap(), t0);
        let now = t0 + MS;
        lb.on_complete(attempt.current().unwrap(), now, MS, Outcome::ConnectFailure);
        // A POST too: nothing reached a server.
        let until = expect_backoff(attempt.tried_once(
            failed(Outcome::ConnectFailure),
            now,
            &mut rand::rng(),
        ));
        assert!(matches!(attempt.backed_off(until), Action::Pick));
        let (target, _) = expect_try(pick(&mut attempt, &lb, until));
        assert!(
            matches!(&target, Target::Remote { zone, .. } if zone == "zone-b"),
            "{target:?}"
        );
        let answer = expect_answer(attempt.tried_once(answered(200), until + MS, &mut rand::rng()));
        assert_eq!(
            answer,
            Answer::Response(200, Cow::Owned("zone-b".to_owned()))
        );
    }

    #[test]
    fn the_request_deadline_cuts_a_backoff_short_with_504() {
        let t0 = Instant::now();
        let config = RetryConfig {
            backoff_base: 1_000 * MS,
            backoff_max: 1_000 * MS,
            ..config()
        };
        let budget = Mutex::new(Budget::from_config(&config, t0));
        let lb = balancer(&[local(&["a1", "a2"])]);
        let deadline = t0 + 50 * MS;
        let mut attempt = Attempt::new(Method::GET, &config, &budget, t0, Some(deadline));
        expect_try(pick(&mut attempt, &lb, t0));
        let now = t0 + 40 * MS;
        // Backoff is up to a second (jittered): never past the deadline.
        let until = expect_backoff(attempt.tried_once(answered(503), now, &mut rand::rng()));
        assert!(until <= deadline, "{until:?} {deadline:?}");
        assert_eq!(
            expect_answer(attempt.backed_off(deadline)),
            Answer::RequestTimeout
        );
    }

    #[test]
    fn a_streamed_body_that_left_is_retried_only_after_connect_failures() {
        let t0 = Instant::now();
        let (config, budget) = (config(), Mutex::new(Budget::from_config(&config(), t0)));
        let lb = balancer(&[local(&["a1", "a2", "a3"])]);
        let mut attempt = Attempt::new(Method::PUT, &config, &budget, t0, Some(t0 + 15_000 * MS));
        expect_try(pick(&mut attempt, &lb, t0));
        // The body never left: a connect failure is retried.
        let tried = Tried {
            outcome: Outcome::ConnectFailure,
            response: None,
            can_replay: true,
        };
        let until = expect_backoff(attempt.tried_once(tried, t0 + MS, &mut rand::rng()));
        assert!(matches!(attempt.backed_off(until), Action::Pick));
        expect_try(pick(&mut attempt, &lb, until));
        // The body went with this try: a reset (retriable for a PUT) is not retried.
        let tried = Tried {
            outcome: Outcome::Reset,
            response: None,
            can_replay: false,
        };
        let answer = expect_answer(attempt.tried_once(tried, until + MS, &mut rand::rng()));
        assert_eq!(
            answer,
            Answer::Failed(Outcome::Reset, Cow::Borrowed("local"))
        );
        // A connect failure is still retried: the body is there to send.
        let mut attempt = Attempt::new(Method::PUT, &config, &budget, t0, Some(t0 + 15_000 * MS));
        expect_try(pick(&mut attempt, &lb, t0));
        let tried = Tried {
            outcome: Outcome::ConnectFailure,
            response: None,
            can_replay: false,
        };
        expect_backoff(attempt.tried_once(tried, t0 + MS, &mut rand::rng()));
    }
}
