//! A client for the Admin API that knows every global node: it tries them in turn, so one node
//! being down is invisible, and it tells "no node reachable" apart from "no quorum".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_proto::admin_client::AdminClient as GrpcAdminClient;
use strait_trust::bundle::TrustBundle;
use strait_trust::tls::{CredentialStore, TrustStore};
use tonic::transport::Channel;

use crate::context::NO_QUORUM_METADATA;
use crate::credentials::{ALPN_H2, GlobalNodeAuthorizer};

/// How the CLI reaches and authenticates to global: `DIR/config.yaml` of `strait up`, or a file
/// the operator writes. Relative paths are relative to the file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub trust_domain: String,
    /// gRPC addresses of the global nodes (`host:port`), tried in order.
    pub global: Vec<String>,
    pub credentials: CredentialPaths,
}

/// The operator credential's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialPaths {
    /// Certificate chain (PEM), `spiffe://TD/admin/NAME`.
    pub cert: PathBuf,
    /// Private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Trust bundle (PEM).
    pub bundle: PathBuf,
}

/// Why an admin call failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading client config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("loading the admin credential: {0}")]
    Credential(#[from] strait_trust::Error),
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("no global node reachable (tried {0})")]
    Unreachable(String),
    /// The server answered with an error (bad input, not found, refused token...).
    #[error("{}", .0.message())]
    Rejected(tonic::Status),
}

impl ClientConfig {
    /// Reads a config file; relative credential paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let err = |reason: String| ClientError::Config {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config: ClientConfig =
            serde_saphyr::from_str(&text).map_err(|e| err(e.to_string()))?;
        if config.global.is_empty() {
            return Err(err("`global` lists no node address".to_owned()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.credentials.cert,
            &mut config.credentials.key,
            &mut config.credentials.bundle,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    pub fn to_yaml(&self) -> Result<String, String> {
        serde_saphyr::to_string(self).map_err(|e| e.to_string())
    }
}

/// The Admin API across every global node.
#[derive(Debug, Clone)]
pub struct AdminClient {
    nodes: Vec<(String, GrpcAdminClient<Channel>)>,
}

impl AdminClient {
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let chain = strait_trust::store::read_cert(&config.credentials.cert)?;
        let key = strait_trust::store::read_key(&config.credentials.key)?;
        let bundle = strait_trust::store::read_cert(&config.credentials.bundle)?;
        let creds = CredentialStore::from_pem(&chain, &key)?;
        let trust = TrustStore::new(TrustBundle::from_pem(&config.trust_domain, &bundle)?);
        let tls = Arc::new(strait_trust::tls::client_config(
            &creds,
            &trust,
            Arc::new(GlobalNodeAuthorizer),
            vec![ALPN_H2.to_vec()],
        )?);
        let nodes = config
            .global
            .iter()
            .map(|addr| {
                let channel =
                    strait_proto::transport::channel(addr, tls.clone(), Duration::from_secs(2));
                (addr.clone(), GrpcAdminClient::new(channel))
            })
            .collect();
        Ok(Self { nodes })
    }

    /// Runs `call` against each node in turn until one answers. A node that is down, or that
    /// cannot reach a quorum, is skipped (another node may be on the majority side); any other
    /// answer, success or refusal, is final.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(GrpcAdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut no_quorum = None;
        let mut tried = Vec::new();
        for (addr, client) in &self.nodes {
            match call(client.clone()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if status.metadata().contains_key(NO_QUORUM_METADATA) => {
                    tracing::debug!(%addr, message = status.message(), "no quorum at this node");
                    no_quorum = Some(
                        status
                            .message()
                            .trim_start_matches("no quorum: ")
                            .to_owned(),
                    );
                    tried.push(format!("{addr}: no quorum"));
                }
                Err(status) if node_unreachable(&status) => {
                    tried.push(format!("{addr}: {}", status.message()));
                }
                Err(status) => return Err(ClientError::Rejected(status)),
            }
        }
        Err(match no_quorum {
            Some(message) => ClientError::NoQuorum(message),
            None => ClientError::Unreachable(tried.join("; ")),
        })
    }
}

/// Whether `status` means "this node did not answer" rather than "this node said no".
///
/// A connection that breaks mid-call (the node died) surfaces as `Unknown` with the transport
/// error as its source; statuses decoded from a server's reply never carry a source. Retrying
/// such a call on another node can repeat a write that did commit: Admin writes are safe to
/// repeat (applying the same policy is "unchanged"; creating an existing zone says so).
fn node_unreachable(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => true,
        tonic::Code::Unknown => status.source().is_some(),
        _ => false,
    }
}
