//! Strait's zone control plane (universal or Kubernetes mode): joins the global control plane
//! once with a token, keeps a two-way sync with it, signs its sidecars' and gateways'
//! certificates, pushes every sidecar its config, and keeps doing all of that from its own
//! persisted state when global is unreachable.
//!
//! - [`federation`], [`inventory`]: the two views everything else reads (what global said; what
//!   this zone's sidecars registered);
//! - [`config`], [`credentials`], [`store`], [`sync`]: configuration, joining and
//!   certificate renewal, persistence, the sync stream with global (VIP mapping is
//!   `strait_proto::vip`, shared with global and the sidecars);
//! - [`identity`]: the workload CA (`strait.v1.Identity`);
//! - [`discovery`]: sidecar registration and config push (`strait.v1.Discovery`);
//! - [`dns`]: the authoritative DNS server for `clusterset.local` and `mesh.local`;
//! - [`kubernetes`]: Kubernetes mode — the inventory from the cluster's Services,
//!   EndpointSlices, Pods and MCS `ServiceExport`s, `ServiceImport`s for remote services,
//!   leader election on a Lease;
//! - [`node`]: running a zone control plane.
//!
//! # Data directory
//!
//! ```text
//! zone.json   which zone and federation (written last when joining)
//! tls/        intermediate CA, control plane leaf, trust bundle (keys 0600, dir 0700)
//! state/      sled: the last federation snapshot, the sidecar registry, the last
//!             inventory report (dir 0700)
//! ```

pub mod config;
pub mod credentials;
pub mod discovery;
pub mod dns;
pub mod federation;
pub mod identity;
pub mod inventory;
pub mod kubernetes;
pub mod node;
pub mod store;
pub mod sync;
