//! The zone's DNS server as real processes (issue: "Cross-zone service discovery by DNS"):
//! `strait up --demo`, then Debian's `dig` — not our own client — against each zone's
//! `addresses.dns`, and `curl` to the address it answers — for zone-pinned names too, which
//! must reach their zone only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::BIN;
use common::sidecar::{self, Discovery};
use strait_proto as pb;
use strait_test_support::federation::{Federation, eventually};
use strait_test_support::http;

/// What `dig` printed, parsed.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// Answer records as `NAME TTL CLASS TYPE RDATA...`, whitespace-normalised.
    answers: Vec<String>,
    authority: Vec<String>,
    raw: String,
}

impl Dig {
    /// The RDATA of the answers of `rtype`.
    fn rdata(&self, rtype: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.get(3) == Some(&rtype)).then(|| fields[4..].join(" "))
            })
            .collect()
    }

    fn ttls(&self) -> Vec<u32> {
        self.answers
            .iter()
            .filter_map(|line| line.split(' ').nth(1)?.parse().ok())
            .collect()
    }
}

/// `dig @IP -p PORT NAME TYPE` (over TCP with `tcp`).
fn dig(server: &str, name: &str, rtype: &str, tcp: bool) -> Dig {
    let (ip, port) = server.rsplit_once(':').unwrap();
    let mut command = Command::new("dig");
    command.args([
        &format!("@{ip}"),
        "-p",
        port,
        name,
        rtype,
        "+tries=1",
        "+time=2",
    ]);
    if tcp {
        command.arg("+tcp");
    }
    let out = command
        .output()
        .expect("dig (Debian package bind9-dnsutils) must be installed");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = raw
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default()
        .to_owned();
    let flags = raw
        .split(";; flags: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let section = |title: &str| -> Vec<String> {
        raw.split(&format!(";; {title} SECTION:\n"))
            .nth(1)
            .map(|rest| {
                rest.lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect()
            })
            .unwrap_or_default()
    };
    Dig {
        status,
        flags,
        answers: section("ANSWER"),
        authority: section("AUTHORITY"),
        raw,
    }
}

/// `service`'s VIP for `zone`, as `strait services -o json` shows it.
fn vip(fed: &Federation, service: &str, zone: &str) -> Option<String> {
    let out = fed.strait(&["services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = services.as_array()?.iter().find(|s| s["name"] == service)?;
    Some(s["vips"][zone].as_str()?.to_owned())
}

/// The zones `strait services` lists for `service`.
fn zones_of(fed: &Federation, service: &str) -> Vec<String> {
    let out = fed.strait(&["services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    services
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == service))
        .and_then(|s| s["zones"].as_array())
        .map(|zones| {
            zones
                .iter()
                .filter_map(|z| z["zone"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `curl -s -w '\n%{http_code}' URL`: (status, body).
fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_answers_the_vip_strait_services_shows_and_curl_reaches_echo() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);

    for zone in ["a", "b"] {
        let dns = fed.address(&format!("zone-{zone}"), "dns");
        let echo_vip = eventually("echo's VIP", Duration::from_secs(30), async || {
            vip(&fed, "echo", zone)
        })
        .await;
        for tcp in [false, true] {
            let answer = eventually("echo in DNS", Duration::from_secs(10), async || {
                let d = dig(&dns, "echo.demo.svc.clusterset.local", "A", tcp);
                (d.status == "NOERROR" && !d.answers.is_empty()).then_some(d)
            })
            .await;
            assert_eq!(answer.rdata("A"), vec![echo_vip.clone()], "{}", answer.raw);
            assert!(answer.flags.contains(&"aa".to_owned()), "{}", answer.raw);
            assert!(!answer.flags.contains(&"ra".to_owned()), "{}", answer.raw);
            assert_eq!(answer.ttls(), vec![5], "{}", answer.raw);
        }
        // The address DNS gives is one the data plane serves: echo answers through it.
        let (status, body) = curl(&format!("http://{echo_vip}:8080/"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""service":"echo""#), "{body}");

        // ledger runs in the last zone only, yet has a VIP (and a name) in every zone.
        let ledger_vip = vip(&fed, "ledger", zone).unwrap();
        let ledger = dig(&dns, "LEDGER.demo.svc.ClusterSet.local", "A", false);
        assert_eq!(ledger.rdata("A"), vec![ledger_vip], "{}", ledger.raw);

        let srv = dig(
            &dns,
            "_http._tcp.echo.demo.svc.clusterset.local",
            "SRV",
            false,
        );
        assert_eq!(srv.status, "NOERROR", "{}", srv.raw);
        assert_eq!(
            srv.rdata("SRV"),
            vec!["0 100 8080 echo.demo.svc.clusterset.local.".to_owned()],
            "{}",
            srv.raw
        );

        let nope = dig(&dns, "nope.demo.svc.clusterset.local", "A", false);
        assert_eq!(nope.status, "NXDOMAIN", "{}", nope.raw);
        assert!(nope.flags.contains(&"aa".to_owned()), "{}", nope.raw);
        assert!(
            nope.authority.iter().any(|r| r.contains(" SOA ")),
            "{}",
            nope.raw
        );

        let nodata = dig(&dns, "echo.demo.svc.clusterset.local", "AAAA", false);
        assert_eq!(nodata.status, "NOERROR", "{}", nodata.raw);
        assert!(nodata.answers.is_empty(), "{}", nodata.raw);

        for name in ["example.com", "kubernetes.default.svc.cluster.local"] {
            let refused = dig(&dns, name, "A", false);
            assert_eq!(refused.status, "REFUSED", "{name}: {}", refused.raw);
            assert!(refused.answers.is_empty(), "{}", refused.raw);
        }
    }

    // The queries were counted, by type and rcode.
    let admin = fed.address("zone-a", "admin");
    let (_, metrics) = http::get(&admin, "/metrics").await;
    for series in [
        r#"strait_zone_dns_queries_total{protocol="udp",rcode="NOERROR",type="A"}"#,
        r#"strait_zone_dns_queries_total{protocol="tcp",rcode="NOERROR",type="A"}"#,
        r#"strait_zone_dns_queries_total{protocol="udp",rcode="NXDOMAIN",type="A"}"#,
        r#"strait_zone_dns_queries_total{protocol="udp",rcode="REFUSED",type="A"}"#,
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_a_new_service_within_a_second_and_a_second_zone_keeps_the_vip() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let dns = fed.address("zone-a", "dns");
    let name = "late.demo.svc.clusterset.local";
    assert_eq!(dig(&dns, name, "A", false).status, "NXDOMAIN");

    // A service appears in zone a. The clock starts when the zone pushes it to its sidecars
    // (the data plane binds its VIP then): DNS must answer it within a second of that.
    let registered = Instant::now();
    let late = sidecar::bootstrap(&fed, "a", "demo", "late").await.unwrap();
    let mut stream =
        Discovery::connect(&fed, "a", &late, "late", "late-1", "127.0.0.1:9", &[]).await;
    let config = stream
        .wait_for("late with a VIP", Duration::from_secs(20), |c| {
            sidecar::service(c, "demo", "late").is_some_and(|s| !s.vip.is_empty())
        })
        .await;
    let pushed = Instant::now();
    let late_vip = sidecar::service(&config, "demo", "late")
        .unwrap()
        .vip
        .clone();
    loop {
        let answer = dig(&dns, name, "A", false);
        if answer.rdata("A") == vec![late_vip.clone()] {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(1),
            "DNS still answers {} {:?} 1 s after the sidecars got {late_vip}",
            answer.status,
            answer.answers
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "late: in DNS {:?} after the config push, {:?} after the registration",
        pushed.elapsed(),
        registered.elapsed()
    );
    assert_eq!(vip(&fed, "late", "a").as_deref(), Some(late_vip.as_str()));
    let srv = dig(
        &dns,
        "_http._tcp.late.demo.svc.clusterset.local",
        "SRV",
        true,
    );
    assert_eq!(
        srv.rdata("SRV"),
        vec!["0 100 8080 late.demo.svc.clusterset.local.".to_owned()],
        "{}",
        srv.raw
    );

    // ledger, so far only in zone b, is exported by zone a too: its name keeps its VIP.
    let before = dig(&dns, "ledger.demo.svc.clusterset.local", "A", false).rdata("A");
    assert_eq!(before.len(), 1, "{before:?}");
    let ledger = sidecar::bootstrap(&fed, "a", "demo", "ledger")
        .await
        .unwrap();
    let mut ledger_a = Discovery::connect(
        &fed,
        "a",
        &ledger,
        "ledger",
        "ledger-a",
        "127.0.0.1:10",
        &[],
    )
    .await;
    // Zone a's compiled services (what DNS answers from) now have ledger served locally.
    ledger_a
        .wait_for("ledger served in zone a", Duration::from_secs(20), |c| {
            sidecar::zones_serving(c, "demo", "ledger").contains(&"a".to_owned())
        })
        .await;
    eventually(
        "ledger exported by zone a",
        Duration::from_secs(20),
        async || {
            zones_of(&fed, "ledger")
                .contains(&"a".to_owned())
                .then_some(())
        },
    )
    .await;
    let after = dig(&dns, "ledger.demo.svc.clusterset.local", "A", false).rdata("A");
    assert_eq!(
        after, before,
        "a second zone exporting ledger must not move its VIP"
    );
    assert_eq!(vip(&fed, "ledger", "a"), before.first().cloned());
    ledger_a.close();
    stream.close();
}

/// `service`'s VIP pinned to `serving`, in `client`'s range, as `strait services -o json`
/// shows it.
fn pinned_vip(fed: &Federation, service: &str, serving: &str, client: &str) -> Option<String> {
    let out = fed.strait(&["services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = services.as_array()?.iter().find(|s| s["name"] == service)?;
    let zone = s["zones"]
        .as_array()?
        .iter()
        .find(|z| z["zone"] == serving)?;
    Some(zone["pinned_vips"][client].as_str()?.to_owned())
}

/// `curl -s -i URL`: (status, headers, body).
fn curl_with_headers(url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", url])
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_pinned_names_route_only_to_their_zone_and_never_fall_back() {
    let fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let dns = fed.address("zone-a", "dns");
    let clusterset = eventually("echo's VIP", Duration::from_secs(30), async || {
        vip(&fed, "echo", "a")
    })
    .await;

    // echo runs in both zones: zone a's DNS has a pinned name for each, answering the VIP
    // `strait services` shows for that (service, zone) in zone a's range.
    let mut pinned = Vec::new();
    for zone in ["a", "b"] {
        let name = format!("echo.demo.svc.{zone}.mesh.local");
        let answer = eventually("the pinned name", Duration::from_secs(30), async || {
            let d = dig(&dns, &name, "A", false);
            (d.status == "NOERROR" && !d.answers.is_empty()).then_some(d)
        })
        .await;
        let address = answer.rdata("A");
        assert_eq!(address.len(), 1, "{}", answer.raw);
        let address = address[0].clone();
        assert_eq!(
            Some(address.clone()),
            pinned_vip(&fed, "echo", zone, "a"),
            "{}",
            answer.raw
        );
        assert_ne!(address, clusterset, "a pinned VIP is not the service's VIP");
        pinned.push((zone, address));
    }
    assert_ne!(pinned[0].1, pinned[1].1);

    // Every call to a pinned VIP is answered by that zone — zone a's client sidecar has
    // healthy echo endpoints of its own, yet the b VIP always crosses to zone b.
    for (zone, address) in &pinned {
        let url = format!("http://{address}:8080/");
        eventually(
            "the pinned VIP answering",
            Duration::from_secs(30),
            async || (curl(&url).0 == 200).then_some(()),
        )
        .await;
        let expected = format!(r#""zone":"{zone}""#);
        for i in 0..20 {
            let (status, body) = curl(&url);
            assert_eq!(status, 200, "call {i} to {url}: {body}");
            assert!(body.contains(&expected), "call {i} to {url}: {body}");
            assert!(body.contains(r#""service":"echo""#), "{body}");
        }
    }

    // Zone b's echo is taken out through the control plane: its pinned VIP answers 503 at
    // once instead of falling back to zone a, while zone a's names keep answering.
    let admin = fed.client();
    admin
        .call(|mut c| async move {
            c.set_drain(pb::SetDrainRequest {
                service: Some(pb::ServiceRef {
                    namespace: "demo".into(),
                    name: "echo".into(),
                }),
                zone: "b".into(),
                drained: true,
            })
            .await
        })
        .await
        .unwrap();
    let b_url = format!("http://{}:8080/", pinned[1].1);
    let (headers, body) = eventually(
        "503 from the drained zone's pinned VIP",
        Duration::from_secs(20),
        async || {
            let (status, headers, body) = curl_with_headers(&b_url);
            if status == 200 {
                assert!(body.contains(r#""zone":"b""#), "fell back: {body}");
            }
            (status == 503).then_some((headers, body))
        },
    )
    .await;
    assert!(
        headers.contains("x-strait-error: no-healthy-upstream"),
        "{headers}\n{body}"
    );
    for _ in 0..5 {
        let (status, _, body) = curl_with_headers(&b_url);
        assert_eq!(status, 503, "{body}");
    }
    for url in [
        format!("http://{}:8080/", pinned[0].1),
        format!("http://{clusterset}:8080/"),
    ] {
        let (status, body) = curl(&url);
        assert_eq!(status, 200, "{url}: {body}");
        assert!(body.contains(r#""zone":"a""#), "{url}: {body}");
    }
}
