//! Compiles the `.proto` files with protox (a pure-Rust protobuf compiler), so building Strait
//! needs no system `protoc`.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/strait/v1/common.proto",
    "proto/strait/v1/admin.proto",
    "proto/strait/v1/zonesync.proto",
    "proto/strait/v1/identity.proto",
    "proto/strait/v1/discovery.proto",
    "proto/strait/v1/tunnel.proto",
    "proto/strait/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // Kept for reflection and tooling; `compile_fds` does not write it for us.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("strait_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
