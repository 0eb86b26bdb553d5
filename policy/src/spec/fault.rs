//! `FaultInjection`: delays and errors injected on purpose, to test how callers cope.

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::duration::HumanDuration;
use crate::meta::TargetRef;
use crate::spec::route::{HttpMatch, check_matches};

/// `spec` of a `FaultInjection`. Faults are injected by the caller's proxy, before the request
/// leaves, so they test the caller and never load the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjectionSpec {
    /// Absent: every service of the namespace (or of the mesh, in the mesh namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Only requests matching any of these are affected; absent means every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
}

/// Hold a share of requests before sending them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelayFault {
    /// Share of requests delayed, 0–100.
    pub percent: f64,
    pub duration: HumanDuration,
}

/// Answer a share of requests with an error status instead of sending them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbortFault {
    /// Share of requests aborted, 0–100.
    pub percent: f64,
    /// The status returned, 200..=599.
    pub http_status: u16,
}

impl FaultInjectionSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
        }
        check_matches("spec.matches", &self.matches, c);
        if self.delay.is_none() && self.abort.is_none() {
            c.err("spec", "set at least one of delay or abort");
        }
        if let Some(d) = &self.delay {
            c.percent("spec.delay.percent", d.percent);
            c.duration("spec.delay.duration", d.duration);
        }
        if let Some(a) = &self.abort {
            c.percent("spec.abort.percent", a.percent);
            c.status("spec.abort.httpStatus", a.http_status, 200..=599);
        }
    }
}
