//! One module per group of commands; each turns parsed arguments into library calls and
//! prints the result.

pub mod admin;
pub mod demo;
pub mod describe;
pub mod drill;
pub mod gateway;
pub mod global;
pub mod local;
pub mod sidecar;
pub mod zone;
