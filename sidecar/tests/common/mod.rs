//! Harness of the sidecar's in-process suites: a real zone control plane (the zone crate's own
//! `Identity` and `Discovery` services over Strait's mutual TLS) on loopback, the demo app, and
//! TLS clients. The PKI, waits, metric reading and token files come from `strait_test_support`.

// A harness failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_proto as pb;
use strait_sidecar::config::SidecarSettings;
use strait_test_support::files::Files;
use strait_test_support::pki::{Pki, TD};
use strait_trust::{AllowAny, CredentialStore, TrustStore, server_config_optional_client_auth};
use strait_zone::credentials::CaHandle;
use strait_zone::discovery::{DiscoveryConfig, DiscoveryServer};
use strait_zone::federation::FederationView;
use strait_zone::identity::{IdentityConfig, IdentityService};
use strait_zone::inventory::{InventoryWatch, ServiceKey};
use strait_zone::store::ZoneStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The zone of every suite here (the PKI is made with its intermediate only).
pub const ZONE: &str = "a";

/// A zone control plane on loopback: the zone crate's Identity and Discovery services behind
/// its TLS (client certificates optional, as the real zone serves them).
pub struct Zone {
    pub addr: SocketAddr,
    pub identity: IdentityService,
    pub discovery: DiscoveryServer,
    pub inventory: InventoryWatch,
    pub federation: watch::Sender<Arc<FederationView>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Zone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Zone {
    /// Signing workload certificates valid for `leaf_validity`, presenting `cp` (by default
    /// a proper `zone/a/cp` certificate).
    pub async fn start(pki: &Pki, leaf_validity: Duration) -> Zone {
        Self::start_with(pki, leaf_validity, pki.zone_cp(ZONE)).await
    }

    pub async fn start_with(pki: &Pki, leaf_validity: Duration, cp: CredentialStore) -> Zone {
        let dir = tempfile::tempdir().unwrap();
        let store = ZoneStore::open(dir.path().join("state")).unwrap();
        let (federation, federation_rx) = watch::channel(Arc::new(FederationView::default()));
        let (discovery, inventory) = DiscoveryServer::new(
            DiscoveryConfig {
                zone: ZONE.into(),
                region: "eu".into(),
                trust_domain: TD.into(),
                vip_cidr: "127.240.0.0/16".parse().unwrap(),
                registration_grace: Duration::from_secs(10),
            },
            federation_rx,
            store,
        )
        .unwrap();
        let identity = IdentityService::new(
            IdentityConfig {
                zone: ZONE.into(),
                trust_domain: TD.into(),
                leaf_validity,
            },
            CaHandle::new(pki.intermediate(ZONE)),
            pki.trust.clone(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve(listener, &cp, &pki.trust, &identity, &discovery);
        Zone {
            addr,
            identity,
            discovery,
            inventory,
            federation,
            task,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `strait_zone_certificates_issued_total{kind}`.
    pub fn issued(&self, kind: &str) -> u64 {
        self.identity
            .metrics()
            .issued
            .with_label_values(&[kind])
            .get()
    }

    /// The zone's inventory entry of `demo/service` instance `instance`: its health.
    pub fn instance_health(&self, service: &str, instance: &str) -> Option<bool> {
        self.inventory
            .borrow()
            .instances
            .get(&ServiceKey {
                namespace: "demo".into(),
                name: service.into(),
            })
            .and_then(|m| m.get(instance))
            .map(|i| i.healthy)
    }
}

fn serve(
    listener: TcpListener,
    cp: &CredentialStore,
    trust: &TrustStore,
    identity: &IdentityService,
    discovery: &DiscoveryServer,
) -> tokio::task::JoinHandle<()> {
    let tls =
        server_config_optional_client_auth(cp, trust, Arc::new(AllowAny), vec![b"h2".to_vec()])
            .unwrap();
    let incoming = strait_proto::transport::tls_incoming(listener, Arc::new(tls));
    let router = tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(identity.clone()))
        .add_service(discovery.clone().into_service());
    tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    })
}

/// Settings of a sidecar for `demo/service` in zone `a`, with a token file written for it.
pub async fn settings(
    zone: &Zone,
    pki: &Pki,
    files: &Files,
    service: &str,
) -> (SidecarSettings, TcpListener) {
    let token = files.write(
        &format!("{service}.token"),
        &pki.token("demo", service, ZONE),
    );
    let inbound = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut s = SidecarSettings::new(
        zone.addr(),
        ZONE,
        token,
        "demo",
        service,
        inbound.local_addr().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    s.instance = Some(format!("{service}-1"));
    (s, inbound)
}

/// Starts the demo app on a fresh loopback port.
pub async fn demo_app(service: &str, instance: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(strait_sidecar::demo_app::run_demo_app(
        listener,
        service.into(),
        ZONE.into(),
        instance.into(),
        std::future::pending::<()>(),
    ));
    (addr, task)
}

/// A mutual TLS connection to a sidecar's inbound listener, presenting `creds` (or none),
/// verifying the server against `trust`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    creds: Option<&CredentialStore>,
    trust: &TrustStore,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let alpn: Vec<Vec<u8>> = alpn.iter().map(|a| a.to_vec()).collect();
    let config = strait_test_support::tls::client_config(creds, trust, Arc::new(AllowAny), alpn);
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("strait.invalid").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// A response as a test looks at it.
#[derive(Debug)]
pub struct Got {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// An HTTP client on one connection (HTTP/1.1 or HTTP/2).
pub enum Http {
    One(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Two(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Http {
    /// Speaks HTTP/2 if the connection negotiated `h2`, HTTP/1.1 otherwise.
    pub async fn over(
        stream: tokio_rustls::client::TlsStream<TcpStream>,
    ) -> Result<Http, hyper::Error> {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Http::Two(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Http::One(send))
        }
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Got, hyper::Error> {
        let uri = match self {
            Http::One(_) => path.to_owned(),
            Http::Two(_) => format!("https://echo.demo{path}"),
        };
        let mut builder = http::Request::builder().uri(uri);
        if matches!(self, Http::One(_)) {
            builder = builder.header("host", "echo.demo");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Empty::new()).unwrap();
        let response = match self {
            Http::One(s) => s.send_request(request).await?,
            Http::Two(s) => s.send_request(request).await?,
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Got {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A TCP forwarder to `target` whose connections can all be cut at once: a network blip or a
/// control plane restart, as a client sees it.
pub struct CutProxy {
    pub addr: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let tracked = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let handle = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                tracked.lock().unwrap().push(handle.abort_handle());
            }
        });
        CutProxy { addr, conns, task }
    }

    /// Drops every open connection (new ones are still forwarded).
    pub fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}
