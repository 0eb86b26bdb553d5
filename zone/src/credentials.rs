//! The zone's credentials, and how it gets them the first time: by joining the federation with
//! a join token. Later starts load them from the data directory and need no token.
//!
//! - the zone's intermediate CA (`spiffe://TD/zone/Z/ca`, signed by the root): signs the
//!   zone's workload and gateway certificates; held in a swappable [`CaHandle`];
//! - the control plane's own leaf (`spiffe://TD/zone/Z/cp`): its identity towards global
//!   (sync stream) and towards sidecars (the gRPC server);
//! - the federation's trust bundle.
//!
//! Layout under the data directory (keys mode 0600, directories 0700):
//!
//! ```text
//! zone.json        which zone this is and of which federation (written last at join)
//! tls/ca.key       the intermediate CA's key (never leaves the zone)
//! tls/ca.crt       its chain: intermediate, root
//! tls/cp.key       the control plane's key
//! tls/cp.crt       its chain: leaf, issuer(s), root
//! tls/bundle.pem   the trust bundle
//! ```
//!
//! Renewal replaces a key and its certificate as a pair. The new certificate is first written
//! next to the old one (`*.crt.next`), then the key, then the certificate renamed into place,
//! so a crash in between leaves a pair [`ZoneCredentials::load`] can still match up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use strait_proto as pb;
use strait_trust::IntermediateCa;
use strait_trust::bundle::TrustBundle;
use strait_trust::join_token::JoinToken;
use strait_trust::keys::KeyPair;
use strait_trust::spiffe::{IdentityKind, SpiffeId};
use strait_trust::tls::{Authorize, CredentialStore, PeerIdentity, TrustStore};

use crate::config::ZoneConfig;

/// ALPN of Strait's gRPC ports.
pub const ALPN_H2: &[u8] = b"h2";
/// How long one join attempt may wait for a connection to a global node.
const JOIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one Join call may take.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Pauses between rounds over the global addresses when none answered: global may be starting
/// (it answers "not initialized yet" for a moment), but a zone that cannot reach it at all
/// should say so within seconds, not hang.
const JOIN_RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

// === CaHandle ===

/// The zone's intermediate CA, swappable at runtime: renewal [`replace`](Self::replace)s it
/// and every signer picks up the new one on its next [`current`](Self::current) call, so
/// nothing restarts and in-flight signings finish with the CA they started with.
#[derive(Clone, Debug)]
pub struct CaHandle {
    inner: Arc<RwLock<Arc<IntermediateCa>>>,
}

impl CaHandle {
    pub fn new(ca: IntermediateCa) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(ca))),
        }
    }

    /// The CA to sign with now.
    pub fn current(&self) -> Arc<IntermediateCa> {
        // A poisoned lock only means a writer panicked mid-`replace`; the slot still holds a
        // whole `Arc` (old or new), so reading it is sound.
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs a renewed CA.
    pub fn replace(&self, ca: IntermediateCa) {
        let new = Arc::new(ca);
        match self.inner.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

// === errors ===

/// What went wrong getting or loading the zone's credentials. Each first-start failure has
/// its own variant so the message says which case it is.
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
        "data directory {dir} belongs to zone {found:?}, but this zone control plane was started as {configured:?}"
    )]
    WrongZone {
        dir: PathBuf,
        found: String,
        configured: String,
    },
    #[error(
        "zone {zone:?} has no credentials in {dir} yet: pass the join token from `strait zone create {zone}` with --token-file on its first start"
    )]
    NoToken { zone: String, dir: PathBuf },
    #[error("reading the join token from {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("global refused the join token: {0}")]
    JoinRefused(String),
    #[error("global refused the join request: {0}")]
    JoinInvalid(String),
    #[error(
        "global's certificate does not match the root pin in the token: wrong federation? ({addr}: {detail})"
    )]
    PinMismatch { addr: String, detail: String },
    #[error("no global node reachable to join: {0}")]
    Unreachable(String),
    #[error("global's join response is unusable: {0}")]
    BadResponse(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_owned(),
        source,
    }
}

// === the record ===

/// `zone.json`: which zone and federation a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneRecord {
    pub name: String,
    pub trust_domain: String,
    /// Every global node's address as global listed them at join, tried after the configured
    /// ones so the zone can fail over to nodes it was not told about.
    #[serde(default)]
    pub global_addresses: Vec<String>,
}

struct Paths {
    record: PathBuf,
    tls: PathBuf,
    ca_key: PathBuf,
    ca_crt: PathBuf,
    cp_key: PathBuf,
    cp_crt: PathBuf,
    bundle: PathBuf,
}

fn paths(data_dir: &Path) -> Paths {
    let tls = data_dir.join("tls");
    Paths {
        record: data_dir.join("zone.json"),
        ca_key: tls.join("ca.key"),
        ca_crt: tls.join("ca.crt"),
        cp_key: tls.join("cp.key"),
        cp_crt: tls.join("cp.crt"),
        bundle: tls.join("bundle.pem"),
        tls,
    }
}

/// Creates `dir` (and parents) with mode 0700: it holds the zone CA's key.
pub fn create_private_dir(dir: &Path) -> Result<(), CredentialsError> {
    strait_trust::store::create_private_dir(dir).map_err(io_err(dir))
}

// === ZoneCredentials ===

/// The zone's live credentials: every handle is shared and replaced in place on renewal.
#[derive(Debug, Clone)]
pub struct ZoneCredentials {
    pub record: ZoneRecord,
    /// The control plane's leaf, `spiffe://TD/zone/Z/cp`.
    pub creds: CredentialStore,
    pub trust: TrustStore,
    pub ca: CaHandle,
    dir: PathBuf,
}

/// Fresh keys and their CSRs, generated for a join or a renewal; the keys stay here.
#[derive(Debug)]
pub struct PendingKeys {
    pub ca: Option<KeyPair>,
    pub cp: Option<KeyPair>,
}

impl ZoneCredentials {
    /// The credentials of a zone that started before (`None` on a first start), or an error if
    /// the data directory belongs to another zone.
    pub fn load(data_dir: &Path, zone: &str) -> Result<Option<Self>, CredentialsError> {
        let p = paths(data_dir);
        let text = match std::fs::read_to_string(&p.record) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&p.record)(e)),
        };
        let record: ZoneRecord =
            serde_json::from_str(&text).map_err(|e| CredentialsError::Corrupt {
                path: p.record.clone(),
                reason: e.to_string(),
            })?;
        if record.name != zone {
            return Err(CredentialsError::WrongZone {
                dir: data_dir.to_owned(),
                found: record.name,
                configured: zone.to_owned(),
            });
        }
        let (ca_chain, ca_key) = load_pair(&p.ca_crt, &p.ca_key)?;
        let ca = IntermediateCa::from_pem(&ca_chain, &ca_key)?;
        let (cp_chain, cp_key) = load_pair(&p.cp_crt, &p.cp_key)?;
        let creds = CredentialStore::from_pem(&cp_chain, &cp_key)?;
        let bundle = strait_trust::store::read_cert(&p.bundle)?;
        let trust = TrustStore::new(TrustBundle::from_pem(&record.trust_domain, &bundle)?);
        Ok(Some(Self {
            record,
            creds,
            trust,
            ca: CaHandle::new(ca),
            dir: data_dir.to_owned(),
        }))
    }

    /// First start: joins the federation through the first of `config.global` (then the
    /// next...) that answers, with the token in `config.token_file`, and persists the result.
    pub async fn join(config: &ZoneConfig) -> Result<Self, CredentialsError> {
        let Some(token_path) = config.token_file.clone() else {
            return Err(CredentialsError::NoToken {
                zone: config.name.clone(),
                dir: config.data_dir.clone(),
            });
        };
        let token = read_token(&token_path)?;
        let ca_key = KeyPair::generate()?;
        let cp_key = KeyPair::generate()?;
        let cp_id = SpiffeId::zone_cp(&config.trust_domain, &config.name)?;
        let request = pb::JoinRequest {
            zone: config.name.clone(),
            token: token.to_string(),
            ca_csr_pem: ca_key.intermediate_csr(&config.trust_domain, &config.name)?,
            cp_csr_pem: cp_key.leaf_csr(&cp_id)?,
            region: config.region.clone(),
        };
        // Whichever node answers is checked against the pin, so any of them will do.
        let tls = Arc::new(strait_trust::tls::pinned_client_config(
            &config.trust_domain,
            token.root_pin(),
            Arc::new(GlobalNodeAuthorizer),
            vec![ALPN_H2.to_vec()],
        )?);
        let mut pauses = JOIN_RETRY_PAUSES.iter();
        loop {
            let mut errors = Vec::new();
            let mut pin_mismatch = None;
            for addr in &config.global {
                let channel =
                    strait_proto::transport::channel(addr, tls.clone(), JOIN_CONNECT_TIMEOUT);
                let mut client = pb::zone_sync_client::ZoneSyncClient::new(channel);
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(JOIN_CALL_TIMEOUT);
                match client.join(call).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        tracing::info!(zone = %config.name, global = %addr, "joined the federation");
                        return Self::from_join(config, &ca_key, &cp_key, reply);
                    }
                    // A refused token or request is final: the next node would repeat it (the
                    // token state is replicated), and a used token cannot be used again.
                    Err(status) if status.code() == tonic::Code::PermissionDenied => {
                        return Err(CredentialsError::JoinRefused(status.message().to_owned()));
                    }
                    Err(status) if status.code() == tonic::Code::InvalidArgument => {
                        return Err(CredentialsError::JoinInvalid(status.message().to_owned()));
                    }
                    Err(status) => {
                        let detail = status_detail(&status);
                        if let Some(refusal) = pin_refusal(&status) {
                            pin_mismatch = Some((addr.clone(), refusal));
                        }
                        tracing::warn!(global = %addr, error = %detail, "join attempt failed");
                        errors.push(format!("{addr}: {detail}"));
                    }
                }
            }
            if let Some((addr, detail)) = pin_mismatch {
                return Err(CredentialsError::PinMismatch { addr, detail });
            }
            match pauses.next() {
                Some(pause) => tokio::time::sleep(*pause).await,
                None => return Err(CredentialsError::Unreachable(errors.join("; "))),
            }
        }
    }

    /// Checks and persists what global returned at join.
    fn from_join(
        config: &ZoneConfig,
        ca_key: &KeyPair,
        cp_key: &KeyPair,
        reply: pb::JoinResponse,
    ) -> Result<Self, CredentialsError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            CredentialsError::BadResponse(format!("{what}: {e}"))
        };
        if reply.trust_domain != config.trust_domain {
            // The pinned handshake already checked global's identity in `config.trust_domain`,
            // so a different answer means a confused global, not a different federation.
            return Err(CredentialsError::BadResponse(format!(
                "trust domain {:?}, expected {:?}",
                reply.trust_domain, config.trust_domain
            )));
        }
        let bundle = TrustBundle::from_pem(&reply.trust_domain, &reply.trust_bundle_pem)
            .map_err(|e| bad("trust bundle", &e))?;
        let ca_chain = complete_chain(&reply.intermediate_cert_pem, &bundle);
        let ca = IntermediateCa::from_pem(&ca_chain, &ca_key.to_pem())
            .map_err(|e| bad("intermediate CA", &e))?;
        if ca.zone() != config.name {
            return Err(CredentialsError::BadResponse(format!(
                "intermediate CA is for zone {:?}, expected {:?}",
                ca.zone(),
                config.name
            )));
        }
        let cp_chain = complete_chain(&reply.cp_cert_chain_pem, &bundle);
        let creds = CredentialStore::from_pem(&cp_chain, &cp_key.to_pem())
            .map_err(|e| bad("control plane certificate", &e))?;
        if !reply.vip_cidr.is_empty() && reply.vip_cidr != config.vip_cidr.to_string() {
            tracing::warn!(global = %reply.vip_cidr, configured = %config.vip_cidr, "global records another VIP CIDR for this zone; using the configured one");
        }

        let dir = &config.data_dir;
        let p = paths(dir);
        create_private_dir(dir)?;
        create_private_dir(&p.tls)?;
        strait_trust::store::write_key(&p.ca_key, &ca_key.to_pem())?;
        strait_trust::store::write_cert(&p.ca_crt, &ca_chain)?;
        strait_trust::store::write_key(&p.cp_key, &cp_key.to_pem())?;
        strait_trust::store::write_cert(&p.cp_crt, &cp_chain)?;
        strait_trust::store::write_cert(&p.bundle, &bundle.to_pem())?;
        let record = ZoneRecord {
            name: config.name.clone(),
            trust_domain: reply.trust_domain,
            global_addresses: reply.global_addresses,
        };
        // Written last: its presence means the credentials above are complete.
        let json = serde_json::to_vec_pretty(&record).map_err(|e| CredentialsError::Corrupt {
            path: p.record.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&p.record, &json)?;
        Ok(Self {
            record,
            creds,
            trust: TrustStore::new(bundle),
            ca: CaHandle::new(ca),
            dir: dir.clone(),
        })
    }

    /// This control plane's SPIFFE ID.
    pub fn identity(&self) -> SpiffeId {
        self.creds.identity()
    }

    pub fn trust_domain(&self) -> &str {
        &self.record.trust_domain
    }

    /// When the intermediate CA and the control plane's leaf are due for renewal (2/3 of
    /// their lives), and when they expire.
    pub fn renewal_times(&self) -> RenewalTimes {
        let ca = self.ca.current();
        let cp = self.creds.cert_info();
        RenewalTimes {
            ca_renew_at: strait_trust::rotation::renew_at(ca.issuer().not_before(), ca.not_after()),
            ca_not_after: ca.not_after(),
            cp_renew_at: strait_trust::rotation::renew_at(cp.not_before, cp.not_after),
            cp_not_after: cp.not_after,
        }
    }

    /// Fresh keys and the [`pb::RenewRequest`] for them.
    pub fn renew_request(
        &self,
        ca: bool,
        cp: bool,
    ) -> Result<(PendingKeys, pb::RenewRequest), CredentialsError> {
        let td = self.trust_domain().to_owned();
        let zone = self.record.name.clone();
        let mut keys = PendingKeys { ca: None, cp: None };
        let mut request = pb::RenewRequest::default();
        if ca {
            let key = KeyPair::generate()?;
            request.ca_csr_pem = key.intermediate_csr(&td, &zone)?;
            keys.ca = Some(key);
        }
        if cp {
            let key = KeyPair::generate()?;
            request.cp_csr_pem = key.leaf_csr(&SpiffeId::zone_cp(&td, &zone)?)?;
            keys.cp = Some(key);
        }
        Ok((keys, request))
    }

    /// Installs what global signed for a renewal: checks each certificate against its key,
    /// persists it, then swaps it in. Nothing is interrupted: open connections keep their
    /// session, the next handshake and the next signing use the new material.
    pub fn apply_renewal(
        &self,
        keys: PendingKeys,
        reply: &pb::RenewResponse,
    ) -> Result<(), CredentialsError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            CredentialsError::BadResponse(format!("{what}: {e}"))
        };
        let p = paths(&self.dir);
        if !reply.trust_bundle_pem.is_empty() {
            self.update_bundle(&reply.trust_bundle_pem)?;
        }
        let bundle = self.trust.current();
        if let (Some(key), false) = (&keys.ca, reply.intermediate_cert_pem.is_empty()) {
            let chain = complete_chain(&reply.intermediate_cert_pem, &bundle);
            let ca = IntermediateCa::from_pem(&chain, &key.to_pem())
                .map_err(|e| bad("renewed intermediate CA", &e))?;
            if ca.zone() != self.record.name {
                return Err(CredentialsError::BadResponse(format!(
                    "renewed intermediate CA is for zone {:?}",
                    ca.zone()
                )));
            }
            save_pair(&p.ca_crt, &p.ca_key, &chain, &key.to_pem())?;
            self.ca.replace(ca);
            tracing::info!("renewed the zone intermediate CA");
        }
        if let (Some(key), false) = (&keys.cp, reply.cp_cert_chain_pem.is_empty()) {
            let chain = complete_chain(&reply.cp_cert_chain_pem, &bundle);
            // Parsed before anything is written, so a bad certificate leaves the old pair.
            let check = CredentialStore::from_pem(&chain, &key.to_pem())
                .map_err(|e| bad("renewed control plane certificate", &e))?;
            if check.identity() != self.identity() {
                return Err(CredentialsError::BadResponse(format!(
                    "renewed certificate is for {}",
                    check.identity()
                )));
            }
            save_pair(&p.cp_crt, &p.cp_key, &chain, &key.to_pem())?;
            self.creds.replace_pem(&chain, &key.to_pem())?;
            tracing::info!("renewed the control plane certificate");
        }
        Ok(())
    }

    /// Takes up what another replica wrote into the data directory ([`Material::write`]):
    /// the CA and the control plane's pair when they changed, the bundle when it did. Like a
    /// renewal, nothing is interrupted. Returns whether anything changed.
    pub fn reload(&self) -> Result<bool, CredentialsError> {
        let p = paths(&self.dir);
        let mut changed = false;
        let (ca_chain, ca_key) = load_pair(&p.ca_crt, &p.ca_key)?;
        let ca = IntermediateCa::from_pem(&ca_chain, &ca_key)?;
        if ca.not_after() != self.ca.current().not_after() {
            self.ca.replace(ca);
            tracing::info!("took up the zone intermediate CA another replica renewed");
            changed = true;
        }
        let (cp_chain, cp_key) = load_pair(&p.cp_crt, &p.cp_key)?;
        let cp = CredentialStore::from_pem(&cp_chain, &cp_key)?;
        if cp.cert_info().not_after != self.creds.cert_info().not_after {
            self.creds.replace_pem(&cp_chain, &cp_key)?;
            tracing::info!("took up the control plane certificate another replica renewed");
            changed = true;
        }
        let bundle = strait_trust::store::read_cert(&p.bundle)?;
        let bundle = TrustBundle::from_pem(self.trust_domain(), &bundle)?;
        if bundle.pins() != self.trust.current().pins() {
            self.trust.replace(bundle)?;
            changed = true;
        }
        Ok(changed)
    }

    /// The data directory these credentials live in.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the trust bundle (root rotation arrives in snapshots and renewals) if it
    /// changed; an unparsable or empty bundle is refused and the current one kept.
    pub fn update_bundle(&self, pem: &str) -> Result<bool, CredentialsError> {
        let bundle = TrustBundle::from_pem(self.trust_domain(), pem)?;
        if bundle.pins() == self.trust.current().pins() {
            return Ok(false);
        }
        strait_trust::store::write_cert(&paths(&self.dir).bundle, &bundle.to_pem())?;
        self.trust.replace(bundle)?;
        tracing::info!("trust bundle updated");
        Ok(true)
    }
}

/// The credential files by the names a shared copy of them uses (a Kubernetes Secret's keys).
pub const MATERIAL_FILES: [&str; 6] = [
    "zone.json",
    "ca.crt",
    "ca.key",
    "cp.crt",
    "cp.key",
    "bundle.pem",
];

/// A zone's credential files as a whole, so that several control plane replicas can share
/// one copy: the one that joins or renews publishes them, the others take them.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    files: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Material {
    // Never the keys themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What tells two copies of the credentials apart: renewal always moves `not_after` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub zone: String,
    pub ca_not_after: SystemTime,
    pub cp_not_after: SystemTime,
    pub bundle_pins: Vec<String>,
}

/// Which parts of a [`Material`] to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts {
    pub ca: bool,
    pub cp: bool,
    pub bundle: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        ca: true,
        cp: true,
        bundle: true,
    };

    pub fn any(self) -> bool {
        self.ca || self.cp || self.bundle
    }
}

impl Material {
    /// From the files of a shared copy; every one of [`MATERIAL_FILES`] must be there.
    pub fn from_files(
        mut files: std::collections::BTreeMap<String, String>,
    ) -> Result<Self, String> {
        files.retain(|name, _| MATERIAL_FILES.contains(&name.as_str()));
        let missing: Vec<_> = MATERIAL_FILES
            .iter()
            .filter(|name| !files.contains_key(**name))
            .collect();
        if !missing.is_empty() {
            return Err(format!("missing {missing:?}"));
        }
        Ok(Self { files })
    }

    pub fn files(&self) -> &std::collections::BTreeMap<String, String> {
        &self.files
    }

    /// The data directory's credentials (`None` before the zone joined). An interrupted
    /// renewal is finished first, as [`ZoneCredentials::load`] would.
    pub fn read(data_dir: &Path) -> Result<Option<Self>, CredentialsError> {
        let p = paths(data_dir);
        if !p.record.exists() {
            return Ok(None);
        }
        let (ca_crt, ca_key) = load_pair(&p.ca_crt, &p.ca_key)?;
        let (cp_crt, cp_key) = load_pair(&p.cp_crt, &p.cp_key)?;
        let text = |path: &Path| std::fs::read_to_string(path).map_err(io_err(path));
        let files = [
            ("zone.json", text(&p.record)?),
            ("ca.crt", ca_crt),
            ("ca.key", ca_key),
            ("cp.crt", cp_crt),
            ("cp.key", cp_key),
            ("bundle.pem", text(&p.bundle)?),
        ];
        Ok(Some(Self {
            files: files
                .into_iter()
                .map(|(name, text)| (name.to_owned(), text))
                .collect(),
        }))
    }

    fn file(&self, name: &str) -> &str {
        self.files.get(name).map_or("", String::as_str)
    }

    /// Parses everything (so a broken copy is refused before it is used) and says how new it
    /// is. `origin` names the copy in errors.
    pub fn stamp(&self, origin: &Path) -> Result<Stamp, CredentialsError> {
        let corrupt = |what: &str, reason: String| CredentialsError::Corrupt {
            path: origin.join(what),
            reason,
        };
        let record: ZoneRecord = serde_json::from_str(self.file("zone.json"))
            .map_err(|e| corrupt("zone.json", e.to_string()))?;
        let ca = IntermediateCa::from_pem(self.file("ca.crt"), self.file("ca.key"))
            .map_err(|e| corrupt("ca.crt", e.to_string()))?;
        let cp = CredentialStore::from_pem(self.file("cp.crt"), self.file("cp.key"))
            .map_err(|e| corrupt("cp.crt", e.to_string()))?;
        let bundle = TrustBundle::from_pem(&record.trust_domain, self.file("bundle.pem"))
            .map_err(|e| corrupt("bundle.pem", e.to_string()))?;
        if ca.zone() != record.name {
            return Err(corrupt(
                "ca.crt",
                format!("a CA of zone {:?}, not {:?}", ca.zone(), record.name),
            ));
        }
        Ok(Stamp {
            zone: record.name,
            ca_not_after: ca.not_after(),
            cp_not_after: cp.cert_info().not_after,
            bundle_pins: bundle.pins(),
        })
    }

    /// Writes `parts` into the data directory (the record too when it has none yet), each
    /// key/certificate pair the way a renewal does, so a crash leaves a loadable pair.
    pub fn write(&self, data_dir: &Path, parts: Parts) -> Result<(), CredentialsError> {
        let p = paths(data_dir);
        create_private_dir(data_dir)?;
        create_private_dir(&p.tls)?;
        if parts.ca {
            save_pair(
                &p.ca_crt,
                &p.ca_key,
                self.file("ca.crt"),
                self.file("ca.key"),
            )?;
        }
        if parts.cp {
            save_pair(
                &p.cp_crt,
                &p.cp_key,
                self.file("cp.crt"),
                self.file("cp.key"),
            )?;
        }
        if parts.bundle {
            strait_trust::store::write_cert(&p.bundle, self.file("bundle.pem"))?;
        }
        if !p.record.exists() {
            // Last: its presence means the credentials are complete.
            write_atomic(&p.record, self.file("zone.json").as_bytes())?;
        }
        Ok(())
    }
}

/// When renewal is due, for the sync client's timer and the expiry gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalTimes {
    pub ca_renew_at: SystemTime,
    pub ca_not_after: SystemTime,
    pub cp_renew_at: SystemTime,
    pub cp_not_after: SystemTime,
}

/// Accepts any global node of the trust domain: a zone may talk to any of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalNodeAuthorizer;

impl Authorize for GlobalNodeAuthorizer {
    fn authorize(&self, peer: &PeerIdentity) -> Result<(), String> {
        match peer.id.kind() {
            IdentityKind::GlobalNode { .. } => Ok(()),
            _ => Err(format!("{} is not a global node", peer.id)),
        }
    }
}

/// Checks the join token before the zone binds a port or writes its data directory, so a bad
/// token is reported at once, not after the ports (reads only).
///
/// A token that is in `config.token_file` must parse, whether or not it is still needed: a
/// file of garbage is a mistake either way. A missing file is an error only where a join is
/// certain: universal mode, and no credentials in the data directory yet (a Kubernetes
/// replica may get the credentials from another replica through the Secret instead).
pub fn check_join_token(config: &ZoneConfig) -> Result<(), CredentialsError> {
    let joined = paths(&config.data_dir).record.exists();
    let must_join = !joined && config.mode == crate::config::Mode::Universal;
    match &config.token_file {
        Some(path) if must_join || path.exists() => read_token(path).map(|_| ()),
        Some(_) => Ok(()),
        None if must_join => Err(CredentialsError::NoToken {
            zone: config.name.clone(),
            dir: config.data_dir.clone(),
        }),
        None => Ok(()),
    }
}

fn read_token(path: &Path) -> Result<JoinToken, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Token {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    text.trim()
        .parse()
        .map_err(
            |e: strait_trust::join_token::JoinTokenError| CredentialsError::Token {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        )
}

/// A chain as Strait presents it ends with the root (see `strait_trust::tls`). Global may
/// send an intermediate or leaf without its root; append the bundle's roots then.
fn complete_chain(pem: &str, bundle: &TrustBundle) -> String {
    let Ok(certs) = strait_trust::pem::parse_certs(pem, "certificate chain") else {
        // Left for the caller's parser to refuse with its own message.
        return pem.to_owned();
    };
    let ends_with_root = certs
        .last()
        .is_some_and(|last| bundle.roots().iter().any(|root| root == last));
    if ends_with_root {
        return pem.to_owned();
    }
    let mut chain = pem.trim_end().to_owned();
    chain.push('\n');
    chain.push_str(&bundle.to_pem());
    chain
}

/// The gRPC status with the causes tonic keeps behind it ("transport error" alone says
/// nothing).
pub(crate) fn status_detail(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(err) = source {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            // Strait's reason for refusing global's certificate (trust domain, identity,
            // pin) reads better than rustls' Debug rendering of it.
            let s = match inner
                .downcast_ref::<rustls::Error>()
                .and_then(strait_trust::tls::refusal)
            {
                Some(refusal) => refusal.to_string(),
                None => inner.to_string(),
            };
            if !text.contains(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
        }
        source = err.source();
    }
    text
}

/// Strait's own refusal of global's certificate because of the pin, found in the error chain
/// of a failed call (tonic → hyper → io::Error → rustls::Error).
fn pin_refusal(status: &tonic::Status) -> Option<String> {
    use std::error::Error as _;
    let check = |err: &(dyn std::error::Error + 'static)| -> Option<String> {
        let rustls_err = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })?;
        match strait_trust::tls::refusal(rustls_err) {
            Some(e @ strait_trust::Error::PinMismatch { .. }) => Some(e.to_string()),
            _ => None,
        }
    };
    let mut source = status.source();
    while let Some(err) = source {
        if let Some(found) = check(err) {
            return Some(found);
        }
        source = err.source();
    }
    // The chain may have been flattened into text on the way; the refusal's Debug form is
    // what rustls then shows.
    status_detail(status)
        .contains("PinMismatch")
        .then(|| "the server's chain does not contain the pinned root".to_owned())
}

/// Reads a certificate chain and its key. If they do not match and a `.next` certificate
/// exists, a renewal was interrupted after the key was replaced: finish it.
fn load_pair(crt: &Path, key: &Path) -> Result<(String, String), CredentialsError> {
    let key_pem = strait_trust::store::read_key(key)?;
    let chain = strait_trust::store::read_cert(crt)?;
    let next = next_path(crt);
    if next.exists() {
        if let Ok(next_chain) = std::fs::read_to_string(&next)
            && matches_key(&next_chain, &key_pem)
            && !matches_key(&chain, &key_pem)
        {
            std::fs::rename(&next, crt).map_err(io_err(crt))?;
            tracing::warn!(path = %crt.display(), "finished a renewal interrupted by a crash");
            return Ok((next_chain, key_pem));
        }
        // A leftover from a renewal interrupted before the key was replaced: the old pair
        // stands.
        let _ = std::fs::remove_file(&next);
    }
    Ok((chain, key_pem))
}

fn matches_key(chain: &str, key: &str) -> bool {
    CredentialStore::from_pem(chain, key).is_ok() || IntermediateCa::from_pem(chain, key).is_ok()
}

fn save_pair(crt: &Path, key: &Path, chain: &str, key_pem: &str) -> Result<(), CredentialsError> {
    let next = next_path(crt);
    strait_trust::store::write_cert(&next, chain)?;
    strait_trust::store::write_key(key, key_pem)?;
    std::fs::rename(&next, crt).map_err(io_err(crt))
}

fn next_path(crt: &Path) -> PathBuf {
    let mut name = crt.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CredentialsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn config(data_dir: &Path, token_file: Option<PathBuf>) -> ZoneConfig {
        let mut config = ZoneConfig::new(
            "a".to_owned(),
            vec!["127.0.0.1:7400".to_owned()],
            data_dir.to_owned(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 7500)),
            std::net::SocketAddr::from(([127, 0, 0, 1], 7501)),
        );
        config.token_file = token_file;
        config
    }

    #[test]
    fn the_join_token_is_checked_before_anything_else() -> TestResult {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("zone-a");
        let garbage = dir.path().join("garbage.token");
        std::fs::write(&garbage, "this is not a token\n")?;
        let err = check_join_token(&config(&data, Some(garbage.clone())))
            .err()
            .ok_or("a garbage token passed")?;
        assert!(matches!(err, CredentialsError::Token { .. }), "{err}");
        assert!(err.to_string().contains("garbage.token"), "{err}");
        assert!(!data.exists(), "the check wrote the data directory");

        // First start in universal mode: a token is needed.
        let none = check_join_token(&config(&data, None));
        assert!(
            matches!(none, Err(CredentialsError::NoToken { .. })),
            "{none:?}"
        );
        let missing = check_join_token(&config(&data, Some(dir.path().join("nope"))));
        assert!(
            matches!(missing, Err(CredentialsError::Token { .. })),
            "{missing:?}"
        );

        // A good token passes.
        let token = strait_trust::join_token::JoinToken::generate(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )?;
        let good = dir.path().join("good.token");
        std::fs::write(&good, token.to_string())?;
        check_join_token(&config(&data, Some(good)))?;

        // Kubernetes mode: the credentials may come from another replica's Secret.
        let mut kube = config(&data, Some(dir.path().join("nope")));
        kube.mode = Mode::Kubernetes;
        check_join_token(&kube)?;

        // A zone that joined before needs no token, but a garbage one is still refused.
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join("zone.json"), "{}")?;
        check_join_token(&config(&data, None))?;
        check_join_token(&config(&data, Some(dir.path().join("nope"))))?;
        assert!(check_join_token(&config(&data, Some(garbage))).is_err());
        Ok(())
    }
}
