//! Harness of the sidecar's in-process suites: a federation PKI, a real zone control plane
//! (the zone crate's own `Identity` and `Discovery` services over Strait's mutual TLS) on
//! loopback, the demo app, and TLS clients.

// A harness failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_proto as pb;
use strait_sidecar::config::SidecarSettings;
use strait_trust::ca::{
    DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_VALIDITY, DEFAULT_ROOT_VALIDITY,
};
use strait_trust::workload_token::{Claims, WorkloadToken};
use strait_trust::{
    AllowAny, CredentialStore, IntermediateCa, KeyPair, RootCa, SpiffeId, TrustStore,
    server_config_optional_client_auth,
};
use strait_zone::credentials::CaHandle;
use strait_zone::discovery::{DiscoveryConfig, DiscoveryServer};
use strait_zone::federation::FederationView;
use strait_zone::identity::{IdentityConfig, IdentityService};
use strait_zone::inventory::{InventoryWatch, ServiceKey};
use strait_zone::store::ZoneStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const TD: &str = "strait.local";
pub const ZONE: &str = "a";
/// Long enough for any condition below to be observed inside it on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A federation's PKI: a root and zone `a`'s intermediate, which signs everything here.
pub struct Pki {
    pub root: RootCa,
    pub ca: Arc<IntermediateCa>,
    pub intermediate_pem: String,
    pub intermediate_key: String,
    pub trust: TrustStore,
}

impl Pki {
    pub fn new() -> Self {
        let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = key.intermediate_csr(TD, ZONE).unwrap();
        let cert = root
            .sign_intermediate(&csr, ZONE, DEFAULT_INTERMEDIATE_VALIDITY)
            .unwrap();
        let ca = IntermediateCa::from_pem(&cert.chain_pem, &key.to_pem()).unwrap();
        let trust = TrustStore::new(root.bundle().unwrap());
        Pki {
            root,
            ca: Arc::new(ca),
            intermediate_pem: cert.chain_pem,
            intermediate_key: key.to_pem(),
            trust,
        }
    }

    /// A fresh copy of the intermediate (the zone's `CaHandle` owns its own).
    pub fn intermediate(&self) -> IntermediateCa {
        IntermediateCa::from_pem(&self.intermediate_pem, &self.intermediate_key).unwrap()
    }

    pub fn leaf(&self, id: &SpiffeId) -> CredentialStore {
        let key = KeyPair::generate().unwrap();
        let issued = self
            .ca
            .sign_leaf(&key.leaf_csr(id).unwrap(), id, DEFAULT_LEAF_VALIDITY)
            .unwrap();
        CredentialStore::from_pem(&issued.chain_pem, &key.to_pem()).unwrap()
    }

    pub fn workload(&self, ns: &str, sa: &str) -> CredentialStore {
        self.leaf(&SpiffeId::workload(TD, ns, sa).unwrap())
    }

    pub fn zone_cp(&self) -> CredentialStore {
        self.leaf(&SpiffeId::zone_cp(TD, ZONE).unwrap())
    }

    /// A bootstrap token for `ns/sa` in zone `zone`, valid for an hour.
    pub fn token(&self, ns: &str, sa: &str, zone: &str) -> String {
        let id = SpiffeId::workload(TD, ns, sa).unwrap();
        let claims = Claims::new(id, zone, SystemTime::now(), Duration::from_secs(3600));
        WorkloadToken::issue(&self.root, &claims).unwrap()
    }

    pub fn bundle_pem(&self) -> String {
        self.root.bundle().unwrap().to_pem()
    }
}

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
        Self::start_with(pki, leaf_validity, pki.zone_cp()).await
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
            CaHandle::new(pki.intermediate()),
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

/// A directory with a token file and room for data.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
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

/// Polls `cond` until it holds or [`PATIENCE`] passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let config = match creds {
        Some(creds) => strait_trust::client_config(creds, trust, Arc::new(AllowAny), alpn).unwrap(),
        None => {
            let verifier = Arc::new(strait_trust::tls::SpiffeServerVerifier::new(
                trust.clone(),
                Arc::new(AllowAny),
            ));
            let mut c =
                rustls::ClientConfig::builder_with_provider(strait_trust::tls::crypto_provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
            c.alpn_protocols = alpn;
            c
        }
    };
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

/// The value of a metric (counter, gauge; histogram: sample count) with these labels.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let all = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if !all {
                continue;
            }
            return match family.get_field_type() {
                prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                prometheus::proto::MetricType::HISTOGRAM => {
                    m.get_histogram().get_sample_count() as f64
                }
                _ => f64::NAN,
            };
        }
    }
    panic!("metric {name}{labels:?} missing")
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
