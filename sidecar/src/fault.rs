//! `FaultInjection`: delays and errors injected on purpose by the caller's proxy, before the
//! request leaves, so they test the caller and never load the service.
//!
//! For each request that `matches` takes (any match; none listed means every request, same
//! form as in `TrafficRoute`, see [`crate::route`]):
//!
//! - with probability `delay.percent` / 100 the request is **held** for `delay.duration`;
//! - independently, with probability `abort.percent` / 100 it is **answered** with
//!   `abort.httpStatus` instead of being sent.
//!
//! Both may hit the same request: it is delayed, then aborted (Envoy does the same), so an
//! abort can also be slow. Percentages may be fractions (`0.5`). The draws come from the
//! caller's random source. Faults apply once per request, not per retry: the caller's proxy
//! answers an abort itself, and an abort is never retried.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;
use strait_proto as pb;

use crate::route::{RequestMatcher, RequestView, RouteError, any_matches, compile_matches};

/// A fault policy that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(transparent)]
    Match(#[from] RouteError),
    /// An abort status outside 200–599.
    #[error("fault.abort_status: {0} is not a status a fault may answer (200-599)")]
    Status(u32),
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Hold the request this long first.
    pub delay: Option<Duration>,
    /// Answer with this status instead of sending the request.
    pub abort: Option<StatusCode>,
}

/// The compiled `FaultInjection` of a service.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    matches: Vec<RequestMatcher>,
    delay: Option<(f64, Duration)>,
    abort: Option<(f64, StatusCode)>,
}

impl FaultInjector {
    /// Compiles a fault policy. A delay of 0 ms or a 0 % share is no delay; likewise for the
    /// abort (status 0 means no abort).
    pub fn new(policy: &pb::FaultPolicy) -> Result<Self, FaultError> {
        let delay = (policy.delay_ms > 0 && policy.delay_percent > 0.0)
            .then(|| (policy.delay_percent, Duration::from_millis(policy.delay_ms)));
        let abort = if policy.abort_status == 0 || policy.abort_percent <= 0.0 {
            None
        } else {
            let status = u16::try_from(policy.abort_status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or(FaultError::Status(policy.abort_status))?;
            Some((policy.abort_percent, status))
        };
        Ok(Self {
            matches: compile_matches(&policy.matches, "fault.matches")?,
            delay,
            abort,
        })
    }

    /// The injector of a service's policy, if it has a fault policy.
    pub fn from_policy(policy: Option<&pb::RoutePolicy>) -> Result<Option<Self>, FaultError> {
        policy
            .and_then(|p| p.fault.as_ref())
            .map(Self::new)
            .transpose()
    }

    /// Decides the faults of one request.
    pub fn decide(&self, req: &RequestView<'_>, rng: &mut impl Rng) -> FaultDecision {
        if !any_matches(&self.matches, req) {
            return FaultDecision::default();
        }
        // Both draws happen whatever the first gives, so the delay share does not shift the
        // abort share for a given random sequence.
        let delay_hit = hit(rng);
        let abort_hit = hit(rng);
        FaultDecision {
            delay: self
                .delay
                .and_then(|(percent, d)| (delay_hit < percent).then_some(d)),
            abort: self
                .abort
                .and_then(|(percent, s)| (abort_hit < percent).then_some(s)),
        }
    }
}

/// A uniform draw in `[0, 100)`: a fault with `percent` p hits when the draw is below p.
fn hit(rng: &mut impl Rng) -> f64 {
    rng.random::<f64>() * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The docs' example: 10% delayed by 2 s, 5% aborted with 503, for x-chaos: on.
    fn chaos() -> FaultInjector {
        FaultInjector::new(&pb::FaultPolicy {
            delay_percent: 10.0,
            delay_ms: 2000,
            abort_percent: 5.0,
            abort_status: 503,
            matches: vec![pb::RouteMatch {
                headers: vec![pb::HeaderMatch {
                    name: "x-chaos".into(),
                    r#match: Some(pb::header_match::Match::Exact("on".into())),
                }],
                ..Default::default()
            }],
        })
        .unwrap()
    }

    /// Counts (delayed, aborted, both) over `n` requests, checking what each fault carries.
    fn run(f: &FaultInjector, headers: &HeaderMap, n: usize) -> (usize, usize, usize) {
        let mut rng = StdRng::seed_from_u64(11);
        let get = Method::GET;
        let req = RequestView {
            method: &get,
            path: "/",
            headers,
        };
        let mut counts = (0, 0, 0);
        for _ in 0..n {
            let d = f.decide(&req, &mut rng);
            if d.delay.is_some() {
                assert_eq!(d.delay, f.delay.map(|(_, d)| d));
                counts.0 += 1;
            }
            if d.abort.is_some() {
                assert_eq!(d.abort, f.abort.map(|(_, s)| s));
                counts.1 += 1;
            }
            if d.delay.is_some() && d.abort.is_some() {
                counts.2 += 1;
            }
        }
        counts
    }

    #[test]
    fn shares_follow_the_percentages_for_matching_requests() {
        let mut headers = HeaderMap::new();
        headers.insert("x-chaos", HeaderValue::from_static("on"));
        let f = chaos();
        assert_eq!(f.delay, Some((10.0, Duration::from_secs(2))));
        assert_eq!(f.abort, Some((5.0, StatusCode::SERVICE_UNAVAILABLE)));
        let (delayed, aborted, both) = run(&f, &headers, 10_000);
        assert!((900..=1100).contains(&delayed), "{delayed}");
        assert!((400..=600).contains(&aborted), "{aborted}");
        // Independent: about 0.5% get both.
        assert!((20..=80).contains(&both), "{both}");
    }

    #[test]
    fn requests_not_matched_are_untouched() {
        let (delayed, aborted, _) = run(&chaos(), &HeaderMap::new(), 2_000);
        assert_eq!((delayed, aborted), (0, 0));
    }

    #[test]
    fn without_matches_every_request_is_eligible_and_100_percent_always_hits() {
        let f = FaultInjector::new(&pb::FaultPolicy {
            abort_percent: 100.0,
            abort_status: 500,
            ..Default::default()
        })
        .unwrap();
        let (delayed, aborted, _) = run(&f, &HeaderMap::new(), 1_000);
        assert_eq!((delayed, aborted), (0, 1_000));
        // Fractions of a percent work.
        let f = FaultInjector::new(&pb::FaultPolicy {
            delay_percent: 0.5,
            delay_ms: 2000,
            ..Default::default()
        })
        .unwrap();
        let (delayed, _, _) = run(&f, &HeaderMap::new(), 20_000);
        assert!((60..=140).contains(&delayed), "{delayed}");
    }

    #[test]
    fn load_errors_and_absent_policy() {
        let bad = pb::FaultPolicy {
            abort_percent: 1.0,
            abort_status: 99,
            ..Default::default()
        };
        assert!(matches!(
            FaultInjector::new(&bad),
            Err(FaultError::Status(99))
        ));
        let bad_regex = pb::FaultPolicy {
            matches: vec![pb::RouteMatch {
                path_regex: "[".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = FaultInjector::new(&bad_regex).unwrap_err();
        assert!(
            err.to_string().starts_with("fault.matches[0].path_regex"),
            "{err}"
        );
        assert!(FaultInjector::from_policy(None).unwrap().is_none());
        assert!(
            FaultInjector::from_policy(Some(&pb::RoutePolicy::default()))
                .unwrap()
                .is_none()
        );
    }
}
