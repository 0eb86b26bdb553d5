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
pub mod describe;
pub mod duration;
pub mod error;
pub mod kind;
pub mod meta;
mod parse;
mod permission_eval;
pub mod resource;
pub mod set;
pub mod spec;

pub use check::MAX_DURATION;
pub use describe::{Description, ServiceCatalog, apply_warnings, describe};
pub use duration::HumanDuration;
pub use error::{FieldError, PolicyError, Problem, ProblemKind, UnknownKindError};
pub use kind::Kind;
pub use meta::{DEFAULT_NAMESPACE, MESH_NAMESPACE, Metadata, ResourceKey, TargetRef};
pub use parse::{MAX_FILE_BYTES, parse_documents};
pub use permission_eval::{Combined, CombinedReason, PermissionInput, decide_permissions};
pub use resource::{API_VERSION, Resource, to_yaml_documents, validate};
pub use set::{Applied, PolicySet, Scope, ServicePolicies, Shadowed, scope_for};
pub use spec::*;

#[cfg(test)]
mod tests;
