//! Strait's sidecar: the data-plane proxy every request crosses.
//!
//! Pure decision logic (no sockets, `now` passed in), unit-tested on its own:
//! - [`lb`]: locality-priority load balancing with spill-over, and the pick within a level;
//! - [`outlier`]: passive outlier detection and ejection with backoff;
//! - [`retry`]: the retry budget and which failures may be retried;
//! - [`route`]: `TrafficRoute` matching and weighted subset splits;
//! - [`grpc`]: what a gRPC call's headers and trailers say (status, deadline, errors);
//! - [`fault`], [`ratelimit`], [`authz`]: fault injection, token buckets, `TrafficPermission`;
//! - [`limits`]: `CircuitBreaker` connection and request counters, idle timeouts.
//!
//! IO around it:
//! - [`config`]: the sidecar's own settings (its certificate is `strait_identity`'s);
//!   [`discovery`]: the config stream from the zone;
//! - [`inbound`]: mTLS termination, authorization and forwarding to the app (`to_app`: in which
//!   protocol; [`app_pool`], [`app_h2`]: its HTTP/1.1 and HTTP/2 connections to the app);
//! - [`outbound`]: listeners on service VIPs, routing, balancing and retries to other sidecars;
//! - [`sniff`]: HTTP or TCP by a connection's first bytes, for both sides;
//! - [`capture`]: the iptables rules of `strait sidecar init` (traffic capture in a pod);
//! - [`admin`]: `/metrics`, `/ready`, `/config`; [`demo_app`], [`demo_grpc`], [`demo_ws`]: the
//!   demo workloads (HTTP, gRPC `Greeter`, WebSocket echo);
//! - [`run`]: the whole sidecar on listeners passed in, until shutdown.

pub mod admin;
pub mod app_h2;
pub mod app_pool;
pub mod authz;
pub mod capture;
pub mod config;
mod deadline;
pub mod demo_app;
pub mod demo_grpc;
pub mod demo_ws;
pub mod discovery;
pub mod fault;
pub mod grpc;
mod h2body;
mod h2client;
mod headers;
pub mod inbound;
pub mod lb;
pub mod limits;
pub mod outbound;
pub mod outlier;
pub mod pool;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod run;
pub mod sniff;
mod status_class;
mod to_app;
