//! `RateLimit`: a token bucket in each of the service's own (inbound) proxies.
//!
//! The bucket holds at most `burst` tokens (default: `requests`) and starts full. It gains
//! `requests` tokens per `interval`, continuously (a request every `interval / requests` on
//! average, not `requests` at once at each interval boundary). A request takes one token; with
//! none left it is refused, and the proxy answers `status` (default 429) at once. There is no
//! shared counter: each endpoint limits itself, so a service admits about
//! `requests × endpoints` per interval.
//!
//! Arithmetic is exact integers (one token is `interval` in nanoseconds' worth of
//! `requests`-per-nanosecond refill), so a bucket never drifts however long it runs.

use std::time::{Duration, Instant};

use strait_proto as pb;

/// The status refused requests get when the policy names none.
pub const DEFAULT_STATUS: u16 = 429;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Refill per nanosecond, in units: `requests`.
    requests: u128,
    /// Units per token: the interval in nanoseconds.
    unit: u128,
    /// Capacity in units: `burst × unit`.
    capacity: u128,
    /// Current fill in units.
    level: u128,
    updated: Instant,
    status: u16,
}

impl TokenBucket {
    /// A full bucket admitting `requests` per `interval` with bursts up to `burst`.
    /// `None` when the settings admit nothing sensible (0 requests or a 0 interval): the
    /// zone never sends those, and no limit beats refusing everything.
    pub fn new(
        requests: u32,
        interval: Duration,
        burst: u32,
        status: u16,
        now: Instant,
    ) -> Option<Self> {
        let unit = interval.as_nanos();
        if requests == 0 || unit == 0 {
            return None;
        }
        let burst = if burst == 0 { requests } else { burst };
        let capacity = u128::from(burst) * unit;
        Some(Self {
            requests: u128::from(requests),
            unit,
            capacity,
            level: capacity,
            updated: now,
            status,
        })
    }

    /// The bucket of a `RateLimitPolicy`: 0 `burst` means `requests`, 0 `status` means 429.
    pub fn from_policy(policy: &pb::RateLimitPolicy, now: Instant) -> Option<Self> {
        let status = u16::try_from(policy.status)
            .ok()
            .filter(|s| (400..=599).contains(s))
            .unwrap_or(DEFAULT_STATUS);
        Self::new(
            policy.requests,
            Duration::from_millis(policy.interval_ms),
            policy.burst,
            status,
            now,
        )
    }

    /// Takes a token if there is one.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.level >= self.unit {
            self.level -= self.unit;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        u64::try_from(self.level / self.unit).unwrap_or(u64::MAX)
    }

    /// The status to answer refused requests with.
    pub fn status(&self) -> u16 {
        self.status
    }

    fn refill(&mut self, now: Instant) {
        // A `now` earlier than the last one (callers racing) adds nothing and moves nothing.
        if now <= self.updated {
            return;
        }
        let elapsed = now.duration_since(self.updated).as_nanos();
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.requests))
            .min(self.capacity);
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn admitted(b: &mut TokenBucket, n: usize, now: Instant) -> usize {
        (0..n).filter(|_| b.try_acquire(now)).count()
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        // The docs' example: 100 per second, bursts of 200.
        let mut b = TokenBucket::new(100, S, 200, 429, t0).unwrap();
        assert_eq!(admitted(&mut b, 500, t0), 200);
        assert!(!b.try_acquire(t0));
        // 10 ms later: exactly one token.
        assert_eq!(admitted(&mut b, 10, t0 + 10 * MS), 1);
        // Hammering every millisecond for 10 s admits 100/s.
        let mut total = 0;
        for ms in 11..=10_010_u32 {
            total += admitted(&mut b, 5, t0 + MS * ms);
        }
        assert_eq!(total, 1000);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, S, 0, 429, t0).unwrap();
        // burst 0 means `requests`.
        assert_eq!(admitted(&mut b, 100, t0), 10);
        assert_eq!(b.available(t0 + 3600 * S), 10);
    }

    #[test]
    fn slow_rates_are_exact() {
        let t0 = Instant::now();
        // 3 per 7 s: a token every 2.333… s, with no drift over a long run.
        let mut b = TokenBucket::new(3, 7 * S, 10, 429, t0).unwrap();
        assert_eq!(admitted(&mut b, 20, t0), 10);
        assert!(!b.try_acquire(t0 + 2333 * MS));
        assert!(b.try_acquire(t0 + 2334 * MS));
        let mut total = 0;
        for s in 3..=7_000_u32 {
            total += admitted(&mut b, 1, t0 + S * s);
        }
        // From 2.334 s to 7000 s the bucket gains 3 × 6997.666 s = 20993 token-seconds, plus
        // the 0.002 left over: exactly 2999 tokens (20993 = 7 × 2999).
        assert_eq!(total, 2999);
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now() + S;
        let mut b = TokenBucket::new(1, S, 1, 429, t0).unwrap();
        assert!(b.try_acquire(t0));
        assert!(!b.try_acquire(t0 - 500 * MS));
        assert!(!b.try_acquire(t0 + 999 * MS));
        assert!(b.try_acquire(t0 + S));
    }

    #[test]
    fn from_policy_defaults_and_nonsense() {
        let t0 = Instant::now();
        let p = pb::RateLimitPolicy {
            requests: 5,
            interval_ms: 1000,
            burst: 0,
            status: 0,
        };
        let mut b = TokenBucket::from_policy(&p, t0).unwrap();
        assert_eq!(b.status(), 429);
        assert_eq!(b.available(t0), 5);
        let p = pb::RateLimitPolicy { status: 503, ..p };
        assert_eq!(TokenBucket::from_policy(&p, t0).unwrap().status(), 503);
        let zero = pb::RateLimitPolicy { requests: 0, ..p };
        assert!(TokenBucket::from_policy(&zero, t0).is_none());
        let no_interval = pb::RateLimitPolicy {
            interval_ms: 0,
            ..p
        };
        assert!(TokenBucket::from_policy(&no_interval, t0).is_none());
    }
}
