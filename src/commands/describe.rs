//! `strait describe SERVICE -n NS [--port P]`: which policies apply to a service, port by
//! port, and which are overridden and why (as `istioctl x describe`). The answer is
//! [`strait_policy::describe`] over the stored policies; this module fetches and prints.

use clap::Args;
use serde_json::json;
use strait_global::admin_view as view;
use strait_proto as pb;

use crate::cli::{ClientArgs, Format};
use crate::commands::admin::{client, print_structured, print_table};

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The service.
    service: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// One port (default: every port the service has, or the service as a whole).
    #[arg(long)]
    port: Option<u16>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let policies = client
        .call(|mut c| async move { c.get_policies(pb::GetPoliciesRequest::default()).await })
        .await?;
    let services = client
        .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
        .await?;
    let set: strait_policy::PolicySet = policies
        .resources
        .iter()
        .map(|r| strait_policy::Resource::from_json(&r.json))
        .collect::<Result<_, _>>()?;
    let known = services.services.iter().find(|s| {
        s.service
            .as_ref()
            .is_some_and(|r| r.namespace == args.namespace && r.name == args.service)
    });
    let ports: Vec<Option<u16>> = match (args.port, known) {
        (Some(port), _) => vec![Some(port)],
        (None, Some(s)) if !s.ports.is_empty() => s
            .ports
            .iter()
            .filter_map(|p| u16::try_from(p.port).ok())
            .map(Some)
            .collect(),
        _ => vec![None],
    };
    if known.is_none() {
        eprintln!(
            "warning: no zone exports {}/{}; showing what would apply",
            args.namespace, args.service
        );
    }
    let descriptions: Vec<strait_policy::Description> = ports
        .into_iter()
        .map(|port| strait_policy::describe(&set, &args.namespace, &args.service, port))
        .collect();
    if args.format != Format::Table {
        return print_structured(args.format, &json!(descriptions));
    }
    let table = view::description_table(&descriptions);
    if table.rows.is_empty() {
        eprintln!(
            "no policy applies to {}/{}: every default is in force",
            args.namespace, args.service
        );
        return Ok(());
    }
    print_table(&table);
    Ok(())
}
