//! Time to first byte of a new cross-zone connection across a WAN-like link.
//!
//! Two namespaces (made by the script) are joined by a veth with netem delay on both ends.
//! Only the sockets that cross zones live in them: the QUIC sockets of gateway a (in A) and
//! gateway b (in B), the client ends of the TCP connections (in A) and the TCP servers they
//! reach (in B). Everything zone-local stays on the benchmark's own loopback: the source
//! "sidecar" → gateway a HTTP/2 connection, gateway b → the destination "sidecar" (an mTLS
//! server with a workload certificate that answers each line).
//!
//! Per sample, the three ways to open a new connection to the destination sidecar, rotated:
//!
//! - `quic-pooled`: CONNECT on the source sidecar's pooled HTTP/2 connection to gateway a,
//!   which opens a stream on its pooled QUIC connection to gateway b, which connects the
//!   destination; then the sidecars' own mTLS through the tunnel, one line, the first byte of
//!   the answer (what a sidecar does for a new connection to another zone);
//! - `tcp-tls-direct`: a fresh TCP connection across the link straight to the destination,
//!   TLS 1.3 with client certificate, one line, the first byte (no gateway at all);
//! - `tcp-tls-gateway`: a fresh TCP + TLS 1.3 connection across the link to a TLS-terminating
//!   relay in zone b (a gateway that dials per tunnel instead of pooling), which connects the
//!   destination; then the same end-to-end mTLS inside it, one line, the first byte.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use strait_eastwest_gateway::{Gateway, GatewayContext};
use strait_proto as pb;
use strait_trust::{AllowAny, AllowExactly, CredentialStore, SpiffeId};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::netns;
use crate::pki::{Pki, TD};

const SERVICE_PORT: u32 = 8080;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Namespace of zone a's cross-zone sockets.
    #[arg(long)]
    pub ns_a: String,
    /// Namespace of zone b's cross-zone sockets.
    #[arg(long)]
    pub ns_b: String,
    /// Zone a's address on the link.
    #[arg(long)]
    pub addr_a: IpAddr,
    /// Zone b's address on the link.
    #[arg(long)]
    pub addr_b: IpAddr,
    /// Samples per way.
    #[arg(long, default_value = "200")]
    pub samples: usize,
    /// Untimed samples per way first (the pooled connections come up, caches warm).
    #[arg(long, default_value = "10")]
    pub warmup: usize,
    /// Pause between two samples.
    #[arg(long, default_value = "10ms", value_parser = parse_ms)]
    pub pause: Duration,
    /// Write every sample here (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    let ms = s.trim_end_matches("ms");
    ms.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("{s}: {e} (expected e.g. 10ms)"))
}

const WAYS: [&str; 3] = ["quic-pooled", "tcp-tls-direct", "tcp-tls-gateway"];

/// One sample: milliseconds from the start to each milestone.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// `quic-pooled`: tunnel open (200 to the CONNECT); TCP ways: TCP connected.
    open: f64,
    /// TCP+TLS to the relay done (`tcp-tls-gateway` only).
    hop_tls: Option<f64>,
    /// The end-to-end mTLS handshake with the destination done.
    tls: f64,
    /// First byte of the answer to the first line.
    first_byte: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pki = Arc::new(Pki::new(&["a", "b"])?);
    let total = args.samples + args.warmup;

    // Sockets inside the namespaces.
    let (addr_a, addr_b) = (args.addr_a, args.addr_b);
    let (udp_a, client_sockets) = netns::within(&args.ns_a, move || {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(addr_a, 0))?;
        let tcp = (0..2 * total)
            .map(|_| netns::tcp_socket())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((udp, tcp))
    })?;
    let (udp_b, direct_listener, relay_listener) = netns::within(&args.ns_b, move || {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(addr_b, 0))?;
        let direct = std::net::TcpListener::bind(SocketAddr::new(addr_b, 0))?;
        let relay = std::net::TcpListener::bind(SocketAddr::new(addr_b, 0))?;
        direct.set_nonblocking(true)?;
        relay.set_nonblocking(true)?;
        Ok((udp, direct, relay))
    })?;
    let mut client_sockets = client_sockets.into_iter();
    let direct_listener = TcpListener::from_std(direct_listener)?;
    let relay_listener = TcpListener::from_std(relay_listener)?;
    let direct_addr = direct_listener.local_addr()?;
    let relay_addr = relay_listener.local_addr()?;

    // The destination sidecar, on loopback (for gateway b) and across the link (direct).
    let dest_creds = pki.workload("b", "demo", "echo")?;
    let dest_tls = Arc::new(strait_trust::server_config(
        &dest_creds,
        &pki.trust,
        Arc::new(AllowAny),
        vec![],
    )?);
    let local_dest = TcpListener::bind("127.0.0.1:0").await?;
    let local_dest_addr = local_dest.local_addr()?;
    tokio::spawn(serve_dest(local_dest, TlsAcceptor::from(dest_tls.clone())));
    tokio::spawn(serve_dest(direct_listener, TlsAcceptor::from(dest_tls)));

    // The per-tunnel TCP+TLS "gateway": TLS as zone b's gateway, then bytes to the destination.
    let relay_tls =
        strait_trust::server_config(&pki.gateway("b")?, &pki.trust, Arc::new(AllowAny), vec![])?;
    tokio::spawn(serve_relay(
        relay_listener,
        TlsAcceptor::from(Arc::new(relay_tls)),
        local_dest_addr,
    ));

    // Two gateways; only their QUIC sockets cross the link.
    let quic_a = SocketAddr::new(addr_a, udp_a.local_addr()?.port());
    let quic_b = SocketAddr::new(addr_b, udp_b.local_addr()?.port());
    let config_a = gateway_config("a", vec![], peer("b", quic_b));
    let config_b = gateway_config(
        "b",
        vec![pb::GatewayService {
            service: Some(pb::ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            ports: vec![pb::Port {
                port: SERVICE_PORT,
                ..Default::default()
            }],
            endpoints: vec![pb::Endpoint {
                address: local_dest_addr.to_string(),
                instance: "echo-b".into(),
                healthy: true,
                ..Default::default()
            }],
            drained: false,
        }],
        peer("a", quic_a),
    );
    let (_keep_b, gw_b_local) = start_gateway(&pki, "b", config_b, udp_b).await?;
    let (_keep_a, gw_a_local) = start_gateway(&pki, "a", config_a, udp_a).await?;

    // The source sidecar's pooled HTTP/2 connection to gateway a.
    let client_creds = pki.workload("a", "demo", "client")?;
    let h2_tls = strait_trust::client_config(
        &client_creds,
        &pki.trust,
        Arc::new(AllowAny),
        vec![b"h2".to_vec()],
    )?;
    let tcp = TcpStream::connect(gw_a_local).await?;
    tcp.set_nodelay(true)?;
    let stream = TlsConnector::from(Arc::new(h2_tls))
        .connect(ServerName::try_from("strait")?, tcp)
        .await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let _ = gw_b_local;

    // The end-to-end mTLS the source sidecar runs to the destination (identity pinned).
    let e2e = TlsConnector::from(Arc::new(strait_trust::client_config(
        &client_creds,
        &pki.trust,
        Arc::new(AllowExactly(vec![SpiffeId::workload(TD, "demo", "echo")?])),
        vec![],
    )?));
    let hop = TlsConnector::from(Arc::new(strait_trust::client_config(
        &client_creds,
        &pki.trust,
        Arc::new(AllowExactly(vec![SpiffeId::gateway(TD, "b")?])),
        vec![],
    )?));

    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); WAYS.len()];
    for i in 0..total {
        for k in 0..WAYS.len() {
            let way = (i + k) % WAYS.len();
            let sample = match WAYS[way] {
                "quic-pooled" => quic_pooled(&mut sender, &e2e).await,
                "tcp-tls-direct" => {
                    let socket = client_sockets.next().context("out of sockets")?;
                    tcp_tls_direct(socket, direct_addr, &e2e).await
                }
                _ => {
                    let socket = client_sockets.next().context("out of sockets")?;
                    tcp_tls_gateway(socket, relay_addr, &hop, &e2e).await
                }
            }
            .with_context(|| format!("sample {i} of {}", WAYS[way]))?;
            if i >= args.warmup {
                results[way].push(sample);
            }
            tokio::time::sleep(args.pause).await;
        }
    }

    if let Some(path) = &args.json {
        let json: serde_json::Map<String, serde_json::Value> = WAYS
            .iter()
            .zip(&results)
            .map(|(way, samples)| {
                let rows = samples
                    .iter()
                    .map(|s| {
                        serde_json::json!({"open": s.open, "hop_tls": s.hop_tls, "tls": s.tls, "first_byte": s.first_byte})
                    })
                    .collect();
                ((*way).to_owned(), serde_json::Value::Array(rows))
            })
            .collect();
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)?;
    }
    print_table(&results);
    Ok(())
}

fn print_table(results: &[Vec<Sample>]) {
    println!(
        "| way | samples | first byte p50 ms | p99 ms | min ms | max ms | connected/tunnel open p50 ms | hop TLS done p50 ms | end-to-end mTLS done p50 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (way, samples) in WAYS.iter().zip(results) {
        let first: Vec<f64> = samples.iter().map(|s| s.first_byte).collect();
        let open: Vec<f64> = samples.iter().map(|s| s.open).collect();
        let hop: Vec<f64> = samples.iter().filter_map(|s| s.hop_tls).collect();
        let tls: Vec<f64> = samples.iter().map(|s| s.tls).collect();
        let hop = if hop.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}", pct(&hop, 50.0))
        };
        println!(
            "| {way} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {hop} | {:.1} |",
            samples.len(),
            pct(&first, 50.0),
            pct(&first, 99.0),
            pct(&first, 0.0),
            pct(&first, 100.0),
            pct(&open, 50.0),
            pct(&tls, 50.0),
        );
    }
}

/// Nearest-rank percentile.
fn pct(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

async fn quic_pooled(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    e2e: &TlsConnector,
) -> anyhow::Result<Sample> {
    let t0 = Instant::now();
    sender.ready().await?;
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("echo.demo:{SERVICE_PORT}"))
        .header(strait_proto::tunnel::HEADER_TARGET_ZONE, "b")
        .body(Empty::new())?;
    let mut response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status() == http::StatusCode::OK,
        "CONNECT answered {} ({:?})",
        response.status(),
        response.headers().get("x-strait-tunnel-reason")
    );
    let tunnel = hyper::upgrade::on(&mut response).await?;
    let open = ms(t0);
    let (tls, first_byte) = e2e_request(TokioIo::new(tunnel), e2e, t0).await?;
    Ok(Sample {
        open,
        hop_tls: None,
        tls,
        first_byte,
    })
}

async fn tcp_tls_direct(
    socket: std::net::TcpStream,
    to: SocketAddr,
    e2e: &TlsConnector,
) -> anyhow::Result<Sample> {
    let t0 = Instant::now();
    let tcp = TcpSocket::from_std_stream(socket).connect(to).await?;
    let open = ms(t0);
    let (tls, first_byte) = e2e_request(tcp, e2e, t0).await?;
    Ok(Sample {
        open,
        hop_tls: None,
        tls,
        first_byte,
    })
}

async fn tcp_tls_gateway(
    socket: std::net::TcpStream,
    to: SocketAddr,
    hop: &TlsConnector,
    e2e: &TlsConnector,
) -> anyhow::Result<Sample> {
    let t0 = Instant::now();
    let tcp = TcpSocket::from_std_stream(socket).connect(to).await?;
    let open = ms(t0);
    let outer = hop.connect(ServerName::try_from("strait")?, tcp).await?;
    let hop_tls = ms(t0);
    let (tls, first_byte) = e2e_request(outer, e2e, t0).await?;
    Ok(Sample {
        open,
        hop_tls: Some(hop_tls),
        tls,
        first_byte,
    })
}

/// The source sidecar's mTLS to the destination over `io`, one line, the first byte back.
async fn e2e_request<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    e2e: &TlsConnector,
    t0: Instant,
) -> anyhow::Result<(f64, f64)> {
    let mut stream = e2e.connect(ServerName::try_from("strait")?, io).await?;
    let tls = ms(t0);
    stream.write_all(b"ping\n").await?;
    let mut byte = [0_u8; 1];
    stream
        .read_exact(&mut byte)
        .await
        .context("reading the answer")?;
    let first_byte = ms(t0);
    Ok((tls, first_byte))
}

/// The destination sidecar: mTLS, then `pong` for every line.
async fn serve_dest(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let (r, mut w) = tokio::io::split(tls);
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                if w.write_all(b"pong\n").await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A gateway of the dial-per-tunnel kind: TLS in, then bytes to `dest` both ways.
async fn serve_relay(listener: TcpListener, acceptor: TlsAcceptor, dest: SocketAddr) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut upstream) = TcpStream::connect(dest).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
        });
    }
}

fn peer(zone: &str, quic: SocketAddr) -> Vec<pb::GatewayPeerZone> {
    vec![pb::GatewayPeerZone {
        name: zone.into(),
        region: "eu".into(),
        gateways: vec![pb::GatewayEndpoint {
            address: quic.to_string(),
            instance: format!("gw-{zone}-0"),
            locality: None,
        }],
    }]
}

fn gateway_config(
    zone: &str,
    services: Vec<pb::GatewayService>,
    zones: Vec<pb::GatewayPeerZone>,
) -> pb::GatewayConfig {
    pb::GatewayConfig {
        version: 1,
        zone: zone.into(),
        trust_domain: TD.into(),
        services,
        zones,
        deny_list: vec![],
    }
}

/// Starts a gateway on `udp` (and a loopback listener for sidecars); returns what keeps it
/// running and its sidecar-facing address.
async fn start_gateway(
    pki: &Pki,
    zone: &str,
    config: pb::GatewayConfig,
    udp: std::net::UdpSocket,
) -> anyhow::Result<(watch::Sender<Arc<pb::GatewayConfig>>, SocketAddr)> {
    let (tx, rx) = watch::channel(Arc::new(config));
    let creds: CredentialStore = pki.gateway(zone)?;
    let local = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = Gateway::bind(
        GatewayContext {
            zone: zone.to_owned(),
            instance: format!("gw-{zone}-0"),
            creds,
            trust: pki.trust.clone(),
            config: rx,
            registry: prometheus::Registry::new(),
        },
        udp,
        local,
    )?;
    let local_addr = gateway.local_addr()?;
    tokio::spawn(gateway.serve(std::future::pending::<()>()));
    Ok((tx, local_addr))
}
