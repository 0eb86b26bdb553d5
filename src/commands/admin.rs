//! The commands that talk to the global control plane's Admin API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use strait_global::admin_client::{AdminClient, ClientConfig};
use strait_proto as pb;

use crate::cli::{ClientArgs, Format, OutputArgs};

pub(crate) fn client(args: &ClientArgs) -> anyhow::Result<AdminClient> {
    let path = args
        .config
        .clone()
        .context("no client config: pass --config FILE or set STRAIT_CONFIG (strait up writes DIR/config.yaml)")?;
    let config = ClientConfig::load(&path)?;
    Ok(AdminClient::new(&config)?)
}

/// Unix milliseconds as RFC 3339, `None` for 0 (never).
fn rfc3339(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    let secs = ms / 1000;
    let nanos = u32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .replace_nanosecond(nanos)
        .ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn print_structured(format: Format, value: &serde_json::Value) -> anyhow::Result<()> {
    match format {
        Format::Yaml => out!(
            "{}",
            serde_saphyr::to_string(value).map_err(|e| anyhow::anyhow!("{e}"))?
        ),
        _ => print_json(value)?,
    }
    Ok(())
}

/// Prints rows as aligned columns.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn role_name(role: i32) -> &'static str {
    match pb::NodeRole::try_from(role).unwrap_or(pb::NodeRole::Unspecified) {
        pb::NodeRole::Leader => "leader",
        pb::NodeRole::Follower => "follower",
        pb::NodeRole::Learner => "learner",
        pb::NodeRole::Candidate => "candidate",
        pb::NodeRole::Unreachable | pb::NodeRole::Unspecified => "unreachable",
    }
}

fn zone_json(z: &pb::Zone) -> serde_json::Value {
    json!({
        "name": z.name,
        "region": z.region,
        "labels": z.labels,
        "removed": z.removed,
        "connected": z.connected,
        "last_seen": rfc3339(z.last_seen_unix_ms),
        "created": rfc3339(z.created_unix_ms),
    })
}

pub async fn status(args: OutputArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let status = client
        .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await?;
    if args.format != Format::Table {
        let nodes: Vec<_> = status
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id, "address": n.address, "admin_address": n.admin_address,
                    "role": role_name(n.role), "term": n.term,
                    "commit_index": n.commit_index, "applied_index": n.applied_index,
                })
            })
            .collect();
        let zones: Vec<_> = status
            .zones
            .iter()
            .filter(|z| !z.removed)
            .map(zone_json)
            .collect();
        let leader = if status.leader_id == 0 {
            None
        } else {
            Some(status.leader_id)
        };
        let value = json!({
            "trust_domain": status.trust_domain,
            "global": {"leader": leader, "term": status.term, "nodes": nodes},
            "zones": zones,
        });
        return print_structured(args.format, &value);
    }
    outln!("Trust domain: {}", status.trust_domain);
    outln!("\nGlobal nodes");
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.address.clone(),
                role_name(n.role).to_owned(),
                n.term.to_string(),
                n.commit_index.to_string(),
                n.applied_index.to_string(),
            ]
        })
        .collect();
    print_table(
        &["ID", "ADDRESS", "ROLE", "TERM", "LOG INDEX", "APPLIED"],
        &rows,
    );
    outln!("\nZones");
    zone_table(&status.zones);
    Ok(())
}

fn zone_table(zones: &[pb::Zone]) {
    let rows: Vec<Vec<String>> = zones
        .iter()
        .map(|z| {
            vec![
                z.name.clone(),
                z.region.clone(),
                if z.removed {
                    "removed".into()
                } else if z.connected {
                    "connected".into()
                } else {
                    "disconnected".into()
                },
                rfc3339(z.last_seen_unix_ms).unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    print_table(&["NAME", "REGION", "STATUS", "LAST SEEN"], &rows);
}

#[derive(Debug, Args)]
pub struct ZoneCreateArgs {
    /// Zone name (a DNS label).
    name: String,
    /// Region, for locality-aware failover.
    #[arg(long, default_value = "default")]
    region: String,
    /// Lifetime of the join token (e.g. 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    token_ttl: Option<std::time::Duration>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn zone_create(args: ZoneCreateArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let request = pb::CreateZoneRequest {
        name: args.name.clone(),
        region: args.region,
        labels: Default::default(),
        token_ttl_seconds: args.token_ttl.map_or(0, |d| d.as_secs().max(1)),
    };
    let reply = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.create_zone(r).await }
        })
        .await?;
    eprintln!(
        "zone {} created; its join token (single use, expires {}):",
        args.name,
        rfc3339(reply.token_expires_unix_ms).unwrap_or_default()
    );
    outln!("{}", reply.join_token);
    Ok(())
}

pub async fn zone_list(args: OutputArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let reply = client
        .call(|mut c| async move { c.list_zones(pb::ListZonesRequest {}).await })
        .await?;
    if args.format == Format::Table {
        zone_table(&reply.zones);
        return Ok(());
    }
    print_structured(
        args.format,
        &json!(reply.zones.iter().map(zone_json).collect::<Vec<_>>()),
    )
}

#[derive(Debug, Args)]
pub struct ZoneRemoveArgs {
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn zone_remove(args: ZoneRemoveArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let request = pb::RemoveZoneRequest {
        name: args.name.clone(),
    };
    client
        .call(|mut c| {
            let r = request.clone();
            async move { c.remove_zone(r).await }
        })
        .await?;
    outln!(
        "zone {} removed: it is on the deny list and its credentials will not be renewed",
        args.name
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct NodeTokenArgs {
    /// Id the new node will run with.
    #[arg(long)]
    node_id: u64,
    /// Lifetime of the token (e.g. 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn node_token(args: NodeTokenArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let request = pb::CreateJoinTokenRequest {
        purpose: Some(pb::create_join_token_request::Purpose::NodeId(args.node_id)),
        ttl_seconds: args.ttl.map_or(0, |d| d.as_secs().max(1)),
    };
    let reply = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.create_join_token(r).await }
        })
        .await?;
    outln!("{}", reply.join_token);
    Ok(())
}

#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    /// The node to remove.
    #[arg(long)]
    node_id: u64,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn remove_node(args: RemoveNodeArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let request = pb::RemoveNodeRequest {
        node_id: args.node_id,
    };
    let reply = client
        .call(|mut c| {
            let r = request;
            async move { c.remove_node(r).await }
        })
        .await?;
    let voters: Vec<String> = reply
        .status
        .map(|s| s.nodes.iter().map(|n| n.id.to_string()).collect())
        .unwrap_or_default();
    eprintln!(
        "node {} removed; the cluster is now nodes {}",
        args.node_id,
        voters.join(", ")
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct WorkloadTokenArgs {
    /// The zone whose control plane will honour the token.
    #[arg(long)]
    zone: String,
    /// The workload's namespace (empty with `--service gateway` for a gateway token).
    #[arg(long, default_value = "")]
    namespace: String,
    #[arg(long)]
    service: String,
    /// Defaults to the service name.
    #[arg(long)]
    service_account: Option<String>,
    /// Lifetime of the token (e.g. 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn workload_token(args: WorkloadTokenArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let request = pb::CreateWorkloadTokenRequest {
        zone: args.zone,
        namespace: args.namespace,
        service: args.service,
        service_account: args.service_account.unwrap_or_default(),
        ttl_seconds: args.ttl.map_or(0, |d| d.as_secs().max(1)),
    };
    let reply = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.create_workload_token(r).await }
        })
        .await?;
    eprintln!(
        "bootstrap token for {} (expires {}):",
        reply.spiffe_id,
        rfc3339(reply.expires_unix_ms).unwrap_or_default()
    );
    outln!("{}", reply.token);
    Ok(())
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML file with one or more resources (`-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Validate and report, store nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let (yaml, source) = if args.file.as_os_str() == "-" {
        (
            std::io::read_to_string(std::io::stdin())?,
            "(stdin)".to_owned(),
        )
    } else {
        let text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        (text, args.file.display().to_string())
    };
    // Validate locally first: the same rules as the server, and no connection needed to learn
    // that a file is wrong.
    strait_policy::parse_documents(&yaml, &source)?;
    let client = client(&args.client)?;
    let request = pb::ApplyPoliciesRequest {
        yaml,
        source,
        dry_run: args.dry_run,
    };
    let reply = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.apply_policies(r).await }
        })
        .await?;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    for r in reply.results {
        outln!(
            "{} {}/{} {}{suffix}",
            r.kind,
            r.namespace,
            r.name,
            r.outcome
        );
    }
    for warning in reply.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Kind (case-insensitive: `timeout` or `Timeout`); `all` for every kind.
    kind: String,
    /// Resource name (all when omitted).
    name: Option<String>,
    /// Namespace (all when omitted).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let kind = if args.kind.eq_ignore_ascii_case("all") {
        String::new()
    } else {
        strait_policy::Kind::from_str_case_insensitive(&args.kind)?
            .as_str()
            .to_owned()
    };
    let client = client(&args.client)?;
    let request = pb::GetPoliciesRequest {
        kind,
        namespace: args.namespace.clone().unwrap_or_default(),
        name: args.name.clone().unwrap_or_default(),
    };
    let reply = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.get_policies(r).await }
        })
        .await?;
    if args.name.is_some() && reply.resources.is_empty() {
        anyhow::bail!(
            "{} {:?} not found",
            args.kind,
            args.name.unwrap_or_default()
        );
    }
    let resources = reply
        .resources
        .iter()
        .map(|r| strait_policy::Resource::from_json(&r.json))
        .collect::<Result<Vec<_>, _>>()?;
    match args.format {
        Format::Yaml => out!("{}", strait_policy::to_yaml_documents(&resources)?),
        Format::Json => {
            let values = reply
                .resources
                .iter()
                .map(|r| serde_json::from_str::<serde_json::Value>(&r.json))
                .collect::<Result<Vec<_>, _>>()?;
            print_json(&json!(values))?;
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = reply
                .resources
                .iter()
                .map(|r| {
                    vec![
                        r.kind.clone(),
                        r.namespace.clone(),
                        r.name.clone(),
                        r.revision.to_string(),
                    ]
                })
                .collect();
            print_table(&["KIND", "NAMESPACE", "NAME", "REVISION"], &rows);
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    kind: String,
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let kind = strait_policy::Kind::from_str_case_insensitive(&args.kind)?;
    let client = client(&args.client)?;
    let request = pb::DeletePolicyRequest {
        kind: kind.as_str().to_owned(),
        namespace: args.namespace.clone(),
        name: args.name.clone(),
    };
    client
        .call(|mut c| {
            let r = request.clone();
            async move { c.delete_policy(r).await }
        })
        .await?;
    outln!("{} {}/{} deleted", kind.as_str(), args.namespace, args.name);
    Ok(())
}

pub async fn services(args: OutputArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let reply = client
        .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
        .await?;
    if args.format != Format::Table {
        let services: Vec<_> = reply
            .services
            .iter()
            .map(|s| {
                let service = s.service.clone().unwrap_or_default();
                json!({
                    "name": service.name,
                    "namespace": service.namespace,
                    "vip_index": s.vip_index,
                    "vips": s.vips,
                    "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port})).collect::<Vec<_>>(),
                    "zones": s.zones.iter().map(|z| json!({
                        "zone": z.zone, "healthy": z.healthy, "total": z.total,
                        "drained": z.drained, "stale": z.stale,
                        "pinned_vip_index": z.pinned_vip_index,
                        "pinned_vips": z.pinned_vips,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_structured(args.format, &json!(services));
    }
    let rows: Vec<Vec<String>> = reply
        .services
        .iter()
        .map(|s| {
            let service = s.service.clone().unwrap_or_default();
            let zones: Vec<String> = s
                .zones
                .iter()
                .map(|z| format!("{}({}/{})", z.zone, z.healthy, z.total))
                .collect();
            let mut vips: Vec<String> = s
                .vips
                .iter()
                .map(|(zone, vip)| format!("{zone}={vip}"))
                .collect();
            vips.sort();
            vec![
                service.namespace,
                service.name,
                zones.join(" "),
                vips.join(" "),
            ]
        })
        .collect();
    print_table(
        &["NAMESPACE", "NAME", "ZONES (HEALTHY/TOTAL)", "VIPS"],
        &rows,
    );
    Ok(())
}
