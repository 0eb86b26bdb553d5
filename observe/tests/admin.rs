//! The admin server in-process on loopback: what a scraper, a probe and `strait up` see.

use std::time::Duration;

use prometheus::{IntCounter, Registry};
use strait_observe::{AdminState, CONTENT_TYPE_METRICS, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A response as a client sees it.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends a raw HTTP/1.1 request with `Connection: close` and reads the whole response.
async fn request(
    addr: std::net::SocketAddr,
    raw: &str,
) -> Result<Reply, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw.as_bytes()).await?;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await??;
    let text = String::from_utf8(bytes)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head.split(' ').nth(1).ok_or("no status code")?.parse()?;
    Ok(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Result<Reply, Box<dyn std::error::Error>> {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
    )
    .await
}

struct Running {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(state: AdminState) -> Result<Running, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, stopped));
    Ok(Running { addr, stop, task })
}

#[tokio::test]
async fn every_route_answers_as_documented() -> TestResult {
    let registry = Registry::new();
    let requests = IntCounter::new("strait_test_requests_total", "Requests seen by the test.")?;
    registry.register(Box::new(requests.clone()))?;
    requests.inc_by(3);
    let state = AdminState::new(registry);
    state
        .config
        .set(serde_json::json!({"node_id": 1, "listen": "127.0.0.1:7400"}));
    let server = start(state.clone()).await?;

    let metrics = get(server.addr, "/metrics").await?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .head
            .to_ascii_lowercase()
            .contains(&format!("content-type: {CONTENT_TYPE_METRICS}")),
        "{}",
        metrics.head
    );
    assert!(
        metrics.body.contains("strait_test_requests_total 3"),
        "{}",
        metrics.body
    );

    let ready = get(server.addr, "/ready").await?;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body, "not ready: starting\n");
    state.readiness.set_ready();
    let ready = get(server.addr, "/ready").await?;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body, "ready\n");
    state.readiness.set_not_ready("raft has no leader");
    let ready = get(server.addr, "/ready").await?;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "not ready: raft has no leader\n")
    );

    let health = get(server.addr, "/healthz").await?;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let config = get(server.addr, "/config").await?;
    assert_eq!(config.status, 200);
    let value: serde_json::Value = serde_json::from_str(&config.body)?;
    assert_eq!(value["node_id"], 1);
    state.config.set(serde_json::json!({"node_id": 2}));
    let value: serde_json::Value = serde_json::from_str(&get(server.addr, "/config").await?.body)?;
    assert_eq!(value["node_id"], 2);

    assert_eq!(get(server.addr, "/nope").await?.status, 404);
    let post = request(
        server.addr,
        "POST /ready HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await?;
    assert_eq!(post.status, 405);

    let _ = server.stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server.task).await??;
    Ok(())
}

#[tokio::test]
async fn garbage_and_huge_requests_do_not_hurt_the_server() -> TestResult {
    let state = AdminState::default();
    state.readiness.set_ready();
    let server = start(state).await?;

    // Not HTTP at all: the connection is answered with 400 or closed, never a panic.
    let mut stream = TcpStream::connect(server.addr).await?;
    stream.write_all(b"\x00\x01\x02 not http\r\n\r\n").await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await?;

    // Headers past the buffer bound: rejected, the server carries on.
    let huge = format!(
        "GET /ready HTTP/1.1\r\nHost: admin\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let mut stream = TcpStream::connect(server.addr).await?;
    // The server may close before we finish writing; that is the point.
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await?;
    if let Ok(head) = std::str::from_utf8(&sink) {
        assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
    }

    // A big body on a known route is not read into memory, and the answer is still right.
    let body = "x".repeat(1024 * 1024);
    let mut stream = TcpStream::connect(server.addr).await?;
    stream
        .write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let _ = stream.write_all(body.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await?;
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    assert_eq!(get(server.addr, "/ready").await?.status, 200);

    // Shutdown ends the server even with an idle keep-alive connection open.
    let _idle = TcpStream::connect(server.addr).await?;
    let _ = server.stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server.task).await??;
    Ok(())
}
