//! The data plane as real processes: `strait up --demo`, then calls through the client
//! sidecar's VIP listeners (issue: "Sidecar data plane"), within a zone. Cross-zone calls are in
//! `tests/gateway.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::BIN;
use common::demo::{apply, get, json, mtls_get, vip};
use strait_test_support::federation::{Federation, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_the_vip_carry_the_callers_identity_end_to_end() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    let (status, body) = get(
        &echo,
        "/",
        &[(
            "x-strait-peer-identity",
            "spiffe://strait.local/ns/evil/sa/spoof",
        )],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert_eq!(answer["zone"], "a");
    assert_eq!(answer["service"], "echo");
    assert_eq!(
        answer["peer_identity"], "spiffe://strait.local/ns/demo/sa/client",
        "a spoofed header must be replaced"
    );

    // An inbound port refuses a plaintext client and a client from another federation.
    let inbound = fed.address("echo-v1-a-sidecar", "inbound");
    let (status, _) = get(&inbound, "/", &[]).await;
    assert_eq!(
        status, 0,
        "plaintext must not get an HTTP answer from an mTLS port"
    );
    // The client trusts this federation's root, so whatever fails is the sidecar refusing the
    // client's certificate. The same call with a certificate from this federation is answered.
    let own = common::sidecar::bootstrap(&fed, "a", "demo", "client")
        .await
        .unwrap();
    let (status, body) = mtls_get(&fed, &inbound, own.creds).await.unwrap();
    assert_eq!(status, 200, "a client of this federation is served: {body}");
    let other =
        strait_trust::ca::RootCa::generate("strait.local", Duration::from_secs(3600)).unwrap();
    let key = strait_trust::keys::KeyPair::generate().unwrap();
    let id = strait_trust::spiffe::SpiffeId::workload("strait.local", "demo", "client").unwrap();
    let issued = other
        .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, Duration::from_secs(3600))
        .unwrap();
    let creds =
        strait_trust::tls::CredentialStore::from_pem(&issued.chain_pem, &key.to_pem()).unwrap();
    let refused = mtls_get(&fed, &inbound, creds).await;
    eprintln!("another root: {refused:?}");
    assert!(
        refused.is_err(),
        "a certificate from another root must not get through: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_faults_and_permissions_apply_as_configured() {
    let fed = Federation::up(BIN, &["--zones", "a", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    apply(
        &fed,
        "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {name: echo-split, namespace: demo}\nspec:\n  \
         targetRef: {service: echo}\n  rules:\n  - matches: [{headers: [{name: x-canary, exact: \"yes\"}]}]\n    \
         split: [{labels: {version: v2}, weight: 1}]\n  - split: [{labels: {version: v1}, weight: 90}, {labels: {version: v2}, weight: 10}]\n",
    );
    // Wait until the split is in force (v1 answers appear).
    eventually("the route in force", Duration::from_secs(10), async || {
        let (_, body) = get(&echo, "/", &[]).await;
        (json(&body)["instance"] == "echo-v1-a").then_some(())
    })
    .await;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..2_000 {
        let (status, body) = get(&echo, "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        *counts
            .entry(json(&body)["instance"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let v2 = f64::from(counts.get("echo-v2-a").copied().unwrap_or(0)) / 2_000.0 * 100.0;
    eprintln!("90/10 split over 2000 requests: {counts:?} ({v2:.1}% v2)");
    assert!(
        (5.0..=15.0).contains(&v2),
        "v2 share {v2:.1}% not within 10 ± 5: {counts:?}"
    );
    for _ in 0..20 {
        let (_, body) = get(&echo, "/", &[("x-canary", "yes")]).await;
        assert_eq!(
            json(&body)["instance"],
            "echo-v2-a",
            "header match must route to v2"
        );
    }

    // Fault injection: aborts at the configured rate.
    apply(
        &fed,
        "apiVersion: strait.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: echo-faults, namespace: demo}\nspec:\n  \
         targetRef: {service: echo}\n  abort: {percent: 30, httpStatus: 418}\n",
    );
    eventually("the fault in force", Duration::from_secs(10), async || {
        (get(&echo, "/", &[]).await.0 == 418).then_some(())
    })
    .await;
    let mut aborted = 0;
    for _ in 0..1_000 {
        if get(&echo, "/", &[]).await.0 == 418 {
            aborted += 1;
        }
    }
    eprintln!("fault injection at 30%: {aborted} of 1000 aborted");
    assert!(
        (250..=350).contains(&aborted),
        "{aborted} of 1000 aborted, expected 30 ± 5 %"
    );
    let out = fed.strait(&["delete", "faultinjection", "echo-faults", "-n", "demo"]);
    assert!(out.status.success());

    // TrafficPermission deny: 403 for the client's identity.
    apply(
        &fed,
        "apiVersion: strait.dev/v1alpha1\nkind: TrafficPermission\nmetadata: {name: echo-deny, namespace: demo}\nspec:\n  \
         targetRef: {service: echo}\n  defaultAction: allow\n  rules:\n  - action: deny\n    from: [\"spiffe://strait.local/ns/demo/sa/client\"]\n",
    );
    eventually(
        "403 from the permission",
        Duration::from_secs(10),
        async || (get(&echo, "/", &[]).await.0 == 403).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_an_instance_or_changing_policy_under_load_fails_no_request() {
    let fed = Federation::up(BIN, &["--zones", "a", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    // Warm up both instances.
    for _ in 0..20 {
        assert_eq!(get(&echo, "/", &[]).await.0, 200);
    }
    let mut failures = Vec::new();
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..500 {
        if i == 100 {
            // Kill whichever instance has been answering, mid-stream.
            let busiest = served
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(k, _)| k.clone())
                .unwrap();
            fed.kill(&busiest);
        }
        if i == 300 {
            // And change a policy while requests flow.
            apply(
                &fed,
                "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {name: echo-timeouts, namespace: demo}\n\
                 spec: {targetRef: {service: echo}, request: 3s}\n",
            );
        }
        let (status, body) = get(&echo, "/", &[]).await;
        if status == 200 {
            *served
                .entry(json(&body)["instance"].as_str().unwrap().to_owned())
                .or_default() += 1;
        } else {
            failures.push((i, status, body));
        }
    }
    eprintln!(
        "500 sequential requests, one instance killed at 100, policy changed at 300: served {served:?}"
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        served.len(),
        2,
        "both instances answered at some point: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_their_configured_rate() {
    let fed = Federation::up(BIN, &["--zones", "a", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    assert_eq!(get(&echo, "/", &[]).await.0, 200);
    // 20 requests per second per instance, burst 20: two instances share echo's traffic.
    apply(
        &fed,
        "apiVersion: strait.dev/v1alpha1\nkind: RateLimit\nmetadata: {name: echo-limit, namespace: demo}\n\
         spec: {targetRef: {service: echo}, requests: 20, interval: 1s, burst: 20}\n",
    );
    eventually("the limit in force", Duration::from_secs(10), async || {
        for _ in 0..60 {
            if get(&echo, "/", &[]).await.0 == 429 {
                return Some(());
            }
        }
        None
    })
    .await;
    // Let the buckets refill, then send as fast as possible for 3 s.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let started = std::time::Instant::now();
    let (mut ok, mut limited, mut other) = (0_u32, 0_u32, 0_u32);
    while started.elapsed() < Duration::from_secs(3) {
        match get(&echo, "/", &[]).await.0 {
            200 => ok += 1,
            429 => limited += 1,
            _ => other += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // At most the bursts plus the refill of two instances' buckets.
    let ceiling = 2.0 * (20.0 + 20.0 * elapsed);
    eprintln!(
        "rate limit 20/s per instance: {ok} allowed, {limited} limited, {other} other in {elapsed:.1}s (ceiling {ceiling:.0})"
    );
    assert_eq!(other, 0);
    assert!(limited > 0, "nothing was limited");
    assert!(
        f64::from(ok) <= ceiling + 2.0,
        "{ok} allowed, more than the limit allows ({ceiling:.0})"
    );
    assert!(
        f64::from(ok) >= 20.0 * elapsed,
        "{ok} allowed: far below the configured rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_tls_permissive_lets_plaintext_in_without_an_identity_until_strict_again() {
    let fed = Federation::up(BIN, &["--zones", "a", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    let inbound = fed.address("echo-v1-a-sidecar", "inbound");
    let spoof = [(
        "x-strait-peer-identity",
        "spiffe://strait.local/ns/demo/sa/client",
    )];
    assert_eq!(get(&inbound, "/", &[]).await.0, 0, "STRICT by default");

    let mesh_tls = |mode: &str| {
        format!(
            "apiVersion: strait.dev/v1alpha1\nkind: MeshTLS\nmetadata: {{name: echo-tls, namespace: demo}}\n\
             spec:\n  targetRef: {{service: echo}}\n  mode: {mode}\n"
        )
    };
    apply(&fed, &mesh_tls("PERMISSIVE"));
    let body = eventually("plaintext served", Duration::from_secs(10), async || {
        let (status, body) = get(&inbound, "/", &spoof).await;
        (status == 200).then_some(body)
    })
    .await;
    let answer = json(&body);
    assert_eq!(answer["service"], "echo");
    assert!(
        answer["peer_identity"].is_null(),
        "a plaintext caller has no identity, a spoofed one is removed: {answer}"
    );
    // Mesh callers still arrive over mTLS with their identity.
    let (status, body) = get(&echo, "/", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body)["peer_identity"],
        "spiffe://strait.local/ns/demo/sa/client"
    );

    apply(&fed, &mesh_tls("STRICT"));
    eventually(
        "plaintext refused again",
        Duration::from_secs(10),
        async || (get(&inbound, "/", &[]).await.0 == 0).then_some(()),
    )
    .await;
    assert_eq!(get(&echo, "/", &[]).await.0, 200);
}
