//! A minimal sidecar client for the zone suites: bootstraps a workload certificate from the
//! zone's Identity service with a token, then follows the Discovery stream. (The real sidecar
//! does the same and then proxies traffic; these tests only need the control-plane half.)

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strait_proto as pb;
use strait_trust::bundle::TrustBundle;
use strait_trust::keys::KeyPair;
use strait_trust::spiffe::SpiffeId;
use strait_trust::tls::{AllowExactly, CredentialStore, TrustStore};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use strait_test_support::federation::Federation;

/// TLS to a zone control plane as `zone/Z/cp`, presenting `creds` if any.
pub fn zone_tls(
    bundle: &TrustBundle,
    zone: &str,
    creds: Option<&CredentialStore>,
) -> Arc<rustls::ClientConfig> {
    let trust = TrustStore::new(bundle.clone());
    let expect = Arc::new(AllowExactly(vec![
        SpiffeId::zone_cp(bundle.trust_domain(), zone).unwrap(),
    ]));
    let config =
        strait_test_support::tls::client_config(creds, &trust, expect, vec![b"h2".to_vec()]);
    Arc::new(config)
}

pub fn bundle(fed: &Federation) -> TrustBundle {
    TrustBundle::from_pem(
        "strait.local",
        &strait_test_support::federation::read(&fed.dir.path().join("admin/bundle.pem")),
    )
    .unwrap()
}

/// A workload's certificate, as a sidecar holds it.
pub struct Workload {
    pub id: SpiffeId,
    pub creds: CredentialStore,
    pub key_pem: String,
    pub chain_pem: String,
}

/// `strait token workload ...` then `Identity.SignCertificate` on zone `zone`.
pub async fn bootstrap(
    fed: &Federation,
    zone: &str,
    namespace: &str,
    service: &str,
) -> Result<Workload, tonic::Status> {
    let out = fed.strait(&[
        "token",
        "workload",
        "--zone",
        zone,
        "--namespace",
        namespace,
        "--service",
        service,
    ]);
    assert!(
        out.status.success(),
        "token workload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    sign(fed, zone, namespace, service, Some(token), None).await
}

/// Asks zone `zone` for a certificate: with a bootstrap token, or (renewal) over mTLS with the
/// current one.
pub async fn sign(
    fed: &Federation,
    zone: &str,
    namespace: &str,
    service: &str,
    token: Option<String>,
    current: Option<&CredentialStore>,
) -> Result<Workload, tonic::Status> {
    let bundle = bundle(fed);
    let id = SpiffeId::workload("strait.local", namespace, service).unwrap();
    let key = KeyPair::generate().unwrap();
    let channel = strait_proto::transport::channel(
        &fed.address(&format!("zone-{zone}"), "api"),
        zone_tls(&bundle, zone, current),
        Duration::from_secs(3),
    );
    let reply = pb::identity_client::IdentityClient::new(channel)
        .sign_certificate(pb::SignCertificateRequest {
            csr_pem: key.leaf_csr(&id).unwrap(),
            credential: token.map(pb::sign_certificate_request::Credential::BootstrapToken),
            requested_spiffe_id: id.to_string(),
        })
        .await?
        .into_inner();
    let creds = CredentialStore::from_pem(&reply.cert_chain_pem, &key.to_pem()).unwrap();
    Ok(Workload {
        id,
        creds,
        key_pem: key.to_pem(),
        chain_pem: reply.cert_chain_pem,
    })
}

/// A discovery stream: the configs the zone pushes, in order.
pub struct Discovery {
    pub configs: mpsc::Receiver<pb::SidecarConfig>,
    up: mpsc::Sender<pb::SidecarMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl Discovery {
    /// Registers `instance` of `namespace/service` (inbound at `inbound`) and follows the
    /// stream, acknowledging every config.
    pub async fn connect(
        fed: &Federation,
        zone: &str,
        workload: &Workload,
        service: &str,
        instance: &str,
        inbound: &str,
        labels: &[(&str, &str)],
    ) -> Self {
        let bundle = bundle(fed);
        let channel = strait_proto::transport::channel(
            &fed.address(&format!("zone-{zone}"), "api"),
            zone_tls(&bundle, zone, Some(&workload.creds)),
            Duration::from_secs(3),
        );
        let (up, up_rx) = mpsc::channel(16);
        let namespace = match workload.id.kind() {
            strait_trust::spiffe::IdentityKind::Workload { namespace, .. } => namespace.to_owned(),
            _ => panic!("not a workload identity"),
        };
        up.send(pb::SidecarMessage {
            msg: Some(pb::sidecar_message::Msg::Register(pb::Register {
                service: Some(pb::ServiceRef {
                    namespace,
                    name: service.to_owned(),
                }),
                instance: instance.to_owned(),
                ports: vec![pb::Port {
                    name: "http".into(),
                    port: 8080,
                    protocol: pb::Protocol::Http.into(),
                }],
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<HashMap<_, _>>(),
                locality: Some(pb::Locality {
                    region: String::new(),
                    zone: zone.to_owned(),
                    subzone: String::new(),
                }),
                inbound_address: inbound.to_owned(),
                outbound_vips: false,
                known_version: 0,
            })),
        })
        .await
        .unwrap();
        let mut inbound_stream = pb::discovery_client::DiscoveryClient::new(channel)
            .stream(ReceiverStream::new(up_rx))
            .await
            .expect("discovery stream")
            .into_inner();
        let (tx, configs) = mpsc::channel(64);
        let acks = up.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(config)) = inbound_stream.next().await {
                let ack = pb::SidecarMessage {
                    msg: Some(pb::sidecar_message::Msg::Ack(pb::ConfigAck {
                        version: config.version,
                        nonce: config.nonce.clone(),
                        accepted: true,
                        error: String::new(),
                    })),
                };
                let _ = acks.send(ack).await;
                if tx.send(config).await.is_err() {
                    break;
                }
            }
        });
        Self { configs, up, task }
    }

    /// Waits for a config that satisfies `check`, up to `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&pb::SidecarConfig) -> bool,
    ) -> pb::SidecarConfig {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.configs.recv()).await {
                Ok(Some(config)) if check(&config) => return config,
                Ok(Some(_)) => {}
                Ok(None) => panic!("discovery stream ended while waiting for {what}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    /// Ends the stream (the sidecar goes away).
    pub fn close(self) {
        self.task.abort();
        drop(self.up);
    }
}

/// The endpoints of `service` in `zone`'s locality group of a config, and the zones present.
pub fn service<'a>(
    config: &'a pb::SidecarConfig,
    namespace: &str,
    name: &str,
) -> Option<&'a pb::OutboundService> {
    config.services.iter().find(|s| {
        s.service
            .as_ref()
            .is_some_and(|r| r.namespace == namespace && r.name == name)
    })
}

/// The zones that serve `service` in a config (with a healthy weight or local endpoints).
pub fn zones_serving(config: &pb::SidecarConfig, namespace: &str, name: &str) -> Vec<String> {
    service(config, namespace, name)
        .map(|s| {
            s.localities
                .iter()
                .filter(|l| l.weight > 0 || !l.endpoints.is_empty())
                .map(|l| l.zone.clone())
                .collect()
        })
        .unwrap_or_default()
}
