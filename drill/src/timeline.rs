//! What a drill measured, worked out from its samples. Pure: samples and phase times in, the
//! report's numbers out.
//!
//! Definitions (all times from the moment the service was taken out of the zone, `out_at`):
//! - **detection**: until the first request that was *not* answered by the zone (answered
//!   elsewhere, or failed) — when the federation first reacted;
//! - **RTO** (`rto_ms`): until the last answer from the zone before it was restored, i.e. how
//!   long the zone kept receiving traffic. 0 when it got none after `out_at`; `None` when
//!   answers from the zone never stopped (nothing failed over);
//! - **failback**: from the restore until the first answer from the zone again.
//!
//! A sample is placed at the moment its request was *sent*, so a slow answer does not move
//! the timeline.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One request of the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When it was sent, since the drill started.
    pub sent: Duration,
    pub latency: Duration,
    pub result: SampleResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleResult {
    /// A success, answered by this zone.
    Answered { zone: String },
    /// Anything else: a non-2xx status, a reset, a timeout.
    Failed { reason: String },
}

/// When the drill changed things, since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub out_at: Duration,
    pub restored_at: Option<Duration>,
}

/// Requests in one slice of time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Start of the slice, since the drill started.
    pub start_ms: u64,
    /// Successful answers by zone.
    pub zones: BTreeMap<String, u32>,
    pub errors: u32,
}

/// The numbers of a drill report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub requests: u64,
    pub errors: u64,
    pub detection_ms: Option<u64>,
    pub rto_ms: Option<u64>,
    pub failback_ms: Option<u64>,
    /// Successful answers by zone over the whole drill.
    pub answers_by_zone: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The first few distinct failure reasons, with counts.
    pub error_reasons: BTreeMap<String, u64>,
    /// Every failure counted by its status: the gRPC code (`UNAVAILABLE`), the HTTP status
    /// (`503`), or `transport` (refused, reset, timed out), see [`crate::grpc::status_of`].
    pub errors_by_status: BTreeMap<String, u64>,
    pub timeline: Vec<Bucket>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn answered_by(s: &Sample) -> Option<&str> {
    match &s.result {
        SampleResult::Answered { zone } => Some(zone),
        SampleResult::Failed { .. } => None,
    }
}

/// Works out the report for a drill that took `zone` out. `bucket` is the timeline's slice.
pub fn analyze(samples: &[Sample], zone: &str, phases: Phases, bucket: Duration) -> Analysis {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.sent);
    let out = phases.out_at;
    let end_of_outage = phases.restored_at.unwrap_or(Duration::MAX);
    let during: Vec<&&Sample> = sorted
        .iter()
        .filter(|s| s.sent >= out && s.sent < end_of_outage)
        .collect();

    let detection_ms = during
        .iter()
        .find(|s| answered_by(s) != Some(zone))
        .map(|s| ms(s.sent - out));
    let last_from_zone = during.iter().rev().find(|s| answered_by(s) == Some(zone));
    let rto_ms = match last_from_zone {
        None => Some(0),
        Some(last) => {
            // The zone answered until the end of the outage window: traffic never left it.
            let anything_after = during.iter().any(|s| s.sent > last.sent);
            anything_after.then(|| ms(last.sent - out))
        }
    };
    let failback_ms = phases.restored_at.and_then(|restored| {
        sorted
            .iter()
            .find(|s| s.sent >= restored && answered_by(s) == Some(zone))
            .map(|s| ms(s.sent - restored))
    });

    let mut answers_by_zone: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors_by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0_u64;
    let mut timeline: BTreeMap<u64, Bucket> = BTreeMap::new();
    let slice = ms(bucket).max(1);
    for s in &sorted {
        let start = ms(s.sent) / slice * slice;
        let b = timeline.entry(start).or_insert_with(|| Bucket {
            start_ms: start,
            ..Bucket::default()
        });
        match &s.result {
            SampleResult::Answered { zone } => {
                *answers_by_zone.entry(zone.clone()).or_default() += 1;
                *b.zones.entry(zone.clone()).or_default() += 1;
            }
            SampleResult::Failed { reason } => {
                errors += 1;
                b.errors += 1;
                *errors_by_status
                    .entry(crate::grpc::status_of(reason).to_owned())
                    .or_default() += 1;
                if error_reasons.len() < 8 || error_reasons.contains_key(reason) {
                    *error_reasons.entry(reason.clone()).or_default() += 1;
                }
            }
        }
    }
    let mut latencies: Vec<Duration> = sorted.iter().map(|s| s.latency).collect();
    latencies.sort();
    let quantile = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((latencies.len() as f64) * q).ceil() as usize;
        let index = rank.clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1_000.0
    };
    Analysis {
        requests: sorted.len() as u64,
        errors,
        detection_ms,
        rto_ms,
        failback_ms,
        answers_by_zone,
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        error_reasons,
        errors_by_status,
        timeline: timeline.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, zone: Option<&str>) -> Sample {
        Sample {
            sent: Duration::from_millis(ms),
            latency: Duration::from_millis(1),
            result: match zone {
                Some(z) => SampleResult::Answered { zone: z.into() },
                None => SampleResult::Failed {
                    reason: "503 no-healthy-upstream".into(),
                },
            },
        }
    }

    fn phases(out: u64, restored: Option<u64>) -> Phases {
        Phases {
            out_at: Duration::from_millis(out),
            restored_at: restored.map(Duration::from_millis),
        }
    }

    const SLICE: Duration = Duration::from_millis(500);

    #[test]
    fn a_clean_failover_and_failback() {
        let samples = [
            at(0, Some("a")),
            at(900, Some("a")),
            at(1_000, Some("a")), // out at 1000, one more answer from a in flight
            at(1_100, Some("a")),
            at(1_200, Some("b")),
            at(1_300, Some("b")),
            at(3_000, Some("b")), // restored at 3000
            at(3_400, Some("b")),
            at(3_500, Some("a")),
        ];
        let r = analyze(&samples, "a", phases(1_000, Some(3_000)), SLICE);
        assert_eq!(r.requests, 9);
        assert_eq!(r.errors, 0);
        assert_eq!(r.detection_ms, Some(200));
        assert_eq!(r.rto_ms, Some(100));
        assert_eq!(r.failback_ms, Some(500));
        assert_eq!(r.answers_by_zone["a"], 5);
        assert_eq!(r.timeline[0].start_ms, 0);
        assert_eq!(
            r.timeline
                .iter()
                .map(|b| b.zones.values().sum::<u32>())
                .sum::<u32>(),
            9
        );
    }

    #[test]
    fn no_answer_from_the_zone_after_out_is_an_rto_of_zero() {
        let samples = [at(0, Some("a")), at(1_000, Some("b")), at(1_100, None)];
        let r = analyze(&samples, "a", phases(1_000, None), SLICE);
        assert_eq!(r.rto_ms, Some(0));
        assert_eq!(r.detection_ms, Some(0));
        assert_eq!(r.errors, 1);
        assert_eq!(r.error_reasons["503 no-healthy-upstream"], 1);
        assert_eq!(r.failback_ms, None);
    }

    #[test]
    fn a_zone_that_keeps_answering_has_no_rto() {
        let samples = [at(0, Some("a")), at(1_000, Some("a")), at(2_000, Some("a"))];
        let r = analyze(&samples, "a", phases(500, Some(2_500)), SLICE);
        assert_eq!(r.rto_ms, None, "traffic never left the zone");
        assert_eq!(r.detection_ms, None);
    }

    #[test]
    fn samples_out_of_order_and_empty_input() {
        let samples = [at(1_300, Some("b")), at(1_100, Some("a")), at(0, Some("a"))];
        let r = analyze(&samples, "a", phases(1_000, None), SLICE);
        assert_eq!(r.rto_ms, Some(100));
        let empty = analyze(&[], "a", phases(0, None), SLICE);
        assert_eq!((empty.requests, empty.errors, empty.p99_ms), (0, 0, 0.0));
        assert_eq!(empty.rto_ms, Some(0));
    }
}
