//! Failover drills: `strait drill failover` and the parts it is made of.
//!
//! - [`load`]: fixed-rate HTTP or gRPC load that records which zone answered each request;
//! - [`grpc`]: the gRPC calls of that load, and failures by status (pure);
//! - [`timeline`]: pure analysis of those samples — detection time, RTO, failback, the share
//!   of each zone over time;
//! - [`outage`]: taking a service out of a zone (drain through the control plane, kill its
//!   processes in a local federation, partition its gateways) and restoring it;
//! - [`failover`]: the drill itself — preflight, load, take out, guardrail, restore, report;
//! - [`probe`]: a call through a VIP, a client sidecar's pinned VIPs, a DNS query (what
//!   `strait demo` checks a federation with);
//! - [`tour`]: `strait demo`'s plan — the calls from zone a's client and the zone each must be
//!   answered in, the DNS names, the greeter `Retry`, the drills;
//! - [`admin`]: what a drill needs from the control plane, as a trait (the real
//!   `AdminClient`, or a fake in tests).
//!
//! The `strait` binary only parses the flags and prints the report (`src/commands/drill.rs`).

pub mod admin;
pub mod failover;
pub mod grpc;
pub mod load;
pub mod outage;
pub mod probe;
pub mod timeline;
pub mod tour;
