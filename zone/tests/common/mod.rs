//! A fake of global's `ZoneSync` service (the zone's peer, not a component under test): it
//! signs joins from a real root CA and hands each `Sync` stream to the test, which plays
//! global's side message by message.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strait_proto as pb;
use strait_test_support::pki::TD;
use strait_test_support::wait::{PATIENCE, within};
use strait_trust::ca::DEFAULT_ROOT_VALIDITY;
use strait_trust::join_token::JoinToken;
use strait_trust::{CredentialStore, KeyPair, RootCa, SpiffeId, TrustStore};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// One `Sync` stream as global sees it.
#[derive(Debug)]
pub struct Session {
    pub peer: SpiffeId,
    pub hello: pb::SyncHello,
    pub from_zone: mpsc::Receiver<pb::ZoneMessage>,
    pub to_zone: mpsc::Sender<Result<pb::GlobalMessage, Status>>,
}

impl Session {
    /// The next message from the zone.
    pub async fn recv(&mut self) -> pb::zone_message::Msg {
        within("a message from the zone", PATIENCE, self.from_zone.recv())
            .await
            .expect("zone stream ended")
            .msg
            .expect("empty message")
    }

    /// The next message of a kind, skipping others (e.g. inventory reports while waiting for an ack).
    pub async fn recv_matching<T>(
        &mut self,
        mut pick: impl FnMut(pb::zone_message::Msg) -> Option<T>,
    ) -> T {
        loop {
            if let Some(v) = pick(self.recv().await) {
                return v;
            }
        }
    }

    pub async fn send(&self, msg: pb::global_message::Msg) {
        self.to_zone
            .send(Ok(pb::GlobalMessage { msg: Some(msg) }))
            .await
            .expect("zone gone");
    }

    pub async fn send_snapshot(&self, version: u64, nonce: &str) {
        self.send(pb::global_message::Msg::Snapshot(snapshot(version, nonce)))
            .await;
    }
}

pub fn snapshot(version: u64, nonce: &str) -> pb::FederationSnapshot {
    pb::FederationSnapshot {
        version,
        nonce: nonce.into(),
        trust_domain: TD.into(),
        zones: vec![pb::RemoteZone {
            name: "b".into(),
            region: "r2".into(),
            connected: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[derive(Debug)]
struct Shared {
    root: RootCa,
    token: String,
    used: AtomicBool,
    down: AtomicBool,
    intermediate_validity: Mutex<Duration>,
    sessions: mpsc::Sender<Session>,
}

/// Global, faked.
#[derive(Debug, Clone)]
pub struct FakeGlobal {
    shared: Arc<Shared>,
}

/// A running fake global and what the test needs of it.
#[derive(Debug)]
pub struct Global {
    pub addr: SocketAddr,
    pub root: RootCa,
    pub token: JoinToken,
    pub sessions: mpsc::Receiver<Session>,
    fake: FakeGlobal,
}

impl Global {
    pub async fn start() -> Self {
        Self::start_with_root(RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap()).await
    }

    pub async fn start_with_root(root: RootCa) -> Self {
        let token = JoinToken::generate(&root.pin()).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let fake = FakeGlobal {
            shared: Arc::new(Shared {
                root: RootCa::from_pem(TD, &root.cert_pem(), &root.key_pem()).unwrap(),
                token: token.to_string(),
                used: AtomicBool::new(false),
                down: AtomicBool::new(false),
                intermediate_validity: Mutex::new(strait_trust::ca::DEFAULT_INTERMEDIATE_VALIDITY),
                sessions: tx,
            }),
        };
        // Global's own certificate, chain up to the root (the pin convention).
        let key = KeyPair::generate().unwrap();
        let id = SpiffeId::global_node(TD, "1").unwrap();
        let issued = root
            .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, Duration::from_secs(3600))
            .unwrap();
        let creds = CredentialStore::from_pem(&issued.chain_pem, &key.to_pem()).unwrap();
        let trust = TrustStore::new(root.bundle().unwrap());
        let tls = strait_trust::server_config_optional_client_auth(
            &creds,
            &trust,
            Arc::new(strait_trust::AllowAny),
            vec![b"h2".to_vec()],
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = strait_proto::transport::tls_incoming(listener, Arc::new(tls));
        let service = pb::zone_sync_server::ZoneSyncServer::new(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Self {
            addr,
            root,
            token,
            sessions: rx,
            fake,
        }
    }

    pub async fn next_session(&mut self) -> Session {
        within("a sync stream", PATIENCE, self.sessions.recv())
            .await
            .expect("fake global stopped")
    }

    /// While down, every Sync call fails as an unreachable global's would.
    pub fn set_down(&self, down: bool) {
        self.fake.shared.down.store(down, Ordering::SeqCst);
    }

    pub fn set_intermediate_validity(&self, validity: Duration) {
        *self.fake.shared.intermediate_validity.lock().unwrap() = validity;
    }

    pub fn write_token(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("zone.token");
        std::fs::write(&path, format!("{}\n", self.token)).unwrap();
        path
    }

    /// Answers a RenewRequest as global does.
    pub fn renew(
        &self,
        zone: &str,
        request: &pb::RenewRequest,
        ca_validity: Duration,
    ) -> pb::RenewResponse {
        let root = &self.root;
        let mut reply = pb::RenewResponse {
            trust_bundle_pem: root.bundle().unwrap().to_pem(),
            ..Default::default()
        };
        if !request.ca_csr_pem.is_empty() {
            reply.intermediate_cert_pem = root
                .sign_intermediate(&request.ca_csr_pem, zone, ca_validity)
                .unwrap()
                .cert_pem;
        }
        if !request.cp_csr_pem.is_empty() {
            let id = SpiffeId::zone_cp(TD, zone).unwrap();
            reply.cp_cert_chain_pem = root
                .sign_leaf(&request.cp_csr_pem, &id, Duration::from_secs(3600))
                .unwrap()
                .chain_pem;
        }
        reply
    }
}

#[tonic::async_trait]
impl pb::zone_sync_server::ZoneSync for FakeGlobal {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let req = request.into_inner();
        let s = &self.shared;
        if req.token != s.token {
            return Err(Status::permission_denied("join token unknown"));
        }
        if s.used.swap(true, Ordering::SeqCst) {
            return Err(Status::permission_denied("join token already used"));
        }
        let validity = *s.intermediate_validity.lock().unwrap();
        let ca = s
            .root
            .sign_intermediate(&req.ca_csr_pem, &req.zone, validity)
            .map_err(|e| {
                Status::invalid_argument(format!("intermediate CA request refused: {e}"))
            })?;
        let id = SpiffeId::zone_cp(TD, &req.zone)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cp = s
            .root
            .sign_leaf(&req.cp_csr_pem, &id, Duration::from_secs(3600))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::JoinResponse {
            trust_domain: TD.into(),
            // Like global: the intermediate alone, the zone completes the chain.
            intermediate_cert_pem: ca.cert_pem,
            cp_cert_chain_pem: cp.chain_pem,
            trust_bundle_pem: s.root.bundle().unwrap().to_pem(),
            global_addresses: vec![],
            vip_cidr: String::new(),
        }))
    }

    type SyncStream = futures::stream::BoxStream<'static, Result<pb::GlobalMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::ZoneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        if self.shared.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("global is down (test)"));
        }
        let certs = strait_proto::transport::peer_certificates(&request)
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let peer = strait_trust::peer_identity(&certs)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::ZoneMessage {
                msg: Some(pb::zone_message::Msg::Hello(hello)),
            }) => hello,
            other => {
                return Err(Status::invalid_argument(format!(
                    "expected SyncHello first, got {other:?}"
                )));
            }
        };
        let (in_tx, in_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if in_tx.send(m).await.is_err() {
                    return;
                }
            }
        });
        let (out_tx, out_rx) = mpsc::channel(16);
        let _ = self
            .shared
            .sessions
            .send(Session {
                peer,
                hello,
                from_zone: in_rx,
                to_zone: out_tx,
            })
            .await;
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
