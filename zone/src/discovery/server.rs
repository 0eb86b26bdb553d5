//! The discovery gRPC server: [`DiscoveryServer`] (construction, the caller checks, the
//! `Discovery` service) and its shared state [`Inner`], which the streams
//! ([`super::stream`], [`super::gateways`]) and the background tasks ([`super::tasks`]) hold.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strait_proto as pb;
use strait_proto::sidecar_message::Msg;
use strait_proto::transport::{peer_address, peer_certificates};
use strait_trust::{IdentityKind, SpiffeId, peer_identity};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::federation::FederationWatch;
use crate::inventory::{Instance, InventoryWatch, LocalInventory, ServiceKey};
use crate::store::ZoneStore;

use super::metrics::Metrics;
use super::registry::{ConnId, Registry, RegistryError};
use super::stream::{Session, SessionGuard};
use super::tasks::{registry_task, workloads_task, world_task};
use super::validate::{
    MAX_PORTS, check_address, check_dns_label, check_instance_name, check_labels,
};
use super::world::{World, WorldContext};
use super::{DiscoveryConfig, DiscoveryError, REGISTRY_KEY, SidecarStatus, gateways, lock};

/// How long a new stream may take to send `Register`, so that a caller that opens streams and
/// says nothing cannot hold server tasks.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The `strait.v1.Discovery` service. Cheap to clone; clones share everything. Its
/// background task ends when the last clone (and every open stream) is gone.
#[derive(Clone)]
pub struct DiscoveryServer {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: DiscoveryConfig,
    pub(super) registry: Mutex<Registry>,
    pub(super) inventory_tx: watch::Sender<Arc<LocalInventory>>,
    /// Kubernetes mode: the workload instances and gateways come from the cluster (this
    /// watch), not from registrations (gateways the cluster does not list still register).
    pub(super) workloads: Option<InventoryWatch>,
    pub(super) world: watch::Receiver<Arc<World>>,
    /// Wakes the background task: the registry changed (persist) or a grace started.
    pub(super) wake: Arc<Notify>,
    pub(super) sidecars: Mutex<BTreeMap<ConnId, SidecarStatus>>,
    pub(super) metrics: Metrics,
    pub(super) next_conn: AtomicU64,
    /// Dropped with `Inner`, which tells the background task to stop.
    pub(super) _alive: watch::Sender<()>,
}

impl std::fmt::Debug for DiscoveryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryServer")
            .field("zone", &self.inner.config.zone)
            .field("sidecars", &self.inner.metrics.connected.get())
            .finish_non_exhaustive()
    }
}

// === impl DiscoveryServer ===

impl DiscoveryServer {
    /// Restores the registry from `store` (every persisted instance stays for the grace),
    /// compiles the first world and spawns the background task (grace expiry, persistence,
    /// recompiles). Must be called inside a tokio runtime.
    ///
    /// Returns the server and the zone's [`InventoryWatch`].
    pub fn new(
        config: DiscoveryConfig,
        federation: FederationWatch,
        store: ZoneStore,
    ) -> Result<(Self, InventoryWatch), DiscoveryError> {
        Self::build(config, federation, store, None)
    }

    /// [`new`](Self::new) for Kubernetes mode: the zone's workload instances are the ones in
    /// `workloads` (see [`crate::kubernetes::source`]) instead of what sidecars register.
    /// Sidecars still register (that is how they get their config); a sidecar's registration
    /// just does not add an endpoint, so every pod is counted once, as its EndpointSlice says.
    /// The gateways are `workloads`' gateways, plus registered ones under other names (see
    /// `compose`).
    pub fn with_workloads(
        config: DiscoveryConfig,
        federation: FederationWatch,
        store: ZoneStore,
        workloads: InventoryWatch,
    ) -> Result<(Self, InventoryWatch), DiscoveryError> {
        Self::build(config, federation, store, Some(workloads))
    }

    fn build(
        config: DiscoveryConfig,
        federation: FederationWatch,
        store: ZoneStore,
        workloads: Option<InventoryWatch>,
    ) -> Result<(Self, InventoryWatch), DiscoveryError> {
        let now = Instant::now();
        let restored = match store.get(REGISTRY_KEY)? {
            None => Vec::new(),
            // The registry is a cache that sidecars rebuild within seconds: losing it costs a
            // transient dip, refusing to start would cost the zone.
            Some(bytes) => Registry::decode(&bytes).unwrap_or_else(|err| {
                tracing::error!(%err, "discarding the persisted discovery registry");
                Vec::new()
            }),
        };
        if !restored.is_empty() {
            tracing::info!(
                instances = restored.len(),
                grace = ?config.registration_grace,
                "restored registered instances; each stays until its sidecar registers again or the grace ends"
            );
        }
        let registry = Registry::restore(config.registration_grace, restored, now);
        let inventory = Arc::new(compose(registry.inventory(), workloads.as_ref()));
        let (inventory_tx, inventory_rx) = watch::channel(inventory.clone());

        let context = WorldContext::from(&config);
        let first_view = federation.borrow().clone();
        let (world_tx, world_rx) =
            watch::channel(Arc::new(context.build(first_view, inventory, now, None)));

        let metrics = Metrics::new()?;
        let wake = Arc::new(Notify::new());
        let (alive_tx, alive_rx) = watch::channel(());
        let inner = Arc::new(Inner {
            config,
            registry: Mutex::new(registry),
            inventory_tx,
            workloads: workloads.clone(),
            world: world_rx,
            wake: wake.clone(),
            sidecars: Mutex::new(BTreeMap::new()),
            metrics,
            next_conn: AtomicU64::new(1),
            _alive: alive_tx,
        });

        tokio::spawn(
            world_task(
                context,
                inner.inventory_tx.subscribe(),
                federation,
                world_tx,
            )
            .instrument(tracing::info_span!("discovery_world")),
        );
        tokio::spawn(
            registry_task(Arc::downgrade(&inner), wake, alive_rx, store)
                .instrument(tracing::info_span!("discovery_registry")),
        );
        if let Some(workloads) = workloads {
            tokio::spawn(
                workloads_task(Arc::downgrade(&inner), workloads)
                    .instrument(tracing::info_span!("discovery_workloads")),
            );
        }
        Ok((Self { inner }, inventory_rx))
    }

    /// The tonic service, to mount on a server.
    pub fn into_service(self) -> pb::discovery_server::DiscoveryServer<Self> {
        pb::discovery_server::DiscoveryServer::new(self)
            .max_decoding_message_size(strait_proto::transport::MAX_CONTROL_MESSAGE)
            .max_encoding_message_size(strait_proto::transport::MAX_CONTROL_MESSAGE)
    }

    /// The discovery metrics (see the module docs); the node exposes or merges them.
    pub fn metrics(&self) -> &prometheus::Registry {
        &self.inner.metrics.registry
    }

    /// Another receiver of the zone's inventory.
    pub fn inventory(&self) -> InventoryWatch {
        self.inner.inventory_tx.subscribe()
    }

    /// The sidecars connected now, by connection order.
    pub fn sidecars(&self) -> Vec<SidecarStatus> {
        lock(&self.inner.sidecars).values().cloned().collect()
    }

    /// The caller's workload identity, from its mTLS certificate.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        let certs = peer_certificates(request).ok_or_else(|| {
            Status::unauthenticated(
                "discovery requires a workload certificate: connect with mutual TLS",
            )
        })?;
        let id = peer_identity(&certs)
            .map_err(|e| Status::unauthenticated(format!("unusable client certificate: {e}")))?;
        if id.trust_domain() != self.inner.config.trust_domain {
            return Err(Status::permission_denied(format!(
                "{id} is not in trust domain {}",
                self.inner.config.trust_domain
            )));
        }
        if !matches!(id.kind(), IdentityKind::Workload { .. }) {
            return Err(Status::permission_denied(format!(
                "{id} is not a workload identity (spiffe://TD/ns/NS/sa/SA): only sidecars register"
            )));
        }
        Ok(id)
    }

    /// The instance a `Register` describes, checked against the caller's identity.
    fn instance(&self, identity: &SpiffeId, register: pb::Register) -> Result<Instance, Status> {
        let IdentityKind::Workload { namespace, .. } = identity.kind() else {
            return Err(Status::permission_denied("not a workload identity"));
        };
        let service = register
            .service
            .ok_or_else(|| Status::invalid_argument("Register.service is required"))?;
        check_dns_label("Register.service.namespace", &service.namespace)?;
        check_dns_label("Register.service.name", &service.name)?;
        if service.namespace != namespace {
            return Err(Status::permission_denied(format!(
                "{identity} may only register services of namespace {namespace:?}, not {}/{}",
                service.namespace, service.name
            )));
        }
        check_instance_name(&register.instance)?;
        check_address(&register.inbound_address)?;
        if register.ports.len() > MAX_PORTS {
            return Err(Status::invalid_argument(format!(
                "Register.ports: at most {MAX_PORTS} ports"
            )));
        }
        for (i, port) in register.ports.iter().enumerate() {
            if !(1..=65_535).contains(&port.port) {
                return Err(Status::invalid_argument(format!(
                    "Register.ports[{i}].port: {} is not between 1 and 65535",
                    port.port
                )));
            }
        }
        check_labels(&register.labels)?;
        let config = &self.inner.config;
        let locality = register.locality.unwrap_or_default();
        if !locality.zone.is_empty() && locality.zone != config.zone {
            return Err(Status::invalid_argument(format!(
                "Register.locality.zone is {:?} but this is the control plane of zone {:?}",
                locality.zone, config.zone
            )));
        }
        Ok(Instance {
            service: ServiceKey {
                namespace: service.namespace,
                name: service.name,
            },
            instance: register.instance,
            ports: register.ports,
            labels: register.labels.into_iter().collect(),
            // The zone and region are this control plane's; only the subzone is the sidecar's.
            locality: pb::Locality {
                region: config.region.clone(),
                zone: config.zone.clone(),
                subzone: locality.subzone,
            },
            inbound_address: register.inbound_address,
            identity: identity.to_string(),
            // Until the sidecar reports otherwise: it only registers once its app is up.
            healthy: true,
        })
    }

    /// The zone's compiled outbound services (what every sidecar binds listeners on), as a
    /// watch that changes with them: the DNS server answers from it, so DNS and the data plane
    /// never disagree. Must be called inside a tokio runtime; the forwarding task ends when
    /// the last receiver is dropped.
    pub fn services(&self) -> watch::Receiver<Arc<Vec<pb::OutboundService>>> {
        let mut worlds = self.inner.world.clone();
        let first = worlds.borrow_and_update().shared.clone();
        let (tx, rx) = watch::channel(Arc::new(first.services.clone()));
        tokio::spawn(async move {
            let mut generation = first.generation;
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    changed = worlds.changed() => if changed.is_err() { return },
                }
                let shared = worlds.borrow_and_update().shared.clone();
                // A world with the same generation has equal services: nothing to send.
                if shared.generation != generation {
                    generation = shared.generation;
                    tx.send_replace(Arc::new(shared.services.clone()));
                }
            }
        });
        rx
    }
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryServer {
    type StreamStream = ReceiverStream<Result<pb::SidecarConfig, Status>>;
    type GatewayStreamStream = ReceiverStream<Result<pb::GatewayConfig, Status>>;

    async fn gateway_stream(
        &self,
        request: Request<pb::GatewayRegister>,
    ) -> Result<Response<Self::GatewayStreamStream>, Status> {
        let peer = peer_address(&request);
        let config = &self.inner.config;
        let identity = peer_certificates(&request)
            .ok_or_else(|| Status::unauthenticated("gateways must connect with mutual TLS"))
            .and_then(|certs| {
                peer_identity(&certs).map_err(|e| {
                    Status::unauthenticated(format!("unusable client certificate: {e}"))
                })
            })
            .and_then(|id| {
                gateways::authorize(&id, &config.zone, &config.trust_domain).map(|()| id)
            })
            .inspect_err(|status| {
                tracing::info!(?peer, reason = status.message(), "gateway stream refused");
            })?;
        let locality = pb::Locality {
            region: config.region.clone(),
            zone: config.zone.clone(),
            subzone: String::new(),
        };
        let gateway = gateways::instance(request.into_inner(), locality, &identity)?;
        let name = gateway.instance.clone();
        let span = tracing::info_span!("gateway", instance = %name);
        span.in_scope(|| {
            tracing::info!(?peer, public = gateway.public_address(), local = %gateway.inbound_address, "gateway registered");
        });
        let conn = gateways::register(&self.inner, gateway)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(gateways::run(self.inner.clone(), conn, name, tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stream(
        &self,
        request: Request<Streaming<pb::SidecarMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = peer_address(&request);
        let identity = self.authenticate(&request).inspect_err(|status| {
            tracing::info!(?peer, reason = status.message(), "discovery stream refused");
        })?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no Register within 10s of opening the stream")
            })??
            .ok_or_else(|| Status::invalid_argument("the stream ended before Register"))?;
        let Some(Msg::Register(register)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a discovery stream must be Register",
            ));
        };
        let known_version = register.known_version;
        let instance = self.instance(&identity, register).inspect_err(|status| {
            tracing::info!(?peer, %identity, reason = status.message(), "registration refused");
        })?;

        let inner = &self.inner;
        let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        inner
            .mutate(|r| {
                let result = r.register(conn, instance.clone());
                let changed = result == Ok(true);
                (result, changed)
            })
            .map_err(|err| match err {
                RegistryError::HeldByAnother { .. } => Status::already_exists(err.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        let service_account = match identity.kind() {
            IdentityKind::Workload {
                service_account, ..
            } => service_account.to_owned(),
            _ => String::new(),
        };
        let span = tracing::info_span!(
            "sidecar",
            service = %format!("{}/{}", instance.service.namespace, instance.service.name),
            instance = %instance.instance,
            %service_account,
        );
        span.in_scope(|| {
            tracing::info!(?peer, %identity, address = %instance.inbound_address, known_version, "sidecar registered");
        });
        inner.metrics.connected.inc();
        lock(&inner.sidecars).insert(
            conn,
            SidecarStatus {
                service: instance.service.clone(),
                instance: instance.instance.clone(),
                identity: instance.identity.clone(),
                pushed_version: known_version,
                acked_version: 0,
                last_nack: None,
            },
        );

        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            guard: SessionGuard {
                inner: inner.clone(),
                conn,
                service: instance.service.clone(),
                instance: instance.instance.clone(),
            },
            sidecar: instance,
            version: known_version,
            registered_at: Instant::now(),
        };
        tokio::spawn(session.run(inbound, tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

// === impl Inner ===

impl Inner {
    /// Changes the registry with `f`, which returns its result and whether the inventory
    /// changed; then publishes the inventory (only then: rebuilding it is O(instances)) and
    /// wakes the background task (to persist, or to schedule a new deadline). Publishing
    /// under the lock keeps the watch's order that of the changes.
    pub(super) fn mutate<R>(&self, f: impl FnOnce(&mut Registry) -> (R, bool)) -> R {
        let mut registry = lock(&self.registry);
        let (out, changed) = f(&mut registry);
        if changed {
            let inventory = compose(registry.inventory(), self.workloads.as_ref());
            self.inventory_tx.send_if_modified(|current| {
                if **current == inventory {
                    false
                } else {
                    *current = Arc::new(inventory);
                    true
                }
            });
        }
        drop(registry);
        self.wake.notify_one();
        out
    }
}

/// The zone's inventory: the registry's, or in Kubernetes mode the cluster's workloads and
/// gateways. A registered gateway is kept only under a name the cluster does not list: every
/// replica sees the cluster's gateways, but only the one a gateway streams from sees its
/// registration, which would otherwise count it twice there (and, where the cluster has it
/// not ready, healthy on one replica only). Without gateway pods in the cluster (a gateway
/// outside it, or a source not reading them) registrations are all there is.
fn compose(mut registered: LocalInventory, workloads: Option<&InventoryWatch>) -> LocalInventory {
    if let Some(workloads) = workloads {
        let cluster = workloads.borrow();
        registered.instances = cluster.instances.clone();
        // The cluster's entry wins over a registration of the same gateway.
        registered.gateways.extend(cluster.gateways.clone());
    }
    registered
}
