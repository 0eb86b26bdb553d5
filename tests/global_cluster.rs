//! The global control plane as real processes on loopback: leader loss, quorum loss, full
//! restart, join tokens and bad input (issue: "Global control plane").

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::BIN;
use strait_global::admin_client::AdminClient;
use strait_proto as pb;
use strait_test_support::federation::{Federation, eventually, leader};
use strait_test_support::http;

fn policy(name: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {{name: {name}, namespace: bench}}\n\
         spec: {{targetRef: {{service: echo}}, request: 2s}}\n"
    )
}

async fn apply(client: &AdminClient, name: &str) -> Result<(), String> {
    let request = pb::ApplyPoliciesRequest {
        yaml: policy(name),
        source: name.to_owned(),
        dry_run: false,
    };
    client
        .call(|mut c| {
            let r = request.clone();
            async move { c.apply_policies(r).await }
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Names of the policies in namespace `bench`, read through `client` (a linearizable read:
/// the node answering has applied everything committed before the call).
async fn stored(client: &AdminClient) -> Result<BTreeSet<String>, String> {
    let request = pb::GetPoliciesRequest {
        kind: String::new(),
        namespace: "bench".into(),
        name: String::new(),
    };
    client
        .call(|mut c| {
            let r = request.clone();
            async move { c.get_policies(r).await }
        })
        .await
        .map(|reply| reply.resources.into_iter().map(|r| r.name).collect())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_keeps_every_acknowledged_write() {
    let mut fed = Federation::up(BIN, &["--global-nodes", "3", "--zones", "none"]);
    let client = fed.client();
    let old_leader = eventually("a leader", Duration::from_secs(10), async || {
        leader(&client).await
    })
    .await;
    let old_leader_name = fed.global_nodes()[&old_leader].clone();

    // A stream of writes, each recorded only once the cluster acknowledged it.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, acked, errors, stop) =
            (client.clone(), acked.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            for i in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = format!("w-{i}");
                match apply(&client, &name).await {
                    Ok(()) => acked.lock().unwrap().push(name),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    eventually(
        "20 acknowledged writes",
        Duration::from_secs(30),
        async || (acked_count() >= 20).then_some(()),
    )
    .await;
    fed.kill(&old_leader_name);
    let at_kill = acked_count();
    let killed_at = Instant::now();
    eventually(
        "writes acknowledged by a new leader",
        Duration::from_secs(30),
        async || (acked_count() >= at_kill + 30).then_some(()),
    )
    .await;
    let recovered_after = killed_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let new_leader = eventually("a new leader", Duration::from_secs(10), async || {
        leader(&client).await
    })
    .await;
    assert_ne!(new_leader, old_leader, "the killed node cannot still lead");
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    eprintln!(
        "{} writes acknowledged ({} before the kill), {} failed during the election; writes resumed within {recovered_after:?}",
        acked.len(),
        at_kill,
        errors.lock().unwrap().len()
    );
    for e in errors.lock().unwrap().iter() {
        eprintln!("  failed write: {e}");
    }
    for (id, name) in fed.global_nodes() {
        if id == old_leader {
            continue;
        }
        let on_node = stored(&fed.node_client(&name)).await.unwrap();
        let missing: Vec<_> = acked.difference(&on_node).collect();
        assert!(
            missing.is_empty(),
            "{name} lost acknowledged writes: {missing:?}"
        );
    }

    // The killed node comes back and catches up.
    fed.restart(&old_leader_name);
    fed.wait_ready(&old_leader_name, Duration::from_secs(30))
        .await;
    let on_node = stored(&fed.node_client(&old_leader_name)).await.unwrap();
    let missing: Vec<_> = acked.difference(&on_node).collect();
    assert!(
        missing.is_empty(),
        "restarted {old_leader_name} is missing acknowledged writes: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_fast_and_a_full_restart_keeps_everything() {
    let mut fed = Federation::up(BIN, &["--global-nodes", "3", "--zones", "none"]);
    let client = fed.client();
    for i in 0..5 {
        apply(&client, &format!("before-{i}")).await.unwrap();
    }
    let nodes = fed.global_nodes();
    let leader = eventually("a leader", Duration::from_secs(10), async || {
        leader(&client).await
    })
    .await;
    // Kill the leader and one follower: one node of three is left, no majority.
    let follower = nodes.keys().copied().find(|id| *id != leader).unwrap();
    let survivor = nodes
        .keys()
        .copied()
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    fed.kill(&nodes[&leader]);
    fed.kill(&nodes[&follower]);

    let policy_file = fed.dir.path().join("during.yaml");
    std::fs::write(&policy_file, policy("during")).unwrap();
    let started = Instant::now();
    let out = fed.strait(&["apply", "-f", policy_file.to_str().unwrap()]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a write without quorum must fail");
    assert!(
        stderr.contains("no quorum"),
        "the error must say why: {stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "no hang: failed after {elapsed:?}"
    );
    eprintln!(
        "write without quorum failed after {elapsed:?}: {}",
        stderr.trim()
    );

    // Status still answers, and says which nodes are unreachable.
    let out = fed.strait(&["status", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let roles: Vec<(u64, String)> = status["global"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(leader, "unreachable".to_owned())),
        "{roles:?}"
    );
    assert!(
        roles.contains(&(follower, "unreachable".to_owned())),
        "{roles:?}"
    );

    // Stop the last one too, then start all three again: everything acknowledged is back.
    fed.kill(&nodes[&survivor]);
    for name in nodes.values() {
        fed.restart(name);
    }
    for name in nodes.values() {
        fed.wait_ready(name, Duration::from_secs(30)).await;
    }
    for name in nodes.values() {
        let on_node = stored(&fed.node_client(name)).await.unwrap();
        for i in 0..5 {
            assert!(
                on_node.contains(&format!("before-{i}")),
                "{name} lost before-{i}: {on_node:?}"
            );
        }
    }
    apply(&client, "after-restart").await.unwrap();
}

/// Joins a zone the way a zone control plane does: trusting global only through the root pin
/// in the token.
async fn zone_join(
    fed: &Federation,
    zone: &str,
    token: &str,
) -> Result<pb::JoinResponse, tonic::Status> {
    use strait_trust::keys::KeyPair;
    use strait_trust::spiffe::SpiffeId;
    let parsed: strait_trust::join_token::JoinToken =
        token
            .trim()
            .parse()
            .map_err(|e: strait_trust::join_token::JoinTokenError| {
                tonic::Status::invalid_argument(e.to_string())
            })?;
    let tls = strait_trust::tls::pinned_client_config(
        "strait.local",
        parsed.root_pin(),
        Arc::new(strait_global::credentials::GlobalNodeAuthorizer),
        vec![b"h2".to_vec()],
    )
    .unwrap();
    let channel = strait_proto::transport::channel(
        &fed.address("global-1", "api"),
        Arc::new(tls),
        Duration::from_secs(2),
    );
    let ca_key = KeyPair::generate().unwrap();
    let cp_key = KeyPair::generate().unwrap();
    let cp_id = SpiffeId::zone_cp("strait.local", zone).unwrap();
    let request = pb::JoinRequest {
        zone: zone.to_owned(),
        token: token.trim().to_owned(),
        ca_csr_pem: ca_key.intermediate_csr("strait.local", zone).unwrap(),
        cp_csr_pem: cp_key.leaf_csr(&cp_id).unwrap(),
        region: String::new(),
    };
    pb::zone_sync_client::ZoneSyncClient::new(channel)
        .join(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_expire_and_name_their_zone() {
    let fed = Federation::up(BIN, &["--zones", "none"]);
    let create = |zone: &str| {
        let out = fed.strait(&["zone", "create", zone]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (token_a, token_b) = (create("a"), create("b"));

    // Zone b's token presented by zone a: refused, and zone b's token stays usable.
    let err = zone_join(&fed, "a", &token_b).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("join token is for zone \"b\", not zone \"a\""),
        "{}",
        err.message()
    );

    let joined = zone_join(&fed, "a", &token_a).await.unwrap();
    assert_eq!(joined.trust_domain, "strait.local");
    let intermediate =
        strait_trust::cert_info::CertInfo::from_pem(&joined.intermediate_cert_pem).unwrap();
    assert!(intermediate.is_ca);
    assert_eq!(
        intermediate.spiffe_id.unwrap().to_string(),
        "spiffe://strait.local/zone/a/ca"
    );

    let err = zone_join(&fed, "a", &token_a).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("join token was already used at"),
        "{}",
        err.message()
    );

    zone_join(&fed, "b", &token_b).await.unwrap();

    // An expired token.
    let out = fed.strait(&["zone", "create", "c", "--token-ttl", "1s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_c = String::from_utf8(out.stdout).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let err = zone_join(&fed, "c", &token_c).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("join token expired at"),
        "{}",
        err.message()
    );

    // A token that was never issued, and one that is not a token at all.
    let forged = format!(
        "stj1.0011223344556677.00112233445566778899aabbccddeeff.{}",
        &token_c.trim()[55..]
    );
    let err = zone_join(&fed, "c", &forged).await.unwrap_err();
    assert!(
        err.message().contains("unknown join token"),
        "{}",
        err.message()
    );
    let err = zone_join(&fed, "c", "hello").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policy_input_is_refused_and_nothing_is_stored() {
    let fed = Federation::up(BIN, &["--zones", "none"]);
    let dir = fed.dir.path();
    let good = policy("fine");
    let cases = [
        (
            "banana.yaml",
            format!(
                "{good}---\n{}",
                policy("echo").replace("request: 2s", "request: banana")
            ),
            "spec.request",
        ),
        (
            "kind.yaml",
            good.replace("kind: Timeout", "kind: Timeoutt"),
            "unknown kind \"Timeoutt\"",
        ),
        (
            "yaml.yaml",
            format!("{good}---\nspec: [\n"),
            "invalid YAML at line",
        ),
        (
            "field.yaml",
            good.replace("request: 2s", "request: 2s, bogus: 1"),
            "spec.bogus",
        ),
    ];
    for (file, text, expect) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let out = fed.strait(&["apply", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} must be refused");
        assert!(
            stderr.contains(expect),
            "{file}: expected {expect:?} in: {stderr}"
        );
    }
    // The server validates too (a client that skips local checks gets the same answer).
    let client = fed.client();
    let request = pb::ApplyPoliciesRequest {
        yaml: policy("x").replace("2s", "banana"),
        source: "raw".into(),
        dry_run: false,
    };
    let err = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.apply_policies(r).await }
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.request"), "{err}");

    let out = fed.strait(&["get", "all", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([]),
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_admin_only_api() {
    let fed = Federation::up(BIN, &["--zones", "none"]);
    let admin = fed.address("global-1", "admin");
    let (status, body) = http::get(&admin, "/ready").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, metrics) = http::get(&admin, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "strait_global_raft_term",
        "strait_global_raft_is_leader 1",
        "strait_global_raft_applied_index",
        "strait_global_write_latency_seconds_bucket",
        "strait_global_raft_snapshots_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    // The admin credential is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fed.dir.path().join("admin/admin.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A workload-like identity (not admin) is refused by the Admin API even with a valid chain.
    // Here: a plain TLS client without any certificate.
    let tls = rustls::ClientConfig::builder_with_provider(strait_trust::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    let mut tls = tls;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let channel = strait_proto::transport::channel(
        &fed.address("global-1", "api"),
        Arc::new(tls),
        Duration::from_secs(2),
    );
    let err = pb::admin_client::AdminClient::new(channel)
        .list_zones(pb::ListZonesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
}

/// Test-only verifier: lets a client without credentials reach the server, to show that the
/// server, not the client, refuses it.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        strait_trust::tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_can_be_removed_and_the_rest_keep_a_quorum() {
    let fed = Federation::up(BIN, &["--global-nodes", "3", "--zones", "none"]);
    let client = fed.client();
    apply(&client, "before-removal").await.unwrap();
    let leader = eventually("a leader", Duration::from_secs(10), async || {
        leader(&client).await
    })
    .await;
    let removed = fed
        .global_nodes()
        .keys()
        .copied()
        .find(|id| *id != leader)
        .unwrap();

    let out = fed.strait(&["global", "remove-node", "--node-id", &removed.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fed.strait(&["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = status["global"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&removed), "{ids:?}");

    // Two voters left: stopping the removed node's process changes nothing, and writes go on.
    fed.kill(&fed.global_nodes()[&removed]);
    apply(&client, "after-removal").await.unwrap();
    let names = stored(&client).await.unwrap();
    assert!(
        names.contains("before-removal") && names.contains("after-removal"),
        "{names:?}"
    );

    // Removing a node that is not a member says so.
    let out = fed.strait(&["global", "remove-node", "--node-id", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 9 is not a member"));
}
