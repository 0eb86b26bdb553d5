//! A local federation on loopback: the processes `strait up` starts and `strait down` stops.
//!
//! - [`processes`]: the `DIR/processes.json` contract, the record of what runs where.
//! - [`ports`]: free loopback ports for listeners, and the loopback ranges for zone VIPs.
//! - [`supervisor`]: start a process detached from the CLI, wait until its admin port says
//!   ready, stop them all.
//! - [`up`]: the launch plan of `strait up` (global nodes, zones, gateways, demo workloads).
//! - [`down`]: `strait down`, stopping everything recorded.
//!
//! The `strait` binary parses the flags of `strait up`/`strait down` and prints progress;
//! drills (`strait-drill`), the benchmarks in `bench/` and the end-to-end tests read and
//! drive a federation through this crate too, so `processes.json` is parsed in one place.

pub mod down;
pub mod ports;
pub mod processes;
pub mod supervisor;
pub mod up;
