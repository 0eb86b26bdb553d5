//! The server on loopback sockets: garbage never stops it, answers follow the services.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn echo(vip: &str) -> pb::OutboundService {
    pb::OutboundService {
        service: Some(pb::ServiceRef {
            namespace: "demo".to_owned(),
            name: "echo".to_owned(),
        }),
        ports: vec![pb::Port {
            name: "http".to_owned(),
            port: 8080,
            protocol: pb::Protocol::Http.into(),
        }],
        vip: vip.to_owned(),
        zone_vips: HashMap::from([("b".to_owned(), "127.240.129.1".to_owned())]),
        ..Default::default()
    }
}

struct Running {
    addr: SocketAddr,
    services: watch::Sender<Arc<Vec<pb::OutboundService>>>,
    registry: Registry,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(services: Vec<pb::OutboundService>) -> Running {
    let sockets = DnsSockets::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = sockets.local_addr().unwrap();
    let (tx, rx) = watch::channel(Arc::new(services));
    let registry = Registry::new();
    let metrics = DnsMetrics::new(&registry).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(
        sockets,
        rx,
        DnsSettings::default(),
        metrics,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        addr,
        services: tx,
        registry,
        _stop: stop,
    }
}

fn query(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(qname).unwrap(), qtype));
    message.to_vec().unwrap()
}

async fn udp_ask(addr: SocketAddr, packet: &[u8]) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..len]).ok()
}

async fn tcp_ask(addr: SocketAddr, packet: &[u8]) -> Message {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.unwrap();
    let mut prefix = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut prefix))
        .await
        .expect("TCP reply in time")
        .unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut body).await.unwrap();
    Message::from_vec(&body).unwrap()
}

fn first_address(message: &Message) -> Option<IpAddr> {
    message.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    })
}

#[tokio::test]
async fn garbage_over_udp_and_tcp_never_stops_the_server() {
    let server = start(vec![echo("127.240.0.1")]).await;
    let mut rng = StdRng::seed_from_u64(7);

    // UDP: random datagrams, some of them with a query header (those get FORMERR).
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..2_000 {
        let len = rng.random_range(0..512);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Some(flags) = bytes.get_mut(2) {
            *flags &= 0x7f;
        }
        socket.send_to(&bytes, server.addr).await.unwrap();
    }
    // A header with nothing after it, from a fresh socket: FORMERR, not silence.
    let formerr = udp_ask(
        server.addr,
        b"\x00\x2a\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    )
    .await
    .expect("FORMERR reply");
    assert_eq!(formerr.metadata.id, 42);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);

    // TCP: random bytes, a length prefix promising more than comes, half a prefix, framed
    // garbage, and a connection that says nothing and stays open.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    for case in 0..40 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let bytes: Vec<u8> = match case % 4 {
            0 => (0..rng.random_range(1..300))
                .map(|_| rng.random())
                .collect(),
            1 => vec![0xff, 0xff, 1, 2, 3],
            2 => vec![0x00],
            _ => {
                let body: Vec<u8> = (0..rng.random_range(0..100))
                    .map(|_| rng.random())
                    .collect();
                let mut framed = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
                framed.extend(body);
                framed
            }
        };
        let _ = stream.write_all(&bytes).await;
        drop(stream);
    }

    // Still answering, over both transports.
    let packet = query(1, "echo.demo.svc.clusterset.local.", RecordType::A);
    let udp = udp_ask(server.addr, &packet).await.expect("UDP answer");
    assert_eq!(first_address(&udp), Some("127.240.0.1".parse().unwrap()));
    let tcp = tcp_ask(server.addr, &packet).await;
    assert_eq!(first_address(&tcp), Some("127.240.0.1".parse().unwrap()));
    assert!(tcp.metadata.authoritative);
    drop(silent);

    // Several queries over one TCP connection, in order.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for (id, name) in [
        (10, "nope.demo.svc.clusterset.local."),
        (11, "example.com."),
    ] {
        let packet = query(id, name, RecordType::A);
        let mut framed = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&packet);
        stream.write_all(&framed).await.unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..2 {
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await.unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut body).await.unwrap();
        let m = Message::from_vec(&body).unwrap();
        codes.push((m.metadata.id, m.metadata.response_code));
    }
    assert_eq!(
        codes,
        vec![(10, ResponseCode::NXDomain), (11, ResponseCode::Refused)]
    );

    let text = metrics_text(&server.registry);
    assert!(
        text.contains(
            r#"strait_zone_dns_queries_total{protocol="udp",rcode="FORMERR",type="none"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"strait_zone_dns_queries_total{protocol="tcp",rcode="NXDOMAIN",type="A"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn answers_follow_the_services() {
    let server = start(Vec::new()).await;
    let packet = query(3, "echo.demo.svc.clusterset.local.", RecordType::A);
    let before = udp_ask(server.addr, &packet).await.unwrap();
    assert_eq!(before.metadata.response_code, ResponseCode::NXDomain);

    let changed = Instant::now();
    server
        .services
        .send_replace(Arc::new(vec![echo("127.240.0.7")]));
    loop {
        let now = udp_ask(server.addr, &packet).await.unwrap();
        if first_address(&now) == Some("127.240.0.7".parse().unwrap()) {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the answer did not follow within a second: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    server.services.send_replace(Arc::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(1);
    while udp_ask(server.addr, &packet)
        .await
        .unwrap()
        .metadata
        .response_code
        != ResponseCode::NXDomain
    {
        assert!(
            Instant::now() < deadline,
            "the removal did not follow within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(metrics_text(&server.registry).contains("strait_zone_dns_table_updates_total 2"));
}

fn metrics_text(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}
