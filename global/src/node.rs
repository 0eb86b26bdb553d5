//! Running one global node: credentials, storage, Raft, the gRPC APIs over mutual TLS and the
//! admin HTTP endpoints, until shutdown.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use strait_trust::ca::RootCa;
use strait_trust::tls::{CredentialStore, TrustStore};
use tokio::net::TcpListener;

use crate::admin_service::AdminService;
use crate::cluster::Cluster;
use crate::config::{ConfigError, GlobalConfig};
use crate::context::{NodeContext, now_ms};
use crate::credentials::{
    ALPN_H2, CredentialsError, NODE_CERT_VALIDITY, NodeCredentials, create_private_dir, expect_node,
};
use crate::join_service::NodeJoinService;
use crate::metrics::Metrics;
use crate::network::{MAX_MESSAGE_BYTES, Network, PeerTls};
use crate::raft_service::RaftService;
use crate::state::Command;
use crate::types::{NodeId, NodeInfo, Raft};
use crate::zone_sync::ZoneSyncService;

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("opening storage in {dir}: {reason}")]
    Storage { dir: String, reason: String },
    #[error("starting Raft: {0}")]
    Raft(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] strait_trust::Error),
    #[error("metrics setup: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How often background tasks (metrics, readiness, bootstrap, renewal) look at the node.
const TICK: Duration = Duration::from_millis(250);

/// Client TLS per peer node, built once per target and cached: each expects exactly
/// `spiffe://TD/global/TARGET`.
struct PeerConfigs {
    creds: CredentialStore,
    trust: TrustStore,
    cache: Mutex<HashMap<NodeId, Arc<rustls::ClientConfig>>>,
}

impl PeerTls for PeerConfigs {
    fn client_config(&self, target: NodeId) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(config) = cache.get(&target) {
            return Ok(config.clone());
        }
        let expect = expect_node(&self.trust.trust_domain(), target).map_err(|e| e.to_string())?;
        let config = strait_trust::tls::client_config(
            &self.creds,
            &self.trust,
            expect,
            vec![ALPN_H2.to_vec()],
        )
        .map_err(|e| e.to_string())?;
        let config = Arc::new(config);
        cache.insert(target, config.clone());
        Ok(config)
    }
}

/// Resolves when the node's stop flag is raised.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Runs a global node on the given listeners until `shutdown` completes.
pub async fn run(
    config: GlobalConfig,
    api: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    config.validate()?;
    create_private_dir(&config.data_dir)?;

    let (creds, founded_root) = match NodeCredentials::load(&config)? {
        Some(creds) => (creds, None),
        None if config.join.is_empty() => {
            let (creds, root) = NodeCredentials::found_federation(&config)?;
            tracing::info!(trust_domain = %creds.record.trust_domain, "created a new federation");
            (creds, Some(root))
        }
        None => {
            let creds = NodeCredentials::join(&config).await?;
            tracing::info!("joined the federation");
            (creds, None)
        }
    };
    // Until InitFederation is committed the root exists only here: keep it on disk so that a
    // crash in between does not lose it.
    let ca_dir = config.data_dir.join("ca");
    if let Some(root) = &founded_root {
        create_private_dir(&ca_dir)?;
        strait_trust::store::write_cert(&ca_dir.join("root.crt"), &root.cert_pem())?;
        strait_trust::store::write_key(&ca_dir.join("root.key"), &root.key_pem())?;
    }

    let raft_dir = config.data_dir.join("raft");
    let (log_store, sm_store, state) =
        crate::store::open(&raft_dir, crate::store::StoreOptions::default()).map_err(|e| {
            NodeError::Storage {
                dir: raft_dir.display().to_string(),
                reason: e.to_string(),
            }
        })?;

    let peer_tls = Arc::new(PeerConfigs {
        creds: creds.creds.clone(),
        trust: creds.trust.clone(),
        cache: Mutex::default(),
    });
    let network = Network::new(peer_tls, Duration::from_secs(2));
    let raft_config = Arc::new(config.openraft()?);
    let raft = Raft::new(
        config.node_id,
        raft_config,
        network.clone(),
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    let cluster = Cluster::new(
        config.node_id,
        raft.clone(),
        network,
        config.request_timeout,
    );
    let metrics = Metrics::new()?;
    let ctx = Arc::new(NodeContext {
        config: config.clone(),
        cluster: cluster.clone(),
        creds,
        state,
        metrics,
    });

    // Client certificates are optional at the TLS layer only because joiners have none; every
    // service checks the caller's identity itself (see `auth`).
    let server_tls = strait_trust::tls::server_config_optional_client_auth(
        &ctx.creds.creds,
        &ctx.creds.trust,
        Arc::new(strait_trust::tls::AllowAny),
        vec![ALPN_H2.to_vec()],
    )?;
    let incoming = strait_proto::transport::tls_incoming(api, Arc::new(server_tls));

    let admin_state = strait_observe::AdminState::new(ctx.metrics.registry.clone());
    let _ = admin_state.config.set_from(&config);
    admin_state.readiness.set_not_ready("starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(strait_observe::serve(
        admin,
        admin_state.clone(),
        stopped(stop_rx.clone()),
    ));
    let background = tokio::spawn(background(
        ctx.clone(),
        admin_state.readiness.clone(),
        founded_root,
        ca_dir,
        stopped(stop_rx.clone()),
    ));

    let request_timeout = config.request_timeout;
    // Keepalives find a zone or peer whose host vanished without closing its connection.
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(
            strait_proto::raft_server::RaftServer::new(RaftService::new(
                cluster.clone(),
                request_timeout,
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(strait_proto::node_join_server::NodeJoinServer::new(
            NodeJoinService::new(ctx.clone()),
        ))
        .add_service(strait_proto::admin_server::AdminServer::new(
            AdminService::new(ctx.clone()),
        ))
        .add_service(
            strait_proto::zone_sync_server::ZoneSyncServer::new(ZoneSyncService::new(ctx.clone()))
                .max_decoding_message_size(strait_proto::transport::MAX_CONTROL_MESSAGE)
                .max_encoding_message_size(strait_proto::transport::MAX_CONTROL_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

    tracing::info!(node_id = config.node_id, api = %config.listen, admin = %config.admin_listen, "global node serving");
    let shutdown_watch = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let served = strait_proto::transport::serve_with_drain(
        grpc,
        stopped(stop_rx),
        strait_proto::transport::DRAIN_TIMEOUT,
    )
    .await;
    shutdown_watch.abort();
    admin_state.readiness.set_not_ready("shutting down");
    if let Err(err) = raft.shutdown().await {
        tracing::warn!(%err, "Raft shutdown");
    }
    background.abort();
    let _ = admin_task.await;
    served?;
    tracing::info!("global node stopped");
    Ok(())
}

/// Founding, readiness, metrics and certificate renewal, every [`TICK`].
async fn background(
    ctx: Arc<NodeContext>,
    readiness: strait_observe::Readiness,
    founded_root: Option<RootCa>,
    ca_dir: std::path::PathBuf,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let founder = ctx.creds.record.founder;
    let mut founded_root = founded_root;
    let mut interval = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = interval.tick() => {}
        }
        if founder && let Err(err) = found(&ctx, &mut founded_root, &ca_dir).await {
            tracing::warn!(%err, "initializing the federation (will retry)");
        }
        let view = ctx.cluster.node_view();
        let members = ctx.cluster.members();
        let voters = members.iter().filter(|(_, _, voter)| *voter).count();
        ctx.metrics.observe_raft(&view, voters);
        ctx.metrics
            .observe_store(&ctx.state.stats(), ctx.cluster.batch_stats());
        let (initialized, zones, policies, services) = ctx.read(|s| {
            (
                s.is_initialized(),
                s.zones.values().filter(|z| z.is_active()).count(),
                s.policies.len(),
                s.vips.len(),
            )
        });
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        ctx.metrics.zones.set(as_i64(zones));
        ctx.metrics.policies.set(as_i64(policies));
        ctx.metrics.services.set(as_i64(services));
        let member = members.iter().any(|(id, _, _)| *id == ctx.cluster.id());
        match (initialized, view.leader, member) {
            (true, Some(_), true) => readiness.set_ready(),
            (false, _, _) => readiness.set_not_ready("the federation is not initialized yet"),
            (_, None, _) => readiness.set_not_ready("no leader known"),
            (_, _, false) => readiness.set_not_ready("not yet a member of the cluster"),
        }
        if initialized {
            renew_own_certificate(&ctx);
        }
    }
}

/// On the founding node: initializes Raft with this node alone, then commits the federation's
/// trust material. Idempotent, so it also finishes a founding interrupted by a crash.
async fn found(
    ctx: &NodeContext,
    root: &mut Option<RootCa>,
    ca_dir: &std::path::Path,
) -> Result<(), String> {
    if ctx.read(|s| s.is_initialized()) {
        return Ok(());
    }
    let raft = ctx.cluster.raft();
    if !raft.is_initialized().await.map_err(|e| e.to_string())? {
        let info = NodeInfo {
            api: ctx.config.advertised_api(),
            admin: ctx.config.advertised_admin(),
        };
        raft.initialize(BTreeMap::from([(ctx.cluster.id(), info)]))
            .await
            .map_err(|e| e.to_string())?;
    }
    if ctx
        .cluster
        .leader()
        .is_none_or(|(leader, _)| leader != ctx.cluster.id())
    {
        return Err("waiting to become leader".to_owned());
    }
    if root.is_none() {
        let cert = std::fs::read_to_string(ca_dir.join("root.crt"))
            .map_err(|e| format!("root.crt: {e}"))?;
        let key =
            strait_trust::store::read_key(&ca_dir.join("root.key")).map_err(|e| e.to_string())?;
        *root = Some(
            RootCa::from_pem(&ctx.creds.record.trust_domain, &cert, &key)
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(root) = root.as_ref() else {
        return Err("no root CA".to_owned());
    };
    let bundle_pem = root.bundle().map_err(|e| e.to_string())?.to_pem();
    let cmd = Command::InitFederation {
        trust_domain: root.trust_domain().to_owned(),
        root_cert_pem: root.cert_pem(),
        root_key_pem: crate::state::PrivateKeyPem(root.key_pem()),
        bundle_pem,
        now_ms: now_ms(),
    };
    match ctx.cluster.write(cmd).await.map_err(|e| e.to_string())? {
        crate::state::CommandResult::Ok { .. } => {
            tracing::info!("federation initialized");
            Ok(())
        }
        crate::state::CommandResult::Rejected(r) => Err(r.to_string()),
    }
}

/// Re-signs this node's certificate from the replicated root at 2/3 of its life, with a new key.
fn renew_own_certificate(ctx: &NodeContext) {
    if !ctx.creds.creds.needs_renewal(SystemTime::now()) {
        return;
    }
    let Some(ca) = ctx.read(|s| s.ca.clone()) else {
        return;
    };
    let renewed = (|| -> Result<(), String> {
        let root = RootCa::from_pem(&ca.trust_domain, &ca.root_cert_pem, &ca.root_key_pem.0)
            .map_err(|e| e.to_string())?;
        let key = strait_trust::keys::KeyPair::generate().map_err(|e| e.to_string())?;
        let id = ctx.creds.identity();
        let issued = root
            .sign_leaf(
                &key.leaf_csr(&id).map_err(|e| e.to_string())?,
                &id,
                NODE_CERT_VALIDITY,
            )
            .map_err(|e| e.to_string())?;
        ctx.creds
            .renew(&key.to_pem(), &issued.chain_pem)
            .map_err(|e| e.to_string())
    })();
    match renewed {
        Ok(()) => tracing::info!("renewed this node's certificate"),
        Err(err) => tracing::warn!(%err, "renewing this node's certificate failed (will retry)"),
    }
}

// === StatefulSet peers (`--join-dns`) ===

/// A global node's place in a Kubernetes StatefulSet, decided from its pod name alone: the pod
/// with ordinal 0 founds the federation on its first start, every other one joins it through
/// the stable DNS names of the pods before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulSetRole {
    /// `K` of the pod name `NAME-K`.
    pub ordinal: u32,
    /// `K + 1`: Raft ids start at 1 and are never reused.
    pub node_id: NodeId,
    /// `NAME-K.DOMAIN:PORT`, this pod's stable address.
    pub advertise: String,
    /// `NAME-0.DOMAIN:PORT`, ..., `NAME-(K-1).DOMAIN:PORT` (ordinal 0 first); empty for
    /// ordinal 0, which bootstraps.
    pub join: Vec<String>,
}

/// Why `--join-dns` cannot place this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatefulSetError {
    #[error(
        "pod name {0:?} is not NAME-ORDINAL (a StatefulSet pod's name; set POD_NAME or --pod-name)"
    )]
    PodName(String),
    #[error(
        "--join-dns {0:?}: expected the headless Service's domain, HEADLESS.NAMESPACE.svc[.cluster.local][:PORT]"
    )]
    Domain(String),
}

/// Most pods a StatefulSet of global nodes has (Raft groups are 1, 3 or 5; leave room).
const MAX_ORDINAL: u32 = 1000;

/// Where pod `pod_name` stands in its StatefulSet, whose headless Service has the DNS domain
/// `join_dns` (`HEADLESS.NS.svc[.cluster.local]`, optionally with `:PORT`; `default_port`, the
/// node's gRPC port, otherwise).
pub fn statefulset_role(
    pod_name: &str,
    join_dns: &str,
    default_port: u16,
) -> Result<StatefulSetRole, StatefulSetError> {
    let bad_pod = || StatefulSetError::PodName(pod_name.to_owned());
    let (set, ordinal) = pod_name.rsplit_once('-').ok_or_else(bad_pod)?;
    if !strait_proto::names::is_dns_label(set)
        || ordinal.is_empty()
        || !ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad_pod());
    }
    let ordinal: u32 = ordinal
        .parse()
        .ok()
        .filter(|o| *o < MAX_ORDINAL)
        .ok_or_else(bad_pod)?;
    let bad_domain = || StatefulSetError::Domain(join_dns.to_owned());
    let (domain, port) = match join_dns.rsplit_once(':') {
        Some((domain, port)) => (
            domain,
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(bad_domain)?,
        ),
        None => (join_dns, default_port),
    };
    let domain = domain.trim_end_matches('.');
    if domain.split('.').count() < 2 || !domain.split('.').all(strait_proto::names::is_dns_label) {
        return Err(bad_domain());
    }
    let address = |k: u32| format!("{set}-{k}.{domain}:{port}");
    Ok(StatefulSetRole {
        ordinal,
        node_id: NodeId::from(ordinal) + 1,
        advertise: address(ordinal),
        join: (0..ordinal).map(address).collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod statefulset_tests {
    use super::*;

    #[test]
    fn ordinal_zero_bootstraps() {
        let role =
            statefulset_role("strait-global-0", "strait-global-peers.strait.svc", 7400).unwrap();
        assert_eq!(
            role,
            StatefulSetRole {
                ordinal: 0,
                node_id: 1,
                advertise: "strait-global-0.strait-global-peers.strait.svc:7400".into(),
                join: vec![],
            }
        );
    }

    #[test]
    fn later_ordinals_join_through_the_pods_before_them() {
        let role = statefulset_role(
            "strait-global-2",
            "strait-global-peers.strait.svc.cluster.local:7500",
            7400,
        )
        .unwrap();
        assert_eq!(role.ordinal, 2);
        assert_eq!(role.node_id, 3);
        assert_eq!(
            role.advertise,
            "strait-global-2.strait-global-peers.strait.svc.cluster.local:7500"
        );
        assert_eq!(
            role.join,
            [
                "strait-global-0.strait-global-peers.strait.svc.cluster.local:7500",
                "strait-global-1.strait-global-peers.strait.svc.cluster.local:7500",
            ]
        );
    }

    #[test]
    fn names_that_are_not_statefulset_pods_are_refused() {
        for pod in [
            "strait-global",
            "strait-global-",
            "strait-global-x",
            "-0",
            "Global-0",
            "g-1000",
            "g--1",
        ] {
            assert!(
                matches!(
                    statefulset_role(pod, "peers.ns.svc", 7400),
                    Err(StatefulSetError::PodName(_))
                ),
                "{pod}"
            );
        }
        for domain in [
            "peers",
            "peers.ns.svc:0",
            "peers.ns.svc:http",
            "",
            "peers..svc",
            "https://peers.ns.svc",
        ] {
            assert!(
                matches!(
                    statefulset_role("g-1", domain, 7400),
                    Err(StatefulSetError::Domain(_))
                ),
                "{domain}"
            );
        }
        // A trailing dot (a fully qualified name) is fine.
        assert_eq!(
            statefulset_role("g-1", "peers.ns.svc.", 7400).unwrap().join,
            ["g-0.peers.ns.svc:7400"]
        );
    }
}
