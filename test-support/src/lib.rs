//! Test support shared by every Strait crate's suites, so that each suite keeps only what is
//! its own (its component on loopback, its fakes) and the common pieces exist once:
//!
//! - [`wait`]: polling a condition with a deadline ([`wait::eventually`]) and bounding a
//!   future ([`wait::within`]); the one way a test waits (no bare sleeps).
//! - [`metrics`]: a sample's value from a Prometheus registry in-process, or from the text of
//!   an admin `/metrics` endpoint.
//! - [`pki`]: a federation's PKI (root, zone intermediates, workload/gateway/control-plane
//!   leaves, bootstrap tokens, trust bundle).
//! - [`files`]: a temp directory for token and data files.
//! - [`http`]: plain HTTP/1.1 `GET` to a loopback address, for admin endpoints.
//! - [`net`]: loopback ports.
//! - [`tls`]: client TLS as Strait's peers speak it, with or without a certificate.
//! - `federation` (feature `federation`): the process harness of the end-to-end suites, a
//!   federation started by `strait up` from the binary the caller names.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A harness failure should stop the test loudly.

#[cfg(feature = "federation")]
pub mod federation;
pub mod files;
pub mod http;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod tls;
pub mod wait;
