//! What a sidecar accepts from its zone on the discovery stream
//! (sidecar/src/discovery.rs): a `SidecarConfig`, decoded with prost and
//! checked by `discovery::validate` before the sidecar uses it (or NACKs it with a reason).
//!
//! Invariants: no panic; an accepted config is for this trust domain and zone, names every
//! service once, and gives no two services (or zone-pinned names) the same VIP.

#![no_main]

use std::collections::HashSet;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use strait_proto as pb;
use strait_sidecar::discovery::validate;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = pb::SidecarConfig::decode(data) else {
        return;
    };
    let expect = strait_fuzz::sidecar_expectations();
    if validate(&config, &expect).is_err() {
        return;
    }
    assert!(config.trust_domain.is_empty() || config.trust_domain == expect.trust_domain);
    assert!(config.zone.is_empty() || config.zone == expect.zone);
    let mut names = HashSet::new();
    let mut vips = HashSet::new();
    for service in &config.services {
        let name = service.service.as_ref().map(|s| (&s.namespace, &s.name));
        assert!(names.insert(name), "{name:?} listed twice");
        let all_vips = std::iter::once(&service.vip)
            .filter(|v| !v.is_empty())
            .chain(service.zone_vips.values());
        for vip in all_vips {
            let vip: IpAddr = vip.parse().unwrap_or_else(|_| panic!("{vip:?} accepted"));
            assert!(vips.insert(vip), "{vip} shared");
        }
    }
});
