//! The resource kinds and how their names are spelled in YAML and on the command line.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::UnknownKindError;

/// A kind of policy resource.
///
/// In YAML the name is matched exactly (`kind: Timeout`), as Kubernetes does, so a file means
/// the same thing to every tool that reads it. The CLI is lenient: see
/// [`Kind::from_str_case_insensitive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    TrafficRoute,
    Retry,
    Timeout,
    CircuitBreaker,
    FaultInjection,
    RateLimit,
    TrafficPermission,
    LocalityFailover,
    MeshTls,
}

impl Kind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [Kind; 9] = [
        Kind::TrafficRoute,
        Kind::Retry,
        Kind::Timeout,
        Kind::CircuitBreaker,
        Kind::FaultInjection,
        Kind::RateLimit,
        Kind::TrafficPermission,
        Kind::LocalityFailover,
        Kind::MeshTls,
    ];

    /// The name as written in YAML `kind:`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::TrafficRoute => "TrafficRoute",
            Kind::Retry => "Retry",
            Kind::Timeout => "Timeout",
            Kind::CircuitBreaker => "CircuitBreaker",
            Kind::FaultInjection => "FaultInjection",
            Kind::RateLimit => "RateLimit",
            Kind::TrafficPermission => "TrafficPermission",
            Kind::LocalityFailover => "LocalityFailover",
            Kind::MeshTls => "MeshTLS",
        }
    }

    /// The lower-case plural the CLI prints in listings (`timeouts`, `retries`).
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::TrafficRoute => "trafficroutes",
            Kind::Retry => "retries",
            Kind::Timeout => "timeouts",
            Kind::CircuitBreaker => "circuitbreakers",
            Kind::FaultInjection => "faultinjections",
            Kind::RateLimit => "ratelimits",
            Kind::TrafficPermission => "trafficpermissions",
            Kind::LocalityFailover => "localityfailovers",
            Kind::MeshTls => "meshtlses",
        }
    }

    /// The kind as a user types it on the command line (`strait get timeout`): case does not
    /// matter, `-` and `_` are ignored (`traffic-route`), and the plural is accepted too
    /// (`timeouts`, `retries`, `meshtlses`), as `kubectl get` does.
    pub fn from_str_case_insensitive(s: &str) -> Result<Kind, UnknownKindError> {
        let folded: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        Kind::ALL
            .into_iter()
            .find(|k| {
                folded == k.as_str().to_ascii_lowercase()
                    || folded == k.plural()
                    // The naive plural too (`retrys`, `meshtlss`), so users need not remember
                    // which kinds have irregular ones.
                    || folded == format!("{}s", k.as_str().to_ascii_lowercase())
            })
            .ok_or_else(|| UnknownKindError {
                given: s.to_owned(),
            })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownKindError;

    /// The exact YAML spelling; see [`Kind::from_str_case_insensitive`] for the CLI's.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKindError {
                given: s.to_owned(),
            })
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
