//! Config propagation: `N` simulated sidecar streams over zones a, b, c; then, round after
//! round, a `Timeout` policy on the service every sidecar sees gets a new value through the
//! Admin API, and each stream's time from just before the call to receiving (and at once
//! ACKing) the first config that carries the new value is recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use strait_proto as pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::federation::Federation;
use crate::procs::Cleanup;
use crate::sidecar;
use crate::stats::{Summary, process_cpu};

pub const ZONES: [&str; 3] = ["a", "b", "c"];
const NAMESPACE: &str = "bench";
const SERVICE: &str = "sim";
/// Streams opened at the same time while setting up.
const OPEN_CONCURRENCY: usize = 64;
/// How long registering every stream and the configs settling may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// No config for this long on any stream counts as quiet.
const QUIET: Duration = Duration::from_millis(1000);
/// Between rounds: quiet for this long (bounded by `QUIET_TIMEOUT`).
const ROUND_GAP: Duration = Duration::from_millis(250);
const QUIET_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// Settings of one propagation run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub streams: usize,
    pub rounds: usize,
    pub streams_per_connection: usize,
    pub round_timeout: Duration,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub streams: usize,
    pub connections: usize,
    pub rounds: usize,
    /// Time from the first Register to every stream showing all `streams` instances and quiet.
    pub setup: Duration,
    /// Every stream's propagation time, every round.
    pub per_stream: Summary,
    /// Per round: time until the last stream had the new value.
    pub last_stream: Summary,
    /// Per round: the `ApplyPolicies` call itself (commit on global).
    pub apply: Summary,
    /// Streams that did not see a round's value within the round timeout (summed over rounds).
    pub missed: usize,
    /// Configs received per stream per round (1 means exactly one push per change).
    pub configs_per_stream_round: f64,
    /// Encoded config bytes pushed to all streams together, per round.
    pub bytes_per_round: u64,
    /// CPU seconds per round: global, the three zones, this benchmark process.
    pub cpu_per_round: [Duration; 3],
    /// Resident memory (KiB) of each zone at the end, with its streams open.
    pub zone_rss_kib: Vec<(String, u64)>,
}

/// What every stream task shares with the driver.
struct Shared {
    /// The round in flight and the `request_ms` value it waits for.
    target: watch::Receiver<Option<(usize, u64)>>,
    results: mpsc::UnboundedSender<(usize, usize, Instant)>,
    /// Every config received by any stream, and their encoded bytes.
    configs: AtomicU64,
    bytes: AtomicU64,
    /// Per stream: how many `sim` instances its last config showed.
    seen: Vec<AtomicU32>,
    failures: mpsc::UnboundedSender<String>,
}

fn policy_yaml(request_ms: u64) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Timeout\nmetadata: {{name: sim-timeout, namespace: {NAMESPACE}}}\nspec: {{targetRef: {{service: {SERVICE}}}, request: {request_ms}ms}}\n"
    )
}

/// Stream `i`'s zone: streams are spread round-robin, so zone sizes differ by at most one.
fn zone_of(i: usize) -> &'static str {
    ZONES[i % ZONES.len()]
}

pub async fn run(
    bin: &std::path::Path,
    dir: &std::path::Path,
    settings: &Settings,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Outcome> {
    let n = settings.streams;
    eprintln!("propagation, {n} streams: strait up --zones a,b,c");
    let fed = Federation::up(bin, dir, &["--zones", "a,b,c"], cleanup).await?;
    let result = measure(&fed, settings).await;
    cleanup.stop(fed.dir());
    result
}

async fn measure(fed: &Federation, settings: &Settings) -> anyhow::Result<Outcome> {
    let n = settings.streams;
    // One identity (token + certificate) per zone: every stream of a zone is an instance of
    // `bench/sim` and presents the same certificate.
    let mut connections = Vec::new();
    for zone in ZONES {
        let creds = sidecar::bootstrap(fed, zone, NAMESPACE, SERVICE).await?;
        let in_zone = (0..n).filter(|&i| zone_of(i) == zone).count();
        let count = in_zone.div_ceil(settings.streams_per_connection).max(1);
        let channels = (0..count)
            .map(|_| sidecar::connection(fed, zone, &creds))
            .collect::<anyhow::Result<Vec<_>>>()?;
        connections.push(channels);
    }
    let connection_count = connections.iter().map(Vec::len).sum();

    let (target_tx, target_rx) = watch::channel(None);
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        target: target_rx,
        results: results_tx,
        configs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        seen: (0..n).map(|_| AtomicU32::new(0)).collect(),
        failures: fail_tx,
    });

    eprintln!("  opening {n} discovery streams over {connection_count} connections");
    let start = Instant::now();
    let mut opening = JoinSet::new();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let zone = zone_of(i);
        let zone_index = i % ZONES.len();
        let per_zone_index = i / ZONES.len();
        let channels = &connections[zone_index];
        let channel =
            channels[(per_zone_index / settings.streams_per_connection) % channels.len()].clone();
        // Unused loopback ports: nothing listens there, nothing dials them here.
        let inbound = format!("127.0.0.1:{}", 20_000 + i);
        let instance = format!("sim-{zone}-{per_zone_index}");
        if opening.len() >= OPEN_CONCURRENCY
            && let Some(opened) = opening.join_next().await
        {
            let (i, stream) = opened.context("a stream opener panicked")??;
            tasks.spawn(follow(i, stream, shared.clone()));
        }
        opening.spawn(async move {
            let stream =
                sidecar::register(channel, zone, NAMESPACE, SERVICE, &instance, &inbound).await?;
            anyhow::Ok((i, stream))
        });
    }
    while let Some(opened) = opening.join_next().await {
        let (i, stream) = opened.context("a stream opener panicked")??;
        tasks.spawn(follow(i, stream, shared.clone()));
    }

    // Settled: every stream sees all `n` instances, and nothing has arrived for a while.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let want = u32::try_from(n)?;
    loop {
        check_failures(&mut fail_rx)?;
        let complete = shared
            .seen
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == want)
            .count();
        if complete == n && quiet(&shared, QUIET, deadline).await {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after {SETTLE_TIMEOUT:?}, {complete} of {n} streams see all {n} instances"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let setup = start.elapsed();
    eprintln!(
        "  all {n} streams registered and settled in {:.1} s",
        setup.as_secs_f64()
    );

    let admin = fed.admin_client()?;
    let pids: Vec<u32> = fed.processes().iter().map(|p| p.pid).collect();
    let global_pids: Vec<u32> = fed
        .processes()
        .iter()
        .filter(|p| p.name.starts_with("global-"))
        .map(|p| p.pid)
        .collect();
    let cpu = |set: &[u32]| -> Duration { set.iter().filter_map(|&p| process_cpu(p)).sum() };
    let cpu_before = (
        cpu(&global_pids),
        cpu(&pids),
        process_cpu(std::process::id()).unwrap_or_default(),
    );
    let configs_before = shared.configs.load(Ordering::Relaxed);
    let bytes_before = shared.bytes.load(Ordering::Relaxed);

    let mut per_stream = Vec::with_capacity(n * settings.rounds);
    let mut last_stream = Vec::with_capacity(settings.rounds);
    let mut apply = Vec::with_capacity(settings.rounds);
    let mut missed = 0;
    for round in 0..settings.rounds {
        let value = 1_000 + u64::try_from(round)?;
        let request = pb::ApplyPoliciesRequest {
            yaml: policy_yaml(value),
            source: "bench".to_owned(),
            dry_run: false,
        };
        // The target goes out before t0: no config can carry the value before the call.
        target_tx.send_replace(Some((round, value)));
        let t0 = Instant::now();
        let reply = admin
            .call(|mut c| {
                let request = request.clone();
                async move { c.apply_policies(request).await }
            })
            .await
            .with_context(|| format!("round {round}: ApplyPolicies"))?;
        apply.push(t0.elapsed());
        anyhow::ensure!(
            reply.results.len() == 1,
            "round {round}: unexpected answer {reply:?}"
        );
        let mut got = 0;
        let mut last = Duration::ZERO;
        let round_deadline = t0 + settings.round_timeout;
        while got < n {
            match tokio::time::timeout_at(round_deadline, results_rx.recv()).await {
                Ok(Some((_, r, at))) if r == round => {
                    let d = at.saturating_duration_since(t0);
                    per_stream.push(d);
                    last = last.max(d);
                    got += 1;
                }
                Ok(Some(_)) => {} // a late answer to an earlier round
                Ok(None) => anyhow::bail!("every stream task ended"),
                Err(_) => break,
            }
        }
        check_failures(&mut fail_rx)?;
        if got < n {
            missed += n - got;
            eprintln!(
                "  round {round}: only {got} of {n} streams got {value}ms within {:?}",
                settings.round_timeout
            );
        } else {
            last_stream.push(last);
        }
        quiet(&shared, ROUND_GAP, Instant::now() + QUIET_TIMEOUT).await;
    }
    let configs = shared.configs.load(Ordering::Relaxed) - configs_before;
    let bytes = shared.bytes.load(Ordering::Relaxed) - bytes_before;
    let cpu_after = (
        cpu(&global_pids),
        cpu(&pids),
        process_cpu(std::process::id()).unwrap_or_default(),
    );
    let rounds = u32::try_from(settings.rounds)?.max(1);
    let global_cpu = cpu_after.0.saturating_sub(cpu_before.0);
    let all_servers = cpu_after.1.saturating_sub(cpu_before.1);
    let cpu_per_round = [
        global_cpu / rounds,
        all_servers.saturating_sub(global_cpu) / rounds,
        cpu_after.2.saturating_sub(cpu_before.2) / rounds,
    ];
    let zone_rss_kib = ZONES
        .iter()
        .filter_map(|z| {
            let p = fed.process(&format!("zone-{z}")).ok()?;
            Some((p.name.clone(), crate::stats::memory_kib(p.pid)?.0))
        })
        .collect();
    tasks.abort_all();

    let outcome = Outcome {
        streams: n,
        connections: connection_count,
        rounds: settings.rounds,
        setup,
        per_stream: Summary::of(per_stream),
        last_stream: Summary::of(last_stream),
        apply: Summary::of(apply),
        missed,
        configs_per_stream_round: configs as f64 / (n * settings.rounds).max(1) as f64,
        bytes_per_round: bytes / u64::from(rounds),
        cpu_per_round,
        zone_rss_kib,
    };
    Ok(outcome)
}

fn check_failures(failures: &mut mpsc::UnboundedReceiver<String>) -> anyhow::Result<()> {
    match failures.try_recv() {
        Ok(reason) => anyhow::bail!("a discovery stream failed: {reason}"),
        Err(_) => Ok(()),
    }
}

/// Waits until no config arrived for `quiet` (true), or `deadline` passed (false).
async fn quiet(shared: &Shared, quiet: Duration, deadline: Instant) -> bool {
    let mut count = shared.configs.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        if since.elapsed() >= quiet {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
        let now = shared.configs.load(Ordering::Relaxed);
        if now != count {
            count = now;
            since = Instant::now();
        }
    }
}

/// Stream `i`: timestamps each config as it arrives, ACKs it at once, then checks it.
async fn follow(i: usize, mut stream: sidecar::Stream, shared: Arc<Shared>) {
    let mut reported: Option<usize> = None;
    loop {
        let config = match stream.configs.message().await {
            Ok(Some(config)) => config,
            Ok(None) => {
                let _ = shared
                    .failures
                    .send(format!("stream {i}: the zone ended it"));
                return;
            }
            Err(status) => {
                let _ = shared.failures.send(format!("stream {i}: {status}"));
                return;
            }
        };
        let at = Instant::now();
        if stream.up.send(sidecar::ack(&config)).await.is_err() {
            let _ = shared.failures.send(format!("stream {i}: ACK not sent"));
            return;
        }
        shared.configs.fetch_add(1, Ordering::Relaxed);
        let bytes = u64::try_from(prost::Message::encoded_len(&config)).unwrap_or(u64::MAX);
        shared.bytes.fetch_add(bytes, Ordering::Relaxed);
        let sim = sidecar::service(&config, NAMESPACE, SERVICE);
        shared.seen[i].store(sim.map_or(0, sidecar::instances), Ordering::Relaxed);
        let request_ms = sim
            .and_then(|s| s.policy.as_ref())
            .and_then(|p| p.timeout.as_ref())
            .map(|t| t.request_ms);
        let target = *shared.target.borrow();
        if let Some((round, value)) = target
            && request_ms == Some(value)
            && reported != Some(round)
        {
            reported = Some(round);
            let _ = shared.results.send((i, round, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_spread_evenly_over_the_zones() {
        let counts: Vec<usize> = ZONES
            .iter()
            .map(|z| (0..1000).filter(|&i| zone_of(i) == *z).count())
            .collect();
        assert_eq!(counts, vec![334, 333, 333]);
    }

    #[test]
    fn the_policy_is_a_timeout_on_sim_with_the_round_value() {
        let yaml = policy_yaml(1_007);
        assert!(yaml.contains("kind: Timeout"));
        assert!(yaml.contains("targetRef: {service: sim}"));
        assert!(yaml.contains("request: 1007ms"));
    }
}
