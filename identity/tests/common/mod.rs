//! Harness of the identity client's in-process suite: a federation PKI, the zone crate's real
//! workload CA (its `Identity` service over Strait's TLS) on loopback, files for tokens and
//! data, and metric reading.

// A harness failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use strait_identity::{IdentitySettings, TokenKind};
use strait_proto as pb;
use strait_trust::ca::{DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_ROOT_VALIDITY};
use strait_trust::workload_token::{Claims, WorkloadToken};
use strait_trust::{
    AllowAny, CredentialStore, IntermediateCa, KeyPair, RootCa, SpiffeId, TrustStore,
    server_config_optional_client_auth,
};
use strait_zone::credentials::CaHandle;
use strait_zone::identity::{IdentityConfig, IdentityService};
use tokio::net::TcpListener;

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
            .sign_leaf(
                &key.leaf_csr(id).unwrap(),
                id,
                strait_trust::ca::DEFAULT_LEAF_VALIDITY,
            )
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

/// A zone control plane's workload CA on loopback: the zone crate's Identity service behind
/// its TLS (client certificates optional, as the real zone serves it).
pub struct Zone {
    pub addr: SocketAddr,
    pub identity: IdentityService,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Zone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Zone {
    /// Signing workload certificates valid for `leaf_validity`, presenting a proper
    /// `zone/a/cp` certificate.
    pub async fn start(pki: &Pki, leaf_validity: Duration) -> Zone {
        Self::start_with(pki, leaf_validity, pki.zone_cp()).await
    }

    /// Presenting `cp` instead.
    pub async fn start_with(pki: &Pki, leaf_validity: Duration, cp: CredentialStore) -> Zone {
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
        let tls = server_config_optional_client_auth(
            &cp,
            &pki.trust,
            Arc::new(AllowAny),
            vec![b"h2".to_vec()],
        )
        .unwrap();
        let incoming = strait_proto::transport::tls_incoming(listener, Arc::new(tls));
        let router = tonic::transport::Server::builder()
            .add_service(pb::identity_server::IdentityServer::new(identity.clone()));
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Zone {
            addr,
            identity,
            task,
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

/// The identity settings of a sidecar for `demo/service` in zone `a` (metrics prefixed
/// `strait_sidecar`, as the sidecar registers them), with a token file written for it.
pub fn settings(zone: &Zone, pki: &Pki, files: &Files, service: &str) -> IdentitySettings {
    let token_file = files.write(
        &format!("{service}.token"),
        &pki.token("demo", service, ZONE),
    );
    IdentitySettings {
        zone_cp: zone.addr(),
        zone: ZONE.into(),
        trust_domain: TD.into(),
        token_file,
        token_kind: TokenKind::Bootstrap,
        data_dir: None,
        bundle_file: None,
        id: SpiffeId::workload(TD, "demo", service).unwrap(),
        metrics_prefix: "strait_sidecar",
    }
}

/// The value of a metric (counter, gauge) with these labels.
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
                _ => f64::NAN,
            };
        }
    }
    panic!("metric {name}{labels:?} missing")
}
