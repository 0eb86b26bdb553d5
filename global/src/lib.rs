//! Strait's global control plane: the Raft-replicated federation state (openraft + sled), the
//! admin API, the zone sync server and VIP allocation.

pub mod state;
pub mod store;
pub mod types;
