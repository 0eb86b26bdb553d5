//! Kubernetes mode (`strait zone run --mode kubernetes`): the zone reads its inventory from the
//! cluster's API server instead of from sidecar registrations, and writes back what the
//! federation knows.
//!
//! - [`crd`]: the MCS `ServiceExport` and `ServiceImport` custom resources;
//! - [`source`]: watches Services, EndpointSlices, Pods and ServiceExports and maps them to the
//!   zone's [`LocalInventory`](crate::inventory::LocalInventory): workload instances, and the
//!   zone's east-west gateways from its gateway pods;
//! - [`imports`]: one `ServiceImport` per remote service of the federation;
//! - [`status`]: `ServiceExport` status conditions (`Valid`, `Conflict`);
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease (only the leader writes);
//! - [`controller`]: the tasks above, started together by the node.
//! - [`credentials`]: the zone's credentials shared by its replicas through a Secret;
//! - [`tokenreview`]: workload identity from projected service-account tokens (`TokenReview`);
//! - [`webhook`]: the sidecar injector (mutating admission webhook for pods);
//! - [`bundles`]: the trust bundle ConfigMap in every namespace the injector serves;

pub mod bundles;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod imports;
pub mod lease;
pub mod source;
pub mod status;
pub mod tokenreview;
pub mod webhook;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;
