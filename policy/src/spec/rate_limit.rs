//! `RateLimit`: a local token bucket in each of the service's own proxies.

use serde::{Deserialize, Serialize};

use crate::check::Checker;
use crate::duration::HumanDuration;
use crate::meta::TargetRef;

/// `spec` of a `RateLimit`.
///
/// Enforced by each endpoint's inbound proxy on its own (no shared counter), so the service
/// as a whole admits about `requests × endpoints` per `interval`. The bucket holds `burst`
/// tokens and gains `requests` tokens per `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Absent: every service of the namespace (or of the mesh, in the mesh namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Tokens added per interval (at least 1).
    pub requests: u32,
    pub interval: HumanDuration,
    /// Bucket size: how many requests may arrive at once. Absent means `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Status answered to requests over the limit, 400..=599. Default 429.
    #[serde(default = "default_status")]
    pub status: u16,
}

fn default_status() -> u16 {
    429
}

impl RateLimitSpec {
    /// The bucket size in force.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(t) = &self.target_ref {
            t.check("spec.targetRef", c);
        }
        c.at_least("spec.requests", self.requests.into(), 1);
        c.duration("spec.interval", self.interval);
        if let Some(b) = self.burst {
            c.at_least("spec.burst", b.into(), 1);
        }
        c.status("spec.status", self.status, 400..=599);
    }
}
