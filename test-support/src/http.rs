//! Plain HTTP/1.1 `GET` over a fresh loopback connection, for admin endpoints (`/ready`,
//! `/metrics`, `/config`) and demo apps: what `curl` would show, without a client stack.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET: (status, body). (0, "") when nothing answers.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    request(addr, path, &[], Duration::from_secs(2)).await
}

/// A `GET` with extra headers over a fresh connection, each step bounded by `timeout`:
/// (status, body), (0, "") when nothing answers.
pub async fn request(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> (u16, String) {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
    else {
        return (0, String::new());
    };
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
