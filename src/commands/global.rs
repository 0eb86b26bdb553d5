//! `strait global run`: one global control plane node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strait_global::config::GlobalConfig;
use strait_global::node::{StatefulSetRole, statefulset_role};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML config file (fields as in `strait_global::config::GlobalConfig`); flags given
    /// on the command line override it.
    #[arg(long = "config-file")]
    config_file: Option<PathBuf>,
    /// This node's Raft id (1 or more; never reuse one).
    #[arg(long)]
    node_id: Option<u64>,
    /// Raft log, snapshots and credentials.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC address (Admin, ZoneSync, Raft), TLS.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /ready, /healthz, /config.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Address others use for --listen (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Address others use for --admin-listen.
    #[arg(long)]
    advertise_admin: Option<String>,
    /// Trust domain of a new federation (first node, first start).
    #[arg(long)]
    trust_domain: Option<String>,
    /// The operator's own root CA certificate (first node, first start).
    #[arg(long, requires = "root_key")]
    root_cert: Option<PathBuf>,
    /// The operator's own root CA key.
    #[arg(long, requires = "root_cert")]
    root_key: Option<PathBuf>,
    /// Join an existing federation through these nodes (host:port, comma-separated).
    #[arg(long, value_delimiter = ',', requires = "token_file")]
    join: Vec<String>,
    /// File holding the node join token (`strait token node`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Run as a pod of a Kubernetes StatefulSet whose headless Service has this DNS domain
    /// (`HEADLESS.NAMESPACE.svc[.cluster.local][:PORT]`, the port defaulting to --listen's):
    /// the pod name `NAME-K` gives node id K+1; pod 0 founds the federation, the others join
    /// through `NAME-0.DOMAIN`, ..., `NAME-(K-1).DOMAIN` with --token-file (waiting for it to
    /// appear, as a Secret key does).
    #[arg(long, conflicts_with = "join")]
    join_dns: Option<String>,
    /// This pod's name, with --join-dns (default: $HOSTNAME, a StatefulSet pod's name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Where the first node writes the admin credential (default DATA/admin).
    #[arg(long)]
    admin_credentials_dir: Option<PathBuf>,
    /// How long a write waits for a quorum before failing (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// Snapshot after this many log entries.
    #[arg(long)]
    snapshot_after_entries: Option<u64>,
    /// Lifetime of zone intermediate CAs (default 7 days; short values are for tests).
    #[arg(long, value_parser = humantime::parse_duration)]
    zone_ca_validity: Option<Duration>,
    /// Lifetime of zone control plane certificates (default 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    zone_cp_validity: Option<Duration>,
}

impl RunArgs {
    /// With `--join-dns`: this pod's place in its StatefulSet.
    fn statefulset_role(&self) -> anyhow::Result<Option<StatefulSetRole>> {
        let Some(domain) = &self.join_dns else {
            return Ok(None);
        };
        let pod = self
            .pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .context("--join-dns needs the pod name: set POD_NAME or --pod-name")?;
        let port = self.listen.map_or(7400, |l| l.port());
        let role = statefulset_role(&pod, domain, port)?;
        if let Some(id) = self.node_id
            && id != role.node_id
        {
            anyhow::bail!(
                "--node-id {id} contradicts pod {pod} (ordinal {}, so node id {})",
                role.ordinal,
                role.node_id
            );
        }
        Ok(Some(role))
    }

    fn config(mut self) -> anyhow::Result<GlobalConfig> {
        let role = self.statefulset_role()?;
        if let Some(role) = &role {
            self.node_id = Some(role.node_id);
            if self.advertise.is_none() {
                self.advertise = Some(role.advertise.clone());
            }
            self.join = role.join.clone();
        }
        let mut config = match &self.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                GlobalConfig::from_yaml(&text, &path.display().to_string())?
            }
            None => {
                let (Some(node_id), Some(data_dir)) = (self.node_id, self.data_dir.clone()) else {
                    anyhow::bail!("--node-id and --data-dir are required (or --config-file)");
                };
                let listen = self
                    .listen
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7400)));
                let admin = self
                    .admin_listen
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7401)));
                GlobalConfig::new(node_id, data_dir, listen, admin)
            }
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { config.$field = v; } )* };
        }
        set!(
            node_id,
            data_dir,
            listen,
            admin_listen,
            trust_domain,
            request_timeout,
            zone_ca_validity,
            zone_cp_validity
        );
        macro_rules! set_opt {
            ($($field:ident),*) => { $( if self.$field.is_some() { config.$field = self.$field; } )* };
        }
        set_opt!(
            advertise,
            advertise_admin,
            root_cert,
            root_key,
            token_file,
            admin_credentials_dir
        );
        if !self.join.is_empty() {
            config.join = self.join;
        }
        if let Some(n) = self.snapshot_after_entries {
            config.raft.snapshot_after_entries = n;
        }
        config.validate()?;
        Ok(config)
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    strait_observe::init_tracing("global");
    let statefulset = args.join_dns.is_some();
    let config = args.config()?;
    if statefulset {
        tracing::info!(node_id = config.node_id, join = ?config.join, "StatefulSet pod");
        // A joining pod whose token is not there yet waits for it instead of crash-looping.
        strait_global::credentials::wait_for_join_token(&config).await;
    }
    // Every input is checked before a port is bound or the data directory written.
    strait_global::credentials::check_inputs(&config)?;
    let api = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.admin_listen))?;
    strait_global::node::run(config, api, admin, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutdown requested");
}
