//! Two zone control plane replicas in Kubernetes mode, as real `strait zone run` processes
//! joined to a real global, sharing one zone (issue: "Kubernetes mode and Helm charts"). No
//! Kubernetes API server can run here, so the replicas talk to a stand-in that keeps objects in
//! memory (`tests/kubernetes/fake_api_server.rs`); everything else is the real thing: the Lease
//! election, the credentials Secret, the observer and primary sync streams, the inventory
//! from Services, EndpointSlices and ServiceExports, and a leader killed with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;
#[path = "kubernetes/fake_api_server.rs"]
mod fake_api_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::BIN;
use fake_api_server::FakeApiServer;
use serde_json::{Value, json};
use strait_test_support::federation::{Federation, eventually, read};
use strait_test_support::net::free_port;
use strait_test_support::{http, metrics};

const NS: &str = "strait-system";
const SECRETS: &str = "api/v1/secrets";
const LEASES: &str = "apis/coordination.k8s.io/v1/leases";
const CONFIGMAPS: &str = "api/v1/configmaps";

/// One `strait zone run --mode kubernetes` process; killed on drop.
struct Replica {
    name: String,
    dir: PathBuf,
    admin: String,
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(name: &str, root: &Path, global: &str, token: &Path, kubeconfig: &Path) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let admin = free_port();
        let config = format!(
            "name: k\nregion: r2\ntrust_domain: strait.local\nglobal: [\"{global}\"]\n\
             token_file: {token}\ndata_dir: {data}\nlisten: {listen}\nadmin_listen: {admin}\n\
             vip_cidr: 127.250.0.0/16\nmode: kubernetes\nkubernetes:\n  namespace: {NS}\n  \
             replica: {name}\n  lease_duration: 2s\n  lease_renew_interval: 500ms\n\
             webhook:\n  listen: {webhook}\n  cert_file: {cert}\n  key_file: {key}\n  \
             sidecar_image: strait:test\n  sidecar_zone_cp: zone.strait-system.svc:7500\n",
            token = token.display(),
            data = dir.join("data").display(),
            listen = free_port(),
            webhook = free_port(),
            cert = root.join("webhook.crt").display(),
            key = root.join("webhook.key").display(),
        );
        let config_file = dir.join("zone.yaml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.join("zone.log")).unwrap();
        let child = Command::new(BIN)
            .args(["zone", "run", "--config-file"])
            .arg(&config_file)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            name: name.to_owned(),
            dir,
            admin,
            child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("zone.log")).unwrap_or_default()
    }

    async fn gauge(&self, name: &str) -> Option<f64> {
        let page = metrics::scrape(&self.admin).await?;
        metrics::sample(&page, name, &[])
    }

    async fn ready(&self) -> bool {
        http::get(&self.admin, "/ready").await.0 == 200
    }

    fn cp_cert(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/tls/cp.crt")).unwrap_or_default()
    }
}

/// `echo` in namespace `demo` with `endpoints` ready pods, exported.
fn export_echo(api: &FakeApiServer, endpoints: usize) {
    api.put(
        "api/v1/services",
        "demo",
        json!({"metadata": {"name": "echo", "namespace": "demo"},
               "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}),
    );
    let endpoints: Vec<Value> = (0..endpoints)
        .map(|i| {
            json!({"addresses": [format!("10.1.0.{}", i + 5)], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "namespace": "demo", "name": format!("echo-{i}")}})
        })
        .collect();
    api.put(
        "apis/discovery.k8s.io/v1/endpointslices",
        "demo",
        json!({"metadata": {"name": "echo-x1", "namespace": "demo",
                            "labels": {"kubernetes.io/service-name": "echo"}},
               "addressType": "IPv4", "endpoints": endpoints,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    );
    api.put(
        "apis/multicluster.x-k8s.io/v1alpha1/serviceexports",
        "demo",
        json!({"metadata": {"name": "echo", "namespace": "demo"}}),
    );
}

/// Zone k's healthy/total count of `demo/echo` as global has it.
fn echo_in_zone_k(fed: &Federation) -> Option<(u64, u64)> {
    let out = fed.strait(&["services", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services: Value = serde_json::from_slice(&out.stdout).unwrap();
    services.as_array()?.iter().find_map(|s| {
        if s["name"] != "echo" {
            return None;
        }
        let z = s["zones"].as_array()?.iter().find(|z| z["zone"] == "k")?;
        Some((z["healthy"].as_u64()?, z["total"].as_u64()?))
    })
}

fn lease_holder(api: &FakeApiServer) -> Option<String> {
    api.get(LEASES, NS, "strait-zone-leader")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_zone_and_the_survivor_takes_over_when_the_leader_is_killed() {
    let fed = Federation::up(BIN, &["--zones", "a"]);
    let out = fed.strait(&["zone", "create", "k", "--region", "r2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = fed.dir.path().join("k.token");
    std::fs::write(&token, &out.stdout).unwrap();

    let api = FakeApiServer::start().await;
    let kubeconfig = fed.dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(NS)).unwrap();
    let global = fed.address("global-1", "api");
    let root = fed.dir.path().join("k8s-zone");
    // The injector's serving certificate (any will do: nothing calls it here), so that the
    // replicas run everything the chart turns on, the trust bundle ConfigMaps included.
    std::fs::create_dir_all(&root).unwrap();
    let webhook_ca =
        strait_trust::ca::RootCa::generate("webhook.test", Duration::from_secs(3600)).unwrap();
    std::fs::write(root.join("webhook.crt"), webhook_ca.cert_pem()).unwrap();
    std::fs::write(root.join("webhook.key"), webhook_ca.key_pem()).unwrap();
    let mut replicas = vec![
        Replica::start("k-0", &root, &global, &token, &kubeconfig),
        Replica::start("k-1", &root, &global, &token, &kubeconfig),
    ];
    let logs = |replicas: &[Replica]| {
        replicas
            .iter()
            .map(|r| format!("--- {}\n{}", r.name, r.log()))
            .collect::<String>()
    };

    // The Lease holder joined (once: the token is single use) and published the credentials;
    // both replicas serve with the same zone identity.
    eventually("both replicas ready", Duration::from_secs(30), async || {
        for r in &replicas {
            if !r.ready().await {
                return None;
            }
        }
        Some(())
    })
    .await;
    let secret = api
        .get(SECRETS, NS, "strait-zone-credentials")
        .unwrap_or_else(|| panic!("no credentials Secret\n{}", logs(&replicas)));
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "strait-zone"
    );
    assert!(!replicas[0].cp_cert().is_empty());
    assert_eq!(replicas[0].cp_cert(), replicas[1].cp_cert());
    let joined = replicas
        .iter()
        .filter(|r| r.log().contains("joined the federation"))
        .count();
    assert_eq!(joined, 1, "exactly one replica joins\n{}", logs(&replicas));

    // Exactly one primary: the Lease holder. The other observes (connected, not speaking).
    let leader = eventually("one primary", Duration::from_secs(20), async || {
        let holder = lease_holder(&api)?;
        let mut primaries = Vec::new();
        for r in &replicas {
            if r.gauge("strait_zone_sync_connected").await != Some(1.0) {
                return None;
            }
            if r.gauge("strait_zone_sync_primary").await == Some(1.0) {
                primaries.push(r.name.clone());
            }
        }
        (primaries == [holder.clone()]).then_some(holder)
    })
    .await;

    // The cluster's exported service reaches global through the primary.
    export_echo(&api, 1);
    eventually(
        "echo of zone k at global",
        Duration::from_secs(20),
        async || (echo_in_zone_k(&fed) == Some((1, 1))).then_some(()),
    )
    .await;
    assert!(fed.zone_connected("k"));

    // A namespace labelled for injection gets the federation's bundle for its sidecars.
    api.put(
        "api/v1/namespaces",
        "",
        json!({"metadata": {"name": "demo", "labels": {"strait.dev/inject": "enabled"}}}),
    );
    let bundle = eventually(
        "the trust bundle ConfigMap",
        Duration::from_secs(20),
        async || {
            let cm = api.get(CONFIGMAPS, "demo", "strait-trust-bundle")?;
            cm["data"]["bundle.pem"].as_str().map(str::to_owned)
        },
    )
    .await;
    assert!(bundle.contains("BEGIN CERTIFICATE"), "{bundle}");
    assert_eq!(
        bundle.trim(),
        read(&fed.dir.path().join("admin/bundle.pem")).trim(),
        "the ConfigMap holds the federation's roots"
    );

    // SIGKILL the leader: no release, so the survivor takes the Lease when it expires (2 s),
    // becomes the primary and speaks for the zone; global kept the inventory meanwhile.
    let index = replicas.iter().position(|r| r.name == leader).unwrap();
    let dead = replicas.remove(index);
    drop(dead);
    assert_eq!(
        echo_in_zone_k(&fed),
        Some((1, 1)),
        "global keeps the inventory"
    );
    let survivor = &replicas[0];
    eventually(
        "the survivor is primary",
        Duration::from_secs(20),
        async || {
            (lease_holder(&api).as_deref() == Some(survivor.name.as_str())
                && survivor.gauge("strait_zone_sync_primary").await == Some(1.0))
            .then_some(())
        },
    )
    .await;
    eventually(
        "zone k connected again",
        Duration::from_secs(20),
        async || fed.zone_connected("k").then_some(()),
    )
    .await;
    // A change now reaches global: the survivor reports.
    export_echo(&api, 2);
    eventually(
        "the survivor's report",
        Duration::from_secs(20),
        async || (echo_in_zone_k(&fed) == Some((2, 2))).then_some(()),
    )
    .await;
    api.delete(
        "apis/multicluster.x-k8s.io/v1alpha1/serviceexports",
        "demo",
        "echo",
    );
    eventually("echo unexported", Duration::from_secs(20), async || {
        echo_in_zone_k(&fed).is_none().then_some(())
    })
    .await;
    // The new leader keeps the bundle ConfigMaps too: a deleted one comes back.
    api.delete(CONFIGMAPS, "demo", "strait-trust-bundle");
    eventually(
        "the bundle ConfigMap restored",
        Duration::from_secs(20),
        async || {
            api.get(CONFIGMAPS, "demo", "strait-trust-bundle")
                .map(|_| ())
        },
    )
    .await;
    assert!(survivor.ready().await, "{}", logs(&replicas));
}
