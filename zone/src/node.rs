//! Running a zone control plane: credentials (join once, then load), the persisted federation
//! view, the workload CA and the discovery server over TLS, the sync stream with global, the
//! DNS server (when configured) and the admin HTTP endpoints, until shutdown.
//!
//! In Kubernetes mode (`mode: kubernetes`) the cluster's watches ([`crate::kubernetes`]) run
//! *beside* the discovery registry rather than instead of it: the workload instances the zone
//! reports and routes to come from the cluster (ServiceExport + EndpointSlices), while
//! sidecars still register to get their config; the zone's gateways come from its gateway
//! pods (a registration counts only for a gateway the cluster does not list). Every replica
//! watches and serves; only the Lease holder writes to the API and speaks for the zone.
//!
//! Static stability is the order of things here: the persisted federation snapshot is
//! published *before* anything is served or global is contacted, and `/ready` needs only
//! credentials and a federation view — received now or persisted earlier. A zone whose global
//! is down is therefore ready and serves what it last knew.

use std::future::Future;
use std::sync::Arc;

use prometheus::Registry;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use strait_proto as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, Mode, ZoneConfig};
use crate::credentials::{ALPN_H2, CredentialsError, ZoneCredentials, create_private_dir};
use crate::discovery::{DiscoveryConfig, DiscoveryError, DiscoveryServer};
use crate::dns::DnsSettings;
use crate::dns::server::{DnsError, DnsMetrics, DnsSockets};
use crate::federation::FederationView;
use crate::identity::{IdentityConfig, IdentityError, IdentityService};
use crate::kubernetes::controller::KubernetesContext;
use crate::kubernetes::source::SourceSettings;
use crate::store::{StoreError, ZoneStore};
use crate::sync::{SyncClient, SyncConfig, SyncError, SyncMetrics};

/// Why a zone control plane could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("zone state database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("workload CA: {0}")]
    Identity(#[from] IdentityError),
    #[error("discovery server: {0}")]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("TLS setup: {0}")]
    Tls(#[from] strait_trust::Error),
    #[error("metrics setup: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(
        "kubernetes mode: no Kubernetes API client (in-cluster service account or kubeconfig): {0}"
    )]
    KubeClient(#[source] kube::Error),
    #[error("sidecar injector: {0}")]
    Webhook(#[from] crate::kubernetes::webhook::WebhookError),
    #[error("zone credentials: {0}")]
    SharedCredentials(#[from] crate::kubernetes::credentials::SharedCredentialsError),
    #[error("sidecar injector: binding {addr}: {source}")]
    WebhookListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// How long Kubernetes mode's tasks get at shutdown (the leader releases its Lease).
const KUBERNETES_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves when the stop flag is raised.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Runs a zone control plane on the given listeners until `shutdown` completes.
///
/// A first start joins the federation with `config.token_file` (and fails with the reason
/// global gave, or "wrong federation" on a pin mismatch, or "no global reachable"); later
/// starts load the credentials from `config.data_dir` and need neither the token nor global.
///
/// With `config.dns` set, the DNS sockets are bound here; [`run_with_dns`] takes them bound.
pub async fn run(
    config: ZoneConfig,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ZoneError> {
    let dns = match config.dns {
        Some(addr) => Some(DnsSockets::bind(addr).await?),
        None => None,
    };
    run_with_dns(config, grpc, admin, dns, shutdown).await
}

/// [`run`] with the DNS server's sockets bound by the caller (none: no DNS server).
pub async fn run_with_dns(
    config: ZoneConfig,
    grpc: TcpListener,
    admin: TcpListener,
    dns: Option<DnsSockets>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ZoneError> {
    config.validate()?;
    create_private_dir(&config.data_dir)?;
    let mut shutdown = Box::pin(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);

    // The admin endpoints come first, so that probes see a live process (not ready) while the
    // credentials are being obtained, which may mean waiting for another replica.
    let registry = Registry::new();
    let admin_state = strait_observe::AdminState::new(registry.clone());
    if let Err(err) = admin_state.config.set_from(&config) {
        tracing::warn!(%err, "the config could not be dumped at /config");
    }
    admin_state
        .readiness
        .set_not_ready("getting the zone's credentials");
    let admin_task = tokio::spawn(strait_observe::serve(
        admin,
        admin_state.clone(),
        stopped(stop_rx.clone()),
    ));

    // Kubernetes mode: the cluster is the inventory source, beside the registry (which still
    // takes sidecar registrations). Universal mode never builds a Kubernetes client, so it
    // needs no kubeconfig. The Lease is contended for before anything else: its holder is
    // the replica that joins.
    let kube = match config.mode {
        Mode::Universal => None,
        Mode::Kubernetes => {
            let client = match kube::Client::try_default().await {
                Ok(client) => client,
                Err(err) => {
                    return stop_early(&stop_tx, admin_task, Err(ZoneError::KubeClient(err))).await;
                }
            };
            let context = kubernetes_context(&config, String::new());
            let election = crate::kubernetes::controller::elect(
                client.clone(),
                &context,
                stopped(stop_rx.clone()),
            );
            Some((client, election))
        }
    };

    let creds = tokio::select! {
        creds = credentials(&config, kube.as_ref()) => creds,
        () = &mut shutdown => {
            tracing::info!("stopped before the zone had its credentials");
            return stop_early(&stop_tx, admin_task, Ok(())).await;
        }
    };
    let creds = match creds {
        Ok(creds) => creds,
        Err(err) => return stop_early(&stop_tx, admin_task, Err(err)).await,
    };
    let trust_domain = creds.trust_domain().to_owned();
    if trust_domain != config.trust_domain {
        tracing::warn!(joined = %trust_domain, configured = %config.trust_domain, "using the trust domain this zone joined with");
    }

    let store = ZoneStore::open(config.data_dir.join("state"))?;
    // Static stability: what global said last is served at once, before global is reached.
    let persisted = store
        .load_federation()?
        .map(FederationView::new)
        .unwrap_or_default();
    if persisted.version() > 0 {
        tracing::info!(
            version = persisted.version(),
            "serving the persisted federation snapshot"
        );
    }
    let (federation_tx, federation_rx) = watch::channel(Arc::new(persisted));

    let kube_client = kube.as_ref().map(|(client, _)| client.clone());
    let mut credential_sync = None;
    let mut bundle_tasks = Vec::new();
    let kubernetes = kube.map(|(client, election)| {
        if let Some(secret) = &config.kubernetes.credentials_secret {
            let store = crate::kubernetes::credentials::SecretStore::new(
                client.clone(),
                &config.kubernetes.namespace,
                secret,
            );
            credential_sync = Some(tokio::spawn(crate::kubernetes::credentials::run(
                store,
                creds.clone(),
                election.leader.clone(),
                stopped(stop_rx.clone()),
            )));
        }
        // Injected sidecars verify the zone from their first connection with the bundle the
        // Lease holder keeps in every injected namespace (kubernetes::bundles).
        if config.webhook.is_some() {
            use crate::kubernetes::bundles;
            let (bundle_tx, bundle_rx) = watch::channel(String::new());
            bundle_tasks.push(tokio::spawn(bundles::follow_trust_store(
                creds.trust.clone(),
                bundle_tx,
                bundles::TRUST_STORE_CHECK,
                stopped(stop_rx.clone()),
            )));
            bundle_tasks.push(tokio::spawn(bundles::run(
                client.clone(),
                bundle_rx,
                election.leader.clone(),
                stopped(stop_rx.clone()),
            )));
        }
        crate::kubernetes::controller::spawn(
            client,
            kubernetes_context(&config, trust_domain.clone()),
            election,
            federation_rx.clone(),
            || stopped(stop_rx.clone()),
        )
    });

    let identity = IdentityService::with_registry(
        IdentityConfig {
            zone: config.name.clone(),
            trust_domain: trust_domain.clone(),
            leaf_validity: config.workload_cert_validity,
        },
        creds.ca.clone(),
        creds.trust.clone(),
        &registry,
    )?;
    // Kubernetes mode: sidecars may also prove who they are with their projected
    // service-account token (TokenReview).
    let identity = match &kube_client {
        Some(client) => identity.with_token_reviewer(Arc::new(
            crate::kubernetes::tokenreview::KubeTokenReviewer::new(client.clone()),
        )),
        None => identity,
    };
    let discovery_config = DiscoveryConfig {
        zone: config.name.clone(),
        region: config.region.clone(),
        trust_domain: trust_domain.clone(),
        vip_cidr: config.vip_cidr,
        registration_grace: config.registration_grace,
    };
    let (discovery, inventory) = match &kubernetes {
        None => DiscoveryServer::new(discovery_config, federation_rx.clone(), store.clone())?,
        Some(kubernetes) => DiscoveryServer::with_workloads(
            discovery_config,
            federation_rx.clone(),
            store.clone(),
            kubernetes.inventory.clone(),
        )?,
    };
    registry.register(Box::new(MergedRegistries(vec![
        discovery.metrics().clone(),
    ])))?;
    let sync_metrics = SyncMetrics::new(&registry)?;
    // The DNS server answers from the services the sidecars bind listeners on.
    let dns = match dns {
        Some(sockets) => Some((sockets, discovery.services(), DnsMetrics::new(&registry)?)),
        None => None,
    };

    let mut global = config.global.clone();
    for addr in &creds.record.global_addresses {
        if !global.contains(addr) {
            global.push(addr.clone());
        }
    }
    let mut sync = SyncClient::new(
        SyncConfig {
            zone: config.name.clone(),
            region: config.region.clone(),
            vip_cidr: config.vip_cidr.to_string(),
            global,
            registration_grace: config.registration_grace,
            renew_check_interval: config.renew_check_interval,
        },
        creds.clone(),
        store.clone(),
        federation_tx,
        inventory,
        sync_metrics,
    )?;
    if let Some(kubernetes) = &kubernetes {
        // Several replicas share the zone: only the one that leads speaks for it.
        sync = sync.with_primary(kubernetes.primary.clone());
    }

    // Client certificates are optional at the TLS layer only because a bootstrapping sidecar
    // has none yet; both services check the caller's identity themselves.
    let server_tls = strait_trust::tls::server_config_optional_client_auth(
        &creds.creds,
        &creds.trust,
        Arc::new(strait_trust::tls::AllowAny),
        vec![ALPN_H2.to_vec()],
    )?;
    let incoming = strait_proto::transport::tls_incoming(grpc, Arc::new(server_tls));

    admin_state.readiness.set_not_ready("starting");
    let readiness_task = tokio::spawn(track_readiness(
        federation_rx,
        admin_state.readiness.clone(),
        stopped(stop_rx.clone()),
    ));
    let sync_task = tokio::spawn(sync.run(stopped(stop_rx.clone())));
    let dns_task = dns.map(|(sockets, services, metrics)| {
        let addr = sockets.local_addr().ok();
        let settings = DnsSettings {
            ttl: config.dns_ttl,
            ns_address: addr.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()),
        };
        tracing::info!(dns = ?addr, ttl = ?config.dns_ttl, "DNS serving clusterset.local and mesh.local");
        tokio::spawn(crate::dns::server::run(
            sockets,
            services,
            settings,
            metrics,
            stopped(stop_rx.clone()),
        ))
    });

    // The sidecar injector (Kubernetes mode), on a listener of its own: the API server calls it.
    let webhook_task = match &config.webhook {
        Some(webhook) => {
            use crate::kubernetes::webhook;
            let tls = webhook::tls_config(webhook.cert_file.clone(), webhook.key_file.clone())?;
            let listener = TcpListener::bind(webhook.listen).await.map_err(|source| {
                ZoneError::WebhookListen {
                    addr: webhook.listen,
                    source,
                }
            })?;
            let mut settings = webhook::InjectSettings::new(
                webhook.sidecar_image.clone(),
                config.name.clone(),
                webhook.sidecar_zone_cp.clone(),
                trust_domain.clone(),
                config.vip_cidr.to_string(),
            );
            settings.inbound_port = config.kubernetes.endpoint_inbound_port;
            Some(tokio::spawn(webhook::serve(
                listener,
                tls,
                Arc::new(settings),
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };

    let served = tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(identity))
        .add_service(discovery.into_service())
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    tracing::info!(zone = %config.name, listen = %config.listen, admin = %config.admin_listen, "zone control plane serving");
    let served = strait_proto::transport::serve_with_drain(
        served,
        stopped(stop_rx.clone()),
        strait_proto::transport::DRAIN_TIMEOUT,
    )
    .await;

    admin_state.readiness.set_not_ready("shutting down");
    // If the server failed rather than being stopped, the other tasks still need stopping.
    readiness_task.abort();
    sync_task.abort();
    admin_task.abort();
    if let Some(dns_task) = dns_task {
        dns_task.abort();
        let _ = dns_task.await;
    }
    if let Some(webhook_task) = webhook_task {
        webhook_task.abort();
        let _ = webhook_task.await;
    }
    if let Some(credential_sync) = credential_sync {
        credential_sync.abort();
        let _ = credential_sync.await;
    }
    for task in bundle_tasks {
        task.abort();
        let _ = task.await;
    }
    let _ = sync_task.await;
    let _ = admin_task.await;
    if let Some(kubernetes) = kubernetes {
        // The stop flag is up: the elector steps down and releases the Lease, so another
        // replica takes over at once. Bounded, as the API server may be what failed.
        for task in kubernetes.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(KUBERNETES_STOP_TIMEOUT, task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
    served?;
    tracing::info!("zone control plane stopped");
    Ok(())
}

/// Stops what runs before the credentials (the admin server, the election) and returns
/// `result`.
async fn stop_early(
    stop: &watch::Sender<bool>,
    admin_task: tokio::task::JoinHandle<()>,
    result: Result<(), ZoneError>,
) -> Result<(), ZoneError> {
    let _ = stop.send(true);
    let _ = admin_task.await;
    result
}

/// Kubernetes mode's settings as the controller takes them (`trust_domain` is only known
/// once the zone has its credentials; the Lease does not need it).
fn kubernetes_context(config: &ZoneConfig, trust_domain: String) -> KubernetesContext {
    let settings = &config.kubernetes;
    KubernetesContext {
        source: SourceSettings {
            zone: config.name.clone(),
            region: config.region.clone(),
            trust_domain,
            endpoint_inbound_port: settings.endpoint_inbound_port,
        },
        vip_cidr: config.vip_cidr,
        namespace: settings.namespace.clone(),
        lease_name: settings.lease_name.clone(),
        replica: settings
            .replica
            .clone()
            .unwrap_or_else(|| format!("{}-{:08x}", config.name, rand::random::<u32>())),
        lease_duration: settings.lease_duration,
        lease_renew_interval: settings.lease_renew_interval,
    }
}

/// The zone's credentials: shared through the Secret in Kubernetes mode (when configured),
/// else loaded from the data directory, else obtained by joining with the token.
async fn credentials(
    config: &ZoneConfig,
    kube: Option<&(kube::Client, crate::kubernetes::controller::Election)>,
) -> Result<ZoneCredentials, ZoneError> {
    if let (Some((client, election)), Some(secret)) = (kube, &config.kubernetes.credentials_secret)
    {
        let store = crate::kubernetes::credentials::SecretStore::new(
            client.clone(),
            &config.kubernetes.namespace,
            secret,
        );
        let mut leader = election.leader.clone();
        return Ok(crate::kubernetes::credentials::bootstrap(config, &store, &mut leader).await?);
    }
    Ok(
        match ZoneCredentials::load(&config.data_dir, &config.name)? {
            Some(creds) => {
                if config.token_file.is_some() {
                    tracing::info!(
                        "this zone already joined; the join token is not needed any more"
                    );
                }
                creds
            }
            None => ZoneCredentials::join(config).await?,
        },
    )
}

/// `/ready` once a federation view exists: persisted from an earlier run or received now.
/// Credentials are a precondition of getting here at all.
async fn track_readiness(
    mut federation: crate::federation::FederationWatch,
    readiness: strait_observe::Readiness,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        if federation.borrow_and_update().version() > 0 {
            readiness.set_ready();
        } else {
            readiness.set_not_ready("waiting for the first federation snapshot from global");
        }
        tokio::select! {
            () = &mut stopped => return,
            changed = federation.changed() => if changed.is_err() { return },
        }
    }
}

/// Serves other components' registries (the discovery server keeps its own) through the
/// node's one admin registry. It declares no descriptors, so the registry does not check
/// its names against others': the components' prefixes keep them apart.
#[derive(Debug)]
struct MergedRegistries(Vec<Registry>);

impl Collector for MergedRegistries {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.iter().flat_map(Registry::gather).collect()
    }
}
