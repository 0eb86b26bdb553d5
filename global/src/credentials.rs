//! A global node's own credentials on disk, and how it gets them the first time: by creating
//! the federation (first node) or by joining it with a node join token.
//!
//! Layout under the data directory (keys mode 0600, the directory 0700):
//!
//! ```text
//! node.json        which node this is and of which federation
//! tls/node.key     the node's private key (never leaves the node)
//! tls/node.crt     its certificate chain: leaf (spiffe://TD/global/N), root
//! tls/bundle.pem   the trust bundle
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strait_trust::bundle::TrustBundle;
use strait_trust::ca::RootCa;
use strait_trust::join_token::JoinToken;
use strait_trust::keys::KeyPair;
use strait_trust::spiffe::SpiffeId;
use strait_trust::tls::{AllowExactly, Authorize, CredentialStore, TrustStore};

use crate::config::GlobalConfig;
use crate::types::NodeId;

/// Lifetime of a global node's own certificate; renewed at 2/3 of it from the root in the
/// replicated state.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of the operator credential written at first start. An operator credential that
/// expires daily would lock people out; a year, like kubeadm's admin.conf.
pub const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Name in the operator credential's SPIFFE ID (`spiffe://TD/admin/admin`).
pub const ADMIN_NAME: &str = "admin";
/// ALPN of the gRPC port.
pub const ALPN_H2: &[u8] = b"h2";

/// What went wrong getting or loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Trust(#[from] strait_trust::Error),
    #[error(
        "data directory {dir} belongs to node {found}, but this node was started as node {configured}"
    )]
    WrongNode {
        dir: PathBuf,
        found: NodeId,
        configured: NodeId,
    },
    #[error("reading the join token from {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    /// A file the node was given cannot be used (found before anything was started).
    #[error(transparent)]
    Input(#[from] strait_trust::preflight::PreflightError),
    #[error("joining the federation failed: {0}")]
    Join(String),
}

/// `node.json`: which node and federation a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub node_id: NodeId,
    pub trust_domain: String,
    /// True for the node that created the federation (it initializes Raft on first start).
    pub founder: bool,
}

/// A node's live credentials: rotated in place, read at every handshake.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    pub record: NodeRecord,
    pub creds: CredentialStore,
    pub trust: TrustStore,
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn paths(data_dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let tls = data_dir.join("tls");
    (
        data_dir.join("node.json"),
        tls.join("node.key"),
        tls.join("node.crt"),
        tls.join("bundle.pem"),
    )
}

/// Creates `dir` (and parents) with mode 0700: it holds keys and the replicated root key.
pub fn create_private_dir(dir: &Path) -> Result<(), CredentialsError> {
    strait_trust::store::create_private_dir(dir).map_err(io_err(dir))
}

fn read_join_token(path: &Path) -> Result<JoinToken, CredentialsError> {
    std::fs::read_to_string(path)
        .map_err(|e| CredentialsError::Token {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .parse()
        .map_err(
            |e: strait_trust::join_token::JoinTokenError| CredentialsError::Token {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        )
}

/// Checks the files a node was given before it binds a port or writes its data directory
/// (reads only), so a bad one is reported at once: a join token in `token_file` must parse
/// (and must be there when a first start joins), and a first node's own root CA
/// (`root_cert`, `root_key`) must load. A node that started before uses neither file.
pub fn check_inputs(config: &GlobalConfig) -> Result<(), CredentialsError> {
    let started_before = paths(&config.data_dir).0.exists();
    let joins = !started_before && !config.join.is_empty();
    if let Some(path) = &config.token_file
        && (joins || path.exists())
    {
        read_join_token(path)?;
    }
    if !started_before
        && config.join.is_empty()
        && let (Some(cert), Some(key)) = (&config.root_cert, &config.root_key)
    {
        strait_trust::preflight::root_ca_files(cert, key, &config.trust_domain)?;
    }
    Ok(())
}

impl NodeCredentials {
    /// Loads the credentials of a node that started before; `None` on a first start.
    pub fn load(config: &GlobalConfig) -> Result<Option<Self>, CredentialsError> {
        let (record_path, key_path, cert_path, bundle_path) = paths(&config.data_dir);
        let text = match std::fs::read_to_string(&record_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&record_path)(e)),
        };
        let record: NodeRecord =
            serde_json::from_str(&text).map_err(|e| CredentialsError::Corrupt {
                path: record_path.clone(),
                reason: e.to_string(),
            })?;
        if record.node_id != config.node_id {
            return Err(CredentialsError::WrongNode {
                dir: config.data_dir.clone(),
                found: record.node_id,
                configured: config.node_id,
            });
        }
        let key = strait_trust::store::read_key(&key_path)?;
        let chain = strait_trust::store::read_cert(&cert_path)?;
        let bundle = strait_trust::store::read_cert(&bundle_path)?;
        let creds = CredentialStore::from_pem(&chain, &key)?;
        let trust = TrustStore::new(TrustBundle::from_pem(&record.trust_domain, &bundle)?);
        Ok(Some(Self {
            record,
            creds,
            trust,
            dir: config.data_dir.clone(),
        }))
    }

    fn save(
        dir: &Path,
        record: NodeRecord,
        key_pem: &str,
        chain_pem: &str,
        bundle_pem: &str,
    ) -> Result<Self, CredentialsError> {
        let (record_path, key_path, cert_path, bundle_path) = paths(dir);
        create_private_dir(dir)?;
        create_private_dir(&dir.join("tls"))?;
        strait_trust::store::write_key(&key_path, key_pem)?;
        strait_trust::store::write_cert(&cert_path, chain_pem)?;
        strait_trust::store::write_cert(&bundle_path, bundle_pem)?;
        // Written last: its presence means the credentials above are complete.
        let json = serde_json::to_vec_pretty(&record).map_err(|e| CredentialsError::Corrupt {
            path: record_path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&record_path, &json)?;
        let creds = CredentialStore::from_pem(chain_pem, key_pem)?;
        let trust = TrustStore::new(TrustBundle::from_pem(&record.trust_domain, bundle_pem)?);
        Ok(Self {
            record,
            creds,
            trust,
            dir: dir.to_owned(),
        })
    }

    /// First node, first start: creates (or imports) the root CA, this node's certificate and
    /// the operator credential. Returns the credentials and the root, which the caller puts in
    /// the replicated state.
    pub fn found_federation(config: &GlobalConfig) -> Result<(Self, RootCa), CredentialsError> {
        let root = match (&config.root_cert, &config.root_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = std::fs::read_to_string(cert).map_err(io_err(cert))?;
                let key_pem = strait_trust::store::read_key(key)?;
                RootCa::from_pem(&config.trust_domain, &cert_pem, &key_pem)?
            }
            _ => RootCa::generate(
                &config.trust_domain,
                strait_trust::ca::DEFAULT_ROOT_VALIDITY,
            )?,
        };
        let key = KeyPair::generate()?;
        let id = SpiffeId::global_node(&config.trust_domain, &config.node_id.to_string())?;
        let issued = root.sign_leaf(&key.leaf_csr(&id)?, &id, NODE_CERT_VALIDITY)?;
        let bundle_pem = root.bundle()?.to_pem();
        write_admin_credential(&root, &config.admin_credentials_dir())?;
        let record = NodeRecord {
            node_id: config.node_id,
            trust_domain: config.trust_domain.clone(),
            founder: true,
        };
        let creds = Self::save(
            &config.data_dir,
            record,
            &key.to_pem(),
            &issued.chain_pem,
            &bundle_pem,
        )?;
        Ok((creds, root))
    }

    /// First start of a further node: joins through any of `config.join` with the token.
    pub async fn join(config: &GlobalConfig) -> Result<Self, CredentialsError> {
        let token = read_join_token(&config.token_file.clone().unwrap_or_default())?;
        let key = KeyPair::generate()?;
        let id = SpiffeId::global_node(&config.trust_domain, &config.node_id.to_string())?;
        let request = strait_proto::NodeJoinRequest {
            node_id: config.node_id,
            token: token.to_string(),
            csr_pem: key.leaf_csr(&id)?,
            address: config.advertised_api(),
            admin_address: config.advertised_admin(),
        };
        // Any global node will do: the token pins the root, so whichever answers is checked.
        let expect: Arc<dyn Authorize> = Arc::new(GlobalNodeAuthorizer);
        let tls = Arc::new(strait_trust::tls::pinned_client_config(
            &config.trust_domain,
            token.root_pin(),
            expect,
            vec![ALPN_H2.to_vec()],
        )?);
        let mut errors = Vec::new();
        for addr in &config.join {
            let channel =
                strait_proto::transport::channel(addr, tls.clone(), Duration::from_secs(3));
            let mut client = strait_proto::node_join_client::NodeJoinClient::new(channel);
            match client.join(request.clone()).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let record = NodeRecord {
                        node_id: config.node_id,
                        trust_domain: reply.trust_domain,
                        founder: false,
                    };
                    return Self::save(
                        &config.data_dir,
                        record,
                        &key.to_pem(),
                        &reply.cert_chain_pem,
                        &reply.trust_bundle_pem,
                    );
                }
                // A refused token is final: trying the next node would only repeat the refusal.
                Err(status) if status.code() == tonic::Code::PermissionDenied => {
                    return Err(CredentialsError::Join(status.message().to_owned()));
                }
                Err(status) => errors.push(format!("{addr}: {}", status.message())),
            }
        }
        Err(CredentialsError::Join(format!(
            "no global node answered: {}",
            errors.join("; ")
        )))
    }

    /// Replaces the node's certificate (renewal) on disk and in the live store.
    pub fn renew(&self, key_pem: &str, chain_pem: &str) -> Result<(), CredentialsError> {
        let (_, key_path, cert_path, _) = paths(&self.dir);
        strait_trust::store::write_key(&key_path, key_pem)?;
        strait_trust::store::write_cert(&cert_path, chain_pem)?;
        self.creds.replace_pem(chain_pem, key_pem)?;
        Ok(())
    }

    /// This node's SPIFFE ID.
    pub fn identity(&self) -> SpiffeId {
        self.creds.identity()
    }
}

/// Accepts any global node of the trust domain (used when joining, before node ids are known).
#[derive(Debug)]
pub struct GlobalNodeAuthorizer;

impl Authorize for GlobalNodeAuthorizer {
    fn authorize(&self, peer: &strait_trust::tls::PeerIdentity) -> Result<(), String> {
        match peer.id.kind() {
            strait_trust::spiffe::IdentityKind::GlobalNode { .. } => Ok(()),
            _ => Err(format!("{} is not a global node", peer.id)),
        }
    }
}

/// Exactly global node `id`.
pub fn expect_node(trust_domain: &str, id: NodeId) -> Result<Arc<dyn Authorize>, CredentialsError> {
    Ok(Arc::new(AllowExactly(vec![SpiffeId::global_node(
        trust_domain,
        &id.to_string(),
    )?])))
}

/// The operator credential: `admin.crt` (chain), `admin.key` (0600), `bundle.pem`.
pub fn write_admin_credential(root: &RootCa, dir: &Path) -> Result<(), CredentialsError> {
    create_private_dir(dir)?;
    let key = KeyPair::generate()?;
    let id = SpiffeId::admin(root.trust_domain(), ADMIN_NAME)?;
    let issued = root.sign_leaf(&key.leaf_csr(&id)?, &id, ADMIN_CERT_VALIDITY)?;
    strait_trust::store::write_key(&dir.join("admin.key"), &key.to_pem())?;
    strait_trust::store::write_cert(&dir.join("admin.crt"), &issued.chain_pem)?;
    strait_trust::store::write_cert(&dir.join("bundle.pem"), &root.bundle()?.to_pem())?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CredentialsError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The join token a node must wait for before it starts (a StatefulSet pod whose key in an
/// optional Secret volume is not there yet: it appears within a minute of being added): a first
/// start that joins, with a token file that does not exist yet. A node that has its
/// credentials already needs no token.
pub fn awaited_join_token(config: &GlobalConfig) -> Option<&Path> {
    let path = config.token_file.as_deref()?;
    let started_before = paths(&config.data_dir).0.exists();
    (!config.join.is_empty() && !started_before && !path.exists()).then_some(path)
}

/// Waits for [`awaited_join_token`] to appear instead of crash-looping, saying so every 30 s.
pub async fn wait_for_join_token(config: &GlobalConfig) {
    let Some(path) = awaited_join_token(config) else {
        return;
    };
    let mut last_log: Option<std::time::Instant> = None;
    while !path.exists() {
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            tracing::warn!(
                token_file = %path.display(),
                "waiting for this node's join token: create it with `strait token node --node-id {}` and add it to the Secret",
                config.node_id
            );
            last_log = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod check_inputs_tests {
    use std::net::SocketAddr;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn config(data_dir: &Path) -> GlobalConfig {
        GlobalConfig::new(
            2,
            data_dir.to_owned(),
            SocketAddr::from(([127, 0, 0, 1], 7400)),
            SocketAddr::from(([127, 0, 0, 1], 7401)),
        )
    }

    #[test]
    fn tokens_and_roots_are_checked_before_anything_else() -> TestResult {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("global-2");
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "garbage\n")?;

        let mut joining = config(&data);
        joining.join = vec!["127.0.0.1:7400".to_owned()];
        joining.token_file = Some(garbage.clone());
        let err = check_inputs(&joining)
            .err()
            .ok_or("a garbage token passed")?;
        assert!(matches!(err, CredentialsError::Token { .. }), "{err}");
        assert!(err.to_string().contains("garbage"), "{err}");
        joining.token_file = Some(dir.path().join("missing"));
        assert!(check_inputs(&joining).is_err(), "a missing token passed");
        let root = RootCa::generate("strait.local", Duration::from_secs(3600))?;
        let good = dir.path().join("good");
        std::fs::write(&good, JoinToken::generate(&root.pin())?.to_string())?;
        joining.token_file = Some(good);
        check_inputs(&joining)?;

        let mut founding = config(&data);
        founding.root_cert = Some(garbage.clone());
        founding.root_key = Some(garbage.clone());
        let err = check_inputs(&founding)
            .err()
            .ok_or("a garbage root passed")?;
        assert!(matches!(err, CredentialsError::Input(_)), "{err}");
        assert!(!data.exists(), "the check wrote the data directory");

        // A node that started before uses neither file; a garbage token is still refused.
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join("node.json"), "{}")?;
        check_inputs(&founding)?;
        joining.token_file = Some(dir.path().join("missing"));
        check_inputs(&joining)?;
        joining.token_file = Some(garbage);
        assert!(check_inputs(&joining).is_err());
        Ok(())
    }

    #[test]
    fn only_a_first_start_that_joins_waits_for_its_token() -> TestResult {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("global-2");
        let token = dir.path().join("token");
        let mut node = config(&data);
        node.token_file = Some(token.clone());
        // Founding (no --join): nothing to wait for.
        assert_eq!(awaited_join_token(&node), None);
        node.join = vec!["127.0.0.1:7400".to_owned()];
        assert_eq!(awaited_join_token(&node), Some(token.as_path()));
        // The token arrived.
        std::fs::write(&token, "t")?;
        assert_eq!(awaited_join_token(&node), None);
        // Started before: no token needed, even without one.
        std::fs::remove_file(&token)?;
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join("node.json"), "{}")?;
        assert_eq!(awaited_join_token(&node), None);
        node.token_file = None;
        assert_eq!(awaited_join_token(&node), None);
        Ok(())
    }
}
