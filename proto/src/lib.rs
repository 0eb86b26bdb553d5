//! Strait's wire APIs: the protobuf messages and tonic services that every component speaks.
//!
//! One package, `strait.v1`:
//! - `Admin` — the operator API of the global control plane (zones, tokens, policies, status);
//! - `ZoneSync` — the zone ↔ global link: one-time `Join`, then a bidirectional, versioned,
//!   acknowledged `Sync` stream;
//! - `Discovery` — the zone → sidecar config push with ACK/NACK;
//! - `Identity` — the zone's workload CA (CSR signing);
//! - `Raft`, `NodeJoin` — between global nodes;
//! - `TunnelHeader`/`TunnelResponse` — the east-west tunnel preamble.
//!
//! The `.proto` sources live in `proto/strait/v1/`; `build.rs` compiles them with protox.
//! The demo workload's `strait.demo.v1.Greeter` (not a Strait API) is in [`demo`].

/// Generated code for package `strait.v1`.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    missing_docs
)]
pub mod v1 {
    tonic::include_proto!("strait.v1");

    /// The encoded `FileDescriptorSet` of every Strait API (for gRPC reflection and tooling).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strait_descriptor");
}

pub use v1::*;

/// Generated code for package `strait.demo.v1`: the demo workload's `Greeter` (`strait
/// demo-app --protocol grpc`, the gRPC load of `strait drill failover --protocol grpc`).
pub mod demo {
    #[allow(
        clippy::all,
        clippy::pedantic,
        missing_debug_implementations,
        missing_docs
    )]
    pub mod v1 {
        tonic::include_proto!("strait.demo.v1");
    }
}

pub mod json;
pub mod names;
pub mod transport;
pub mod tunnel;
pub mod vip;

#[cfg(test)]
mod tests {
    use super::v1::*;
    use prost::Message;

    #[test]
    fn tunnel_header_round_trips() {
        let header = TunnelHeader {
            version: 1,
            service: Some(ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            port: 8080,
            source_zone: "a".into(),
            target_zone: "b".into(),
            trace: Some(TraceContext {
                traceparent: "00-abc-def-01".into(),
                tracestate: String::new(),
            }),
            ..Default::default()
        };
        let bytes = header.encode_to_vec();
        let decoded = TunnelHeader::decode(bytes.as_slice()).map_err(|e| e.to_string());
        assert_eq!(decoded, Ok(header));
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let garbage = [0xff_u8, 0xff, 0xff, 0xff, 0x0f, 0x12];
        assert!(TunnelHeader::decode(garbage.as_slice()).is_err());
    }

    #[test]
    fn descriptor_set_names_every_service() {
        let set =
            prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).map_err(|e| e.to_string());
        let Ok(set) = set else {
            panic!("descriptor set does not decode: {set:?}")
        };
        let services: Vec<&str> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter())
            .filter_map(|s| s.name.as_deref())
            .collect();
        for name in [
            "Admin",
            "ZoneSync",
            "Discovery",
            "Identity",
            "Raft",
            "NodeJoin",
        ] {
            assert!(services.contains(&name), "{name} missing from {services:?}");
        }
    }
}
