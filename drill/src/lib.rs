//! Failover drills: the parts of `strait drill failover` that are not about the federation.
//!
//! - [`load`]: fixed-rate HTTP load that records which zone answered each request;
//! - [`timeline`]: pure analysis of those samples — detection time, RTO, failback, the share
//!   of each zone over time.
//!
//! The command itself (taking a service out of a zone through the control plane, or killing its
//! processes, and restoring it) lives in the `strait` binary (`src/commands/drill.rs`).

pub mod load;
pub mod timeline;
