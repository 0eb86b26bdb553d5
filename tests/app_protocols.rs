//! Real application protocols through the mesh, with clients and servers nobody here wrote:
//! grpc-go's interop client and server, Python grpcio with health checking, metadata and
//! trailers, a Python `websockets` echo. Each server runs as an app behind a Strait sidecar; each
//! client calls a service VIP of a zone's client sidecar, in the same zone or across zones
//! through the east-west gateways (a VIP pinned to a zone).
//!
//! The peers come from `scripts/peers.sh` (docs/testing.md, "Real peers").

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail by panicking.

mod common;

use std::time::Duration;

use common::BIN;
use common::demo::pinned_vip;
use common::peers::{self, Instance, run, script, wait_served};
use strait_test_support::federation::{Federation, eventually};
use strait_test_support::net::free_port;

fn own(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

/// The interop cases grpc-go's client runs, each a separate call pattern (unary, client, server
/// and bidirectional streaming, metadata, status, deadlines, cancellation).
const INTEROP_CASES: [&str; 13] = [
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "custom_metadata",
    "status_code_and_message",
    "special_status_message",
    "unimplemented_method",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_interop_and_python_grpc_and_websocket_across_zones() {
    let mut fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let python = peers::peer("STRAIT_PEERS_PYTHON");

    // grpc-go's interop server, in zone b only.
    let interop_app = free_port();
    Instance {
        zone: "b",
        service: "interop",
        name: "interop-b",
        app: &interop_app,
        app_protocol: "grpc",
    }
    .start(
        &mut fed,
        &peers::peer("STRAIT_GRPC_INTEROP_SERVER"),
        // On its address only: on every address it would hold the VIP's port too, and a call
        // to the VIP would reach it past the mesh (tests/peers/interop-server).
        &own(&["-listen", &interop_app]),
    );
    // Python grpcio servers in both zones, each naming its zone in `x-server-name`, on one
    // port (a service's port is the same in every zone; its VIPs carry that port).
    let grpc_port = port_of(&free_port()).to_owned();
    for (zone, host) in [("a", "127.1.0.201"), ("b", "127.1.1.201")] {
        let app = format!("{host}:{grpc_port}");
        let name = format!("pygrpc-{zone}");
        Instance {
            zone,
            service: "pygrpc",
            name: &name,
            app: &app,
            app_protocol: "grpc",
        }
        .start(
            &mut fed,
            &python,
            &own(&[
                &script("grpc_server.py"),
                "--host",
                host,
                "--port",
                &grpc_port,
                "--name",
                zone,
            ]),
        );
    }
    // A WebSocket echo in zone b, on a port declared plain HTTP: the upgrade is detected.
    let ws_app = free_port();
    Instance {
        zone: "b",
        service: "pyws",
        name: "pyws-b",
        app: &ws_app,
        app_protocol: "http",
    }
    .start(
        &mut fed,
        &python,
        &own(&[
            &script("ws_echo_server.py"),
            "--port",
            port_of(&ws_app),
            "--name",
            "b",
        ]),
    );
    wait_served(&fed, "interop", &["b"]).await;
    wait_served(&fed, "pygrpc", &["a", "b"]).await;
    wait_served(&fed, "pyws", &["b"]).await;

    // grpc-go interop, from zone a to zone b through the gateways.
    let interop = pinned_vip(&fed, "interop", "b", "a");
    let (host, port) = interop.rsplit_once(':').unwrap();
    let client = peers::peer("STRAIT_GRPC_INTEROP_CLIENT");
    // The first call may find the client sidecar's listener still binding: wait for one pass.
    eventually(
        "the interop VIP answers",
        Duration::from_secs(20),
        async || {
            let args = own(&[
                "--server_host",
                host,
                "--server_port",
                port,
                "--use_tls=false",
                "--test_case",
                "empty_unary",
            ]);
            run(&client, &args, Duration::from_secs(10)).0.then_some(())
        },
    )
    .await;
    let mut failed = Vec::new();
    for case in INTEROP_CASES {
        let args = own(&[
            "--server_host",
            host,
            "--server_port",
            port,
            "--use_tls=false",
            "--test_case",
            case,
        ]);
        let (ok, output) = run(&client, &args, Duration::from_secs(30));
        if !ok {
            failed.push(format!("{case}:\n{output}"));
        }
    }
    assert!(
        failed.is_empty(),
        "interop cases failed across zones:\n{}",
        failed.join("\n")
    );
    // Through the mesh, not around it: zone a's client sidecar carried the calls to zone b.
    let page = strait_test_support::metrics::scrape(&fed.address("client-a-sidecar", "admin"))
        .await
        .expect("client-a-sidecar /metrics");
    let interop_calls = strait_test_support::metrics::sample(
        &page,
        "strait_sidecar_outbound_grpc_calls_total",
        &[("service", "demo/interop"), ("zone", "b"), ("class", "ok")],
    )
    .unwrap_or(0.0);
    assert!(interop_calls >= 8.0, "{page}");

    // Python grpcio, in the same zone and across zones: health, metadata and trailers,
    // streaming both ways, a status and message set by the server.
    for (to, expect) in [("a", "a"), ("b", "b")] {
        let target = pinned_vip(&fed, "pygrpc", to, "a");
        // The client sidecar may not listen on the VIP yet: wait for a first health check.
        eventually(
            &format!("pygrpc pinned to {to} answers"),
            Duration::from_secs(20),
            async || {
                let args = own(&[&script("grpc_client.py"), "health", "--target", &target]);
                run(&python, &args, Duration::from_secs(10)).0.then_some(())
            },
        )
        .await;
        for scenario in ["health", "unary", "stream", "bidi", "status"] {
            let (ok, output) = run(
                &python,
                &own(&[
                    &script("grpc_client.py"),
                    scenario,
                    "--target",
                    &target,
                    "--expect-server",
                    expect,
                ]),
                Duration::from_secs(30),
            );
            assert!(ok, "grpcio {scenario} a→{to} via {target}: {output}");
        }
        let (ok, output) = run(
            &python,
            &own(&[
                &script("grpc_client.py"),
                "unary",
                "--target",
                &target,
                "--size",
                "1048576",
            ]),
            Duration::from_secs(30),
        );
        assert!(ok, "grpcio 1 MiB unary a→{to}: {output}");
    }

    // The caller's sidecar counts the calls by grpc-status class (all 200s over HTTP): the
    // `status` scenario's NOT_FOUND is a client error, the rest succeeded.
    let page = strait_test_support::metrics::scrape(&fed.address("client-a-sidecar", "admin"))
        .await
        .expect("client-a-sidecar /metrics");
    let calls = |zone: &str, class: &str| {
        strait_test_support::metrics::sample(
            &page,
            "strait_sidecar_outbound_grpc_calls_total",
            &[("service", "demo/pygrpc"), ("zone", zone), ("class", class)],
        )
        .unwrap_or(0.0)
    };
    assert!(calls("b", "ok") >= 4.0, "{page}");
    assert!(calls("b", "client-error") >= 1.0, "{page}");
    assert!(calls("local", "ok") >= 4.0, "{page}");

    // WebSocket across zones: many messages, 1 MiB binary, still open after an idle pause.
    let ws = pinned_vip(&fed, "pyws", "b", "a");
    eventually(
        "the pyws VIP pinned to b listens",
        Duration::from_secs(20),
        async || std::net::TcpStream::connect(&ws).is_ok().then_some(()),
    )
    .await;
    let (ok, output) = run(
        &python,
        &own(&[
            &script("ws_client.py"),
            "--url",
            &format!("ws://{ws}/echo"),
            "--count",
            "1000",
            "--idle",
            "3",
            "--expect-server",
            "b",
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "websocket a→b via {ws}: {output}");

    // The same over HTTP/2: RFC 8441 extended CONNECT from the client (Python h2 and wsproto),
    // the HTTP/1.1 handshake `websockets` serves at the other end.
    let (ok, output) = run(
        &python,
        &own(&[
            &script("h2_ws_client.py"),
            "--addr",
            &ws,
            "--count",
            "200",
            "--idle",
            "3",
            "--expect-server",
            "b",
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "websocket over HTTP/2 a→b via {ws}: {output}");
}

/// Resident memory of `pid` in KiB (`VmRSS`), or 0 once it is gone.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_each_way_streams_through_sidecars_and_gateways_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let mut fed = Federation::up(BIN, &["--zones", "a,b", "--demo"]);
    let python = peers::peer("STRAIT_PEERS_PYTHON");
    let app = free_port();
    Instance {
        zone: "b",
        service: "bulk",
        name: "bulk-b",
        app: &app,
        app_protocol: "http",
    }
    .start(
        &mut fed,
        &python,
        &own(&[&script("bulk_server.py"), "--port", port_of(&app)]),
    );
    wait_served(&fed, "bulk", &["b"]).await;
    let target = pinned_vip(&fed, "bulk", "b", "a");
    let transfer = |direction: &str, size: u64| {
        run(
            &python,
            &own(&[
                &script("bulk_client.py"),
                direction,
                "--target",
                &target,
                "--size",
                &size.to_string(),
            ]),
            Duration::from_secs(600),
        )
    };
    // Warm up (connections, pools, TLS) so the baseline is what a proxy holds when serving.
    eventually(
        "a first small transfer across zones",
        Duration::from_secs(20),
        async || transfer("download", 8 << 20).0.then_some(()),
    )
    .await;
    assert!(transfer("upload", 8 << 20).0);
    // Every proxy on the path: both zones' gateways, the caller's sidecar, the app's sidecar.
    let proxies: Vec<(String, u32)> = fed
        .processes()
        .into_iter()
        .filter(|p| {
            p.name == "client-a-sidecar"
                || p.name == "bulk-b-sidecar"
                || p.kind == strait_local::processes::ProcessKind::Gateway
        })
        .map(|p| (p.name, p.pid))
        .collect();
    assert!(proxies.len() >= 4, "{proxies:?}");
    let baseline: Vec<u64> = proxies.iter().map(|(_, pid)| rss_kib(*pid)).collect();
    // Peak resident memory of each, sampled while the gigabytes go through.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pids: Vec<u32> = proxies.iter().map(|(_, pid)| *pid).collect();
        std::thread::spawn(move || {
            let mut peak = vec![0_u64; pids.len()];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, pid) in pids.iter().enumerate() {
                    peak[i] = peak[i].max(rss_kib(*pid));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let (up_ok, up) = transfer("upload", GIB);
    let (down_ok, down) = transfer("download", GIB);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert!(up_ok, "1 GiB upload a→b: {up}");
    assert!(down_ok, "1 GiB download b→a: {down}");
    println!("upload: {}download: {}", up, down);
    // Flat: a proxy that buffered a body would grow by hundreds of MiB; windows and buffers
    // bounded per stream allow a few.
    for (((name, _), before), peak) in proxies.iter().zip(&baseline).zip(&peak) {
        println!("{name}: {before} KiB before, {peak} KiB at peak");
        assert!(
            peak.saturating_sub(*before) < 48 * 1024,
            "{name} grew from {before} KiB to {peak} KiB while 2 GiB went through"
        );
    }
}
