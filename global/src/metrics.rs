//! Prometheus metrics of a global node (`strait_global_*`), served on its admin address.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

use crate::cluster::{BatchStats, NodeView};
use crate::store::StoreStats;

/// Every metric a global node exports. Label sets are fixed (no per-request labels), so the
/// series count stays bounded.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub term: IntGauge,
    pub leader_id: IntGauge,
    pub is_leader: IntGauge,
    pub last_log_index: IntGauge,
    pub applied_index: IntGauge,
    pub snapshot_index: IntGauge,
    pub snapshots: IntCounter,
    pub voters: IntGauge,
    pub zones: IntGauge,
    pub policies: IntGauge,
    pub services: IntGauge,
    pub write_latency: Histogram,
    pub write_failures: IntCounter,
    pub log_flushes: IntCounter,
    pub log_entries_appended: IntCounter,
    pub snapshot_builds: IntCounter,
    pub snapshot_bytes: IntGauge,
    pub write_batches: IntCounter,
    pub write_batch_commands: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Raises `counter` to `total`, a count kept elsewhere since this process started.
fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let snapshots = IntCounter::with_opts(Opts::new(
            "strait_global_raft_snapshots_total",
            "Snapshots this node has built or installed since it started.",
        ))?;
        registry.register(Box::new(snapshots.clone()))?;
        let write_failures = IntCounter::with_opts(Opts::new(
            "strait_global_write_failures_total",
            "Writes that were not committed (no quorum, shutdown).",
        ))?;
        registry.register(Box::new(write_failures.clone()))?;
        // Buckets from 0.5 ms (a batched fsync on a fast disk) to 10 s (the request timeout).
        let write_latency = Histogram::with_opts(
            HistogramOpts::new(
                "strait_global_write_latency_seconds",
                "Time from accepting a write to its commit and apply, as seen by the API.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )?;
        registry.register(Box::new(write_latency.clone()))?;
        Ok(Self {
            term: gauge(&registry, "strait_global_raft_term", "Current Raft term.")?,
            leader_id: gauge(
                &registry,
                "strait_global_raft_leader_id",
                "Node id of the current leader (0: none known).",
            )?,
            is_leader: gauge(
                &registry,
                "strait_global_raft_is_leader",
                "1 if this node is the leader.",
            )?,
            last_log_index: gauge(
                &registry,
                "strait_global_raft_last_log_index",
                "Index of the last log entry.",
            )?,
            applied_index: gauge(
                &registry,
                "strait_global_raft_applied_index",
                "Index of the last applied entry.",
            )?,
            snapshot_index: gauge(
                &registry,
                "strait_global_raft_snapshot_index",
                "Last log index in the latest snapshot.",
            )?,
            voters: gauge(
                &registry,
                "strait_global_raft_voters",
                "Voters in the current membership.",
            )?,
            zones: gauge(&registry, "strait_global_zones", "Active zones.")?,
            policies: gauge(
                &registry,
                "strait_global_policies",
                "Stored policy resources.",
            )?,
            services: gauge(
                &registry,
                "strait_global_services",
                "Exported services across the federation.",
            )?,
            log_flushes: counter(
                &registry,
                "strait_global_log_flushes_total",
                "Flushes of the Raft log for appends; one flush covers every append queued behind it.",
            )?,
            log_entries_appended: counter(
                &registry,
                "strait_global_log_entries_appended_total",
                "Raft log entries appended on this node (a batch of writes is one entry).",
            )?,
            snapshot_builds: counter(
                &registry,
                "strait_global_snapshot_builds_total",
                "Snapshots of the state this node has built since it started.",
            )?,
            snapshot_bytes: gauge(
                &registry,
                "strait_global_snapshot_bytes",
                "Size of the state in the last snapshot built or installed (0: none since start).",
            )?,
            write_batches: counter(
                &registry,
                "strait_global_write_batches_total",
                "Raft entries this node proposed for writes while leading.",
            )?,
            write_batch_commands: counter(
                &registry,
                "strait_global_write_batch_commands_total",
                "Writes carried by those entries (divide by write_batches for the mean batch size).",
            )?,
            snapshots,
            write_latency,
            write_failures,
            registry,
        })
    }

    /// Updates the Raft gauges from this node's view.
    pub fn observe_raft(&self, view: &NodeView, voters: usize) {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(to_i64(view.term));
        self.leader_id.set(to_i64(view.leader.unwrap_or(0)));
        self.is_leader.set(i64::from(view.role == "leader"));
        self.last_log_index.set(to_i64(view.last_log_index));
        self.applied_index.set(to_i64(view.applied_index));
        if view.snapshot_index != 0 && to_i64(view.snapshot_index) != self.snapshot_index.get() {
            self.snapshots.inc();
        }
        self.snapshot_index.set(to_i64(view.snapshot_index));
        self.voters.set(i64::try_from(voters).unwrap_or(i64::MAX));
    }

    /// Updates the storage and write batching figures from their counters.
    pub fn observe_store(&self, store: &StoreStats, batches: BatchStats) {
        catch_up(&self.log_flushes, store.log_flushes);
        catch_up(&self.log_entries_appended, store.entries_appended);
        catch_up(&self.snapshot_builds, store.snapshots_built);
        self.snapshot_bytes
            .set(i64::try_from(store.last_snapshot_bytes).unwrap_or(i64::MAX));
        catch_up(&self.write_batches, batches.proposals);
        catch_up(&self.write_batch_commands, batches.commands);
    }
}
