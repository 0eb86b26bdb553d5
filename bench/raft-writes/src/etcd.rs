//! The etcd side: three `etcd` members on loopback ports, data dirs next to Strait's, and
//! writers that each keep one HTTP/1.1 connection to the leader's gRPC-gateway JSON API
//! (`POST /v3/kv/put`), which answers once the put is committed and applied.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::Method;
use tokio::time::Instant;

use crate::http1::{self, Conn};
use crate::load::Writer;
use crate::procs::Cleanup;

const MEMBERS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct EtcdCluster {
    /// The leader's client address (`127.0.0.1:PORT`).
    leader: String,
    pids: Vec<u32>,
}

impl EtcdCluster {
    pub async fn start(etcd_bin: &Path, dir: &Path, cleanup: &mut Cleanup) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ports = free_loopback_ports(MEMBERS * 2)?;
        let client = |i: usize| format!("127.0.0.1:{}", ports[i * 2]);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[i * 2 + 1]);
        let initial_cluster = (0..MEMBERS)
            .map(|i| format!("e{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut pids = Vec::with_capacity(MEMBERS);
        for i in 0..MEMBERS {
            let log = std::fs::File::create(dir.join(format!("e{i}.log")))?;
            let data: PathBuf = dir.join(format!("e{i}"));
            let client_url = format!("http://{}", client(i));
            let mut command = Command::new(etcd_bin);
            command
                .arg(format!("--name=e{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={}", peer(i)))
                .arg(format!("--initial-advertise-peer-urls={}", peer(i)))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=strait-bench")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr")
                .stdout(Stdio::null())
                .stderr(log);
            pids.push(cleanup.spawn_group(&format!("etcd e{i}"), &mut command)?);
        }
        let clients: Vec<String> = (0..MEMBERS).map(client).collect();

        let deadline = Instant::now() + READY_TIMEOUT;
        let leader = loop {
            match find_leader(&clients).await {
                Ok(Some(leader)) => break leader,
                _ if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(None) => anyhow::bail!(
                    "etcd elected no leader within {READY_TIMEOUT:?} (logs in {})",
                    dir.display()
                ),
                Err(err) => {
                    return Err(err.context(format!(
                        "etcd not ready within {READY_TIMEOUT:?} (logs in {})",
                        dir.display()
                    )));
                }
            }
        };
        Ok(EtcdCluster { leader, pids })
    }

    pub fn leader_address(&self) -> &str {
        &self.leader
    }

    /// The member processes, for CPU accounting.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// `n` writers, each with its own connection to the leader.
    pub async fn writers(&self, label: &str, n: usize) -> anyhow::Result<Vec<EtcdWriter>> {
        let mut writers = Vec::with_capacity(n);
        for i in 0..n {
            writers.push(EtcdWriter {
                conn: Conn::connect(&self.leader).await?,
                prefix: format!("{label}-w{i}"),
            });
        }
        Ok(writers)
    }
}

/// The member that reports itself as leader (`/v3/maintenance/status`: its own member id equals
/// the leader id), once every member answers.
async fn find_leader(clients: &[String]) -> anyhow::Result<Option<String>> {
    let mut leader = None;
    for addr in clients {
        let (status, body) = http1::once(
            addr,
            Method::POST,
            "/v3/maintenance/status",
            Bytes::from_static(b"{}"),
        )
        .await?;
        anyhow::ensure!(status.is_success(), "{addr}: status answered {status}");
        let reply: serde_json::Value = serde_json::from_slice(&body)?;
        // uint64 fields come as JSON strings from the gateway; compare them as text.
        let text =
            |v: Option<&serde_json::Value>| v.map(|v| v.to_string().trim_matches('"').to_owned());
        let own = text(reply.get("header").and_then(|h| h.get("member_id")));
        let lead = text(reply.get("leader"));
        if own.is_some() && own == lead && lead.as_deref() != Some("0") {
            leader = Some(addr.clone());
        }
    }
    Ok(leader)
}

fn free_loopback_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Hold every listener until all are picked, so the ports differ.
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("picking free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

#[derive(Debug)]
pub struct EtcdWriter {
    conn: Conn,
    prefix: String,
}

/// The put request body: key `/bench/PREFIX-SEQ`, value the same YAML Strait stores.
pub fn put_body(prefix: &str, seq: u64) -> Bytes {
    let key = format!("/bench/{prefix}-{seq}");
    let value = crate::strait::policy_yaml(prefix, seq);
    let body = serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) });
    Bytes::from(body.to_string())
}

impl Writer for EtcdWriter {
    async fn write(&mut self, seq: u64) -> anyhow::Result<()> {
        let (status, body) = self
            .conn
            .request(Method::POST, "/v3/kv/put", put_body(&self.prefix, seq))
            .await?;
        anyhow::ensure!(
            status.is_success(),
            "put answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_carries_the_same_yaml_as_the_strait_write() {
        let body: serde_json::Value = serde_json::from_slice(&put_body("c1-w0", 7)).expect("json");
        let value = B64
            .decode(body["value"].as_str().expect("value"))
            .expect("base64");
        assert_eq!(value, crate::strait::policy_yaml("c1-w0", 7).into_bytes());
        let key = B64
            .decode(body["key"].as_str().expect("key"))
            .expect("base64");
        assert_eq!(key, b"/bench/c1-w0-7");
    }
}
