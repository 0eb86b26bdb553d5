//! The control-plane half of a sidecar, as `tests/common/sidecar.rs` does it: a workload
//! certificate from the zone's `Identity` service (bootstrap token from
//! `strait token workload`), then `Discovery.Stream` with `Register`, acknowledging every
//! `SidecarConfig`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use strait_proto as pb;
use strait_trust::tls::{AllowExactly, CredentialStore, SpiffeServerVerifier, TrustStore};
use strait_trust::{KeyPair, SpiffeId, TrustBundle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::federation::{Federation, TRUST_DOMAIN};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest message the benchmark's clients decode. Far above tonic's 4 MiB default on purpose:
/// the benchmark measures message sizes rather than failing on them (see the report).
pub const MAX_DECODE: usize = 512 * 1024 * 1024;

/// TLS to zone `zone`'s control plane (which must present `zone/Z/cp`), as `creds` if any.
pub fn zone_tls(
    bundle: &TrustBundle,
    zone: &str,
    creds: Option<&CredentialStore>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let trust = TrustStore::new(bundle.clone());
    let expect = Arc::new(AllowExactly(vec![SpiffeId::zone_cp(TRUST_DOMAIN, zone)?]));
    let config = match creds {
        Some(creds) => {
            strait_trust::tls::client_config(creds, &trust, expect, vec![b"h2".to_vec()])?
        }
        None => {
            let verifier = Arc::new(SpiffeServerVerifier::new(trust, expect));
            let mut config =
                rustls::ClientConfig::builder_with_provider(strait_trust::tls::crypto_provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            config
        }
    };
    Ok(Arc::new(config))
}

/// `strait token workload` for `namespace/service` in `zone`, then `Identity.SignCertificate`.
pub async fn bootstrap(
    fed: &Federation,
    zone: &str,
    namespace: &str,
    service: &str,
) -> anyhow::Result<CredentialStore> {
    let token = fed
        .strait(&[
            "token",
            "workload",
            "--zone",
            zone,
            "--namespace",
            namespace,
            "--service",
            service,
        ])
        .await?;
    let bundle = fed.bundle()?;
    let id = SpiffeId::workload(TRUST_DOMAIN, namespace, service)?;
    let key = KeyPair::generate()?;
    let channel = strait_proto::transport::channel(
        &fed.address(&format!("zone-{zone}"), "api")?,
        zone_tls(&bundle, zone, None)?,
        CONNECT_TIMEOUT,
    );
    let reply = pb::identity_client::IdentityClient::new(channel)
        .sign_certificate(pb::SignCertificateRequest {
            csr_pem: key.leaf_csr(&id)?,
            credential: Some(pb::sign_certificate_request::Credential::BootstrapToken(
                token,
            )),
            requested_spiffe_id: id.to_string(),
        })
        .await
        .with_context(|| format!("zone {zone} signing a certificate for {id}"))?
        .into_inner();
    Ok(CredentialStore::from_pem(
        &reply.cert_chain_pem,
        &key.to_pem(),
    )?)
}

/// One HTTP/2 connection to zone `zone` as the workload `creds` (many streams may share it).
pub fn connection(
    fed: &Federation,
    zone: &str,
    creds: &CredentialStore,
) -> anyhow::Result<Channel> {
    Ok(strait_proto::transport::channel(
        &fed.address(&format!("zone-{zone}"), "api")?,
        zone_tls(&fed.bundle()?, zone, Some(creds))?,
        CONNECT_TIMEOUT,
    ))
}

/// An open discovery stream: where ACKs go, and the configs that come.
#[derive(Debug)]
pub struct Stream {
    pub up: mpsc::Sender<pb::SidecarMessage>,
    pub configs: Streaming<pb::SidecarConfig>,
}

/// Opens `Discovery.Stream` on `channel` and registers `instance` of `namespace/service` in
/// `zone`, reachable at `inbound` (nothing needs to listen there).
pub async fn register(
    channel: Channel,
    zone: &str,
    namespace: &str,
    service: &str,
    instance: &str,
    inbound: &str,
) -> anyhow::Result<Stream> {
    let (up, up_rx) = mpsc::channel(16);
    up.send(pb::SidecarMessage {
        msg: Some(pb::sidecar_message::Msg::Register(pb::Register {
            service: Some(pb::ServiceRef {
                namespace: namespace.to_owned(),
                name: service.to_owned(),
            }),
            instance: instance.to_owned(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: pb::Protocol::Http.into(),
            }],
            labels: Default::default(),
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
    .context("queueing Register")?;
    let configs = pb::discovery_client::DiscoveryClient::new(channel)
        .max_decoding_message_size(MAX_DECODE)
        .stream(ReceiverStream::new(up_rx))
        .await
        .with_context(|| format!("opening the discovery stream of {instance} in zone {zone}"))?
        .into_inner();
    Ok(Stream { up, configs })
}

/// The ACK of `config`.
pub fn ack(config: &pb::SidecarConfig) -> pb::SidecarMessage {
    pb::SidecarMessage {
        msg: Some(pb::sidecar_message::Msg::Ack(pb::ConfigAck {
            version: config.version,
            nonce: config.nonce.clone(),
            accepted: true,
            error: String::new(),
        })),
    }
}

/// `namespace/name` in a config's outbound services.
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

/// Instances of a service the config knows of, in every zone (local endpoints and remote
/// zones' totals).
pub fn instances(service: &pb::OutboundService) -> u32 {
    service
        .localities
        .iter()
        .fold(0_u32, |sum, l| sum.saturating_add(l.total))
}
