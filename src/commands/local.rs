//! `strait up` and `strait down`: a whole federation on this machine, as background processes
//! on loopback, recorded in `DIR/processes.json`, with `DIR/config.yaml` for the other commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use strait_global::admin_client::{AdminClient, ClientConfig, CredentialPaths};
use strait_proto as pb;

use crate::local::processes::{self, ProcessKind, ProcessRecord};
use crate::local::supervisor::{self, ProcessSpec, Progress};

/// How long one process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const TRUST_DOMAIN: &str = "strait.local";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory for data, logs, processes.json and config.yaml.
    #[arg(long)]
    dir: PathBuf,
    /// Global control plane nodes (1, 3 or 5).
    #[arg(long, default_value_t = 1, value_parser = parse_node_count)]
    global_nodes: u64,
    /// Zones to create, comma-separated (`none` for no zone).
    #[arg(long, default_value = "a,b")]
    zones: String,
    /// Region of every zone (NAME=REGION pairs, comma-separated; others get `region-NAME`).
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
}

fn parse_node_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => {
            Err("must be 1, 3 or 5 (an odd number keeps a majority through a node loss)".to_owned())
        }
    }
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The directory given to `strait up`.
    #[arg(long)]
    dir: PathBuf,
}

fn progress(p: Progress<'_>) {
    match p {
        Progress::Starting { .. } | Progress::Stopping { .. } => {
            eprint!("{p} ");
            let _ = std::io::stderr().flush();
        }
        Progress::Ready { .. } | Progress::Stopped { .. } => eprintln!("{p}"),
    }
}

/// The zones to create, validated; `none` means no zone.
fn zone_list(zones: &str) -> anyhow::Result<Vec<String>> {
    if zones.trim() == "none" {
        return Ok(Vec::new());
    }
    let list: Vec<String> = zones
        .split(',')
        .map(|z| z.trim().to_owned())
        .filter(|z| !z.is_empty())
        .collect();
    for zone in &list {
        strait_global::state::validate_zone_name(zone)
            .map_err(|e| anyhow::anyhow!("--zones: {e}"))?;
    }
    Ok(list)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    strait_trust::store::write_key(path, text)
        .with_context(|| format!("writing {}", path.display()))
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let zones = zone_list(&args.zones)?;
    let regions: BTreeMap<String, String> = args
        .regions
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(z, r)| (z.to_owned(), r.to_owned()))
                .context("--regions takes ZONE=REGION pairs")
        })
        .collect::<anyhow::Result<_>>()?;
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    if let Ok(existing) = processes::read(&dir)
        && existing.iter().any(supervisor::is_running)
    {
        bail!(
            "a federation is already running in {} (run `strait down --dir {}` first)",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    strait_global::credentials::create_private_dir(&dir.join("tokens"))?;

    let mut records = Vec::new();
    let result = start_federation(&dir, args.global_nodes, &zones, &regions, &mut records).await;
    if let Err(err) = result {
        eprintln!("start failed; stopping what was started");
        let _ = supervisor::stop_all(&records, STOP_GRACE, &progress);
        let _ = processes::write(&dir, &[]);
        return Err(err);
    }
    let config_path = dir.join("config.yaml");
    eprintln!(
        "\nFederation up: {} global node(s), zones: {}",
        args.global_nodes,
        if zones.is_empty() {
            "none".to_owned()
        } else {
            zones.join(", ")
        }
    );
    if !zones.is_empty() {
        eprintln!(
            "Zones are registered in global; their join tokens are in {}/tokens/ (zone control planes are not part of this build yet).",
            dir.display()
        );
    }
    eprintln!(
        "Try:\n  export STRAIT_CONFIG={}\n  strait status",
        config_path.display()
    );
    Ok(())
}

async fn start_federation(
    dir: &Path,
    nodes: u64,
    zones: &[String],
    regions: &BTreeMap<String, String>,
    records: &mut Vec<ProcessRecord>,
) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("locating the strait binary")?;
    let ports = crate::local::ports::free_loopback_ports(usize::try_from(nodes * 2).unwrap_or(2))?;
    let admin_dir = dir.join("admin");
    let mut api_addrs = Vec::new();
    for id in 1..=nodes {
        let index = usize::try_from((id - 1) * 2).unwrap_or(0);
        let (api, admin) = (ports[index], ports[index + 1]);
        let mut cmd = vec![
            "global".to_owned(),
            "run".to_owned(),
            "--node-id".to_owned(),
            id.to_string(),
            "--data-dir".to_owned(),
            dir.join(format!("global-{id}")).display().to_string(),
            "--listen".to_owned(),
            api.to_string(),
            "--admin-listen".to_owned(),
            admin.to_string(),
            "--trust-domain".to_owned(),
            TRUST_DOMAIN.to_owned(),
            "--admin-credentials-dir".to_owned(),
            admin_dir.display().to_string(),
        ];
        if id > 1 {
            let client = AdminClient::new(&client_config(dir, &api_addrs))?;
            let request = pb::CreateJoinTokenRequest {
                purpose: Some(pb::create_join_token_request::Purpose::NodeId(id)),
                ttl_seconds: 600,
            };
            let token = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.create_join_token(r).await }
                })
                .await?;
            let token_file = dir.join("tokens").join(format!("global-{id}.token"));
            write_private(&token_file, &token.join_token)?;
            cmd.extend([
                "--join".to_owned(),
                api_addrs.join(","),
                "--token-file".to_owned(),
                token_file.display().to_string(),
            ]);
        }
        let spec = ProcessSpec {
            name: format!("global-{id}"),
            kind: ProcessKind::Global,
            zone: None,
            node_id: Some(id),
            program: program.clone(),
            args: cmd,
            env: BTreeMap::new(),
            addresses: BTreeMap::from([
                ("api".to_owned(), api.to_string()),
                ("admin".to_owned(), admin.to_string()),
            ]),
            log_dir: dir.join("logs"),
        };
        // Blocking waits (polling /ready) off the async runtime's worker.
        let record = tokio::task::block_in_place(|| {
            supervisor::start(&spec, Instant::now() + READY_TIMEOUT, &progress)
        })?;
        records.push(record);
        processes::write(dir, records)?;
        api_addrs.push(api.to_string());
        let config = client_config(dir, &api_addrs);
        std::fs::write(
            dir.join("config.yaml"),
            config.to_yaml().map_err(|e| anyhow::anyhow!(e))?,
        )?;
    }
    if !zones.is_empty() {
        let client = AdminClient::new(&client_config(dir, &api_addrs))?;
        for zone in zones {
            let region = regions
                .get(zone)
                .cloned()
                .unwrap_or_else(|| format!("region-{zone}"));
            let request = pb::CreateZoneRequest {
                name: zone.clone(),
                region,
                labels: Default::default(),
                token_ttl_seconds: 0,
            };
            let reply = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.create_zone(r).await }
                })
                .await?;
            write_private(
                &dir.join("tokens").join(format!("zone-{zone}.token")),
                &reply.join_token,
            )?;
            eprintln!("zone {zone} registered");
        }
    }
    Ok(())
}

fn client_config(dir: &Path, api_addrs: &[String]) -> ClientConfig {
    ClientConfig {
        trust_domain: TRUST_DOMAIN.to_owned(),
        global: api_addrs.to_vec(),
        credentials: CredentialPaths {
            cert: dir.join("admin/admin.crt"),
            key: dir.join("admin/admin.key"),
            bundle: dir.join("admin/bundle.pem"),
        },
    }
}

pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let records = processes::read(&args.dir)?;
    if records.is_empty() {
        eprintln!("nothing is running in {}", args.dir.display());
        return Ok(());
    }
    let report = supervisor::stop_all(&records, STOP_GRACE, &progress);
    let failures: Vec<String> = report
        .failures()
        .map(|(name, why)| format!("{name}: {why}"))
        .collect();
    if !failures.is_empty() {
        bail!(
            "some processes could not be stopped: {}",
            failures.join("; ")
        );
    }
    processes::write(&args.dir, &[])?;
    eprintln!(
        "federation in {} stopped (data and logs kept)",
        args.dir.display()
    );
    Ok(())
}
