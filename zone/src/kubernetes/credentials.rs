//! The zone's credentials, shared by its control plane replicas through one Secret.
//!
//! A join token is single use, so only one replica can join; the others need the same
//! intermediate CA and control plane certificate to sign workload certificates and to open
//! observer streams to global. The Secret (keys [`MATERIAL_FILES`], label
//! `app.kubernetes.io/managed-by: strait-zone`) is the shared copy; each replica works from
//! its own data directory and keeps it in step:
//!
//! - **Start** ([`bootstrap`]): a Secret exists → its credentials are written into the data
//!   directory (only the parts newer than a copy already there). No Secret → the Lease holder
//!   joins with the token and publishes the result; the others wait for it.
//! - **Running** ([`run`]), every [`POLL`]: parts of the Secret newer than the local copy
//!   (the leader renewed them) are taken up without a restart; the leader publishes its copy
//!   when it is newer (it renewed) or the Secret is missing. "Newer" is a later `notAfter`:
//!   renewal always moves it on, and comparing it needs no clock agreement between replicas.
//!   Every write is a compare-and-swap on the `resourceVersion` read, so two replicas that both
//!   think they lead cannot overwrite each other blindly.
//!
//! The trust bundle in the Secret only seeds new replicas: every replica follows bundle
//! rotations in its own snapshots from global.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::config::ZoneConfig;
use crate::credentials::{
    CredentialsError, MATERIAL_FILES, Material, Parts, Stamp, ZoneCredentials,
};

/// How often each replica compares its credentials with the Secret. Renewal happens at 2/3 of
/// a certificate's life, so seconds of lag cost nothing.
pub const POLL: Duration = Duration::from_secs(5);

/// The label that marks the Secret as Strait's (nothing else of that name is overwritten).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "strait-zone");

/// What one comparison of the local copy with the Secret calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// Parts of the Secret to take up.
    pub download: Parts,
    /// Whether to publish the local copy.
    pub upload: bool,
}

/// Pure: newer parts of the Secret come down to everyone; the leader publishes its copy when
/// the Secret is missing, older in any part, or seeds new replicas with an old bundle. Nothing
/// is published while something is to be taken up: the next round decides on the merged copy.
pub fn plan(local: &Stamp, remote: Option<&Stamp>, leading: bool) -> Plan {
    let Some(remote) = remote else {
        return Plan {
            download: Parts::default(),
            upload: leading,
        };
    };
    let download = Parts {
        ca: remote.ca_not_after > local.ca_not_after,
        cp: remote.cp_not_after > local.cp_not_after,
        bundle: false,
    };
    let local_newer =
        local.ca_not_after > remote.ca_not_after || local.cp_not_after > remote.cp_not_after;
    Plan {
        download,
        upload: leading
            && !download.any()
            && (local_newer || local.bundle_pins != remote.bundle_pins),
    }
}

/// The Secret for `material`; with `resource_version`, a replace that fails if it changed.
pub fn to_secret(material: &Material, name: &str, resource_version: Option<String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            resource_version,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            material
                .files()
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The credentials in a Secret, or why they are unusable.
pub fn material_of(secret: &Secret) -> Result<Material, String> {
    let mut files = BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        if MATERIAL_FILES.contains(&key.as_str()) {
            let text = String::from_utf8(value.0.clone())
                .map_err(|_| format!("{key} is not UTF-8 text"))?;
            files.insert(key.clone(), text);
        }
    }
    Material::from_files(files)
}

fn is_managed(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_conflict() || status.is_already_exists())
}

/// Why the shared credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedCredentialsError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(
        "Secret {0} exists but is not managed by strait (no label app.kubernetes.io/managed-by=strait-zone); delete it or pick another name (kubernetes.credentials_secret)"
    )]
    NotManaged(String),
    #[error("Secret {secret}: {reason}; fix or delete it")]
    Unusable { secret: String, reason: String },
    #[error("Secret {secret} holds the credentials of zone {found:?}, not {configured:?}")]
    WrongZone {
        secret: String,
        found: String,
        configured: String,
    },
}

/// The one Secret, read and written.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
    /// [`POLL`] (tests shorten it).
    poll: Duration,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// The Secret's credentials with what identifies the version read.
#[derive(Debug)]
pub struct Remote {
    pub material: Material,
    pub stamp: Stamp,
    pub resource_version: Option<String>,
}

impl SecretStore {
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            poll: POLL,
        }
    }

    /// Polls every `poll` instead of [`POLL`].
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn origin(&self) -> PathBuf {
        PathBuf::from(format!("secret:{}", self.display()))
    }

    /// The Secret's credentials, checked; `None` when there is no Secret.
    pub async fn get(&self) -> Result<Result<Option<Remote>, SharedCredentialsError>, kube::Error> {
        let Some(secret) = self.api.get_opt(&self.name).await? else {
            return Ok(Ok(None));
        };
        Ok(self.check(&secret).map(Some))
    }

    fn check(&self, secret: &Secret) -> Result<Remote, SharedCredentialsError> {
        if !is_managed(secret) {
            return Err(SharedCredentialsError::NotManaged(self.display()));
        }
        let unusable = |reason: String| SharedCredentialsError::Unusable {
            secret: self.display(),
            reason,
        };
        let material = material_of(secret).map_err(unusable)?;
        let stamp = material
            .stamp(&self.origin())
            .map_err(|e| unusable(e.to_string()))?;
        Ok(Remote {
            material,
            stamp,
            resource_version: secret.metadata.resource_version.clone(),
        })
    }

    /// Publishes `material`: creates the Secret, or replaces the version read. `Ok(false)`:
    /// someone else wrote it first (the next round looks again).
    pub async fn publish(
        &self,
        material: &Material,
        read: Option<&Remote>,
    ) -> Result<bool, kube::Error> {
        let result = match read {
            None => {
                let secret = to_secret(material, &self.name, None);
                self.api.create(&PostParams::default(), &secret).await
            }
            Some(read) => {
                let secret = to_secret(material, &self.name, read.resource_version.clone());
                self.api
                    .replace(&self.name, &PostParams::default(), &secret)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(err) if is_conflict(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// Pauses between attempts when the API server fails, growing to [`POLL`].
fn retry_delay(attempt: u32) -> Duration {
    (Duration::from_millis(250) * 2_u32.saturating_pow(attempt.min(5))).min(POLL)
}

/// The credentials at start, shared through `store` (see the module docs). Waits, logging
/// why, until the Secret exists or this replica leads (then it joins with the token).
pub async fn bootstrap(
    config: &ZoneConfig,
    store: &SecretStore,
    leader: &mut watch::Receiver<bool>,
) -> Result<ZoneCredentials, SharedCredentialsError> {
    let dir = config.data_dir.as_path();
    let mut failures = 0_u32;
    let mut said_waiting = false;
    loop {
        let remote = match store.get().await {
            Ok(remote) => remote?,
            Err(err) => {
                tracing::warn!(secret = %store.display(), %err, "reading the zone credentials Secret failed; retrying");
                tokio::time::sleep(retry_delay(failures).min(store.poll)).await;
                failures = failures.saturating_add(1);
                continue;
            }
        };
        failures = 0;
        let local = ZoneCredentials::load(dir, &config.name)?;
        match (remote, local) {
            (Some(remote), local) => {
                if remote.stamp.zone != config.name {
                    return Err(SharedCredentialsError::WrongZone {
                        secret: store.display(),
                        found: remote.stamp.zone,
                        configured: config.name.clone(),
                    });
                }
                return Ok(match local {
                    Some(local) => {
                        take_up(&local, &remote, false)?;
                        local
                    }
                    None => {
                        remote.material.write(dir, Parts::ALL)?;
                        tracing::info!(secret = %store.display(), "took the zone credentials from the shared Secret");
                        ZoneCredentials::load(dir, &config.name)?.ok_or_else(|| {
                            CredentialsError::Corrupt {
                                path: dir.to_owned(),
                                reason: "credentials written from the Secret did not load"
                                    .to_owned(),
                            }
                        })?
                    }
                });
            }
            // Credentials from an earlier single-replica run: the leader publishes them.
            (None, Some(local)) => return Ok(local),
            (None, None) if *leader.borrow_and_update() => {
                tracing::info!(secret = %store.display(), "this replica leads and the zone has no credentials yet: joining the federation");
                let creds = ZoneCredentials::join(config).await.inspect_err(|err| {
                    if matches!(err, CredentialsError::JoinRefused(_)) {
                        tracing::error!(secret = %store.display(), "the join token was refused and no replica published the zone's credentials: if the token was used by a replica that is gone, remove the zone (`strait zone remove`), create it again and put the new token in the join token Secret");
                    }
                })?;
                publish_after_join(store, dir).await;
                return Ok(creds);
            }
            (None, None) => {
                if !said_waiting {
                    tracing::info!(secret = %store.display(), "waiting for the replica holding the Lease to join and publish the zone credentials");
                    said_waiting = true;
                }
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() {
                        // The elector stopped (shutdown): nothing left to wait for.
                        std::future::pending::<()>().await;
                    },
                    () = tokio::time::sleep(store.poll) => {}
                }
            }
        }
    }
}

/// Right after the join: the token is spent, so the credentials must reach the Secret or no
/// other replica can ever start. Retried until it lands (or someone else's is there).
pub(crate) async fn publish_after_join(store: &SecretStore, dir: &Path) {
    let material = match Material::read(dir) {
        Ok(Some(material)) => material,
        Ok(None) | Err(_) => {
            tracing::error!(dir = %dir.display(), "the credentials just written by the join cannot be read back; the credential sync will publish them once they can");
            return;
        }
    };
    let mut attempt = 0_u32;
    loop {
        match store.publish(&material, None).await {
            Ok(true) => {
                tracing::info!(secret = %store.display(), "published the zone credentials for the other replicas");
                return;
            }
            Ok(false) => {
                tracing::warn!(secret = %store.display(), "the Secret appeared while joining; the credential sync reconciles the two");
                return;
            }
            Err(err) => {
                tracing::warn!(secret = %store.display(), %err, "publishing the zone credentials failed; retrying");
                tokio::time::sleep(retry_delay(attempt).min(store.poll)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Takes up the parts of `remote` newer than the data directory's; publishes nothing.
fn take_up(
    creds: &ZoneCredentials,
    remote: &Remote,
    leading: bool,
) -> Result<Plan, CredentialsError> {
    let dir = creds.data_dir();
    let Some(local) = Material::read(dir)? else {
        return Err(CredentialsError::Corrupt {
            path: dir.to_owned(),
            reason: "the zone credentials disappeared from the data directory".to_owned(),
        });
    };
    let local_stamp = local.stamp(dir)?;
    let plan = plan(&local_stamp, Some(&remote.stamp), leading);
    if plan.download.any() {
        remote.material.write(dir, plan.download)?;
        creds.reload()?;
    }
    Ok(plan)
}

/// One round of [`run`]: returns what was done (`upload`: published).
pub async fn sync_once(
    store: &SecretStore,
    creds: &ZoneCredentials,
    leading: bool,
) -> Result<Plan, String> {
    let remote = store
        .get()
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let dir = creds.data_dir();
    match remote {
        Some(remote) => {
            if remote.stamp.zone != creds.record.name {
                return Err(format!(
                    "Secret {} holds zone {:?}'s credentials; leaving it alone",
                    store.display(),
                    remote.stamp.zone
                ));
            }
            let mut plan = take_up(creds, &remote, leading).map_err(|e| e.to_string())?;
            if plan.upload {
                let local = Material::read(dir)
                    .map_err(|e| e.to_string())?
                    .ok_or("no local credentials")?;
                // Lost to a concurrent write: nothing published, the next round looks again.
                plan.upload = store
                    .publish(&local, Some(&remote))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(plan)
        }
        None if leading => {
            let local = Material::read(dir)
                .map_err(|e| e.to_string())?
                .ok_or("no local credentials")?;
            let published = store
                .publish(&local, None)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Plan {
                download: Parts::default(),
                upload: published,
            })
        }
        None => Ok(Plan::default()),
    }
}

/// Keeps the data directory and the Secret in step until `stopped`: every [`POLL`] and at once
/// when this replica becomes leader.
pub async fn run(
    store: SecretStore,
    creds: ZoneCredentials,
    mut leader: watch::Receiver<bool>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut last_error: Option<String> = None;
    loop {
        let leading = *leader.borrow_and_update();
        match sync_once(&store, &creds, leading).await {
            Ok(plan) => {
                if plan.upload {
                    tracing::info!(secret = %store.display(), "published this replica's zone credentials");
                }
                if last_error.take().is_some() {
                    tracing::info!(secret = %store.display(), "zone credentials in step with the Secret again");
                }
            }
            Err(err) => {
                // Once per distinct error: a Secret that stays broken should not flood the log.
                if last_error.as_deref() != Some(err.as_str()) {
                    tracing::warn!(secret = %store.display(), error = %err, "keeping the zone credentials in step with the Secret failed; retrying");
                }
                last_error = Some(err);
            }
        }
        tokio::select! {
            () = &mut stopped => return,
            changed = leader.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(store.poll) => {}
        }
    }
}

#[cfg(test)]
#[path = "credentials_tests.rs"]
mod scripted;

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn stamp(ca: u64, cp: u64, pins: &[&str]) -> Stamp {
        Stamp {
            zone: "a".into(),
            ca_not_after: UNIX_EPOCH + Duration::from_secs(ca),
            cp_not_after: UNIX_EPOCH + Duration::from_secs(cp),
            bundle_pins: pins.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn the_leader_publishes_when_the_secret_is_missing_and_followers_wait() {
        let local = stamp(10, 10, &["r"]);
        assert_eq!(
            plan(&local, None, true),
            Plan {
                download: Parts::default(),
                upload: true
            }
        );
        assert_eq!(plan(&local, None, false), Plan::default());
    }

    #[test]
    fn newer_parts_come_down_to_every_replica() {
        let local = stamp(10, 10, &["r"]);
        // The leader renewed its control plane certificate only.
        let remote = stamp(10, 20, &["r"]);
        for leading in [false, true] {
            let p = plan(&local, Some(&remote), leading);
            assert_eq!(
                p.download,
                Parts {
                    ca: false,
                    cp: true,
                    bundle: false
                }
            );
            assert!(!p.upload, "never publish while taking something up");
        }
        assert_eq!(plan(&remote, Some(&remote), false), Plan::default());
        assert_eq!(plan(&remote, Some(&remote), true), Plan::default());
    }

    #[test]
    fn only_the_leader_publishes_what_it_renewed() {
        let remote = stamp(10, 10, &["r"]);
        let renewed = stamp(30, 10, &["r"]);
        assert!(plan(&renewed, Some(&remote), true).upload);
        assert!(!plan(&renewed, Some(&remote), false).upload);
        // A rotated bundle seeds new replicas too.
        let rotated = stamp(10, 10, &["r", "r2"]);
        assert!(plan(&rotated, Some(&remote), true).upload);
        // Mixed (the Secret has a newer CA, we have a newer leaf): take up first, publish the
        // merged copy on the next round.
        let mixed = stamp(5, 20, &["r"]);
        let p = plan(&mixed, Some(&remote), true);
        assert!(p.download.ca && !p.download.cp && !p.upload);
    }

    #[test]
    fn a_secret_round_trips_and_incomplete_ones_are_refused() {
        let files: BTreeMap<String, String> = MATERIAL_FILES
            .iter()
            .map(|name| ((*name).to_owned(), format!("contents of {name}")))
            .collect();
        let material = Material::from_files(files.clone()).unwrap();
        let secret = to_secret(&material, "creds", Some("7".into()));
        assert!(is_managed(&secret));
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(material_of(&secret).unwrap(), material);

        let mut partial = secret.clone();
        partial.data.as_mut().unwrap().remove("ca.key");
        assert!(material_of(&partial).unwrap_err().contains("ca.key"));
        let mut binary = secret;
        binary
            .data
            .as_mut()
            .unwrap()
            .insert("cp.key".into(), ByteString(vec![0xff, 0xfe]));
        assert!(material_of(&binary).unwrap_err().contains("UTF-8"));
    }
}
