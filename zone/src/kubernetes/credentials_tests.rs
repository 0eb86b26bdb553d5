//! The shared-credentials Secret against a scripted API server: what a joining leader, a
//! starting follower and a renewal look like on the wire.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use strait_trust::ca::{DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_ROOT_VALIDITY, RootCa};
use strait_trust::keys::KeyPair;
use strait_trust::spiffe::SpiffeId;
use tokio::sync::watch;

use super::*;
use crate::kubernetes::fake_api::{self, ApiServer};

const TD: &str = "strait.local";
const NS: &str = "strait-system";
const NAME: &str = "strait-zone-credentials";
const FAST: Duration = Duration::from_millis(20);

/// A zone's credential files as global would issue them, the leaf valid for `cp_validity`.
fn material(root: &RootCa, zone: &str, cp_validity: Duration) -> Material {
    let ca_key = KeyPair::generate().unwrap();
    let ca = root
        .sign_intermediate(
            &ca_key.intermediate_csr(TD, zone).unwrap(),
            zone,
            DEFAULT_INTERMEDIATE_VALIDITY,
        )
        .unwrap();
    let cp_key = KeyPair::generate().unwrap();
    let id = SpiffeId::zone_cp(TD, zone).unwrap();
    let cp = root
        .sign_leaf(&cp_key.leaf_csr(&id).unwrap(), &id, cp_validity)
        .unwrap();
    let record = json!({"name": zone, "trust_domain": TD, "global_addresses": ["g:7400"]});
    Material::from_files(
        [
            ("zone.json", record.to_string()),
            ("ca.crt", ca.chain_pem),
            ("ca.key", ca_key.to_pem()),
            ("cp.crt", cp.chain_pem),
            ("cp.key", cp_key.to_pem()),
            ("bundle.pem", root.cert_pem()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    )
    .unwrap()
}

fn config(dir: &Path) -> ZoneConfig {
    let yaml = format!(
        "name: a\nglobal: [\"g:7400\"]\ndata_dir: {}\nlisten: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nmode: kubernetes\n",
        dir.display()
    );
    ZoneConfig::from_yaml(&yaml, "test").unwrap()
}

/// The Secret as the API server keeps it, and the requests it saw.
#[derive(Default)]
struct Stored {
    secret: Option<Value>,
    version: u64,
    log: Vec<String>,
}

/// Answers GET/POST/PUT on the one Secret like an API server: PUT is a compare-and-swap on
/// `resourceVersion`. `fail_next` makes the next write a 500.
async fn serve_secret(
    mut server: ApiServer,
    stored: Arc<Mutex<Stored>>,
    fail_next: Arc<Mutex<u32>>,
) {
    let item = format!("/api/v1/namespaces/{NS}/secrets/{NAME}");
    let collection = format!("/api/v1/namespaces/{NS}/secrets");
    loop {
        let call = server.next().await;
        let mut s = stored.lock().unwrap();
        s.log.push(format!("{} {}", call.method, call.path));
        let failing = {
            let mut f = fail_next.lock().unwrap();
            let failing = *f > 0 && call.method != http::Method::GET;
            if failing {
                *f -= 1;
            }
            failing
        };
        if failing {
            call.error(500, "InternalError");
            continue;
        }
        match (call.method.as_str(), call.path.as_str()) {
            ("GET", p) if p == item => match s.secret.clone() {
                Some(secret) => call.json(200, secret),
                None => call.error(404, "NotFound"),
            },
            ("POST", p) if p == collection => {
                if s.secret.is_some() {
                    call.error(409, "AlreadyExists");
                    continue;
                }
                s.version += 1;
                let mut secret = call.body.clone();
                secret["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.secret = Some(secret.clone());
                call.json(201, secret);
            }
            ("PUT", p) if p == item => {
                let current = s.version.to_string();
                if call.body["metadata"]["resourceVersion"] != json!(current) {
                    call.error(409, "Conflict");
                    continue;
                }
                s.version += 1;
                let mut secret = call.body.clone();
                secret["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.secret = Some(secret.clone());
                call.json(200, secret);
            }
            _ => panic!("unexpected request {call:?}"),
        }
    }
}

struct Harness {
    store: SecretStore,
    stored: Arc<Mutex<Stored>>,
    fail_next: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn new() -> Self {
        let (client, server) = fake_api::client();
        let stored = Arc::new(Mutex::new(Stored::default()));
        let fail_next = Arc::new(Mutex::new(0));
        let task = tokio::spawn(serve_secret(server, stored.clone(), fail_next.clone()));
        Self {
            store: SecretStore::new(client, NS, NAME).with_poll(FAST),
            stored,
            fail_next,
            task,
        }
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut self.stored.lock().unwrap().log)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cp_not_after(creds: &ZoneCredentials) -> std::time::SystemTime {
    creds.creds.cert_info().not_after
}

#[tokio::test]
async fn a_follower_starts_with_the_leaders_credentials_and_takes_up_its_renewals() {
    let h = Harness::new();
    let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
    // The leader joined (here: its data directory is filled as the join would).
    let leader_dir = tempfile::tempdir().unwrap();
    material(&root, "a", Duration::from_secs(3600))
        .write(leader_dir.path(), Parts::ALL)
        .unwrap();
    let leader = ZoneCredentials::load(leader_dir.path(), "a")
        .unwrap()
        .unwrap();

    // A follower starting before anything is published waits, without writing anything.
    let follower_dir = tempfile::tempdir().unwrap();
    let follower_config = config(follower_dir.path());
    let (_not_leading_tx, mut not_leading) = watch::channel(false);
    let waiting = tokio::time::timeout(
        FAST * 10,
        bootstrap(&follower_config, &h.store, &mut not_leading),
    )
    .await;
    assert!(waiting.is_err(), "a follower waits for the Secret");
    assert!(h.log().iter().all(|l| l.starts_with("GET")));

    // The leader publishes its credentials.
    let plan = sync_once(&h.store, &leader, true).await.unwrap();
    assert!(plan.upload);
    assert_eq!(
        h.log(),
        [
            format!("GET /api/v1/namespaces/{NS}/secrets/{NAME}"),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
        ]
    );
    {
        let stored = h.stored.lock().unwrap();
        let secret = stored.secret.as_ref().unwrap();
        assert_eq!(
            secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "strait-zone"
        );
        let keys: Vec<_> = secret["data"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys.len(), MATERIAL_FILES.len(), "{keys:?}");
    }
    // Nothing to do on the next round.
    assert_eq!(
        sync_once(&h.store, &leader, true).await.unwrap(),
        Plan::default()
    );

    // Now the follower starts with the same credentials.
    let follower = bootstrap(&follower_config, &h.store, &mut not_leading)
        .await
        .unwrap();
    assert_eq!(follower.identity(), leader.identity());
    assert_eq!(
        follower.ca.current().not_after(),
        leader.ca.current().not_after()
    );
    assert_eq!(cp_not_after(&follower), cp_not_after(&leader));

    // The leader renews its control plane certificate (as `apply_renewal` would leave the
    // data directory) and publishes it; a follower cannot publish.
    material(&root, "a", Duration::from_secs(7200))
        .write(
            leader_dir.path(),
            Parts {
                cp: true,
                ..Parts::default()
            },
        )
        .unwrap();
    assert!(leader.reload().unwrap());
    let renewed = cp_not_after(&leader);
    assert!(renewed > cp_not_after(&follower));
    assert_eq!(
        sync_once(&h.store, &follower, false).await.unwrap(),
        Plan::default()
    );
    h.log();
    assert!(sync_once(&h.store, &leader, true).await.unwrap().upload);
    assert_eq!(
        h.log(),
        [
            format!("GET /api/v1/namespaces/{NS}/secrets/{NAME}"),
            format!("PUT /api/v1/namespaces/{NS}/secrets/{NAME}"),
        ]
    );

    // The follower takes the renewed certificate up in place: same handles, new leaf.
    let plan = sync_once(&h.store, &follower, false).await.unwrap();
    assert!(plan.download.cp && !plan.download.ca && !plan.upload);
    assert_eq!(cp_not_after(&follower), renewed);
    // And a restart of the follower loads it from its own directory.
    let restarted = ZoneCredentials::load(follower_dir.path(), "a")
        .unwrap()
        .unwrap();
    assert_eq!(cp_not_after(&restarted), renewed);
}

#[tokio::test]
async fn a_lost_race_is_not_an_overwrite_and_a_failed_publish_is_retried() {
    let h = Harness::new();
    let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    material(&root, "a", Duration::from_secs(3600))
        .write(dir.path(), Parts::ALL)
        .unwrap();
    // Right after a join the API server fails twice: the publish is retried until it lands.
    *h.fail_next.lock().unwrap() = 2;
    publish_after_join(&h.store, dir.path()).await;
    assert_eq!(h.log().iter().filter(|l| l.starts_with("POST")).count(), 3);
    let first = h.stored.lock().unwrap().secret.clone().unwrap();

    // Someone else wrote the Secret between our read and our write: the compare-and-swap
    // refuses, nothing is overwritten, and publish says so.
    let creds = ZoneCredentials::load(dir.path(), "a").unwrap().unwrap();
    let remote = h.store.get().await.unwrap().unwrap().unwrap();
    h.stored.lock().unwrap().version += 1;
    let mine = Material::read(creds.data_dir()).unwrap().unwrap();
    assert!(!h.store.publish(&mine, Some(&remote)).await.unwrap());
    assert_eq!(h.stored.lock().unwrap().secret.as_ref(), Some(&first));
}

#[tokio::test]
async fn a_secret_that_is_not_strait_s_or_of_another_zone_stops_the_start() {
    let h = Harness::new();
    let root = RootCa::generate(TD, DEFAULT_ROOT_VALIDITY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_tx, mut leader) = watch::channel(true);

    // Another zone's credentials.
    let other = to_secret(&material(&root, "b", Duration::from_secs(3600)), NAME, None);
    h.stored.lock().unwrap().secret = Some(serde_json::to_value(&other).unwrap());
    let err = bootstrap(&config(dir.path()), &h.store, &mut leader)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SharedCredentialsError::WrongZone { found, .. } if found == "b"),
        "{err}"
    );

    // A Secret of that name that strait did not write is never used (nor overwritten).
    let mut foreign = to_secret(&material(&root, "a", Duration::from_secs(3600)), NAME, None);
    foreign.metadata.labels = None;
    h.stored.lock().unwrap().secret = Some(serde_json::to_value(&foreign).unwrap());
    let err = bootstrap(&config(dir.path()), &h.store, &mut leader)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not managed by strait"), "{err}");

    // Garbage in a managed Secret: a clear error naming it, no panic.
    let mut garbage = to_secret(&material(&root, "a", Duration::from_secs(3600)), NAME, None);
    garbage.data.as_mut().unwrap().insert(
        "ca.crt".into(),
        k8s_openapi::ByteString(b"not a certificate".to_vec()),
    );
    h.stored.lock().unwrap().secret = Some(serde_json::to_value(&garbage).unwrap());
    let err = bootstrap(&config(dir.path()), &h.store, &mut leader)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!("Secret {NS}/{NAME}")),
        "{err}"
    );
    assert!(
        !dir.path().join("zone.json").exists(),
        "nothing was written"
    );
}
