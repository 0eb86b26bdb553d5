//! Writes the seed corpora, `fuzz/corpus/<target>/`, from the inputs the unit tests' seeded
//! loops start from (proto/src/tunnel.rs `fuzz_decoders_never_panic`, zone/src/dns/tests.rs
//! `fuzz_the_request_path`, policy/src/tests.rs `never_panics_on_garbage`,
//! trust/src/workload_token.rs `garbage_never_panics_and_is_never_echoed`, ...) and their
//! fixtures. Deterministic: running it twice writes the same files.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (stable is fine).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use prost::Message as _;
use strait_proto as pb;
use strait_proto::tunnel::{ALL_STATUSES, TUNNEL_VERSION, encode_frame, response};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (target, seeds) in [
        ("tunnel_frame", tunnel_frame()?),
        ("dns_request", dns_request()?),
        ("policy_yaml", policy_yaml()?),
        ("join_token", join_token()),
        ("workload_token", workload_token()),
        ("sniff", sniff()),
        ("zone_inventory", zone_inventory()),
        ("sidecar_config", sidecar_config()),
    ] {
        total += write(&root.join(target), &seeds)?;
    }
    println!("wrote {total} seeds under {}", root.display());
    Ok(())
}

/// Replaces the directory's seeds; names are the index, so a rerun overwrites in place.
fn write(dir: &Path, seeds: &[Vec<u8>]) -> std::io::Result<usize> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
    }
    println!("{:>4} {}", seeds.len(), dir.display());
    Ok(seeds.len())
}

// === tunnel_frame ===

fn tunnel_header() -> pb::TunnelHeader {
    pb::TunnelHeader {
        version: TUNNEL_VERSION,
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: "echo".into(),
        }),
        port: 8080,
        source_zone: "a".into(),
        target_zone: "b".into(),
        trace: Some(pb::TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: String::new(),
        }),
    }
}

/// xorshift, as proto/src/tunnel.rs's test: the first inputs of its loop become seeds.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

fn tunnel_frame() -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let valid = encode_frame(&tunnel_header())?;
    let mut seeds = vec![valid.clone()];
    let mut with_tls = valid.clone();
    with_tls.extend(encode_frame(&response(pb::TunnelStatus::Ok, "", "", ""))?);
    with_tls.extend_from_slice(b"tls bytes follow");
    seeds.push(with_tls);
    for status in ALL_STATUSES {
        seeds.push(encode_frame(&response(status, "because", "b", "echo-1"))?);
    }
    // The limit and truncation cases of `limits_and_truncation_are_errors`.
    seeds.extend([
        vec![0xff, 0xff],
        vec![0x00, 0x00],
        vec![0x00, 0x05, 0x08],
        vec![0x00, 0x02, 0xff, 0xff],
    ]);
    // The first mutated frames of `fuzz_decoders_never_panic`.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..12 {
        let mut v = valid.clone();
        for _ in 0..=rng.below(6) {
            match rng.below(4) {
                0 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] = rng.next() as u8;
                }
                1 if !v.is_empty() => v.truncate(rng.below(v.len())),
                2 => v.insert(rng.below(v.len() + 1), rng.next() as u8),
                _ => {
                    let i = rng.below(v.len() + 1);
                    for _ in 0..rng.below(16) {
                        v.insert(i, rng.next() as u8);
                    }
                }
            }
        }
        seeds.push(v);
    }
    Ok(seeds)
}

// === dns_request ===

fn query(
    qname: &str,
    qtype: RecordType,
    edns: bool,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(qname)?, qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        message.set_edns(e);
    }
    Ok(message.to_vec()?)
}

fn dns_request() -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let mut seeds = Vec::new();
    // The seeds of `fuzz_the_request_path`, with and without EDNS.
    for (qname, qtype) in [
        ("echo.demo.svc.clusterset.local.", RecordType::A),
        ("_http._tcp.echo.demo.svc.b.mesh.local.", RecordType::SRV),
        ("nope.demo.svc.clusterset.local.", RecordType::AAAA),
        ("example.com.", RecordType::ANY),
        ("clusterset.local.", RecordType::NS),
        ("clusterset.local.", RecordType::SOA),
        ("echo.demo.svc.a.mesh.local.", RecordType::A),
        ("v6.demo.svc.clusterset.local.", RecordType::AAAA),
        ("wide.demo.svc.clusterset.local.", RecordType::A),
        ("demo.svc.clusterset.local.", RecordType::A),
    ] {
        seeds.push(query(qname, qtype, false)?);
        seeds.push(query(qname, qtype, true)?);
    }
    // The malformed packets of `malformed_packets_get_formerr_or_are_dropped`.
    seeds.push(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00".to_vec());
    seeds.push(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec());
    let mut truncated = query("echo.demo.svc.clusterset.local.", RecordType::A, false)?;
    truncated.truncate(20);
    seeds.push(truncated);
    seeds.push(Message::new(7, MessageType::Query, OpCode::Query).to_vec()?);
    let mut two = Message::new(8, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("echo.demo.svc.clusterset.local.")?,
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("ledger.demo.svc.clusterset.local.")?,
        RecordType::A,
    ));
    seeds.push(two.to_vec()?);
    let mut update = Message::new(9, MessageType::Query, OpCode::Update);
    update.add_query(Query::query(
        Name::from_ascii("clusterset.local.")?,
        RecordType::SOA,
    ));
    seeds.push(update.to_vec()?);
    let mut response = Message::new(10, MessageType::Response, OpCode::Query);
    response.add_query(Query::query(
        Name::from_ascii("echo.demo.svc.clusterset.local.")?,
        RecordType::A,
    ));
    seeds.push(response.to_vec()?);
    // A compression pointer in the question (the mutation `fuzz_the_request_path` aims at).
    let mut pointer = query("echo.demo.svc.clusterset.local.", RecordType::A, false)?;
    pointer[12] = 0xc0;
    pointer[13] = 12;
    seeds.push(pointer);
    Ok(seeds)
}

// === policy_yaml ===

fn doc(kind: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: p\n  namespace: demo\nspec:\n{spec}"
    )
}

fn policy_yaml() -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    // `every_kind` of policy/src/tests.rs, document by document, then as one file.
    let timeout = include_str!("../../docs/examples/timeout.yaml").to_owned();
    let docs = vec![
        timeout.clone(),
        doc(
            "TrafficRoute",
            "targetRef: {service: reviews}\nrules:\n  - matches: [{path: {regex: \"^/v[12]/\"}, headers: [{name: x-user, prefix: \"qa-\"}, {name: x-old, present: false}]}]\n    split: [{labels: {version: v2, \"app.kubernetes.io/part-of\": shop}, weight: 1}]\n  - split: [{weight: 1}]",
        ),
        doc(
            "Retry",
            "targetRef: {service: echo}\nattempts: 3\nperTryTimeout: 1m 30s\nretryOn: [5xx, retriable-status-codes]\nretriableStatusCodes: [409]\nbudget: {percent: 12.5}",
        ),
        doc(
            "CircuitBreaker",
            "targetRef: {service: echo, port: 8080}\nmaxConnections: 10\noutlierDetection: {maxEjectionPercent: 33.3}",
        ),
        doc(
            "FaultInjection",
            "targetRef: {service: echo}\nmatches: [{method: GET}]\ndelay: {percent: 0.1, duration: 1500ms}\nabort: {percent: 100, httpStatus: 503}",
        ),
        doc(
            "RateLimit",
            "targetRef: {service: echo}\nrequests: 10\ninterval: 1m\nburst: 20",
        ),
        doc(
            "TrafficPermission",
            "targetRef: {service: echo}\ndefaultAction: deny\nrules: [{action: allow, from: [\"spiffe://strait.local/ns/demo/sa/*\"], methods: [GET], paths: [/]}]",
        ),
        doc(
            "LocalityFailover",
            "targetRef: {service: echo}\norder: [{zone: b}, {region: eu}]\noverprovisioningFactor: 200",
        ),
        doc("MeshTLS", "mode: PERMISSIVE").replace(
            "name: p",
            "name: p\n  labels: {yes: \"010\", on: \"true\", n: \"null\"}",
        ),
    ];
    let mut seeds: Vec<Vec<u8>> = docs.iter().map(|d| d.clone().into_bytes()).collect();
    let all = docs.join("---\n");
    seeds.push(all.clone().into_bytes());
    // The JSON form zones read from global's snapshot.
    for resource in strait_policy::parse_documents(&all, "seeds.yaml")? {
        seeds.push(resource.to_json()?.into_bytes());
    }
    // Directives, flow style, CRLF, and some of the invalid files the tests report on.
    seeds.push(b"%YAML 1.2\n--- {apiVersion: strait.dev/v1alpha1, kind: MeshTLS, metadata: {name: m}, spec: {mode: STRICT}}\n".to_vec());
    seeds.push(format!("---\r\n{}", timeout.replace('\n', "\r\n")).into_bytes());
    seeds.push(doc("MeshTLS", "mode: strict").into_bytes());
    seeds.push(
        doc(
            "LocalityFailover",
            "targetRef: {service: echo}\norder: [{zone: a}]\noverprovisioningFactor: 50",
        )
        .into_bytes(),
    );
    seeds.push(format!("{timeout}---\n{timeout}").into_bytes());
    seeds.push(b"a: &a [x, x, x]\nb: [*a, *a, *a]\n".to_vec());
    Ok(seeds)
}

// === join_token ===

const PIN_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn join_token() -> Vec<Vec<u8>> {
    // The cases of `malformed_tokens_are_refused_without_echoing_them`, and a valid token.
    [
        format!("stj1.0011223344556677.00112233445566778899aabbccddeeff.{PIN_HEX}"),
        format!(" stj1.0011223344556677.00112233445566778899aabbccddeeff.{PIN_HEX}\n"),
        String::new(),
        "stj1.a.b".to_owned(),
        format!("stj9.0011223344556677.00112233445566778899aabbccddeeff.{PIN_HEX}"),
        format!("stj1.XYZ.00112233445566778899aabbccddeeff.{PIN_HEX}"),
        format!("stj1.0011223344556677.short.{PIN_HEX}"),
        "stj1.0011223344556677.00112233445566778899aabbccddeeff.nothex".to_owned(),
        format!("sha256:{PIN_HEX}"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

// === workload_token ===

fn claims(spiffe_id: &str, zone: &str) -> String {
    format!(
        r#"{{"id":"3f9c0a1b2c3d4e5f","spiffe_id":"{spiffe_id}","zone":"{zone}","issued_at_ms":1767225600000,"expires_at_ms":1767312000000}}"#
    )
}

fn workload_token() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    // Mode 0: token strings (`garbage_never_panics_and_is_never_echoed`), and a well-formed
    // token whose signature is not the root's.
    let unsigned = format!(
        "stw1.{}.{}",
        URL_SAFE_NO_PAD.encode(claims("spiffe://strait.local/ns/shop/sa/cart", "eu-1")),
        URL_SAFE_NO_PAD.encode([7_u8; 64])
    );
    for token in [
        unsigned.as_str(),
        "",
        " ",
        "..",
        "stw1",
        "stw1..",
        "stw1.a.b",
        "stw1.!!!.???",
        "stw1.e30.AAAA",
        "stw2.e30.AAAA",
        "stw1.e30=.AAAA",
        "stj1.0011223344556677.00112233445566778899aabbccddeeff.00",
        "\u{0}\u{ff}ẞ.ü.€",
    ] {
        seeds.push([&[0_u8][..], token.as_bytes()].concat());
    }
    // Mode 1: claims the fuzz target signs with its root (`signed_garbage_claims_are_refused`,
    // `gateway_of_another_zone_is_refused`, and the accepted kinds).
    for json in [
        claims("spiffe://strait.local/ns/shop/sa/cart", "eu-1"),
        claims("spiffe://strait.local/zone/eu-1/gateway", "eu-1"),
        claims("spiffe://strait.local/zone/us-1/gateway", "eu-1"),
        claims("spiffe://strait.local/zone/eu-1/cp", "eu-1"),
        claims("spiffe://strait.local/global/1", "eu-1"),
        claims("spiffe://other.td/ns/shop/sa/cart", "eu-1"),
        claims("spiffe://strait.local/ns/shop/sa/cart", "us-1"),
        claims("nope", "eu-1"),
        "not json".to_owned(),
        "{}".to_owned(),
        r#"{"id":"x","spiffe_id":"spiffe://strait.local/ns/a/sa/b","zone":"eu-1","issued_at_ms":0,"expires_at_ms":1,"extra":true}"#.to_owned(),
        r#"{"id":"x","spiffe_id":"spiffe://strait.local/ns/a/sa/b","zone":"eu-1","issued_at_ms":18446744073709551615,"expires_at_ms":18446744073709551615}"#.to_owned(),
    ] {
        seeds.push([&[1_u8][..], json.as_bytes()].concat());
    }
    seeds
}

// === sniff ===

fn sniff() -> Vec<Vec<u8>> {
    // `sniffing_tells_http_from_tcp`, and the first bytes of a TLS ClientHello.
    [
        &b"GET / HTTP/1.1\r\n"[..],
        b"POST /x HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1",
        b"CONNECT echo:80 HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GE",
        b"PRI * HT",
        b"GETX",
        b"get / HTTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"hello tcp\n",
        b"PRI * HTTP/1.1",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

// === zone_inventory ===

fn exported(namespace: &str, name: &str, port: u32, identity: &str) -> pb::ExportedService {
    pb::ExportedService {
        service: Some(pb::ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }),
        ports: vec![pb::Port {
            name: "http".into(),
            port,
            protocol: pb::Protocol::Http.into(),
        }],
        localities: vec![pb::LocalityEndpoints {
            locality: Some(pb::Locality {
                region: "eu".into(),
                zone: "eu-1".into(),
                subzone: "a".into(),
            }),
            healthy: 2,
            total: 3,
        }],
        identities: vec![identity.into()],
    }
}

fn inventory(services: Vec<pb::ExportedService>) -> Vec<u8> {
    pb::ZoneMessage {
        msg: Some(pb::zone_message::Msg::Inventory(pb::InventoryReport {
            version: 3,
            services,
            gateways: vec![pb::GatewayEndpoint {
                address: "127.0.0.1:15443".into(),
                instance: "gw-0".into(),
                locality: None,
            }],
        })),
    }
    .encode_to_vec()
}

fn zone_inventory() -> Vec<Vec<u8>> {
    let cart = "spiffe://strait.local/ns/shop/sa/cart";
    vec![
        inventory(vec![
            exported("shop", "cart", 8080, cart),
            exported("demo", "echo", 80, "spiffe://strait.local/ns/demo/sa/echo"),
        ]),
        inventory(vec![]),
        inventory(vec![exported("shop", "cart", 70_000, cart)]),
        inventory(vec![
            exported("shop", "cart", 80, cart),
            exported("shop", "cart", 81, cart),
        ]),
        inventory(vec![exported(
            "shop",
            "cart",
            80,
            "spiffe://strait.local/zone/eu-1/gateway",
        )]),
        inventory(vec![exported("shop", "cart", 80, "not an id")]),
        inventory(vec![exported("", "cart", 80, cart)]),
        pb::ZoneMessage {
            msg: Some(pb::zone_message::Msg::Hello(pb::SyncHello {
                zone: "eu-1".into(),
                known_version: 7,
                inventory_version: 3,
                vip_cidr: "127.240.0.0/16".into(),
                region: "eu".into(),
                role: 0,
            })),
        }
        .encode_to_vec(),
    ]
}

// === sidecar_config ===

fn outbound(name: &str, vip: &str, zone_vip: &str) -> pb::OutboundService {
    pb::OutboundService {
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: name.into(),
        }),
        ports: vec![pb::Port {
            name: "http".into(),
            port: 8080,
            protocol: pb::Protocol::Http.into(),
        }],
        vip: vip.into(),
        zone_vips: HashMap::from([("b".to_owned(), zone_vip.to_owned())]),
        localities: vec![pb::LocalityGroup {
            zone: "eu-1".into(),
            region: "eu".into(),
            priority: 0,
            endpoints: vec![pb::Endpoint {
                address: "127.0.0.1:15006".into(),
                instance: format!("{name}-0"),
                labels: HashMap::from([("version".to_owned(), "v1".to_owned())]),
                spiffe_id: "spiffe://strait.local/ns/demo/sa/echo".into(),
                healthy: true,
            }],
            local_gateways: vec!["gw.eu-1.svc:15443".into()],
            weight: 1,
            drained: false,
            total: 1,
            identities: vec![],
        }],
        policy: Some(pb::RoutePolicy {
            routes: vec![pb::Route {
                matches: vec![pb::RouteMatch {
                    path_regex: "^/v[12]/".into(),
                    headers: vec![pb::HeaderMatch {
                        name: "x-user".into(),
                        r#match: Some(pb::header_match::Match::Regex("^qa-.*".into())),
                    }],
                    ..Default::default()
                }],
                split: vec![pb::WeightedSubset {
                    labels: HashMap::from([("version".to_owned(), "v1".to_owned())]),
                    weight: 1,
                }],
            }],
            ..Default::default()
        }),
    }
}

fn config(services: Vec<pb::OutboundService>) -> pb::SidecarConfig {
    pb::SidecarConfig {
        version: 4,
        nonce: "n".into(),
        zone: "eu-1".into(),
        trust_domain: "strait.local".into(),
        services,
        inbound: Some(pb::InboundPolicy {
            tls_mode: pb::MeshTlsMode::Permissive.into(),
            permissions: vec![pb::PermissionPolicy {
                rules: vec![pb::PermissionRule {
                    from: vec!["spiffe://strait.local/ns/demo/sa/*".into()],
                    path_prefixes: vec!["/api".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            app_protocol: pb::Protocol::Grpc.into(),
            rate_limit: None,
        }),
        ..Default::default()
    }
}

fn sidecar_config() -> Vec<Vec<u8>> {
    let mut bad_regex = outbound("ledger", "127.240.0.3", "127.240.129.3");
    if let Some(policy) = bad_regex.policy.as_mut() {
        policy.routes[0].matches[0].path_regex = "(".into();
    }
    vec![
        config(vec![
            outbound("echo", "127.240.0.1", "127.240.129.1"),
            outbound("ledger", "fd00::2", "127.240.129.2"),
        ]),
        config(vec![]),
        config(vec![
            outbound("echo", "127.240.0.1", "127.240.129.1"),
            outbound("ledger", "127.240.0.1", "127.240.129.2"),
        ]),
        config(vec![bad_regex]),
        config(vec![outbound("echo", "not-an-ip", "127.240.129.1")]),
        pb::SidecarConfig {
            zone: "us-1".into(),
            ..config(vec![])
        },
    ]
    .into_iter()
    .map(|c| c.encode_to_vec())
    .collect()
}
