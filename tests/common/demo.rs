//! Calls into a `strait up --demo` federation the way a user would: plain HTTP/1.1 to a VIP,
//! `strait services` for the VIPs, `strait apply` for policies.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use super::Federation;

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub async fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    super::http_request(addr, path, headers, Duration::from_secs(10)).await
}

/// echo's VIP:port in `zone`, as `strait services` shows it.
pub fn vip(fed: &Federation, service: &str, zone: &str) -> String {
    let out = fed.strait(&["services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap();
    format!(
        "{}:{}",
        s["vips"][zone].as_str().unwrap(),
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
