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
        &own(&["--port", port_of(&interop_app)]),
    );
    // Python grpcio servers in both zones, each naming its zone in `x-server-name`.
    for zone in ["a", "b"] {
        let app = free_port();
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
                "--port",
                port_of(&app),
                "--name",
                zone,
            ]),
        );
    }
    // A WebSocket echo in zone b, on a port declared plain HTTP: the upgrade is detected.
    let ws_app = free_port();
    Instance {
        zone: "b",
        service: "wsecho",
        name: "wsecho-b",
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
    wait_served(&fed, "wsecho", &["b"]).await;

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

    // Python grpcio, in the same zone and across zones: health, metadata and trailers,
    // streaming both ways, a status and message set by the server.
    for (to, expect) in [("a", "a"), ("b", "b")] {
        let target = pinned_vip(&fed, "pygrpc", to, "a");
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

    // WebSocket across zones: many messages, 1 MiB binary, still open after an idle pause.
    let ws = pinned_vip(&fed, "wsecho", "b", "a");
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
}
