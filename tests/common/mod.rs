//! What the root package's end-to-end suites need beyond `strait_test_support`: the path of
//! the `strait` binary (only this package's tests can name it, `env!("CARGO_BIN_EXE_strait")`),
//! which they pass to `strait_test_support::federation::Federation`, and helpers that speak
//! to a federation through `strait` itself (demo calls, a minimal sidecar control-plane client)
//! or run real peers in it (gRPC and WebSocket apps).

#![allow(dead_code)] // Each test file uses a different part of the harness.
#![allow(clippy::expect_used, clippy::unwrap_used)] // A harness failure should stop the test loudly.

pub mod demo;
pub mod peers;
pub mod sidecar;

/// The `strait` binary the suites run.
pub const BIN: &str = env!("CARGO_BIN_EXE_strait");
