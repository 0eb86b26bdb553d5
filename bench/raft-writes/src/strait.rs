//! The Strait side: `strait up --global-nodes 3 --zones none`, the leader found with
//! `ClusterStatus`, and writers that each hold their own mTLS gRPC connection and send
//! `ApplyPolicies` with one small policy (one committed Raft entry per call).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Method;
use strait_global::admin_client::{AdminClient, ClientConfig};
use strait_proto as pb;
use tokio::time::Instant;

use crate::load::Writer;
use crate::procs::Cleanup;

/// How long the cluster may take to elect a leader after `strait up` returned.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct StraitCluster {
    /// Client config with the leader's address first.
    config: ClientConfig,
    /// The leader's HTTP admin address (`/metrics`).
    leader_admin: String,
    /// The node processes from `DIR/processes.json`, for CPU accounting.
    pids: Vec<u32>,
}

/// The policy written as item `seq` of writer `prefix`; also the value etcd stores, so both
/// systems carry the same bytes.
pub fn policy_yaml(prefix: &str, seq: u64) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {{name: {prefix}-{seq}, namespace: bench}}\nspec: {{targetRef: {{service: echo}}, request: 2s}}\n"
    )
}

impl StraitCluster {
    pub async fn start(
        strait_bin: &Path,
        dir: &Path,
        cleanup: &mut Cleanup,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        cleanup.track_federation(dir);
        let log = dir.join("up.log");
        let out = tokio::process::Command::new(strait_bin)
            .args(["up", "--global-nodes", "3", "--zones", "none", "--dir"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("up.err"))?)
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("running {} up", strait_bin.display()))?;
        if !out.success() {
            let err = std::fs::read_to_string(dir.join("up.err")).unwrap_or_default();
            anyhow::bail!("strait up failed ({out}):\n{err}");
        }
        let config = ClientConfig::load(&dir.join("config.yaml"))?;
        let client = AdminClient::new(&config)?;

        let deadline = Instant::now() + LEADER_TIMEOUT;
        let status = loop {
            let status = client
                .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
                .await;
            match status {
                Ok(s) if s.leader_id != 0 && s.nodes.len() == 3 => break s,
                _ if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(s) => anyhow::bail!(
                    "no leader with 3 nodes after {LEADER_TIMEOUT:?} (leader {}, {} nodes)",
                    s.leader_id,
                    s.nodes.len()
                ),
                Err(err) => anyhow::bail!("cluster status: {err}"),
            }
        };
        let leader = status
            .nodes
            .iter()
            .find(|n| n.id == status.leader_id)
            .context("the leader is not among the nodes")?;
        let mut global = vec![leader.address.clone()];
        global.extend(
            config
                .global
                .iter()
                .filter(|a| **a != leader.address)
                .cloned(),
        );
        Ok(StraitCluster {
            config: ClientConfig { global, ..config },
            leader_admin: leader.admin_address.clone(),
            pids: crate::procs::recorded_pids(dir),
        })
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    pub fn leader_address(&self) -> &str {
        self.config.global.first().map_or("?", String::as_str)
    }

    /// `n` writers, each with its own channel (so its own TCP + TLS connection).
    pub fn writers(&self, label: &str, n: usize) -> anyhow::Result<Vec<StraitWriter>> {
        (0..n)
            .map(|i| {
                Ok(StraitWriter {
                    client: AdminClient::new(&self.config)?,
                    prefix: format!("{label}-w{i}"),
                })
            })
            .collect()
    }

    /// The leader's `strait_global_write_latency_seconds` sum and count.
    pub async fn write_metric(&self) -> anyhow::Result<WriteMetric> {
        let (status, body) =
            crate::http1::once(&self.leader_admin, Method::GET, "/metrics", Bytes::new()).await?;
        anyhow::ensure!(status.is_success(), "/metrics answered {status}");
        WriteMetric::parse(&String::from_utf8_lossy(&body))
            .context("strait_global_write_latency_seconds not in /metrics")
    }
}

/// A reading of the leader's write latency histogram and its Raft log counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteMetric {
    pub sum_seconds: f64,
    pub count: u64,
    /// `strait_global_log_flushes_total` (absent from builds before the metric existed).
    pub log_flushes: Option<u64>,
    /// `strait_global_log_entries_appended_total`.
    pub entries_appended: Option<u64>,
}

/// What the leader's log did between two readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogCounts {
    pub flushes: u64,
    pub entries: u64,
}

impl WriteMetric {
    fn parse(text: &str) -> Option<Self> {
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some(WriteMetric {
            sum_seconds: value("strait_global_write_latency_seconds_sum")?,
            count: value("strait_global_write_latency_seconds_count")? as u64,
            log_flushes: value("strait_global_log_flushes_total").map(|v| v as u64),
            entries_appended: value("strait_global_log_entries_appended_total").map(|v| v as u64),
        })
    }

    /// Mean latency of the writes observed between `earlier` and this reading.
    pub fn mean_since(&self, earlier: &WriteMetric) -> Option<Duration> {
        let count = self.count.checked_sub(earlier.count).filter(|&c| c > 0)?;
        let sum = self.sum_seconds - earlier.sum_seconds;
        Duration::try_from_secs_f64(sum / count as f64).ok()
    }

    /// Log flushes and appended entries between `earlier` and this reading.
    pub fn log_since(&self, earlier: &WriteMetric) -> Option<LogCounts> {
        Some(LogCounts {
            flushes: self.log_flushes?.checked_sub(earlier.log_flushes?)?,
            entries: self
                .entries_appended?
                .checked_sub(earlier.entries_appended?)?,
        })
    }
}

#[derive(Debug)]
pub struct StraitWriter {
    client: AdminClient,
    prefix: String,
}

impl Writer for StraitWriter {
    async fn write(&mut self, seq: u64) -> anyhow::Result<()> {
        let request = pb::ApplyPoliciesRequest {
            yaml: policy_yaml(&self.prefix, seq),
            source: "bench".to_owned(),
            dry_run: false,
        };
        let reply = self
            .client
            .call(|mut c| {
                let request = request.clone();
                async move { c.apply_policies(request).await }
            })
            .await?;
        anyhow::ensure!(
            reply.results.len() == 1 && reply.results[0].outcome == "created",
            "unexpected answer: {reply:?}"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_histogram_is_read_from_the_exposition() {
        let text = "# HELP x\nstrait_global_write_latency_seconds_bucket{le=\"0.001\"} 3\nstrait_global_write_latency_seconds_sum 0.25\nstrait_global_write_latency_seconds_count 10\n";
        let later = WriteMetric::parse(text).expect("parsed");
        assert_eq!(later.count, 10);
        let earlier = WriteMetric {
            sum_seconds: 0.05,
            count: 5,
            log_flushes: None,
            entries_appended: None,
        };
        assert_eq!(later.mean_since(&earlier), Some(Duration::from_millis(40)));
        assert_eq!(later.mean_since(&later), None);
        assert_eq!(
            later.log_since(&earlier),
            None,
            "no log counters in this text"
        );
    }

    #[test]
    fn the_log_counters_are_read_from_the_exposition() {
        let text = "strait_global_write_latency_seconds_sum 1\nstrait_global_write_latency_seconds_count 100\nstrait_global_log_flushes_total 40\nstrait_global_log_entries_appended_total 50\n";
        let later = WriteMetric::parse(text).expect("parsed");
        let earlier = WriteMetric {
            sum_seconds: 0.0,
            count: 0,
            log_flushes: Some(10),
            entries_appended: Some(20),
        };
        assert_eq!(
            later.log_since(&earlier),
            Some(LogCounts {
                flushes: 30,
                entries: 30
            })
        );
    }

    #[test]
    fn the_policy_is_one_timeout_document() {
        let yaml = policy_yaml("c16-w3", 42);
        assert!(yaml.contains("name: c16-w3-42"));
        let resources = strait_policy::parse_documents(&yaml, "bench").expect("a valid policy");
        assert_eq!(resources.len(), 1);
    }
}
