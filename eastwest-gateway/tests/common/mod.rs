//! Harness of the gateway's in-process suites (the PKI, waits and metric reading come from
//! `strait_test_support`): gateways on loopback driven by a config `watch`, a
//! destination "sidecar" (a TLS server that answers with the caller's identity) behind a tap
//! that records what the gateway sends it, a source "sidecar" (HTTP/2 CONNECT client, then TLS
//! through the tunnel), a UDP relay that can black-hole a gateway, and a raw QUIC peer.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use strait_eastwest_gateway::{Gateway, GatewayContext};
use strait_proto as pb;
use strait_test_support::metrics;
use strait_test_support::pki::{Pki, TD};
use strait_trust::{AllowAny, AllowExactly, CredentialStore, SpiffeId, TrustStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

// === gateways ===

/// A running gateway and the handles a test uses on it.
pub struct Gw {
    pub quic: SocketAddr,
    pub local: SocketAddr,
    pub config: watch::Sender<Arc<pb::GatewayConfig>>,
    pub registry: prometheus::Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gw {
    pub async fn start(pki: &Pki, zone: &str, config: pb::GatewayConfig) -> Gw {
        let (tx, rx) = watch::channel(Arc::new(config));
        let registry = prometheus::Registry::new();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = Gateway::bind(
            GatewayContext {
                zone: zone.to_owned(),
                instance: format!("gw-{zone}"),
                creds: pki.gateway(zone),
                trust: pki.trust.clone(),
                config: rx,
                registry: registry.clone(),
            },
            udp,
            local,
        )
        .unwrap();
        let quic = gateway.quic_addr().unwrap();
        let local = gateway.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Gw {
            quic,
            local,
            config: tx,
            registry,
            stop: Some(stop),
            task,
        }
    }

    pub fn set_config(&self, config: pb::GatewayConfig) {
        self.config.send_replace(Arc::new(config));
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }

    /// A counter or gauge value (histogram: sample count) from the registry; a series not
    /// touched yet reads as zero.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::value(&self.registry, name, labels).unwrap_or(0.0)
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === configs ===

pub fn service(name: &str, port: u32, endpoints: Vec<pb::Endpoint>) -> pb::GatewayService {
    pb::GatewayService {
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: name.into(),
        }),
        ports: vec![pb::Port {
            port,
            ..Default::default()
        }],
        endpoints,
        drained: false,
    }
}

pub fn endpoint(address: SocketAddr, instance: &str, healthy: bool) -> pb::Endpoint {
    pb::Endpoint {
        address: address.to_string(),
        instance: instance.into(),
        healthy,
        ..Default::default()
    }
}

pub fn peer_zone(name: &str, gateways: &[SocketAddr]) -> pb::GatewayPeerZone {
    pb::GatewayPeerZone {
        name: name.into(),
        region: "eu".into(),
        gateways: gateways
            .iter()
            .enumerate()
            .map(|(i, a)| pb::GatewayEndpoint {
                address: a.to_string(),
                instance: format!("gw-{name}-{i}"),
                locality: None,
            })
            .collect(),
    }
}

pub fn config(
    zone: &str,
    services: Vec<pb::GatewayService>,
    zones: Vec<pb::GatewayPeerZone>,
    deny: &[&str],
) -> pb::GatewayConfig {
    pb::GatewayConfig {
        version: 1,
        zone: zone.into(),
        trust_domain: TD.into(),
        services,
        zones,
        deny_list: deny.iter().map(|s| (*s).to_owned()).collect(),
    }
}

// === destination sidecar ===

/// A TLS server with a workload certificate that requires a client certificate and answers
/// every line with `hello <client SPIFFE ID>`; behind a tap that records the bytes it gets.
pub struct DestSidecar {
    /// Where gateways connect (the tap).
    pub addr: SocketAddr,
    /// Everything written to the tap by its clients.
    pub captured: Arc<Mutex<Vec<u8>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DestSidecar {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DestSidecar {
    pub async fn start(pki: &Pki, zone: &str) -> Self {
        let creds = pki.workload(zone, "demo", "echo");
        let tls =
            strait_trust::server_config(&creds, &pki.trust, Arc::new(AllowAny), vec![]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let app = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = server.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let caller = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| strait_trust::peer_identity(c).unwrap().to_string())
                        .unwrap_or_default();
                    let (r, mut w) = tokio::io::split(tls);
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = format!("hello {caller} you said {line}\n");
                        if w.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let tap = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tap.local_addr().unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let seen = captured.clone();
        let tap_task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = tap.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(server_addr).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut ur, mut uw) = upstream.split();
                    let up = async {
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            if uw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut ur, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        DestSidecar {
            addr,
            captured,
            tasks: vec![app, tap_task],
        }
    }
}

// === source sidecar ===

/// An HTTP/2 connection from a "sidecar" to its local gateway.
pub struct SourceSidecar {
    pub sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    pki_trust: TrustStore,
    creds: CredentialStore,
}

/// A CONNECT answer.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub tunnel: Option<hyper::upgrade::Upgraded>,
}

impl Answer {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
}

impl SourceSidecar {
    pub async fn connect(pki: &Pki, gateway: SocketAddr, creds: CredentialStore) -> Self {
        let tls = strait_trust::client_config(
            &creds,
            &pki.trust,
            Arc::new(AllowAny),
            vec![b"h2".to_vec()],
        )
        .unwrap();
        let tcp = TcpStream::connect(gateway).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("strait").unwrap(), tcp)
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        SourceSidecar {
            sender,
            pki_trust: pki.trust.clone(),
            creds,
        }
    }

    /// CONNECT `authority` in `zone`.
    pub async fn open(&mut self, authority: &str, zone: &str) -> Answer {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority)
            .header("x-strait-target-zone", zone)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(Empty::new())
            .unwrap();
        let mut response = self.sender.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let tunnel = if status == 200 {
            Some(hyper::upgrade::on(&mut response).await.unwrap())
        } else {
            None
        };
        Answer {
            status,
            headers,
            tunnel,
        }
    }

    /// Runs this sidecar's own mTLS through `tunnel` to `demo/echo` and sends one line.
    pub async fn call(&self, tunnel: hyper::upgrade::Upgraded, line: &str) -> String {
        let echo = SpiffeId::workload(TD, "demo", "echo").unwrap();
        let tls = strait_trust::client_config(
            &self.creds,
            &self.pki_trust,
            Arc::new(AllowExactly(vec![echo])),
            vec![],
        )
        .unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(
                ServerName::try_from("strait").unwrap(),
                TokioIo::new(tunnel),
            )
            .await
            .unwrap();
        stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).await.unwrap();
        answer.trim_end().to_owned()
    }
}

// === UDP relay ===

/// Forwards UDP between one client and `target`; [`Relay::kill`] drops everything from then
/// on, like a host that died without a word.
pub struct Relay {
    pub addr: SocketAddr,
    dead: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let dead = Arc::new(AtomicBool::new(false));
        let flag = dead.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if flag.load(Ordering::Relaxed) {
                    continue;
                }
                if from == target {
                    if let Some(c) = client {
                        let _ = socket.send_to(&buf[..n], c).await;
                    }
                } else {
                    client = Some(from);
                    let _ = socket.send_to(&buf[..n], target).await;
                }
            }
        });
        Relay { addr, dead, task }
    }

    pub fn kill(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }
}

// === raw QUIC peer ===

/// A QUIC client endpoint presenting `creds`, expecting `zone`'s gateway.
pub fn quic_client(
    pki: &Pki,
    creds: &CredentialStore,
    zone: &str,
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let expected = SpiffeId::gateway(TD, zone).unwrap();
    let config =
        strait_eastwest_gateway::quic::client_config(creds, &pki.trust, &expected).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    (endpoint, config)
}

pub async fn quic_connect(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(config.clone(), addr, "strait")
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Opens a stream, writes `bytes`, reads a framed response (or the error).
pub async fn raw_stream(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<pb::TunnelResponse, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    tokio::time::timeout(
        Duration::from_secs(5),
        strait_proto::tunnel::read_frame::<pb::TunnelResponse, _>(&mut recv),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
    .map_err(|e| e.to_string())
}

pub fn header(name: &str, port: u32, source_zone: &str, target_zone: &str) -> pb::TunnelHeader {
    pb::TunnelHeader {
        version: 1,
        service: Some(pb::ServiceRef {
            namespace: "demo".into(),
            name: name.into(),
        }),
        port,
        source_zone: source_zone.into(),
        target_zone: target_zone.into(),
        trace: None,
        ..Default::default()
    }
}
