//! The answerer without sockets: names, records, rcodes, and the whole request path under
//! random and mutated packets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strait_proto as pb;

use super::*;

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

fn services() -> Vec<pb::OutboundService> {
    vec![
        service(
            "echo",
            "127.240.0.1",
            &[("http", 8080), ("", 9090), ("metrics", 9100)],
            &[("a", "127.240.128.1"), ("b", "127.240.129.1")],
        ),
        service("ledger", "127.240.0.2", &[], &[("b", "127.240.129.2")]),
        // No VIP yet: no sidecar listens for it, so no name either.
        service("pending", "", &[("http", 80)], &[]),
        // Not a DNS label: left out rather than answered under a mangled name.
        service("Bad_Name", "127.240.0.9", &[], &[]),
    ]
}

fn table() -> Table {
    Table::build(&services(), &DnsSettings::default(), 7)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn request(qname: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    message
}

fn ask(table: &Table, qname: &str, qtype: RecordType) -> Message {
    let response = answer(table, &request(qname, qtype));
    assert_eq!(response.metadata.id, 0x1234);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert!(!response.metadata.recursion_available, "never RA");
    assert!(response.metadata.recursion_desired, "RD is copied");
    response
}

fn addresses(response: &Message) -> Vec<IpAddr> {
    response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn soa_only_authority(response: &Message) {
    assert_eq!(response.authorities.len(), 1, "{response:?}");
    assert_eq!(
        response.authorities[0].record_type(),
        RecordType::SOA,
        "{response:?}"
    );
}

#[test]
fn a_answers_the_services_vip_in_this_zone() {
    let response = ask(&table(), "echo.demo.svc.clusterset.local.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert_eq!(addresses(&response), vec![ip("127.240.0.1")]);
    let record = &response.answers[0];
    assert_eq!(record.ttl, 5, "5 s by default");
    assert_eq!(record.name, name("echo.demo.svc.clusterset.local."));
    assert_eq!(record.dns_class, DNSClass::IN);
    assert_eq!(response.queries.len(), 1, "the question is echoed");

    let ledger = ask(&table(), "ledger.demo.svc.clusterset.local.", RecordType::A);
    assert_eq!(addresses(&ledger), vec![ip("127.240.0.2")]);
}

#[test]
fn zone_pinned_names_answer_the_zone_vip() {
    let t = table();
    let b = ask(&t, "echo.demo.svc.b.mesh.local.", RecordType::A);
    assert_eq!(b.metadata.response_code, ResponseCode::NoError);
    assert!(b.metadata.authoritative);
    assert_eq!(addresses(&b), vec![ip("127.240.129.1")]);
    let a = ask(&t, "echo.demo.svc.a.mesh.local.", RecordType::A);
    assert_eq!(addresses(&a), vec![ip("127.240.128.1")]);
    // ledger is only served by zone b.
    let ledger_a = ask(&t, "ledger.demo.svc.a.mesh.local.", RecordType::A);
    assert_eq!(ledger_a.metadata.response_code, ResponseCode::NXDomain);
    let unknown_zone = ask(&t, "echo.demo.svc.c.mesh.local.", RecordType::A);
    assert_eq!(unknown_zone.metadata.response_code, ResponseCode::NXDomain);
    soa_only_authority(&unknown_zone);
    assert_eq!(
        unknown_zone.authorities[0].name,
        name("mesh.local."),
        "the SOA of the apex the name is under"
    );
}

#[test]
fn srv_for_named_ports_points_at_the_a_name() {
    let t = table();
    let response = ask(
        &t,
        "_http._tcp.echo.demo.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    let [record] = response.answers.as_slice() else {
        panic!("one SRV: {response:?}");
    };
    let RData::SRV(srv) = &record.data else {
        panic!("not SRV: {record:?}");
    };
    assert_eq!(srv.priority, 0);
    assert_eq!(srv.weight, 100);
    assert_eq!(srv.port, 8080);
    assert_eq!(&srv.target, &name("echo.demo.svc.clusterset.local."));
    // The target's address comes along.
    assert_eq!(response.additionals.len(), 1, "{response:?}");
    assert_eq!(
        response.additionals[0].name,
        name("echo.demo.svc.clusterset.local.")
    );

    let metrics = ask(
        &t,
        "_metrics._tcp.echo.demo.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert!(
        matches!(&metrics.answers[0].data, RData::SRV(s) if s.port == 9100),
        "{metrics:?}"
    );

    let pinned = ask(
        &t,
        "_http._tcp.echo.demo.svc.b.mesh.local.",
        RecordType::SRV,
    );
    let RData::SRV(srv) = &pinned.answers[0].data else {
        panic!("not SRV: {pinned:?}");
    };
    assert_eq!(&srv.target, &name("echo.demo.svc.b.mesh.local."));
    assert!(
        matches!(&pinned.additionals[0].data, RData::A(a) if a.0 == Ipv4Addr::new(127, 240, 129, 1))
    );

    // An unnamed port has no SRV name; a UDP one does not exist.
    let udp = ask(
        &t,
        "_http._udp.echo.demo.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert_eq!(udp.metadata.response_code, ResponseCode::NXDomain);
    // The SRV name has no address.
    let a = ask(
        &t,
        "_http._tcp.echo.demo.svc.clusterset.local.",
        RecordType::A,
    );
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.answers.is_empty());
}

#[test]
fn unknown_names_in_our_domains_are_nxdomain_with_the_soa() {
    let t = table();
    for qname in [
        "nope.demo.svc.clusterset.local.",
        "pending.demo.svc.clusterset.local.",
        "bad_name.demo.svc.clusterset.local.",
        "echo.other.svc.clusterset.local.",
        "x.echo.demo.svc.clusterset.local.",
        "nope.mesh.local.",
    ] {
        let response = ask(&t, qname, RecordType::A);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NXDomain,
            "{qname}"
        );
        assert!(response.metadata.authoritative, "{qname}");
        assert!(response.answers.is_empty(), "{qname}");
        soa_only_authority(&response);
        let RData::SOA(soa) = &response.authorities[0].data else {
            panic!("not SOA");
        };
        assert_eq!(soa.minimum, 5, "negative answers are cached for the TTL");
        assert_eq!(soa.serial, 7);
    }
    assert_eq!(
        t.services(),
        2,
        "echo and ledger; pending and Bad_Name have no names"
    );
}

#[test]
fn a_known_name_with_another_type_is_nodata() {
    let t = table();
    for (qname, qtype) in [
        ("echo.demo.svc.clusterset.local.", RecordType::AAAA),
        ("echo.demo.svc.clusterset.local.", RecordType::TXT),
        ("echo.demo.svc.clusterset.local.", RecordType::MX),
        ("echo.demo.svc.b.mesh.local.", RecordType::AAAA),
        // Empty non-terminals exist (RFC 8020): a resolver must not prune below them.
        ("demo.svc.clusterset.local.", RecordType::A),
        ("svc.clusterset.local.", RecordType::A),
        ("b.mesh.local.", RecordType::A),
        ("_tcp.echo.demo.svc.clusterset.local.", RecordType::SRV),
    ] {
        let response = ask(&t, qname, qtype);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NoError,
            "{qname} {qtype}"
        );
        assert!(response.metadata.authoritative);
        assert!(response.answers.is_empty(), "{qname} {qtype}");
        soa_only_authority(&response);
    }
}

#[test]
fn every_other_domain_is_refused() {
    let t = table();
    for qname in [
        "example.com.",
        "local.",
        ".",
        "clusterset.local.example.com.",
        "svc.cluster.local.",
        "echo.demo.svc.cluster.local.",
    ] {
        let response = ask(&t, qname, RecordType::A);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::Refused,
            "{qname}"
        );
        assert!(!response.metadata.authoritative, "{qname}");
        assert!(response.answers.is_empty() && response.authorities.is_empty());
    }
    // Our names in another class (CHAOS), and zone transfers, are refused too.
    let mut chaos = request("echo.demo.svc.clusterset.local.", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        answer(&t, &chaos).metadata.response_code,
        ResponseCode::Refused
    );
    let axfr = ask(&t, "clusterset.local.", RecordType::AXFR);
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn names_are_case_insensitive_and_answered_as_asked() {
    let response = ask(&table(), "EcHo.DEMO.svc.ClusterSet.LOCAL.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&response), vec![ip("127.240.0.1")]);
    // 0x20 randomisation: the resolver checks the owner name against its question, bit for bit.
    assert_eq!(
        response.answers[0].name.to_ascii(),
        "EcHo.DEMO.svc.ClusterSet.LOCAL."
    );
    let srv = ask(
        &table(),
        "_HTTP._TCP.echo.Demo.svc.B.mesh.local.",
        RecordType::SRV,
    );
    assert_eq!(srv.answers.len(), 1, "{srv:?}");
}

#[test]
fn the_ttl_is_configurable() {
    let settings = DnsSettings {
        ttl: Duration::from_secs(30),
        ns_address: None,
    };
    let t = Table::build(&services(), &settings, 1);
    let a = ask(&t, "echo.demo.svc.clusterset.local.", RecordType::A);
    assert_eq!(a.answers[0].ttl, 30);
    let srv = ask(
        &t,
        "_http._tcp.echo.demo.svc.clusterset.local.",
        RecordType::SRV,
    );
    assert!(
        srv.answers
            .iter()
            .chain(&srv.additionals)
            .all(|r| r.ttl == 30)
    );
    let nx = ask(&t, "nope.demo.svc.clusterset.local.", RecordType::A);
    let RData::SOA(soa) = &nx.authorities[0].data else {
        panic!("not SOA");
    };
    assert_eq!((nx.authorities[0].ttl, soa.minimum), (30, 30));
}

#[test]
fn the_apexes_have_soa_and_ns() {
    let settings = DnsSettings {
        ttl: DEFAULT_TTL,
        ns_address: Some(ip("127.0.0.53")),
    };
    let t = Table::build(&services(), &settings, 42);
    for apex in ["clusterset.local.", "mesh.local."] {
        let soa = ask(&t, apex, RecordType::SOA);
        assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
        assert!(soa.metadata.authoritative);
        let RData::SOA(data) = &soa.answers[0].data else {
            panic!("not SOA: {soa:?}");
        };
        assert_eq!(data.serial, 42);
        assert_eq!(&data.mname, &name(&format!("ns.dns.{apex}")));

        let ns = ask(&t, apex, RecordType::NS);
        assert!(
            matches!(&ns.answers[0].data, RData::NS(n) if n.0 == name(&format!("ns.dns.{apex}")))
        );
        assert_eq!(ns.additionals.len(), 1, "glue: {ns:?}");
        let glue = ask(&t, &format!("ns.dns.{apex}"), RecordType::A);
        assert_eq!(addresses(&glue), vec![ip("127.0.0.53")]);
    }
    let any = ask(&t, "clusterset.local.", RecordType::ANY);
    assert_eq!(any.answers.len(), 2, "SOA and NS: {any:?}");
}

#[test]
fn an_ipv6_vip_is_aaaa() {
    let t = Table::build(
        &[service("v6", "fd00::1", &[], &[])],
        &DnsSettings::default(),
        1,
    );
    let aaaa = ask(&t, "v6.demo.svc.clusterset.local.", RecordType::AAAA);
    assert_eq!(addresses(&aaaa), vec![ip("fd00::1")]);
    let a = ask(&t, "v6.demo.svc.clusterset.local.", RecordType::A);
    assert!(a.answers.is_empty() && a.metadata.response_code == ResponseCode::NoError);
}

// === the packet path ===

fn packet(message: &Message) -> Vec<u8> {
    message.to_vec().unwrap()
}

fn reply(t: &Table, bytes: &[u8], transport: Transport) -> Message {
    let out = respond(t, bytes, transport);
    Message::from_vec(&out.bytes.expect("a reply")).unwrap()
}

#[test]
fn packets_round_trip_with_edns() {
    let t = table();
    let mut query = request("echo.demo.svc.clusterset.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    query.set_edns(edns);
    let out = respond(&t, &packet(&query), Transport::Udp);
    assert_eq!(out.query_type, Some(RecordType::A));
    assert_eq!(out.rcode, Some(ResponseCode::NoError));
    let response = Message::from_vec(&out.bytes.unwrap()).unwrap();
    assert_eq!(addresses(&response), vec![ip("127.240.0.1")]);
    let edns = response.edns.expect("EDNS answered with EDNS");
    assert_eq!(edns.max_payload(), MAX_UDP_PAYLOAD);
}

#[test]
fn malformed_packets_get_formerr_or_are_dropped() {
    let t = table();
    // Shorter than a header: nothing to answer to.
    for short in [
        &b""[..],
        b"\x12",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00",
    ] {
        assert_eq!(respond(&t, short, Transport::Udp), Reply::dropped());
    }
    // A header that promises a question which is not there.
    let formerr = reply(
        &t,
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
        Transport::Udp,
    );
    assert_eq!(formerr.metadata.id, 0xabcd);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    // A label running past the end.
    let mut bytes = packet(&request("echo.demo.svc.clusterset.local.", RecordType::A));
    bytes.truncate(20);
    assert_eq!(
        reply(&t, &bytes, Transport::Tcp).metadata.response_code,
        ResponseCode::FormErr
    );
    // No question at all.
    let empty = Message::new(7, MessageType::Query, OpCode::Query);
    assert_eq!(
        reply(&t, &packet(&empty), Transport::Udp)
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    // Two questions.
    let mut two = request("echo.demo.svc.clusterset.local.", RecordType::A);
    two.add_query(Query::query(
        name("ledger.demo.svc.clusterset.local."),
        RecordType::A,
    ));
    assert_eq!(
        reply(&t, &packet(&two), Transport::Udp)
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    // Not a query: UPDATE and NOTIFY are not implemented.
    let mut update = request("clusterset.local.", RecordType::SOA);
    update.metadata.op_code = OpCode::Update;
    assert_eq!(
        reply(&t, &packet(&update), Transport::Udp)
            .metadata
            .response_code,
        ResponseCode::NotImp
    );
    // A response is never answered: that would let anyone bounce packets off us.
    let mut response = request("echo.demo.svc.clusterset.local.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        respond(&t, &packet(&response), Transport::Udp),
        Reply::dropped()
    );
}

#[test]
fn an_answer_too_large_for_udp_is_truncated() {
    // Many instances of one name (duplicates in the input) make a large A set.
    let many: Vec<_> = (1..=60)
        .map(|i| service("wide", &format!("127.240.1.{i}"), &[], &[]))
        .collect();
    let t = Table::build(&many, &DnsSettings::default(), 1);
    let query = packet(&request("wide.demo.svc.clusterset.local.", RecordType::A));
    let udp = respond(&t, &query, Transport::Udp);
    let bytes = udp.bytes.unwrap();
    assert!(bytes.len() <= 512, "{}", bytes.len());
    let truncated = Message::from_vec(&bytes).unwrap();
    assert!(
        truncated.metadata.truncation,
        "TC tells the client to retry over TCP"
    );
    let tcp = reply(&t, &query, Transport::Tcp);
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
}

/// Thousands of random and mutated packets through parse + answer + encode: no panic, and
/// every packet with a readable query header gets a reply that parses and carries its id.
#[test]
fn fuzz_the_request_path() {
    let t = table();
    let mut rng = StdRng::seed_from_u64(0x57a1_7d45);
    let seeds: Vec<Vec<u8>> = [
        ("echo.demo.svc.clusterset.local.", RecordType::A),
        ("_http._tcp.echo.demo.svc.b.mesh.local.", RecordType::SRV),
        ("nope.demo.svc.clusterset.local.", RecordType::AAAA),
        ("example.com.", RecordType::ANY),
        ("clusterset.local.", RecordType::NS),
    ]
    .into_iter()
    .map(|(q, ty)| {
        let mut m = request(q, ty);
        if rng.random_bool(0.5) {
            m.set_edns(Edns::new());
        }
        packet(&m)
    })
    .collect();

    let mut replied = 0;
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 4 == 0 {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                mutate(&mut rng, &mut bytes);
            }
            bytes
        };
        let transport = if i % 2 == 0 {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let out = respond(&t, &bytes, transport);
        let query_header = bytes.len() >= 12 && bytes[2] & 0x80 == 0;
        match out.bytes {
            Some(reply) => {
                replied += 1;
                assert!(query_header, "only queries are answered: {bytes:02x?}");
                let parsed = Message::from_vec(&reply)
                    .unwrap_or_else(|e| panic!("unparseable reply ({e}) to {bytes:02x?}"));
                assert_eq!(parsed.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
                assert_eq!(parsed.metadata.message_type, MessageType::Response);
                assert!(!parsed.metadata.recursion_available);
                if transport == Transport::Udp {
                    assert!(reply.len() <= usize::from(MAX_UDP_PAYLOAD));
                }
            }
            None => assert!(!query_header, "a query header got no reply: {bytes:02x?}"),
        }
    }
    assert!(replied > 10_000, "most packets have a header: {replied}");
}

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    match rng.random_range(0..6) {
        0 if !bytes.is_empty() => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !bytes.is_empty() => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = rng.random();
        }
        2 => bytes.truncate(rng.random_range(0..=bytes.len())),
        3 => {
            let i = rng.random_range(0..=bytes.len());
            let extra: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
            bytes.splice(i..i, extra);
        }
        // The counts, and the label lengths and compression pointers after the header.
        4 if bytes.len() >= 12 => {
            let i = rng.random_range(4..12);
            bytes[i] = [0, 1, 2, 0xff][rng.random_range(0..4)];
        }
        _ if bytes.len() > 12 => {
            let i = rng.random_range(12..bytes.len());
            bytes[i] = [0x3f, 0x40, 0xc0, 0xc0 | 12, 0][rng.random_range(0..5)];
        }
        _ => bytes.push(rng.random()),
    }
}
