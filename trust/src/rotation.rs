//! When to renew a certificate: pure functions of its validity and the current time, so the
//! renewal loops elsewhere (zone CA over the sync stream, sidecars, gateways) can be tested
//! without clocks or sleeps.
//!
//! Every certificate is renewed at two thirds of its lifetime: a 24 h leaf at 16 h, a 7 d
//! intermediate after about 4 d 16 h, which leaves a third of the lifetime to ride out an
//! outage of whoever signs it.

use std::time::{Duration, SystemTime};

use crate::ca::CLOCK_SKEW_ALLOWANCE;
use crate::cert_info::CertInfo;

/// The moment to renew a certificate valid from `not_before` to `not_after`: two thirds of the
/// way through its life *as issued*. Strait's CAs backdate `not_before` by
/// [`CLOCK_SKEW_ALLOWANCE`] for clock skew, so the life counts from `not_before` plus that
/// allowance (when it still lies before `not_after`); counting from `not_before` itself would
/// make a short-lived certificate due the moment it is issued, and renewed in a loop. A
/// certificate whose validity is inverted is due at once (`not_after`).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let issued = not_before + CLOCK_SKEW_ALLOWANCE;
    let start = if issued < not_after {
        issued
    } else {
        not_before
    };
    match not_after.duration_since(start) {
        // `lifetime * 2` could overflow for absurd inputs; `/ 3 * 2` loses < 3 ns there.
        Ok(lifetime) => start + lifetime.checked_mul(2).map_or(lifetime / 3 * 2, |d| d / 3),
        Err(_) => not_after,
    }
}

/// Whether the certificate should be renewed at `now`.
pub fn needs_renewal(info: &CertInfo, now: SystemTime) -> bool {
    now >= renew_at(info.not_before, info.not_after)
}

/// How long from `now` until the certificate should be renewed; zero if it is already due.
pub fn time_until_renewal(info: &CertInfo, now: SystemTime) -> Duration {
    renew_at(info.not_before, info.not_after)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn info(nb: SystemTime, na: SystemTime) -> CertInfo {
        CertInfo {
            spiffe_id: None,
            not_before: nb,
            not_after: na,
            is_ca: false,
        }
    }

    const SKEW: Duration = CLOCK_SKEW_ALLOWANCE;

    #[test]
    fn renews_at_two_thirds_of_the_life_as_issued() {
        // Issued at t0 (not_before backdated to t0 - SKEW), valid 24 h from issuance: due at 16 h.
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(renew_at(t0 - SKEW, t0 + 24 * H), t0 + 16 * H);
        assert_eq!(renew_at(t0 - SKEW, t0 + 7 * 24 * H), t0 + 112 * H);
        // A 12 s certificate is due 8 s after issuance, not at once.
        assert_eq!(
            renew_at(t0 - SKEW, t0 + Duration::from_secs(12)),
            t0 + Duration::from_secs(8)
        );
        // Not evenly divisible: 1 s lifetime → 666_666_666 ns.
        assert_eq!(
            renew_at(t0 - SKEW, t0 + Duration::from_secs(1)),
            t0 + Duration::from_nanos(666_666_666)
        );
        // A certificate not backdated (an operator's own) and shorter than the allowance
        // counts from not_before.
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(30)),
            t0 + Duration::from_secs(20)
        );
        assert_eq!(renew_at(t0, t0), t0);
        assert_eq!(renew_at(t0 + H, t0), t0, "inverted validity is due at once");
        // No overflow panic on absurd input.
        let far = t0 + Duration::from_secs(i64::MAX.unsigned_abs() / 2);
        assert!(renew_at(t0, far) > t0);
    }

    #[test]
    fn needs_renewal_and_time_until() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = info(t0 - SKEW, t0 + 24 * H);
        assert!(!needs_renewal(&c, t0));
        assert!(!needs_renewal(&c, t0 + 16 * H - Duration::from_secs(1)));
        assert!(needs_renewal(&c, t0 + 16 * H));
        assert!(needs_renewal(&c, t0 + 48 * H));
        assert_eq!(time_until_renewal(&c, t0), 16 * H);
        assert_eq!(time_until_renewal(&c, t0 + 10 * H), 6 * H);
        assert_eq!(time_until_renewal(&c, t0 + 20 * H), Duration::ZERO);
    }
}
