//! Strait's global control plane: the Raft-replicated federation state (openraft + sled), the
//! admin API, the zone join and sync server and VIP allocation.
//!
//! - [`state`]: the pure, deterministic state machine (commands in, results out);
//! - [`store`]: its durable storage in sled, implementing openraft's storage traits;
//! - [`network`], [`raft_service`]: Raft RPCs between nodes over gRPC with mutual TLS;
//! - [`cluster`]: the write path (forwarded to the leader) and linearizable reads;
//! - [`admin_service`], [`join_service`], [`zone_sync`]: the gRPC APIs;
//! - [`node`]: running one node; [`admin_client`]: the client the CLI uses, [`admin_view`]: the
//!   JSON values and table rows the CLI prints of its replies.

pub mod admin_client;
pub mod admin_service;
pub mod admin_view;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod context;
pub mod credentials;
pub mod join_service;
pub mod metrics;
pub mod network;
pub mod node;
pub mod raft_service;
pub mod state;
pub mod store;
pub mod types;
pub mod zone_sync;
