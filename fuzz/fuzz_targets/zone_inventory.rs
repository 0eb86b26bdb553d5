//! What global accepts from a zone on the sync stream (global/src/zone_sync.rs): a
//! `ZoneMessage` decoded with prost, and the inventory report in it turned into the state
//! machine's model (`inventory_model`) before anything is written to Raft.
//!
//! Invariants: no panic; an accepted report has exactly one entry per listed service, every
//! port fits in 16 bits, no locality reports more healthy than total endpoints, and every
//! identity is a workload SPIFFE ID.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strait_global::zone_sync::inventory_model;
use strait_proto as pb;
use strait_trust::{IdentityKind, SpiffeId};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = pb::ZoneMessage::decode(data) else {
        return;
    };
    let Some(pb::zone_message::Msg::Inventory(report)) = message.msg else {
        return;
    };
    let Ok(model) = inventory_model(&report) else {
        return;
    };
    assert_eq!(
        model.len(),
        report.services.len(),
        "a service was lost or made up"
    );
    for (key, service) in &model {
        assert!(!key.namespace.is_empty() && !key.name.is_empty());
        for locality in &service.localities {
            assert!(
                locality.healthy <= locality.total,
                "{key:?}: more healthy than total"
            );
        }
        for id in &service.identities {
            let id: SpiffeId = id
                .parse()
                .unwrap_or_else(|e| panic!("{id:?} accepted: {e}"));
            assert!(matches!(id.kind(), IdentityKind::Workload { .. }), "{id}");
        }
    }
});
