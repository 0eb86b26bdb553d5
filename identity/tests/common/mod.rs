//! Harness of the identity client's in-process suite: the zone crate's real workload CA (its
//! `Identity` service over Strait's TLS) on loopback, and a sidecar's identity settings for
//! it. The PKI, token files and metric reading come from `strait_test_support`.

// A harness failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_identity::{IdentitySettings, TokenKind};
use strait_proto as pb;
use strait_test_support::files::Files;
use strait_test_support::pki::{Pki, TD};
use strait_trust::{AllowAny, CredentialStore, SpiffeId, server_config_optional_client_auth};
use strait_zone::credentials::CaHandle;
use strait_zone::identity::{IdentityConfig, IdentityService};
use tokio::net::TcpListener;

/// The zone of every suite here (the PKI is made with its intermediate only).
pub const ZONE: &str = "a";

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
        Self::start_with(pki, leaf_validity, pki.zone_cp(ZONE)).await
    }

    /// Presenting `cp` instead.
    pub async fn start_with(pki: &Pki, leaf_validity: Duration, cp: CredentialStore) -> Zone {
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
