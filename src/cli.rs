//! The command line: clap types, and dispatch to the commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;

/// Strait: a federated service mesh — one trust root, every service reachable from every zone.
#[derive(Debug, Parser)]
#[command(name = "strait", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Async runtime worker threads (default: 1 for `sidecar run`, which keeps every request
    /// on one thread with no cross-thread wake-ups; one per core for everything else).
    #[arg(long, global = true, env = "STRAIT_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the global control plane.
    #[command(subcommand)]
    Global(GlobalCommand),
    /// Start a whole federation on this machine (loopback, background processes) and return.
    Up(commands::local::UpArgs),
    /// Stop a federation started by `strait up`.
    Down(commands::local::DownArgs),
    /// Global nodes (role, term, indexes) and zones (connection, last seen).
    Status(OutputArgs),
    /// Run, create, list and remove zones.
    #[command(subcommand)]
    Zone(ZoneCommand),
    /// Create join tokens (zones, global nodes) and workload bootstrap tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Apply policy resources from a YAML file (all or nothing).
    Apply(commands::admin::ApplyArgs),
    /// Show policy resources.
    Get(commands::admin::GetArgs),
    /// Delete a policy resource.
    Delete(commands::admin::DeleteArgs),
    /// Every exported service: zones, healthy endpoints, VIP.
    Services(OutputArgs),
    /// Which policies apply to a service (per port), which are overridden and why.
    Describe(commands::describe::DescribeArgs),
    /// Run the sidecar proxy of one workload instance.
    #[command(subcommand)]
    Sidecar(SidecarCommand),
    /// A demo workload saying who it is and who called it: JSON over HTTP, a gRPC `Greeter`
    /// (`--protocol grpc`) or a WebSocket echo (`--protocol websocket`).
    DemoApp(commands::sidecar::DemoAppArgs),
    /// Run the east-west gateway of a zone.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Take a service out of a zone through the control plane (callers fail over).
    Drain(commands::drill::DrainArgs),
    /// Put a drained service back into service in a zone.
    Undrain(commands::drill::DrainArgs),
    /// Failure drills with load, objectives, a guardrail and a report.
    #[command(subcommand)]
    Drill(DrillCommand),
    /// The whole tour on this machine: a federation, cross-zone calls, DNS, a failover drill,
    /// a report, and everything torn down.
    Demo(commands::demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum DrillCommand {
    /// Take a service out of a zone under load and report how traffic moved.
    Failover(Box<commands::drill::FailoverArgs>),
}

#[derive(Debug, Subcommand)]
enum GatewayCommand {
    /// Run one gateway replica.
    Run(Box<commands::gateway::RunArgs>),
}

#[derive(Debug, Subcommand)]
enum SidecarCommand {
    /// Run one sidecar.
    Run(Box<commands::sidecar::RunArgs>),
    /// Install the traffic-capture rules (iptables) that send a pod's VIP traffic and inbound
    /// app ports through its sidecar (run once, as an init container with NET_ADMIN).
    Init(Box<commands::sidecar::InitArgs>),
}

#[derive(Debug, Subcommand)]
enum GlobalCommand {
    /// Run one global node.
    Run(Box<commands::global::RunArgs>),
    /// Remove a node from the Raft cluster (then stop it; never reuse its id).
    RemoveNode(commands::admin::RemoveNodeArgs),
}

#[derive(Debug, Subcommand)]
enum ZoneCommand {
    /// Run a zone control plane.
    Run(Box<commands::zone::RunArgs>),
    /// Create a zone and print its join token.
    Create(commands::admin::ZoneCreateArgs),
    /// List zones.
    List(OutputArgs),
    /// Remove a zone: its credentials stop being renewed and other zones deny it.
    Remove(commands::admin::ZoneRemoveArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// A join token for a new global node.
    Node(commands::admin::NodeTokenArgs),
    /// A bootstrap token for a sidecar (or, with `--service gateway` and no namespace, a
    /// gateway), verified offline by its zone.
    Workload(commands::admin::WorkloadTokenArgs),
}

/// `--config` and `-o` shared by the commands that talk to global.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Client config (written by `strait up` as DIR/config.yaml).
    #[arg(long, env = "STRAIT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl Cli {
    /// How many runtime worker threads the command runs on; `None` is one per core.
    pub fn worker_threads(&self) -> Option<usize> {
        // `up` waits for processes with `block_in_place`, which needs a multi-thread runtime.
        if matches!(self.command, Command::Up(_)) {
            return None;
        }
        self.worker_threads
            .filter(|&n| n > 0)
            .or(match self.command {
                // A sidecar proxies one workload's traffic: on one thread each request's hops
                // (downstream, pooled upstream, TLS) wake each other without crossing threads.
                Command::Sidecar(SidecarCommand::Run(_)) => Some(1),
                _ => None,
            })
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Global(GlobalCommand::Run(args)) => commands::global::run(*args).await,
            Command::Global(GlobalCommand::RemoveNode(args)) => {
                commands::admin::remove_node(args).await
            }
            Command::Up(args) => commands::local::up(args).await,
            Command::Down(args) => commands::local::down(args),
            Command::Status(args) => commands::admin::status(args).await,
            Command::Zone(ZoneCommand::Run(args)) => commands::zone::run(*args).await,
            Command::Zone(ZoneCommand::Create(args)) => commands::admin::zone_create(args).await,
            Command::Zone(ZoneCommand::List(args)) => commands::admin::zone_list(args).await,
            Command::Zone(ZoneCommand::Remove(args)) => commands::admin::zone_remove(args).await,
            Command::Token(TokenCommand::Node(args)) => commands::admin::node_token(args).await,
            Command::Token(TokenCommand::Workload(args)) => {
                commands::admin::workload_token(args).await
            }
            Command::Apply(args) => commands::admin::apply(args).await,
            Command::Get(args) => commands::admin::get(args).await,
            Command::Delete(args) => commands::admin::delete(args).await,
            Command::Services(args) => commands::admin::services(args).await,
            Command::Describe(args) => commands::describe::describe(args).await,
            Command::Sidecar(SidecarCommand::Run(args)) => commands::sidecar::run(*args).await,
            Command::Sidecar(SidecarCommand::Init(args)) => commands::sidecar::init(*args),
            Command::DemoApp(args) => commands::sidecar::demo_app(args).await,
            Command::Gateway(GatewayCommand::Run(args)) => commands::gateway::run(*args).await,
            Command::Drain(args) => commands::drill::drain(args, true).await,
            Command::Undrain(args) => commands::drill::drain(args, false).await,
            Command::Drill(DrillCommand::Failover(args)) => commands::drill::failover(*args).await,
            Command::Demo(args) => commands::demo::run(args).await,
        }
    }
}
