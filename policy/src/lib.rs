//! Strait's policy resources: the kinds users write in YAML, their validation with field-path
//! errors, and the effective-policy view the policy compiler reads.
//!
//! Entry points:
//! - [`parse_documents`] reads a `strait apply -f` file: every document parsed and validated,
//!   all or nothing, with every problem reported.
//! - [`Resource`] is one resource; it round-trips through JSON (Raft storage) and YAML
//!   (`strait get -o yaml`).
//! - [`validate`] checks a resource built in code.
//! - [`PolicySet::for_service`] tells which resource of each kind applies to a service.
//!
//! Everything here is pure: no IO, no clocks.

mod check;
pub mod duration;
pub mod error;
pub mod kind;
pub mod meta;
mod parse;
pub mod resource;
pub mod set;
pub mod spec;

pub use check::MAX_DURATION;
pub use duration::HumanDuration;
pub use error::{FieldError, PolicyError, Problem, ProblemKind, UnknownKindError};
pub use kind::Kind;
pub use meta::{DEFAULT_NAMESPACE, Metadata, ResourceKey, TargetRef};
pub use parse::{MAX_FILE_BYTES, parse_documents};
pub use resource::{API_VERSION, Resource, to_yaml_documents, validate};
pub use set::{Applied, PolicySet, ServicePolicies};
pub use spec::*;

#[cfg(test)]
mod tests;
