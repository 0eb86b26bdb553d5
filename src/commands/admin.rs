//! The commands that talk to the global control plane's Admin API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use strait_global::admin_client::{AdminClient, ClientConfig};
use strait_global::admin_view::{self as view, Table};
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

/// Prints a table as aligned columns.
pub(crate) fn print_table(table: &Table) {
    let Table { header, rows } = table;
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

pub async fn status(args: OutputArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let status = client
        .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
        .await?;
    if args.format != Format::Table {
        return print_structured(args.format, &view::status_json(&status));
    }
    outln!("Trust domain: {}", status.trust_domain);
    outln!("\nGlobal nodes");
    print_table(&view::node_table(&status.nodes));
    outln!("\nZones");
    print_table(&view::zone_table(&status.zones));
    Ok(())
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
        view::rfc3339(reply.token_expires_unix_ms).unwrap_or_default()
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
        print_table(&view::zone_table(&reply.zones));
        return Ok(());
    }
    print_structured(
        args.format,
        &json!(reply.zones.iter().map(view::zone_json).collect::<Vec<_>>()),
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
        view::rfc3339(reply.expires_unix_ms).unwrap_or_default()
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
        Format::Table => print_table(&view::policy_table(&reply.resources)),
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
        return print_structured(args.format, &view::services_json(&reply.services));
    }
    print_table(&view::services_table(&reply.services));
    Ok(())
}
