//! Policies do what they say, on real processes (`strait up --demo`): permissions that combine
//! across resources and scopes, port scopes enforced inbound on a multi-port service, label
//! subsets held across zones, and `strait apply` / `strait describe` telling what applies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::time::Duration;

use common::BIN;
use common::demo::{apply, get, json, mtls_get, pinned_vip, vip};
use strait_local::processes::{ProcessKind, ProcessRecord};
use strait_test_support::federation::{Federation, eventually};
use strait_test_support::http;
use strait_test_support::net::free_port;

const CLIENT: &str = "spiffe://strait.local/ns/demo/sa/client";

fn permission(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: TrafficPermission\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n{spec}"
    )
}

/// `strait apply -f` of `yaml`: (success, stderr).
fn apply_output(fed: &Federation, yaml: &str) -> (bool, String) {
    let path = fed.dir.path().join(format!("apply-{}.yaml", yaml.len()));
    std::fs::write(&path, yaml).unwrap();
    let out = fed.strait(&["apply", "-f", path.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn delete(fed: &Federation, kind: &str, name: &str) {
    let out = fed.strait(&["delete", kind, name, "-n", "demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` calls to `vip`: every status seen.
async fn statuses(vip: &str, n: usize) -> Vec<u16> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(get(vip, "/", &[]).await.0);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_combine_and_a_namespace_default_deny_holds() {
    let fed = Federation::up(BIN, &["--zones", "a", "--demo"]);
    let ledger = vip(&fed, "ledger", "a");
    let echo = vip(&fed, "echo", "a");

    // The reported hole: a deny for the client on ledger...
    apply(
        &fed,
        &permission(
            "ledger-deny-client",
            &format!(
                "  targetRef: {{service: ledger}}\n  rules: [{{action: deny, from: [\"{CLIENT}\"]}}]\n"
            ),
        ),
    );
    eventually(
        "ledger denies the client",
        Duration::from_secs(10),
        async || (get(&ledger, "/", &[]).await.0 == 403).then_some(()),
    )
    .await;
    // ...then an allow-list of everyone whose name sorts first: the deny still holds.
    let (ok, stderr) = apply_output(
        &fed,
        &permission(
            "a-allow-everyone",
            "  targetRef: {service: ledger}\n  defaultAction: deny\n  rules: [{action: allow, from: [\"spiffe://strait.local/ns/*/sa/*\"]}]\n",
        ),
    );
    assert!(ok, "{stderr}");
    // Once ledger's sidecar runs both resources, every call is still refused.
    let admin = fed.address("ledger-v1-a-sidecar", "admin");
    eventually(
        "ledger's sidecar runs both",
        Duration::from_secs(10),
        async || {
            let (_, config) = http::get(&admin, "/config").await;
            config.contains("demo/a-allow-everyone").then_some(())
        },
    )
    .await;
    let seen = statuses(&ledger, 50).await;
    assert!(seen.iter().all(|s| *s == 403), "{seen:?}");
    let out = fed.strait(&["describe", "ledger", "-n", "demo", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let described: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses_of: Vec<(String, String)> = described[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses_of,
        vec![
            ("a-allow-everyone".to_owned(), "combined".to_owned()),
            ("ledger-deny-client".to_owned(), "combined".to_owned()),
        ],
        "{described:#}"
    );
    delete(&fed, "trafficpermission", "ledger-deny-client");
    delete(&fed, "trafficpermission", "a-allow-everyone");
    eventually("ledger open again", Duration::from_secs(10), async || {
        (get(&ledger, "/", &[]).await.0 == 200).then_some(())
    })
    .await;

    // A namespace-wide default deny, and an allow on echo for the client: echo 200, ledger 403.
    apply(
        &fed,
        &format!(
            "{}---\n{}",
            permission("demo-default-deny", "  defaultAction: deny\n"),
            permission(
                "echo-from-client",
                &format!(
                    "  targetRef: {{service: echo}}\n  rules: [{{action: allow, from: [\"{CLIENT}\"]}}]\n"
                ),
            )
        ),
    );
    eventually(
        "ledger denied by the namespace default",
        Duration::from_secs(10),
        async || (get(&ledger, "/", &[]).await.0 == 403).then_some(()),
    )
    .await;
    let seen = statuses(&echo, 30).await;
    assert!(seen.iter().all(|s| *s == 200), "echo: {seen:?}");
    let seen = statuses(&ledger, 30).await;
    assert!(seen.iter().all(|s| *s == 403), "ledger: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_scoped_deny_is_enforced_inbound_on_a_multi_port_service() {
    let mut fed = Federation::up(BIN, &["--zones", "a", "--demo"]);
    // A third echo instance whose app listens on 9090: echo becomes a two-port service.
    let token = fed.strait(&[
        "token",
        "workload",
        "--zone",
        "a",
        "--namespace",
        "demo",
        "--service",
        "echo",
    ]);
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token_file = fed.dir.path().join("echo-9090.token");
    std::fs::write(&token_file, &token.stdout).unwrap();
    let app = "127.1.0.90:9090".to_owned();
    let inbound = format!("127.1.0.90:{}", free_port().rsplit_once(':').unwrap().1);
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    fed.start_extra(
        "echo-9090",
        ProcessKind::App,
        "a",
        &own(&[
            "demo-app",
            "--listen",
            &app,
            "--service",
            "echo",
            "--zone",
            "a",
            "--instance",
            "echo-9090",
        ]),
    );
    let template = fed.process("echo-v1-a-sidecar");
    let zone_cp = flag_value(&template, "--zone-cp");
    let bundle = flag_value(&template, "--bundle-file");
    let admin = free_port();
    fed.start_extra(
        "echo-9090-sidecar",
        ProcessKind::Sidecar,
        "a",
        &own(&[
            "sidecar",
            "run",
            "--zone-cp",
            &zone_cp,
            "--zone",
            "a",
            "--token-file",
            token_file.to_str().unwrap(),
            "--service",
            "echo",
            "--namespace",
            "demo",
            "--instance",
            "echo-9090",
            "--inbound",
            &inbound,
            "--bundle-file",
            &bundle,
            "--app",
            &app,
            "--labels",
            "version=v3",
            "--outbound",
            "none",
            "--admin",
            &admin,
        ]),
    );
    eventually(
        "echo has ports 8080 and 9090",
        Duration::from_secs(20),
        async || {
            let out = fed.strait(&["services", "-o", "json"]);
            let services: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let echo = services
                .as_array()?
                .iter()
                .find(|s| s["name"] == "echo")?
                .clone();
            let ports: Vec<u64> = echo["ports"]
                .as_array()?
                .iter()
                .filter_map(|p| p["port"].as_u64())
                .collect();
            (ports == [8080, 9090]).then_some(())
        },
    )
    .await;
    let client = common::sidecar::bootstrap(&fed, "a", "demo", "client")
        .await
        .unwrap();
    let v1 = fed.address("echo-v1-a-sidecar", "inbound");
    let call = async |address: &str| {
        let creds =
            strait_trust::tls::CredentialStore::from_pem(&client.chain_pem, &client.key_pem)
                .unwrap();
        mtls_get(&fed, address, creds)
            .await
            .map(|(status, _)| status)
    };
    eventually(
        "the 9090 instance serves",
        Duration::from_secs(20),
        async || (call(&inbound).await == Ok(200)).then_some(()),
    )
    .await;

    // A deny on port 9090 only: the 9090 instance refuses, the 8080 ones still serve.
    let (ok, stderr) = apply_output(
        &fed,
        &permission(
            "echo-9090-deny",
            "  targetRef: {service: echo, port: 9090}\n  rules: [{action: deny}]\n",
        ),
    );
    assert!(ok, "{stderr}");
    eventually("9090 denies", Duration::from_secs(10), async || {
        (call(&inbound).await == Ok(403)).then_some(())
    })
    .await;
    assert_eq!(call(&v1).await, Ok(200), "port 8080 is not covered");
    // And one on 8080: now the 8080 instances refuse too.
    apply(
        &fed,
        &permission(
            "echo-8080-deny",
            "  targetRef: {service: echo, port: 8080}\n  rules: [{action: deny}]\n",
        ),
    );
    eventually("8080 denies", Duration::from_secs(10), async || {
        (call(&v1).await == Ok(403)).then_some(())
    })
    .await;
    assert_eq!(call(&inbound).await, Ok(403));
    delete(&fed, "trafficpermission", "echo-9090-deny");
    eventually("9090 open again", Duration::from_secs(10), async || {
        (call(&inbound).await == Ok(200)).then_some(())
    })
    .await;
    assert_eq!(call(&v1).await, Ok(403), "the 8080 deny stays");

    // Warnings: a port the service does not have, and an overridden resource.
    let (ok, stderr) = apply_output(
        &fed,
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {name: no-such-port, namespace: demo}\nspec: {targetRef: {service: echo, port: 7777}, request: 1s}\n\
         ---\napiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {name: a-echo, namespace: demo}\nspec: {targetRef: {service: echo}, request: 2s}\n\
         ---\napiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {name: b-echo, namespace: demo}\nspec: {targetRef: {service: echo}, request: 3s}\n",
    );
    assert!(ok, "{stderr}");
    for want in [
        "warning: Timeout demo/no-such-port: service demo/echo has no port 7777 (its ports: 8080, 9090)",
        "warning: Timeout demo/b-echo is overridden on demo/echo:8080 by Timeout demo/a-echo",
        "warning: Timeout demo/a-echo overrides Timeout demo/b-echo on demo/echo:9090",
    ] {
        assert!(stderr.contains(want), "no {want:?} in:\n{stderr}");
    }
    // describe, as a table: one row per port and resource.
    let out = fed.strait(&["describe", "echo", "-n", "demo", "--port", "9090"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(4).collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["9090", "Timeout", "demo/a-echo", "service"],
            vec!["9090", "TrafficPermission", "demo/echo-8080-deny", "port"],
            vec!["9090", "Timeout", "demo/b-echo", "service"],
        ]
        .into_iter()
        .filter(|r| r[1] != "TrafficPermission")
        .collect::<Vec<_>>(),
        "{table}"
    );
    assert!(
        table.contains("overridden by Timeout demo/a-echo"),
        "{table}"
    );
}

/// The demo instance that answered, when `body` is a demo app's answer (not a sidecar's error).
fn answered_by(body: &str) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_str(body).ok()?;
    answer["instance"].as_str().map(str::to_owned)
}

/// The value after `flag` in a process's recorded command line.
fn flag_value(process: &ProcessRecord, flag: &str) -> String {
    let argv = &process.command;
    let i = argv
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag}"));
    argv[i + 1].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_route_is_served_only_by_its_subset_in_every_zone() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let echo = vip(&fed, "echo", "a");
    let route = |labels: &str| {
        format!(
            "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {{name: echo-v2, namespace: demo}}\nspec:\n  \
             targetRef: {{service: echo}}\n  rules:\n  - split: [{{labels: {{version: {labels}}}, weight: 1}}]\n"
        )
    };
    apply(&fed, &route("v2"));
    // Right after `strait up` the subset may have no instance known yet: 503 until it has.
    eventually("the route in force", Duration::from_secs(15), async || {
        let (_, body) = get(&echo, "/", &[]).await;
        (answered_by(&body).as_deref() == Some("echo-v2-a")).then_some(())
    })
    .await;
    // Zone b reports its v2 instance to a (through global) once the route reached it: a call
    // from a to the VIP pinned to b is then answered by b's v2 (before, by nobody).
    let pinned_b = pinned_vip(&fed, "echo", "b", "a");
    eventually(
        "zone b serves v2 to a",
        Duration::from_secs(15),
        async || {
            let (_, body) = get(&pinned_b, "/", &[]).await;
            (answered_by(&body).as_deref() == Some("echo-v2-b")).then_some(())
        },
    )
    .await;

    // This zone's v2 dies: every request is answered by v2 in zone b, none fails.
    let mut answered: std::collections::BTreeMap<String, u32> = Default::default();
    let mut failures = Vec::new();
    for i in 0..300 {
        if i == 50 {
            fed.kill("echo-v2-a-sidecar");
            fed.kill("echo-v2-a");
        }
        let (status, body) = get(&echo, "/", &[]).await;
        if status == 200 {
            *answered
                .entry(json(&body)["instance"].as_str().unwrap().to_owned())
                .or_default() += 1;
        } else {
            failures.push((i, status, body));
        }
    }
    eprintln!("v2-only route, echo-v2-a killed after 50 of 300: {answered:?}");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        answered.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["echo-v2-a", "echo-v2-b"],
        "only v2 instances answer"
    );
    assert!(answered["echo-v2-b"] >= 240, "{answered:?}");

    // A subset nobody serves: 503 no-healthy-upstream at once, never another subset.
    apply(&fed, &route("v9"));
    eventually("v9 is refused", Duration::from_secs(15), async || {
        let (status, body) = get(&echo, "/", &[]).await;
        (status == 503).then_some(body)
    })
    .await;
    let started = std::time::Instant::now();
    let (status, body) = get(&echo, "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("no-healthy-upstream"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
