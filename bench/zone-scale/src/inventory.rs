//! Inventory scale: zones x, y, z, created with `strait zone create`, are played by this
//! benchmark (join with the token over pinned TLS, then `ZoneSync.Sync` as `zone/X/cp`), and
//! each reports 10,000 exported services at once. Measured: global's `InventoryAck`s, the
//! snapshot with every service reaching the fake zones, the real zone control planes a, b, c
//! serving it (seen by one discovery stream on each: its config lists every service), a
//! reconnecting zone's full resync, message sizes, and resident memory before and after.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use strait_global::credentials::GlobalNodeAuthorizer;
use strait_proto as pb;
use strait_trust::join_token::JoinToken;
use strait_trust::tls::{CredentialStore, TrustStore};
use strait_trust::{KeyPair, SpiffeId, TrustBundle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::federation::{Federation, TRUST_DOMAIN};
use crate::procs::Cleanup;
use crate::sidecar;
use crate::stats::memory_kib;

pub const REAL_ZONES: [&str; 3] = ["a", "b", "c"];
pub const FAKE_ZONES: [&str; 3] = ["x", "y", "z"];
const NAMESPACE: &str = "inv";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Nothing arriving for this long counts as settled (before and after the reports).
const QUIET: Duration = Duration::from_secs(2);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// tonic's default limit on a decoded message, which a client or server that does not raise
/// it applies.
pub const TONIC_DEFAULT_DECODE: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Settings {
    pub services: usize,
    pub timeout: Duration,
}

/// Resident memory of one process, KiB.
#[derive(Debug, Clone)]
pub struct Memory {
    pub name: String,
    pub before: u64,
    pub after: u64,
    pub peak: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub services_per_zone: usize,
    pub total_services: usize,
    /// Encoded size of one zone's `InventoryReport`.
    pub report_bytes: usize,
    /// Per fake zone: time from sending the three reports to global's `InventoryAck`.
    pub acks: Vec<(String, Duration)>,
    /// Per fake zone: time until a `FederationSnapshot` with every service arrived.
    pub snapshots: Vec<(String, Duration)>,
    /// Per real zone: time until its sidecar's config listed every service.
    pub sidecars: Vec<(String, Duration)>,
    /// Largest `FederationSnapshot` received, encoded, and its version.
    pub snapshot_bytes: usize,
    pub snapshot_version: u64,
    /// Largest `SidecarConfig` received, encoded.
    pub sidecar_config_bytes: usize,
    /// Snapshots received by the fake zones, configs by the sidecars, after the reports.
    pub snapshots_after: usize,
    pub configs_after: usize,
    /// Zone x reconnecting with `known_version: 0`: time to a complete snapshot.
    pub resync: Duration,
    pub memory: Vec<Memory>,
}

/// What the fake zones' and sidecars' reader tasks see.
#[derive(Debug)]
enum Event {
    Snapshot {
        zone: String,
        at: Instant,
        version: u64,
        services: usize,
        bytes: usize,
    },
    InventoryAck {
        zone: String,
        at: Instant,
        error: Option<String>,
    },
    Config {
        zone: String,
        at: Instant,
        services: usize,
        bytes: usize,
    },
    Failed(String),
}

pub async fn run(
    bin: &std::path::Path,
    dir: &std::path::Path,
    settings: &Settings,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Outcome> {
    eprintln!(
        "inventory: strait up --zones a,b,c; zones x, y, z played by the benchmark with {} services each",
        settings.services
    );
    let fed = Federation::up(bin, dir, &["--zones", "a,b,c"], cleanup).await?;
    let result = measure(&fed, settings).await;
    cleanup.stop(fed.dir());
    result
}

/// A zone's inventory: `count` services, each with a port and one locality (2 of 2 healthy).
pub fn inventory(zone: &str, count: usize) -> pb::InventoryReport {
    let services = (0..count)
        .map(|i| pb::ExportedService {
            service: Some(pb::ServiceRef {
                namespace: NAMESPACE.to_owned(),
                name: format!("svc-{zone}-{i:05}"),
            }),
            ports: vec![pb::Port {
                name: "http".to_owned(),
                port: 8080,
                protocol: pb::Protocol::Http.into(),
            }],
            localities: vec![pb::LocalityEndpoints {
                locality: Some(pb::Locality {
                    region: format!("region-{zone}"),
                    zone: zone.to_owned(),
                    subzone: String::new(),
                }),
                healthy: 2,
                total: 2,
            }],
            identities: vec![format!(
                "spiffe://strait.local/ns/{NAMESPACE}/sa/svc-{zone}-{i:05}"
            )],
            subsets: vec![],
        })
        .collect();
    pb::InventoryReport {
        version: 1,
        services,
        gateways: Vec::new(),
    }
}

fn snapshot_services(snapshot: &pb::FederationSnapshot) -> usize {
    snapshot
        .zones
        .iter()
        .flat_map(|z| &z.services)
        .filter(|s| s.service.as_ref().is_some_and(|r| r.namespace == NAMESPACE))
        .count()
}

fn config_services(config: &pb::SidecarConfig) -> usize {
    config
        .services
        .iter()
        .filter(|s| s.service.as_ref().is_some_and(|r| r.namespace == NAMESPACE))
        .count()
}

/// A fake zone's credentials, from `ZoneSync.Join` with its token.
struct Joined {
    creds: CredentialStore,
    trust: TrustStore,
}

async fn join(global: &str, zone: &str, token: &str) -> anyhow::Result<Joined> {
    let parsed: JoinToken = token
        .parse()
        .map_err(|e| anyhow::anyhow!("zone {zone}'s join token: {e}"))?;
    let tls = strait_trust::tls::pinned_client_config(
        TRUST_DOMAIN,
        parsed.root_pin(),
        Arc::new(GlobalNodeAuthorizer),
        vec![b"h2".to_vec()],
    )?;
    let channel = strait_proto::transport::channel(global, Arc::new(tls), CONNECT_TIMEOUT);
    let ca_key = KeyPair::generate()?;
    let cp_key = KeyPair::generate()?;
    let cp_id = SpiffeId::zone_cp(TRUST_DOMAIN, zone)?;
    let reply = pb::zone_sync_client::ZoneSyncClient::new(channel)
        .join(pb::JoinRequest {
            zone: zone.to_owned(),
            token: token.to_owned(),
            ca_csr_pem: ca_key.intermediate_csr(TRUST_DOMAIN, zone)?,
            cp_csr_pem: cp_key.leaf_csr(&cp_id)?,
            region: format!("region-{zone}"),
        })
        .await
        .with_context(|| format!("zone {zone}: ZoneSync.Join"))?
        .into_inner();
    let bundle = TrustBundle::from_pem(TRUST_DOMAIN, &reply.trust_bundle_pem)?;
    Ok(Joined {
        creds: CredentialStore::from_pem(&reply.cp_cert_chain_pem, &cp_key.to_pem())?,
        trust: TrustStore::new(bundle),
    })
}

/// A fake zone's sync stream: where its messages go, and the task that reads (and ACKs) what
/// global sends.
struct SyncStream {
    tx: mpsc::Sender<pb::ZoneMessage>,
    reader: JoinHandle<()>,
}

async fn sync(
    global: &str,
    zone: &str,
    index: usize,
    joined: &Joined,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<SyncStream> {
    let tls = strait_trust::tls::client_config(
        &joined.creds,
        &joined.trust,
        Arc::new(GlobalNodeAuthorizer),
        vec![b"h2".to_vec()],
    )?;
    let channel = strait_proto::transport::channel(global, Arc::new(tls), CONNECT_TIMEOUT);
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::ZoneMessage {
        msg: Some(pb::zone_message::Msg::Hello(pb::SyncHello {
            zone: zone.to_owned(),
            known_version: 0,
            inventory_version: 1,
            vip_cidr: format!("127.{}.0.0/16", 250 + index),
            region: format!("region-{zone}"),
            role: pb::SyncRole::Primary.into(),
        })),
    })
    .await
    .context("queueing the hello")?;
    let mut inbound = pb::zone_sync_client::ZoneSyncClient::new(channel)
        .max_decoding_message_size(sidecar::MAX_DECODE)
        .sync(ReceiverStream::new(rx))
        .await
        .with_context(|| format!("zone {zone}: ZoneSync.Sync"))?
        .into_inner();
    let acks = tx.clone();
    let zone = zone.to_owned();
    let reader = tokio::spawn(async move {
        loop {
            let message = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    let _ = events.send(Event::Failed(format!("zone {zone}: global ended sync")));
                    return;
                }
                Err(status) => {
                    let _ = events.send(Event::Failed(format!("zone {zone}: sync: {status}")));
                    return;
                }
            };
            let at = Instant::now();
            match message.msg {
                Some(pb::global_message::Msg::Snapshot(snapshot)) => {
                    // Acknowledged at once, as a zone does once it has persisted it.
                    let ack = pb::ZoneMessage {
                        msg: Some(pb::zone_message::Msg::Ack(pb::SnapshotAck {
                            version: snapshot.version,
                            nonce: snapshot.nonce.clone(),
                            error: None,
                        })),
                    };
                    if acks.send(ack).await.is_err() {
                        return;
                    }
                    let _ = events.send(Event::Snapshot {
                        zone: zone.clone(),
                        at,
                        version: snapshot.version,
                        services: snapshot_services(&snapshot),
                        bytes: snapshot.encoded_len(),
                    });
                }
                Some(pb::global_message::Msg::InventoryAck(ack)) => {
                    let _ = events.send(Event::InventoryAck {
                        zone: zone.clone(),
                        at,
                        error: ack.error.map(|e| e.message),
                    });
                }
                Some(pb::global_message::Msg::Renew(_)) | None => {}
            }
        }
    });
    Ok(SyncStream { tx, reader })
}

/// A discovery stream on a real zone that reports each config's size and service count.
async fn watch_zone(
    fed: &Federation,
    zone: &str,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<JoinHandle<()>> {
    let creds = sidecar::bootstrap(fed, zone, "bench", "watch").await?;
    let channel = sidecar::connection(fed, zone, &creds)?;
    let mut stream = sidecar::register(
        channel,
        zone,
        "bench",
        "watch",
        &format!("watch-{zone}"),
        "127.0.0.1:19999",
    )
    .await?;
    let zone = zone.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            let config = match stream.configs.message().await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    let _ = events.send(Event::Failed(format!("zone {zone}: discovery ended")));
                    return;
                }
                Err(status) => {
                    let _ = events.send(Event::Failed(format!("zone {zone}: discovery: {status}")));
                    return;
                }
            };
            let at = Instant::now();
            if stream.up.send(sidecar::ack(&config)).await.is_err() {
                return;
            }
            let _ = events.send(Event::Config {
                zone: zone.clone(),
                at,
                services: config_services(&config),
                bytes: config.encoded_len(),
            });
        }
    }))
}

/// Drains events until none arrived for `quiet`; fails on a stream failure or at `deadline`.
async fn settle(
    events: &mut mpsc::UnboundedReceiver<Event>,
    quiet: Duration,
    deadline: Instant,
    mut each: impl FnMut(&Event),
) -> anyhow::Result<()> {
    loop {
        let until = (Instant::now() + quiet).min(deadline);
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Some(Event::Failed(reason))) => anyhow::bail!(reason),
            Ok(Some(event)) => each(&event),
            Ok(None) => anyhow::bail!("every reader ended"),
            Err(_) if Instant::now() >= deadline && until == deadline => {
                anyhow::bail!("not settled within the time allowed")
            }
            Err(_) => return Ok(()),
        }
    }
}

fn memory(fed: &Federation) -> BTreeMap<String, (u64, u64)> {
    fed.processes()
        .iter()
        .filter_map(|p| Some((p.name.clone(), memory_kib(p.pid)?)))
        .chain(
            memory_kib(std::process::id())
                .map(|m| ("benchmark (fake zones + sidecars)".to_owned(), m)),
        )
        .collect()
}

/// What the readers reported after the inventory reports went out.
struct Observed {
    t0: Instant,
    total: usize,
    acks: BTreeMap<String, Duration>,
    snapshots: BTreeMap<String, Duration>,
    sidecars: BTreeMap<String, Duration>,
    snapshot_bytes: usize,
    snapshot_version: u64,
    config_bytes: usize,
    snapshots_after: usize,
    configs_after: usize,
}

impl Observed {
    fn new(t0: Instant, total: usize) -> Self {
        Observed {
            t0,
            total,
            acks: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            sidecars: BTreeMap::new(),
            snapshot_bytes: 0,
            snapshot_version: 0,
            config_bytes: 0,
            snapshots_after: 0,
            configs_after: 0,
        }
    }

    /// Every fake zone acked and holds every service; every real zone serves them.
    fn complete(&self) -> bool {
        let n = FAKE_ZONES.len();
        self.acks.len() == n && self.snapshots.len() == n && self.sidecars.len() == REAL_ZONES.len()
    }

    fn observe(&mut self, event: &Event) -> anyhow::Result<()> {
        let t0 = self.t0;
        match event {
            Event::InventoryAck { zone, at, error } => {
                if let Some(error) = error {
                    anyhow::bail!("global refused zone {zone}'s inventory: {error}");
                }
                self.acks.entry(zone.clone()).or_insert(*at - t0);
            }
            Event::Snapshot {
                zone,
                at,
                version,
                services,
                bytes,
            } => {
                self.snapshots_after += 1;
                if *bytes > self.snapshot_bytes {
                    self.snapshot_bytes = *bytes;
                    self.snapshot_version = *version;
                }
                if *services >= self.total {
                    self.snapshots.entry(zone.clone()).or_insert(*at - t0);
                }
            }
            Event::Config {
                zone,
                at,
                services,
                bytes,
            } => {
                self.configs_after += 1;
                self.config_bytes = self.config_bytes.max(*bytes);
                if *services >= self.total {
                    self.sidecars.entry(zone.clone()).or_insert(*at - t0);
                }
            }
            Event::Failed(reason) => anyhow::bail!("{reason}"),
        }
        Ok(())
    }
}

async fn measure(fed: &Federation, settings: &Settings) -> anyhow::Result<Outcome> {
    let global = fed.address("global-1", "api")?;
    let (events_tx, mut events) = mpsc::unbounded_channel();

    let mut watchers = Vec::new();
    for zone in REAL_ZONES {
        watchers.push(watch_zone(fed, zone, events_tx.clone()).await?);
    }
    let mut joined = Vec::new();
    let mut streams = Vec::new();
    for (index, zone) in FAKE_ZONES.iter().enumerate() {
        let token = fed
            .strait(&[
                "zone",
                "create",
                zone,
                "--region",
                &format!("region-{zone}"),
            ])
            .await?;
        let credentials = join(&global, zone, &token).await?;
        streams.push(sync(&global, zone, index, &credentials, events_tx.clone()).await?);
        joined.push(credentials);
    }
    settle(&mut events, QUIET, Instant::now() + SETTLE_TIMEOUT, |_| {}).await?;
    let before = memory(fed);
    eprintln!("  settled; sending 3 x {} services", settings.services);

    let reports: Vec<pb::InventoryReport> = FAKE_ZONES
        .iter()
        .map(|z| inventory(z, settings.services))
        .collect();
    let report_bytes = reports.first().map_or(0, Message::encoded_len);
    let total = settings.services * FAKE_ZONES.len();

    let t0 = Instant::now();
    for (stream, report) in streams.iter().zip(reports) {
        stream
            .tx
            .send(pb::ZoneMessage {
                msg: Some(pb::zone_message::Msg::Inventory(report)),
            })
            .await
            .context("sending an inventory report")?;
    }
    let mut seen = Observed::new(t0, total);
    let deadline = t0 + settings.timeout;
    while !seen.complete() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => seen.observe(&event)?,
            Ok(None) => anyhow::bail!("every reader ended"),
            Err(_) => anyhow::bail!(
                "after {:?}: {} of 3 inventory acks, {} of 3 fake zones and {} of 3 real zones with all {total} services",
                settings.timeout,
                seen.acks.len(),
                seen.snapshots.len(),
                seen.sidecars.len()
            ),
        }
    }
    eprintln!(
        "  all {total} services everywhere after {:.2} s; settling",
        t0.elapsed().as_secs_f64()
    );
    let mut failed = None;
    settle(&mut events, QUIET, Instant::now() + SETTLE_TIMEOUT, |e| {
        if let Err(err) = seen.observe(e) {
            failed.get_or_insert(err);
        }
    })
    .await?;
    if let Some(err) = failed {
        return Err(err);
    }
    let after = memory(fed);

    // A zone reconnecting from scratch (store lost): a new stream with known_version 0.
    eprintln!("  zone x reconnects with known_version 0");
    let old = streams.remove(0);
    old.reader.abort();
    drop(old.tx);
    settle(&mut events, QUIET, Instant::now() + SETTLE_TIMEOUT, |_| {}).await?;
    let (resync_tx, mut resync_events) = mpsc::unbounded_channel();
    let start = Instant::now();
    let fresh = sync(&global, FAKE_ZONES[0], 0, &joined[0], resync_tx).await?;
    let resync = loop {
        match tokio::time::timeout_at(start + settings.timeout, resync_events.recv()).await {
            Ok(Some(Event::Snapshot { at, services, .. })) if services >= total => {
                break at - start;
            }
            Ok(Some(Event::Failed(reason))) => anyhow::bail!(reason),
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("zone x's new stream ended"),
            Err(_) => anyhow::bail!("zone x got no complete snapshot after reconnecting"),
        }
    };
    fresh.reader.abort();
    for stream in streams {
        stream.reader.abort();
    }
    for watcher in watchers {
        watcher.abort();
    }

    let memory = after
        .iter()
        .map(|(name, &(rss, peak))| Memory {
            name: name.clone(),
            before: before.get(name).map_or(0, |m| m.0),
            after: rss,
            peak,
        })
        .collect();
    let by_zone = |map: BTreeMap<String, Duration>| map.into_iter().collect::<Vec<_>>();
    Ok(Outcome {
        services_per_zone: settings.services,
        total_services: total,
        report_bytes,
        acks: by_zone(seen.acks),
        snapshots: by_zone(seen.snapshots),
        sidecars: by_zone(seen.sidecars),
        snapshot_bytes: seen.snapshot_bytes,
        snapshot_version: seen.snapshot_version,
        sidecar_config_bytes: seen.config_bytes,
        snapshots_after: seen.snapshots_after,
        configs_after: seen.configs_after,
        resync,
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inventory_has_distinct_services_with_one_healthy_locality() {
        let report = inventory("x", 3);
        let names: Vec<&str> = report
            .services
            .iter()
            .filter_map(|s| s.service.as_ref().map(|r| r.name.as_str()))
            .collect();
        assert_eq!(names, ["svc-x-00000", "svc-x-00001", "svc-x-00002"]);
        let l = &report.services[0].localities[0];
        assert_eq!((l.healthy, l.total), (2, 2));
        assert_eq!(report.services[0].ports[0].port, 8080);
    }

    #[test]
    fn only_the_benchmark_namespace_is_counted() {
        let report = inventory("x", 2);
        let snapshot = pb::FederationSnapshot {
            zones: vec![pb::RemoteZone {
                name: "x".into(),
                services: report.services,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(snapshot_services(&snapshot), 2);
    }
}
