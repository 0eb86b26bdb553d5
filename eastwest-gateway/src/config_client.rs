//! The gateway's config from its zone control plane: `Discovery.GatewayStream`, which
//! registers this replica (instance, public and local addresses) for as long as the stream is
//! open and pushes a [`pb::GatewayConfig`] whenever it changes.
//!
//! Static stability: when the zone is unreachable the last config stays in force (the watch
//! is only ever replaced by a newer config), and the stream is re-opened with backoff.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use strait_proto as pb;
use strait_proto::discovery_client::DiscoveryClient;
use strait_proto::transport::MAX_CONTROL_MESSAGE;
use tokio::sync::watch;

use crate::select::reconnect_backoff;

/// How long a connection to the zone control plane may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to get the config.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The zone control plane's gRPC address.
    pub zone_cp: String,
    /// mTLS as this gateway, expecting `zone/ZONE/cp`, ALPN `h2` (see
    /// `strait_identity::Identity::zone_client_config`).
    pub tls: Arc<rustls::ClientConfig>,
    /// This gateway's registration.
    pub register: pb::GatewayRegister,
    /// This gateway's zone: a config naming another zone is refused.
    pub zone: String,
}

/// Keeps `config` up to date from the zone until `shutdown`.
pub async fn run(
    source: ConfigSource,
    config: watch::Sender<Arc<pb::GatewayConfig>>,
    shutdown: impl Future,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures: u32 = 0;
    loop {
        let attempt = stream_once(&source, &config, &mut failures);
        let ended = tokio::select! {
            _ = &mut shutdown => return,
            ended = attempt => ended,
        };
        let pause = reconnect_backoff(failures.min(6)).mul_f64(1.0 + rand::random::<f64>() * 0.25);
        failures = failures.saturating_add(1);
        tracing::warn!(zone_cp = %source.zone_cp, reason = %ended, retry_in = ?pause, version = config.borrow().version, "gateway config stream ended; keeping the last config");
        tokio::select! {
            _ = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One stream: returns why it ended. Resets `failures` once a config arrived.
async fn stream_once(
    source: &ConfigSource,
    config: &watch::Sender<Arc<pb::GatewayConfig>>,
    failures: &mut u32,
) -> String {
    let channel =
        strait_proto::transport::channel(&source.zone_cp, source.tls.clone(), CONNECT_TIMEOUT);
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(MAX_CONTROL_MESSAGE);
    let mut stream = match client.gateway_stream(source.register.clone()).await {
        Ok(response) => response.into_inner(),
        Err(status) => return format!("{:?}: {}", status.code(), status.message()),
    };
    loop {
        match stream.message().await {
            Ok(Some(next)) => {
                if !next.zone.is_empty() && next.zone != source.zone {
                    // Keep the stream: the next push may be right; never apply this one.
                    tracing::error!(got = %next.zone, want = %source.zone, "the zone control plane sent a config for another zone; ignored");
                    continue;
                }
                *failures = 0;
                tracing::debug!(version = next.version, "gateway config received");
                config.send_replace(Arc::new(next));
            }
            Ok(None) => return "the zone closed the stream".to_owned(),
            Err(status) => return format!("{:?}: {}", status.code(), status.message()),
        }
    }
}
