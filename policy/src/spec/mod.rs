//! The `spec` of each kind, as typed structs, and the [`Spec`] enum over them.
//!
//! The structs are what the policy compiler reads; field docs say what the proxies do with
//! each field, and defaults are filled in at parse time so a stored resource shows every
//! value in force.

pub mod fault;
pub mod locality;
pub mod mesh_tls;
pub mod permission;
pub mod rate_limit;
pub mod resilience;
pub mod route;

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use crate::check::Checker;
use crate::error::FieldError;
use crate::kind::Kind;
use crate::meta::TargetRef;

pub use fault::{AbortFault, DelayFault, FaultInjectionSpec};
pub use locality::{Locality, LocalityFailoverSpec};
pub use mesh_tls::{MeshTlsMode, MeshTlsSpec};
pub use permission::{Action, PermissionRule, RequestInfo, SpiffeIdPattern, TrafficPermissionSpec};
pub use rate_limit::RateLimitSpec;
pub use resilience::{
    Backoff, CircuitBreakerSpec, OutlierDetection, RetryBudget, RetryOn, RetrySpec, TimeoutSpec,
};
pub use route::{
    HeaderMatch, HeaderValueMatch, HttpMatch, PathMatch, RouteRule, TrafficRouteSpec,
    WeightedSubset,
};

/// The `spec` of a resource; the variant is its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    TrafficRoute(TrafficRouteSpec),
    Retry(RetrySpec),
    Timeout(TimeoutSpec),
    CircuitBreaker(CircuitBreakerSpec),
    FaultInjection(FaultInjectionSpec),
    RateLimit(RateLimitSpec),
    TrafficPermission(TrafficPermissionSpec),
    LocalityFailover(LocalityFailoverSpec),
    MeshTls(MeshTlsSpec),
}

impl Spec {
    /// The kind this spec belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::TrafficRoute(_) => Kind::TrafficRoute,
            Spec::Retry(_) => Kind::Retry,
            Spec::Timeout(_) => Kind::Timeout,
            Spec::CircuitBreaker(_) => Kind::CircuitBreaker,
            Spec::FaultInjection(_) => Kind::FaultInjection,
            Spec::RateLimit(_) => Kind::RateLimit,
            Spec::TrafficPermission(_) => Kind::TrafficPermission,
            Spec::LocalityFailover(_) => Kind::LocalityFailover,
            Spec::MeshTls(_) => Kind::MeshTls,
        }
    }

    /// The service the policy applies to; `None` for a namespace-wide (or, in the mesh
    /// namespace, mesh-wide) resource. Every kind but `TrafficRoute` may leave it out.
    pub fn target_ref(&self) -> Option<&TargetRef> {
        match self {
            Spec::TrafficRoute(s) => Some(&s.target_ref),
            Spec::Retry(s) => s.target_ref.as_ref(),
            Spec::Timeout(s) => s.target_ref.as_ref(),
            Spec::CircuitBreaker(s) => s.target_ref.as_ref(),
            Spec::FaultInjection(s) => s.target_ref.as_ref(),
            Spec::RateLimit(s) => s.target_ref.as_ref(),
            Spec::TrafficPermission(s) => s.target_ref.as_ref(),
            Spec::LocalityFailover(s) => s.target_ref.as_ref(),
            Spec::MeshTls(s) => s.target_ref.as_ref(),
        }
    }

    /// Read the spec of a `kind` from a generic value, reporting the failing field's path
    /// (prefixed with `spec`).
    pub(crate) fn decode(kind: Kind, value: serde_json::Value) -> Result<Spec, FieldError> {
        Ok(match kind {
            Kind::TrafficRoute => Spec::TrafficRoute(decode_at("spec", value)?),
            Kind::Retry => Spec::Retry(decode_at("spec", value)?),
            Kind::Timeout => Spec::Timeout(decode_at("spec", value)?),
            Kind::CircuitBreaker => Spec::CircuitBreaker(decode_at("spec", value)?),
            Kind::FaultInjection => Spec::FaultInjection(decode_at("spec", value)?),
            Kind::RateLimit => Spec::RateLimit(decode_at("spec", value)?),
            Kind::TrafficPermission => Spec::TrafficPermission(decode_at("spec", value)?),
            Kind::LocalityFailover => Spec::LocalityFailover(decode_at("spec", value)?),
            Kind::MeshTls => Spec::MeshTls(decode_at("spec", value)?),
        })
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        match self {
            Spec::TrafficRoute(s) => s.check(c),
            Spec::Retry(s) => s.check(c),
            Spec::Timeout(s) => s.check(c),
            Spec::CircuitBreaker(s) => s.check(c),
            Spec::FaultInjection(s) => s.check(c),
            Spec::RateLimit(s) => s.check(c),
            Spec::TrafficPermission(s) => s.check(c),
            Spec::LocalityFailover(s) => s.check(c),
            Spec::MeshTls(s) => s.check(c),
        }
    }
}

impl Serialize for Spec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Spec::TrafficRoute(s) => s.serialize(serializer),
            Spec::Retry(s) => s.serialize(serializer),
            Spec::Timeout(s) => s.serialize(serializer),
            Spec::CircuitBreaker(s) => s.serialize(serializer),
            Spec::FaultInjection(s) => s.serialize(serializer),
            Spec::RateLimit(s) => s.serialize(serializer),
            Spec::TrafficPermission(s) => s.serialize(serializer),
            Spec::LocalityFailover(s) => s.serialize(serializer),
            Spec::MeshTls(s) => s.serialize(serializer),
        }
    }
}

/// Deserialize `value` into `T`; on failure, say where (`prefix` + the path inside `value`)
/// and why.
pub(crate) fn decode_at<T: DeserializeOwned>(
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = prefix.to_owned();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    path.push_str(&format!("[{index}]"));
                }
                serde_path_to_error::Segment::Map { key } => {
                    path.push('.');
                    path.push_str(key);
                }
                serde_path_to_error::Segment::Enum { variant } => {
                    path.push('.');
                    path.push_str(variant);
                }
                serde_path_to_error::Segment::Unknown => path.push_str(".?"),
            }
        }
        FieldError::new(path, e.into_inner().to_string())
    })
}
