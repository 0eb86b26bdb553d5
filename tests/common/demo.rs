//! Calls into a `strait up --demo` federation the way a user would: plain HTTP/1.1 to a VIP,
//! `strait services` for the VIPs, `strait apply` for policies.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use strait_test_support::federation::Federation;

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub async fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    strait_test_support::http::request(addr, path, headers, Duration::from_secs(10)).await
}

/// `service` as `strait services -o json` shows it.
pub fn service_status(fed: &Federation, service: &str) -> serde_json::Value {
    let out = fed.strait(&["services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap()
        .clone()
}

/// `service`'s VIP:port in `zone`, as `strait services` shows it.
pub fn vip(fed: &Federation, service: &str, zone: &str) -> String {
    let s = service_status(fed, service);
    format!(
        "{}:{}",
        s["vips"][zone].as_str().unwrap(),
        s["ports"][0]["port"]
    )
}

/// `service`'s VIP pinned to `zone`, in `caller`'s range, with its port.
pub fn pinned_vip(fed: &Federation, service: &str, zone: &str, caller: &str) -> String {
    let s = service_status(fed, service);
    let entry = s["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == zone)
        .unwrap();
    format!(
        "{}:{}",
        entry["pinned_vips"][caller].as_str().unwrap(),
        s["ports"][0]["port"]
    )
}

pub fn apply(fed: &Federation, yaml: &str) {
    let path = fed.dir.path().join(format!("policy-{}.yaml", yaml.len()));
    std::fs::write(&path, yaml).unwrap();
    let out = fed.strait(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `GET /` over HTTP/1.1 to the inbound port at `address`, presenting `creds` and trusting this
/// federation's root (any identity of it): the status and body, or why there was none.
pub async fn mtls_get(
    fed: &Federation,
    address: &str,
    creds: strait_trust::tls::CredentialStore,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let trust = strait_trust::tls::TrustStore::new(super::sidecar::bundle(fed));
    let tls = strait_trust::tls::client_config(
        &creds,
        &trust,
        Arc::new(strait_trust::tls::AllowAny),
        vec![b"http/1.1".to_vec()],
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("strait").unwrap();
    // With TLS 1.3 the client finishes its handshake before the server has checked the client's
    // certificate: a refusal shows as an alert on the first read.
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}
