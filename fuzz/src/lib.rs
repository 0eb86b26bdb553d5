//! Fixtures shared by the fuzz targets and the seed generator (`examples/seeds.rs`), so the
//! seeds are built against exactly what the targets check them with.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use strait_proto as pb;
use strait_trust::{RootCa, TrustBundle};

/// The trust domain of every fixture.
pub const TRUST_DOMAIN: &str = "strait.local";
/// The zone that verifies workload tokens and that sidecar configs are for.
pub const ZONE: &str = "eu-1";

// === DNS ===

fn service(
    name: &str,
    vip: &str,
    ports: &[(&str, u32)],
    zone_vips: &[(&str, &str)],
) -> pb::OutboundService {
    pb::OutboundService {
        service: Some(pb::ServiceRef {
            namespace: "demo".to_owned(),
            name: name.to_owned(),
        }),
        ports: ports
            .iter()
            .map(|(name, port)| pb::Port {
                name: (*name).to_owned(),
                port: *port,
                protocol: pb::Protocol::Http.into(),
            })
            .collect(),
        vip: vip.to_owned(),
        zone_vips: zone_vips
            .iter()
            .map(|(z, v)| ((*z).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// The services of zone/src/dns/tests.rs: A, AAAA, SRV, zone-pinned names, and the services
/// the table leaves out.
pub fn dns_services() -> Vec<pb::OutboundService> {
    let mut services = vec![
        service(
            "echo",
            "127.240.0.1",
            &[("http", 8080), ("", 9090), ("metrics", 9100)],
            &[("a", "127.240.128.1"), ("b", "127.240.129.1")],
        ),
        service("ledger", "127.240.0.2", &[], &[("b", "127.240.129.2")]),
        service("v6", "fd00::1", &[("grpc", 50051)], &[]),
        service("pending", "", &[("http", 80)], &[]),
        service("Bad_Name", "127.240.0.9", &[], &[]),
    ];
    // One name with many addresses: answers too large for UDP get truncated.
    services.extend((1..=60).map(|i| service("wide", &format!("127.240.1.{i}"), &[], &[])));
    services
}

/// The table every DNS input is answered from.
pub fn dns_table() -> &'static strait_zone::dns::Table {
    static TABLE: OnceLock<strait_zone::dns::Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        strait_zone::dns::Table::build(
            &dns_services(),
            &strait_zone::dns::DnsSettings::default(),
            7,
        )
    })
}

// === workload tokens ===

/// One root for the whole process: generating a key per input would drown the fuzzer.
pub fn workload_root() -> &'static (RootCa, TrustBundle) {
    static ROOT: OnceLock<(RootCa, TrustBundle)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = RootCa::generate(TRUST_DOMAIN, Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("fixture root: {e}"));
        let bundle = root
            .bundle()
            .unwrap_or_else(|e| panic!("fixture bundle: {e}"));
        (root, bundle)
    })
}

/// `stw1.<claims>.<signature>` with `claims_json` signed by `root` whatever it holds, as a
/// hand-made token would be: the fuzzer then reaches the claim checks behind the signature.
pub fn sign_claims(root: &RootCa, claims_json: &[u8]) -> String {
    let key_pem = root.key_pem();
    let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .unwrap_or_else(|e| panic!("fixture key: {e}"));
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .unwrap_or_else(|e| panic!("fixture key: {e}"));
    let signed = format!("stw1.{}", URL_SAFE_NO_PAD.encode(claims_json));
    let signature = key
        .sign(&rng, signed.as_bytes())
        .unwrap_or_else(|e| panic!("signing: {e}"));
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// The fixed "now" tokens are checked at: the seeds' claims are valid then (2026-01-01).
pub fn token_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_000)
}

// === sidecar configs ===

/// What the fuzzed sidecar config must agree with.
pub fn sidecar_expectations() -> strait_sidecar::discovery::Expectations {
    strait_sidecar::discovery::Expectations {
        trust_domain: TRUST_DOMAIN.to_owned(),
        zone: ZONE.to_owned(),
    }
}
