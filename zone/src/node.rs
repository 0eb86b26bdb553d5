//! Running a zone control plane: credentials (join once, then load), the persisted federation
//! view, the workload CA and the discovery server over TLS, the sync stream with global, the
//! DNS server (when configured) and the admin HTTP endpoints, until shutdown.
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

use crate::config::{ConfigError, ZoneConfig};
use crate::credentials::{ALPN_H2, CredentialsError, ZoneCredentials, create_private_dir};
use crate::discovery::{DiscoveryConfig, DiscoveryError, DiscoveryServer};
use crate::dns::DnsSettings;
use crate::dns::server::{DnsError, DnsMetrics, DnsSockets};
use crate::federation::FederationView;
use crate::identity::{IdentityConfig, IdentityError, IdentityService};
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
}

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

    let creds = match ZoneCredentials::load(&config.data_dir, &config.name)? {
        Some(creds) => {
            if config.token_file.is_some() {
                tracing::info!("this zone already joined; the join token is not needed any more");
            }
            creds
        }
        None => ZoneCredentials::join(&config).await?,
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

    let registry = Registry::new();
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
    let (discovery, inventory) = DiscoveryServer::new(
        DiscoveryConfig {
            zone: config.name.clone(),
            region: config.region.clone(),
            trust_domain: trust_domain.clone(),
            vip_cidr: config.vip_cidr,
            registration_grace: config.registration_grace,
        },
        federation_rx.clone(),
        store.clone(),
    )?;
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
    let sync = SyncClient::new(
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

    // Client certificates are optional at the TLS layer only because a bootstrapping sidecar
    // has none yet; both services check the caller's identity themselves.
    let server_tls = strait_trust::tls::server_config_optional_client_auth(
        &creds.creds,
        &creds.trust,
        Arc::new(strait_trust::tls::AllowAny),
        vec![ALPN_H2.to_vec()],
    )?;
    let incoming = strait_proto::transport::tls_incoming(grpc, Arc::new(server_tls));

    let admin_state = strait_observe::AdminState::new(registry);
    if let Err(err) = admin_state.config.set_from(&config) {
        tracing::warn!(%err, "the config could not be dumped at /config");
    }
    admin_state.readiness.set_not_ready("starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(strait_observe::serve(
        admin,
        admin_state.clone(),
        stopped(stop_rx.clone()),
    ));
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
    let _ = sync_task.await;
    let _ = admin_task.await;
    served?;
    tracing::info!("zone control plane stopped");
    Ok(())
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
