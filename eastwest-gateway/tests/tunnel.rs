//! Two (or three) gateways in-process on loopback with real QUIC and TLS: a tunnel carries
//! the sidecars' own mTLS end to end, refusals come back fast with their codes, only allowed
//! gateways get in, a bad stream stays a bad stream, and a dead peer gateway is noticed fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use strait_proto::TunnelStatus;
use strait_proto::tunnel::{encode_frame, response_status};
use strait_test_support::pki::Pki;
use strait_test_support::wait::eventually;

/// Zone b serves `demo/echo` (one healthy endpoint: the destination sidecar behind a tap)
/// and `demo/sick` (no healthy endpoint); zone a's gateway knows b and denies x.
struct Federation {
    pki: Pki,
    dest: DestSidecar,
    gw_a: Gw,
    gw_b: Gw,
}

fn config_b(
    pki_dest: &DestSidecar,
    peers: Vec<strait_proto::GatewayPeerZone>,
) -> strait_proto::GatewayConfig {
    config(
        "b",
        vec![
            service(
                "echo",
                8080,
                vec![endpoint(pki_dest.addr, "echo-b-1", true)],
            ),
            service(
                "sick",
                8080,
                vec![endpoint(pki_dest.addr, "sick-b-1", false)],
            ),
        ],
        peers,
        &["x"],
    )
}

async fn federation() -> Federation {
    let pki = Pki::new(&["a", "b", "c", "x"]);
    let dest = DestSidecar::start(&pki, "b").await;
    let gw_b = Gw::start(
        &pki,
        "b",
        config_b(&dest, vec![peer_zone("a", &[]), peer_zone("c", &[])]),
    )
    .await;
    let gw_a = Gw::start(
        &pki,
        "a",
        config("a", vec![], vec![peer_zone("b", &[gw_b.quic])], &["x"]),
    )
    .await;
    Federation {
        pki,
        dest,
        gw_a,
        gw_b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_carries_the_sidecars_mtls_end_to_end() {
    let f = federation().await;
    let mut sidecar =
        SourceSidecar::connect(&f.pki, f.gw_a.local, f.pki.workload("a", "shop", "web")).await;
    let answer = sidecar.open("echo.demo:8080", "b").await;
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    assert_eq!(answer.header("x-strait-served-by-zone"), "b");
    assert_eq!(answer.header("x-strait-served-by-instance"), "echo-b-1");
    let reply = sidecar
        .call(answer.tunnel.unwrap(), "GET /secret-plaintext")
        .await;
    assert_eq!(
        reply, "hello spiffe://strait.local/ns/shop/sa/web you said GET /secret-plaintext",
        "the destination saw the source sidecar's identity: mTLS end to end"
    );

    // What the receiving gateway wrote to the endpoint: TLS records, never the plaintext.
    let captured = f.dest.captured.lock().unwrap().clone();
    assert!(captured.len() > 100, "{} bytes", captured.len());
    assert_eq!(captured[0], 0x16, "starts with a TLS handshake record");
    assert_eq!(captured[1], 0x03);
    let text = String::from_utf8_lossy(&captured);
    assert!(
        !text.contains("secret-plaintext"),
        "plaintext leaked: {text}"
    );

    // The same HTTP/2 connection carries more tunnels, over the same QUIC connection.
    for i in 0..3 {
        let answer = sidecar.open("echo.demo:8080", "b").await;
        assert_eq!(answer.status, 200);
        let reply = sidecar.call(answer.tunnel.unwrap(), &format!("n{i}")).await;
        assert!(reply.ends_with(&format!("you said n{i}")), "{reply}");
    }
    assert_eq!(
        f.gw_a.metric(
            "strait_gateway_tunnels_total",
            &[
                ("direction", "outbound"),
                ("peer_zone", "b"),
                ("outcome", "ok")
            ]
        ),
        4.0
    );
    assert_eq!(
        f.gw_b.metric(
            "strait_gateway_tunnels_total",
            &[
                ("direction", "inbound"),
                ("peer_zone", "a"),
                ("outcome", "ok")
            ]
        ),
        4.0
    );
    assert_eq!(
        f.gw_a.metric(
            "strait_gateway_quic_handshakes_total",
            &[("side", "client"), ("result", "ok")]
        ),
        1.0,
        "one pooled connection"
    );
    assert!(f.gw_a.metric("strait_gateway_stream_open_seconds", &[]) >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_back_fast_with_their_codes() {
    let f = federation().await;
    let mut sidecar =
        SourceSidecar::connect(&f.pki, f.gw_a.local, f.pki.workload("a", "shop", "web")).await;
    // Warm the pool so each case measures the refusal itself.
    assert_eq!(sidecar.open("echo.demo:8080", "b").await.status, 200);
    let cases = [
        ("nope.demo:8080", "b", 404, "unknown-service"),
        ("echo.demo:9999", "b", 404, "not-exported"),
        ("sick.demo:8080", "b", 503, "no-healthy-upstream"),
        ("echo.demo:8080", "x", 403, "denied"),
        ("echo.demo:8080", "q", 503, "zone-unreachable"),
        ("echo:8080", "b", 400, "bad-header"),
    ];
    for (authority, zone, status, code) in cases {
        let started = Instant::now();
        let answer = sidecar.open(authority, zone).await;
        let took = started.elapsed();
        assert_eq!(answer.status, status, "{authority} in {zone}");
        assert_eq!(
            answer.header("x-strait-tunnel-status"),
            code,
            "{authority} in {zone}"
        );
        assert!(!answer.header("x-strait-tunnel-reason").is_empty());
        assert!(
            took < Duration::from_millis(500),
            "{authority} took {took:?}"
        );
    }
    let unknown = sidecar.open("echo.demo:8080", "q").await;
    assert_eq!(
        unknown.header("x-strait-tunnel-reason"),
        "zone q is not federated"
    );
    // Drained: refused with reason "drained".
    let mut drained = config_b(&f.dest, vec![peer_zone("a", &[])]);
    drained.services[0].drained = true;
    drained.version = 2;
    f.gw_b.set_config(drained);
    eventually(
        "config version 2 at b",
        Duration::from_secs(5),
        async || f.gw_b.metric("strait_gateway_config_version", &[]) == 2.0,
    )
    .await;
    let answer = sidecar.open("echo.demo:8080", "b").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-strait-tunnel-reason"), "drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_federated_gateways_get_in() {
    let f = federation().await;
    // Another federation's gateway "a": its chain does not verify.
    let other = Pki::new(&["a"]);
    // It trusts b, so it gets as far as presenting its own certificate.
    let tls = strait_trust::tls::quic_client_config(
        &other.gateway("a"),
        &f.pki.trust,
        std::sync::Arc::new(strait_trust::AllowAny),
        vec![strait_proto::tunnel::ALPN_TUNNEL.to_vec()],
    )
    .unwrap();
    let cfg_trusting_b = quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let refused = async {
        let conn = quic_connect(&ep, &cfg_trusting_b, f.gw_b.quic).await?;
        raw_stream(
            &conn,
            &encode_frame(&header("echo", 8080, "a", "b")).unwrap(),
        )
        .await
    };
    assert!(refused.await.is_err(), "a foreign certificate is refused");

    // A workload of this federation is not a gateway.
    let (ep, cfg) = quic_client(&f.pki, &f.pki.workload("a", "shop", "web"), "b");
    let refused = async {
        let conn = quic_connect(&ep, &cfg, f.gw_b.quic).await?;
        raw_stream(
            &conn,
            &encode_frame(&header("echo", 8080, "a", "b")).unwrap(),
        )
        .await
    };
    assert!(refused.await.is_err(), "a workload certificate is refused");

    // Zone x is denied.
    for zone in ["x"] {
        let (ep, cfg) = quic_client(&f.pki, &f.pki.gateway(zone), "b");
        let refused = async {
            let conn = quic_connect(&ep, &cfg, f.gw_b.quic).await?;
            raw_stream(
                &conn,
                &encode_frame(&header("echo", 8080, zone, "b")).unwrap(),
            )
            .await
        };
        assert!(refused.await.is_err(), "zone {zone} is refused");
    }

    // Zone c is allowed; once it is denied its open connection is closed.
    let (ep, cfg) = quic_client(&f.pki, &f.pki.gateway("c"), "b");
    let conn = quic_connect(&ep, &cfg, f.gw_b.quic).await.unwrap();
    let ok = raw_stream(
        &conn,
        &encode_frame(&header("echo", 8080, "c", "b")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response_status(&ok), TunnelStatus::Ok);
    let mut removed = config_b(&f.dest, vec![peer_zone("a", &[])]);
    removed.deny_list.push("c".into());
    removed.version = 2;
    let started = Instant::now();
    f.gw_b.set_config(removed);
    let reason = tokio::time::timeout(Duration::from_secs(2), conn.closed())
        .await
        .expect("the denied zone's connection is closed");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(format!("{reason}").contains("deny"), "{reason}");
    let again = async {
        let conn = quic_connect(&ep, &cfg, f.gw_b.quic).await?;
        raw_stream(
            &conn,
            &encode_frame(&header("echo", 8080, "c", "b")).unwrap(),
        )
        .await
    };
    assert!(again.await.is_err(), "and a new connection is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_header_resets_only_its_stream() {
    let f = federation().await;
    let (ep, cfg) = quic_client(&f.pki, &f.pki.gateway("a"), "b");
    let conn = quic_connect(&ep, &cfg, f.gw_b.quic).await.unwrap();

    // A stream kept open that has not finished its header yet.
    let (mut slow, _slow_recv) = conn.open_bi().await.unwrap();
    slow.write_all(&[0x00]).await.unwrap();

    let too_big = raw_stream(&conn, &[0xff, 0xff, 1, 2, 3]).await.unwrap();
    assert_eq!(response_status(&too_big), TunnelStatus::BadHeader);
    let garbage = raw_stream(&conn, &[0x00, 0x03, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(response_status(&garbage), TunnelStatus::BadHeader);
    let mut v2 = header("echo", 8080, "a", "b");
    v2.version = 2;
    let v2 = raw_stream(&conn, &encode_frame(&v2).unwrap())
        .await
        .unwrap();
    assert_eq!(response_status(&v2), TunnelStatus::UnsupportedVersion);
    let lying = raw_stream(
        &conn,
        &encode_frame(&header("echo", 8080, "c", "b")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        response_status(&lying),
        TunnelStatus::BadHeader,
        "source zone must be the peer's"
    );

    // The connection and the other streams are fine.
    let ok = raw_stream(
        &conn,
        &encode_frame(&header("echo", 8080, "a", "b")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response_status(&ok), TunnelStatus::Ok);
    assert_eq!(ok.served_by_zone, "b");
    assert!(conn.close_reason().is_none());
    assert_eq!(
        f.gw_b.metric(
            "strait_gateway_tunnels_total",
            &[
                ("direction", "inbound"),
                ("peer_zone", "a"),
                ("outcome", "bad-header")
            ]
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_gateway_fails_calls_fast() {
    let pki = Pki::new(&["a", "b"]);
    let dest = DestSidecar::start(&pki, "b").await;
    let gw_b = Gw::start(&pki, "b", config_b(&dest, vec![peer_zone("a", &[])])).await;
    let relay = Relay::start(gw_b.quic).await;
    let gw_a = Gw::start(
        &pki,
        "a",
        config("a", vec![], vec![peer_zone("b", &[relay.addr])], &[]),
    )
    .await;
    let mut sidecar =
        SourceSidecar::connect(&pki, gw_a.local, pki.workload("a", "shop", "web")).await;
    assert_eq!(sidecar.open("echo.demo:8080", "b").await.status, 200);

    relay.kill();
    let started = Instant::now();
    let answer = sidecar.open("echo.demo:8080", "b").await;
    let took = started.elapsed();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("x-strait-tunnel-status"), "zone-unreachable");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Known down now: the next one fails at once.
    let started = Instant::now();
    let answer = sidecar.open("echo.demo:8080", "b").await;
    assert_eq!(answer.header("x-strait-tunnel-status"), "zone-unreachable");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_losing_one_loses_no_tunnel() {
    let pki = Pki::new(&["a", "b"]);
    let dest = DestSidecar::start(&pki, "b").await;
    let b1 = Gw::start(&pki, "b", config_b(&dest, vec![peer_zone("a", &[])])).await;
    let b2 = Gw::start(&pki, "b", config_b(&dest, vec![peer_zone("a", &[])])).await;
    let r1 = Relay::start(b1.quic).await;
    let r2 = Relay::start(b2.quic).await;
    let gw_a = Gw::start(
        &pki,
        "a",
        config("a", vec![], vec![peer_zone("b", &[r1.addr, r2.addr])], &[]),
    )
    .await;
    let mut sidecar =
        SourceSidecar::connect(&pki, gw_a.local, pki.workload("a", "shop", "web")).await;
    for _ in 0..6 {
        let answer = sidecar.open("echo.demo:8080", "b").await;
        assert_eq!(answer.status, 200);
        let reply = sidecar.call(answer.tunnel.unwrap(), "x").await;
        assert!(reply.ends_with("you said x"));
    }
    let used = |g: &Gw| {
        g.metric(
            "strait_gateway_tunnels_total",
            &[
                ("direction", "inbound"),
                ("peer_zone", "a"),
                ("outcome", "ok"),
            ],
        )
    };
    assert!(
        used(&b1) >= 1.0 && used(&b2) >= 1.0,
        "spread over both replicas"
    );

    r1.kill();
    for i in 0..10 {
        let started = Instant::now();
        let answer = sidecar.open("echo.demo:8080", "b").await;
        assert_eq!(answer.status, 200, "tunnel {i}: {:?}", answer.headers);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "tunnel {i} took {took:?}");
        let reply = sidecar.call(answer.tunnel.unwrap(), "y").await;
        assert!(reply.ends_with("you said y"));
    }
    drop(b2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_resume_with_0rtt() {
    let pki = Pki::new(&["a", "b"]);
    let dest = DestSidecar::start(&pki, "b").await;
    let gw_b = Gw::start(&pki, "b", config_b(&dest, vec![peer_zone("a", &[])])).await;
    let gw_a = Gw::start(
        &pki,
        "a",
        config("a", vec![], vec![peer_zone("b", &[gw_b.quic])], &[]),
    )
    .await;
    let mut sidecar =
        SourceSidecar::connect(&pki, gw_a.local, pki.workload("a", "shop", "web")).await;
    assert_eq!(sidecar.open("echo.demo:8080", "b").await.status, 200);
    // Drop the connection from b's side (a config that briefly removes zone a), then allow a
    // again: a's pool reconnects with the ticket it got and sends 0-RTT.
    let mut without_a = config_b(&dest, vec![]);
    without_a.version = 2;
    gw_b.set_config(without_a);
    let mut with_a = config_b(&dest, vec![peer_zone("a", &[])]);
    with_a.version = 3;
    eventually(
        "a's connection to b dropped",
        Duration::from_secs(5),
        async || gw_b.metric("strait_gateway_inbound_connections", &[]) == 0.0,
    )
    .await;
    gw_b.set_config(with_a);
    eventually(
        "a reconnect used 0-RTT",
        Duration::from_secs(10),
        async || gw_a.metric("strait_gateway_quic_0rtt_total", &[("result", "accepted")]) >= 1.0,
    )
    .await;
    let answer = sidecar.open("echo.demo:8080", "b").await;
    assert_eq!(answer.status, 200);
    let reply = sidecar.call(answer.tunnel.unwrap(), "after").await;
    assert!(reply.ends_with("you said after"));
}
