//! A local federation on loopback: the processes `strait up` starts and `strait down` stops.
//!
//! - [`processes`]: the `DIR/processes.json` contract, the record of what runs where.
//! - [`ports`]: free loopback ports for listeners, and the loopback ranges for zone VIPs.
//! - [`supervisor`]: start a process detached from the CLI, wait until its admin port says
//!   ready, stop them all.
//!
//! The commands themselves (flags, which processes in which order) live in the CLI; this
//! module only knows how to run and stop processes, so it is tested without a federation.

// The commands use parts of this at a time (`kill` for drills, `loopback_range` for zone
// VIPs); what is not yet called is part of the same contract, not dead code.
#![allow(dead_code)]

pub mod ports;
pub mod processes;
pub mod supervisor;
