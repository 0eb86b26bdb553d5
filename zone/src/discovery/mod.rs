//! Sidecar discovery (`strait.v1.Discovery`): sidecars register the instance they serve and
//! receive their full, versioned config, pushed again whenever it changes; they ACK or NACK
//! each version.
//!
//! - [`compile`]: the pure compiler, inventory + federation view + policies → `SidecarConfig`;
//! - [`registry`]: the pure registry of this zone's instances, with the grace period that keeps
//!   an endpoint through a sidecar reconnect or a control plane restart;
//! - this module: the gRPC server that ties them to streams, the clock and the store.
//!
//! # Flow
//!
//! ```text
//! streams ──Register/Health/end──▶ Registry ──▶ InventoryWatch (returned by `new`: the sync
//!                                     │                      client reports it to global)
//!                 store ◀─persist─────┘ (background task, also expires graces)
//! InventoryWatch + FederationWatch ──(coalesced 20 ms)──▶ World: outbound services compiled
//!                                                          once per change, for everyone
//! World ──▶ each stream: its group's config (services + its inbound policy), assembled once
//!          per world for all sidecars of the same service and subzone; pushed when different
//!          from the last one it pushed, with `version` + 1 and a fresh nonce
//! ```
//!
//! Compiling the outbound services once per change (they do not depend on the sidecar) and
//! coalescing bursts keeps a change in front of 1,000 sidecars at one compile, one assembly
//! per group and 1,000 copies to send, not one compile per sidecar per event. The outbound
//! services (tens of KB with hundreds of endpoints) are never compared per stream: the world
//! task compares them once with the previous world's and numbers each distinct content
//! ([`Shared::generation`]), so a stream tells "unchanged" from two numbers and its small
//! per-sidecar part. A change that alters no config (a snapshot that only moved global's
//! version) does not wake the streams at all.
//!
//! # Who may register what
//!
//! Callers present a workload certificate (`spiffe://TD/ns/NS/sa/SA`), and may only register
//! instances of services in their own namespace `NS`. The certificate's identity, never the
//! message, becomes the endpoint's SPIFFE ID.
//!
//! # Metrics
//!
//! The server creates its own [`prometheus::Registry`] ([`DiscoveryServer::metrics`]) for the
//! node to expose or merge: `strait_zone_sidecars_connected`,
//! `strait_zone_config_pushes_total`, `strait_zone_config_nacks_total`,
//! `strait_zone_config_push_latency_seconds` (from the change, or the registration, to the
//! sidecar's ACK), `strait_zone_instances_expired_total` (instances removed because their
//! sidecar did not come back within the grace).

pub mod compile;
pub mod gateways;
pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts};
use strait_policy::PolicySet;
use strait_proto as pb;
use strait_proto::sidecar_message::Msg;
use strait_proto::transport::{peer_address, peer_certificates};
use strait_proto::vip::VipCidr;
use strait_trust::{IdentityKind, SpiffeId, peer_identity};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::federation::{FederationView, FederationWatch};
use crate::inventory::{Instance, InventoryWatch, LocalInventory, ServiceKey};
use crate::store::{StoreError, ZoneStore};

use self::compile::ZoneContext;
use self::registry::{ConnId, Registry, RegistryError};

/// Store key of the persisted registry.
pub const REGISTRY_KEY: &str = "discovery/registry";

/// How long changes are collected before compiling: a burst (a deployment rolling, a
/// snapshot and the inventory it causes) becomes one push per sidecar.
const COALESCE: Duration = Duration::from_millis(20);

/// How long a new stream may take to send `Register`, so that a caller that opens streams and
/// says nothing cannot hold server tasks.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before retrying a failed registry write.
const PERSIST_RETRY: Duration = Duration::from_secs(1);

/// Pushed versions kept for matching ACKs; older ones are forgotten (their ACK is stale).
const PENDING_ACKS: usize = 16;

/// Bounds on what a sidecar may register, so that a peer cannot make the zone store and
/// forward arbitrary amounts of data.
const MAX_LABELS: usize = 64;
const MAX_LABEL_BYTES: usize = 317;
const MAX_PORTS: usize = 64;
const MAX_INSTANCE_NAME: usize = 253;

/// The discovery server's settings.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// This zone's name.
    pub zone: String,
    /// This zone's region.
    pub region: String,
    /// The federation's trust domain: callers must hold a workload identity in it.
    pub trust_domain: String,
    /// Where this zone maps service VIP indexes.
    pub vip_cidr: VipCidr,
    /// How long an instance stays after its stream ended (or after a restart, until its
    /// sidecar registers again).
    pub registration_grace: Duration,
}

/// What can stop the discovery server from starting.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the persisted discovery registry: {0}")]
    Store(#[from] StoreError),
    #[error("cannot register the discovery metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// One connected sidecar, as [`DiscoveryServer::sidecars`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarStatus {
    pub service: ServiceKey,
    pub instance: String,
    pub identity: String,
    /// The last version pushed to it.
    pub pushed_version: u64,
    /// The last version it accepted (0: none yet on this stream).
    pub acked_version: u64,
    /// The last rejection (version, reason), if any.
    pub last_nack: Option<(u64, String)>,
}

/// The `strait.v1.Discovery` service. Cheap to clone; clones share everything. Its
/// background task ends when the last clone (and every open stream) is gone.
#[derive(Clone)]
pub struct DiscoveryServer {
    inner: Arc<Inner>,
}

struct Inner {
    config: DiscoveryConfig,
    registry: Mutex<Registry>,
    inventory_tx: watch::Sender<Arc<LocalInventory>>,
    /// Kubernetes mode: the workload instances and gateways come from the cluster (this
    /// watch), not from registrations (gateways the cluster does not list still register).
    workloads: Option<InventoryWatch>,
    world: watch::Receiver<Arc<World>>,
    /// Wakes the background task: the registry changed (persist) or a grace started.
    wake: Arc<Notify>,
    sidecars: Mutex<BTreeMap<ConnId, SidecarStatus>>,
    metrics: Metrics,
    next_conn: AtomicU64,
    /// Dropped with `Inner`, which tells the background task to stop.
    _alive: watch::Sender<()>,
}

/// What every sidecar's config is assembled from, compiled once per (coalesced) change.
struct World {
    view: Arc<FederationView>,
    policies: PolicySet,
    inventory: Arc<LocalInventory>,
    shared: Arc<Shared>,
    /// When the first change folded into this world happened (for push latency).
    changed_at: Instant,
    /// Configs assembled from this world so far, one per group of sidecars that get the
    /// same config; filled by the first stream of each group.
    groups: Mutex<HashMap<GroupKey, Arc<Assembled>>>,
}

/// The part of every config that is the same for all sidecars of the zone.
#[derive(Debug, PartialEq)]
struct Shared {
    /// Numbers distinct contents: a world whose `services` and `deny_list` equal the previous
    /// world's keeps its `Shared` (and this number), any other gets the next number.
    generation: u64,
    services: Vec<pb::OutboundService>,
    deny_list: Vec<String>,
}

/// Sidecars that get equal configs: a config depends on the sidecar only through its service
/// and app port (the inbound policy) and its subzone (see [`compile::sidecar_config`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    service: ServiceKey,
    port: Option<u16>,
    subzone: String,
}

/// One group's config from one world, without `version` and `nonce`.
#[derive(Debug)]
struct Assembled {
    /// [`Shared::generation`] of the `services` and `deny_list` in `config`.
    generation: u64,
    config: pb::SidecarConfig,
}

// === impl Assembled ===

impl Assembled {
    /// Whether `self` and `other` are equal configs: the shared part by its generation, the
    /// rest (small) field by field.
    fn same_config(&self, other: &Self) -> bool {
        let (a, b) = (&self.config, &other.config);
        self.generation == other.generation
            && a.zone == b.zone
            && a.locality == b.locality
            && a.trust_domain == b.trust_domain
            && a.inbound == b.inbound
    }
}

// === impl World ===

impl World {
    /// The config of `sidecar`'s group, assembled by the first stream of the group to ask.
    fn assembled(&self, config: &DiscoveryConfig, sidecar: &Instance) -> Arc<Assembled> {
        let key = GroupKey {
            service: sidecar.service.clone(),
            port: compile::sidecar_port(sidecar),
            subzone: sidecar.locality.subzone.clone(),
        };
        if let Some(found) = lock(&self.groups).get(&key) {
            return found.clone();
        }
        // Assembled outside the lock so that streams of other groups need not wait; two
        // streams of one group racing here both assemble, and the first insert wins.
        let ctx = ZoneContext {
            zone: &config.zone,
            region: &config.region,
            trust_domain: &config.trust_domain,
            vip_cidr: config.vip_cidr,
            inventory: &self.inventory,
            federation: &self.view,
            policies: &self.policies,
            // Only the per-sidecar part is assembled here; the services carry the gateways.
            local_gateways: &[],
        };
        let assembled = Arc::new(Assembled {
            generation: self.shared.generation,
            config: compile::sidecar_config_with(
                &ctx,
                sidecar,
                self.shared.services.clone(),
                self.shared.deny_list.clone(),
            ),
        });
        lock(&self.groups).entry(key).or_insert(assembled).clone()
    }
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
    fn mutate<R>(&self, f: impl FnOnce(&mut Registry) -> (R, bool)) -> R {
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

/// Republishes the inventory whenever the cluster's workloads change. Ends with the server
/// or the source.
async fn workloads_task(inner: Weak<Inner>, mut workloads: InventoryWatch) {
    while workloads.changed().await.is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        inner.mutate(|_| ((), true));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way that
    // matters more than stopping discovery would.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === one stream ===

/// One sidecar's stream: pushes its config when it changes, handles its ACKs and health.
struct Session {
    guard: SessionGuard,
    sidecar: Instance,
    /// The last version pushed (starts at the sidecar's `known_version`, so versions keep
    /// increasing across a control plane restart).
    version: u64,
    registered_at: Instant,
}

/// Ends the session's bookkeeping however the session ends (stream closed, error, client
/// gone, task dropped at shutdown): the instance's grace starts.
struct SessionGuard {
    inner: Arc<Inner>,
    conn: ConnId,
    service: ServiceKey,
    instance: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        self.inner.mutate(|r| {
            r.disconnect(self.conn, &self.service, &self.instance, now);
            // The instance stays in the inventory through its grace.
            ((), false)
        });
        self.inner.metrics.connected.dec();
        lock(&self.inner.sidecars).remove(&self.conn);
        tracing::info!("sidecar stream ended; its instance stays for the registration grace");
    }
}

type ConfigSender = mpsc::Sender<Result<pb::SidecarConfig, Status>>;

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::SidecarMessage>, tx: ConfigSender) {
        let inner = self.guard.inner.clone();
        let mut worlds = inner.world.clone();
        let mut world = worlds.borrow_and_update().clone();
        // The first push answers the registration.
        let mut changed_at = self.registered_at;
        let mut last: Option<Arc<Assembled>> = None;
        // version -> (nonce, when the change it carries happened)
        let mut pending: BTreeMap<u64, (String, Instant)> = BTreeMap::new();
        loop {
            let config = world.assembled(&inner.config, &self.sidecar);
            if !last.as_ref().is_some_and(|last| last.same_config(&config)) {
                self.version += 1;
                let nonce = format!("{:032x}", rand::random::<u128>());
                // The one deep copy per push: tonic encodes (and drops) what it is given.
                let mut stamped = config.config.clone();
                stamped.version = self.version;
                stamped.nonce.clone_from(&nonce);
                if tx.send(Ok(stamped)).await.is_err() {
                    return;
                }
                inner.metrics.pushes.inc();
                tracing::debug!(version = self.version, "config pushed");
                pending.insert(self.version, (nonce, changed_at));
                while pending.len() > PENDING_ACKS {
                    pending.pop_first();
                }
                if let Some(status) = lock(&inner.sidecars).get_mut(&self.guard.conn) {
                    status.pushed_version = self.version;
                }
                last = Some(config);
            }
            tokio::select! {
                changed = worlds.changed() => {
                    if changed.is_err() {
                        return; // the server is shutting down
                    }
                    world = worlds.borrow_and_update().clone();
                    changed_at = world.changed_at;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(status) = self.handle(message, &mut pending) {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), message = status.message(), "sidecar stream failed");
                        return;
                    }
                },
                () = tx.closed() => return,
            }
        }
    }

    fn handle(
        &mut self,
        message: pb::SidecarMessage,
        pending: &mut BTreeMap<u64, (String, Instant)>,
    ) -> Result<(), Status> {
        let inner = &self.guard.inner;
        match message.msg {
            Some(Msg::Ack(ack)) => {
                let Some((nonce, changed_at)) = pending.get(&ack.version).cloned() else {
                    tracing::debug!(
                        version = ack.version,
                        "ACK for a version not pending; ignored"
                    );
                    return Ok(());
                };
                if nonce != ack.nonce {
                    tracing::debug!(version = ack.version, "ACK with a stale nonce; ignored");
                    return Ok(());
                }
                if ack.accepted {
                    inner
                        .metrics
                        .latency
                        .observe(changed_at.elapsed().as_secs_f64());
                    // Older pushes were superseded by this one.
                    pending.retain(|&v, _| v > ack.version);
                    if let Some(status) = lock(&inner.sidecars).get_mut(&self.guard.conn) {
                        status.acked_version = ack.version;
                    }
                    tracing::debug!(version = ack.version, "config accepted");
                } else {
                    pending.remove(&ack.version);
                    inner.metrics.nacks.inc();
                    if let Some(status) = lock(&inner.sidecars).get_mut(&self.guard.conn) {
                        status.last_nack = Some((ack.version, ack.error.clone()));
                    }
                    tracing::warn!(
                        version = ack.version,
                        reason = %ack.error,
                        "sidecar rejected its config and keeps running its previous version"
                    );
                }
            }
            Some(Msg::Health(health)) => {
                let (conn, service, instance) =
                    (self.guard.conn, &self.guard.service, &self.guard.instance);
                let changed = inner.mutate(|r| {
                    let changed = r.set_health(conn, service, instance, health.healthy);
                    (changed, changed)
                });
                if changed {
                    tracing::info!(healthy = health.healthy, reason = %health.reason, "instance health changed");
                }
            }
            Some(Msg::Register(_)) => {
                return Err(Status::invalid_argument(
                    "Register may only be the first message of a stream; open a new stream to register another instance",
                ));
            }
            // A message kind from a newer sidecar: ignoring it keeps old control planes usable.
            None => tracing::debug!("unknown sidecar message ignored"),
        }
        Ok(())
    }
}

// === background tasks ===

/// What compiling a world needs besides the changing inputs.
#[derive(Debug, Clone)]
struct WorldContext {
    zone: String,
    region: String,
    trust_domain: String,
    vip_cidr: VipCidr,
}

impl From<&DiscoveryConfig> for WorldContext {
    fn from(c: &DiscoveryConfig) -> Self {
        Self {
            zone: c.zone.clone(),
            region: c.region.clone(),
            trust_domain: c.trust_domain.clone(),
            vip_cidr: c.vip_cidr,
        }
    }
}

impl WorldContext {
    /// Compiles a world. `previous` is the world it replaces: when the new world's shared part
    /// is equal, the new world keeps it, generation included.
    fn build(
        &self,
        view: Arc<FederationView>,
        inventory: Arc<LocalInventory>,
        changed_at: Instant,
        previous: Option<&World>,
    ) -> World {
        let policies = view.policies();
        let local_gateways = inventory.local_gateway_addresses();
        let services = compile::outbound_services(&ZoneContext {
            zone: &self.zone,
            region: &self.region,
            trust_domain: &self.trust_domain,
            vip_cidr: self.vip_cidr,
            inventory: &inventory,
            federation: &view,
            policies: &policies,
            local_gateways: &local_gateways,
        });
        let deny_list = compile::deny_list(&view);
        let shared = match previous {
            Some(p) if p.shared.services == services && p.shared.deny_list == deny_list => {
                p.shared.clone()
            }
            _ => Arc::new(Shared {
                generation: previous.map_or(1, |p| p.shared.generation + 1),
                services,
                deny_list,
            }),
        };
        World {
            view,
            policies,
            inventory,
            shared,
            changed_at,
            groups: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether every config `next` gives equals the one `current` gives, so that publishing it
/// would wake every stream for nothing: the shared part is the same (same generation) and so
/// are the policies (the rest of a config comes from the server's settings and the sidecar).
fn same_configs(current: &World, next: &World) -> bool {
    current.shared.generation == next.shared.generation && current.policies == next.policies
}

/// Recompiles the world when the inventory or the federation view changes, coalescing
/// bursts. Ends when the server is gone (the inventory sender is dropped).
async fn world_task(
    context: WorldContext,
    mut inventory: watch::Receiver<Arc<LocalInventory>>,
    mut federation: FederationWatch,
    worlds: watch::Sender<Arc<World>>,
) {
    let mut federation_open = true;
    loop {
        tokio::select! {
            changed = inventory.changed() => if changed.is_err() { return },
            changed = federation.changed(), if federation_open => if changed.is_err() {
                // The sync client is gone: keep serving the last view (static stability).
                federation_open = false;
                continue;
            },
        }
        let changed_at = Instant::now();
        tokio::time::sleep(COALESCE).await;
        let view = federation.borrow_and_update().clone();
        let current = inventory.borrow_and_update().clone();
        let previous = worlds.borrow().clone();
        let next = context.build(view, current, changed_at, Some(&previous));
        if same_configs(&previous, &next) {
            tracing::debug!("change compiles to the same configs; streams not woken");
            continue;
        }
        worlds.send_replace(Arc::new(next));
    }
}

/// Expires graces and persists the registry after changes. Ends when the server is gone.
async fn registry_task(
    inner: Weak<Inner>,
    wake: Arc<Notify>,
    mut alive: watch::Receiver<()>,
    store: ZoneStore,
) {
    let mut unsaved = false;
    let mut retry_at: Option<Instant> = None;
    loop {
        let deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let next = lock(&inner.registry).next_deadline();
            [next, retry_at].into_iter().flatten().min()
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = alive.changed() => return,
            () = wake.notified() => {}
            () = sleep => {}
        }
        let bytes = {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            let due = lock(&inner.registry)
                .next_deadline()
                .is_some_and(|at| at <= now);
            let removed = if due {
                inner.mutate(|r| {
                    let removed = r.expire(now);
                    let changed = !removed.is_empty();
                    (removed, changed)
                })
            } else {
                Vec::new()
            };
            inner.metrics.expired.inc_by(removed.len() as u64);
            for gone in &removed {
                tracing::info!(
                    service = %format!("{}/{}", gone.service.namespace, gone.service.name),
                    instance = %gone.instance,
                    "instance removed: its sidecar did not come back within the grace"
                );
            }
            let mut registry = lock(&inner.registry);
            unsaved |= registry.take_dirty();
            if !unsaved || retry_at.is_some_and(|at| at > now) {
                continue;
            }
            match registry.encode() {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::error!(%err, "cannot encode the discovery registry");
                    unsaved = false;
                    continue;
                }
            }
        };
        let store = store.clone();
        let saved = tokio::task::spawn_blocking(move || store.put(REGISTRY_KEY, &bytes)).await;
        match saved {
            Ok(Ok(())) => {
                unsaved = false;
                retry_at = None;
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot persist the discovery registry; retrying");
                retry_at = Some(Instant::now() + PERSIST_RETRY);
            }
            Err(err) => {
                tracing::warn!(%err, "registry write task failed; retrying");
                retry_at = Some(Instant::now() + PERSIST_RETRY);
            }
        }
    }
}

// === metrics ===

#[derive(Debug, Clone)]
struct Metrics {
    registry: prometheus::Registry,
    connected: IntGauge,
    gateways: IntGauge,
    pushes: IntCounter,
    nacks: IntCounter,
    latency: Histogram,
    expired: IntCounter,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = prometheus::Registry::new();
        let connected = IntGauge::with_opts(Opts::new(
            "strait_zone_sidecars_connected",
            "Sidecars with an open discovery stream.",
        ))?;
        let pushes = IntCounter::with_opts(Opts::new(
            "strait_zone_config_pushes_total",
            "Sidecar configs pushed (each a new version for one sidecar).",
        ))?;
        let nacks = IntCounter::with_opts(Opts::new(
            "strait_zone_config_nacks_total",
            "Sidecar configs rejected by the sidecar.",
        ))?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "strait_zone_config_push_latency_seconds",
                "Time from a change (or a registration) to the sidecar's ACK of the config carrying it.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let gateways = IntGauge::with_opts(Opts::new(
            "strait_zone_gateways_connected",
            "East-west gateways of this zone with an open gateway stream.",
        ))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(gateways.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(nacks.clone()))?;
        let expired = IntCounter::with_opts(Opts::new(
            "strait_zone_instances_expired_total",
            "Instances removed because their sidecar did not come back within the registration grace.",
        ))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(expired.clone()))?;
        Ok(Self {
            registry,
            connected,
            gateways,
            pushes,
            nacks,
            latency,
            expired,
        })
    }
}

// === input checks ===

/// Namespaces and service names become DNS labels (`SVC.NS.svc.clusterset.local`).
fn check_dns_label(field: &str, value: &str) -> Result<(), Status> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: {value:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')"
        )))
    }
}

fn check_instance_name(value: &str) -> Result<(), Status> {
    let ok = !value.is_empty()
        && value.len() <= MAX_INSTANCE_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "Register.instance: {value:?} must be 1-{MAX_INSTANCE_NAME} of letters, digits, '-', '_', '.'"
        )))
    }
}

/// `host:port`, where other sidecars and the local gateway reach the instance.
pub(crate) fn check_address(value: &str) -> Result<(), Status> {
    let valid = value.len() <= 261
        && value.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "Register.inbound_address: {value:?} is not host:port"
        )))
    }
}

fn check_labels(labels: &std::collections::HashMap<String, String>) -> Result<(), Status> {
    if labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!(
            "Register.labels: at most {MAX_LABELS} labels"
        )));
    }
    if let Some((k, _)) = labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES)
    {
        return Err(Status::invalid_argument(format!(
            "Register.labels: key {k:?} or its value is empty or longer than {MAX_LABEL_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        assert!(check_address("127.0.0.1:8443").is_ok());
        assert!(check_address("[::1]:8443").is_ok());
        assert!(check_address("echo.demo.svc:8443").is_ok());
        for bad in ["", "127.0.0.1", ":80", "host:0", "host:http", "a b:80"] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }

    fn settings() -> DiscoveryConfig {
        DiscoveryConfig {
            zone: "a".into(),
            region: "eu".into(),
            trust_domain: "strait.local".into(),
            vip_cidr: "127.250.0.0/16".parse().unwrap(),
            registration_grace: Duration::from_secs(1),
        }
    }

    fn sim(service: &str, instance: &str, subzone: &str) -> Instance {
        Instance {
            service: ServiceKey {
                namespace: "demo".into(),
                name: service.into(),
            },
            instance: instance.into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: pb::Protocol::Http as i32,
            }],
            labels: BTreeMap::new(),
            locality: pb::Locality {
                region: "eu".into(),
                zone: "a".into(),
                subzone: subzone.into(),
            },
            inbound_address: format!("127.0.0.1:{}", 20_000 + instance.len()),
            identity: format!("spiffe://strait.local/ns/demo/sa/{service}"),
            healthy: true,
        }
    }

    fn inventory(instances: &[&Instance]) -> Arc<LocalInventory> {
        let mut inv = LocalInventory::default();
        for i in instances {
            inv.instances
                .entry(i.service.clone())
                .or_default()
                .insert(i.instance.clone(), (*i).clone());
        }
        Arc::new(inv)
    }

    #[tokio::test]
    async fn with_workloads_the_cluster_gives_the_instances_and_the_registry_the_gateways() {
        let dir = tempfile::tempdir().unwrap();
        let store = ZoneStore::open(dir.path().join("state")).unwrap();
        let (_federation_tx, federation) = watch::channel(Arc::new(FederationView::default()));
        let echo = sim("echo", "echo-pod-1", "z1");
        let (workloads_tx, workloads) = watch::channel(inventory(&[&echo]));
        let (server, mut zone_inventory) =
            DiscoveryServer::with_workloads(settings(), federation, store, workloads).unwrap();
        assert_eq!(
            zone_inventory.borrow().instances,
            inventory(&[&echo]).instances
        );

        // A sidecar's registration adds no endpoint (its pod is in the EndpointSlice already);
        // a gateway's does.
        let registered = sim("echo", "echo-sidecar", "z1");
        let result = server.inner.mutate(|r| {
            let result = r.register(1, registered);
            (result, true)
        });
        assert_eq!(result, Ok(true));
        let gateway = Instance::gateway(
            "gw-1".into(),
            pb::Locality {
                region: "eu".into(),
                zone: "a".into(),
                subzone: String::new(),
            },
            "127.0.0.1:15009".into(),
            "203.0.113.1:15443".into(),
            "spiffe://strait.local/zone/a/gateway".into(),
        );
        gateways::register(&server.inner, gateway).unwrap();
        {
            let now = zone_inventory.borrow_and_update();
            assert_eq!(now.instances, inventory(&[&echo]).instances);
            assert_eq!(now.gateways.keys().collect::<Vec<_>>(), ["gw-1"]);
        }

        // The cluster changes: the zone's inventory follows, gateways kept.
        let echo2 = sim("echo", "echo-pod-2", "z2");
        workloads_tx.send_replace(inventory(&[&echo, &echo2]));
        tokio::time::timeout(Duration::from_secs(5), zone_inventory.changed())
            .await
            .unwrap()
            .unwrap();
        let now = zone_inventory.borrow().clone();
        assert_eq!(now.instances, inventory(&[&echo, &echo2]).instances);
        assert_eq!(now.gateways.len(), 1);
    }

    fn gateway(name: &str, local: &str) -> Instance {
        Instance::gateway(
            name.into(),
            pb::Locality {
                region: "eu".into(),
                zone: "a".into(),
                subzone: String::new(),
            },
            local.into(),
            "203.0.113.1:15443".into(),
            "spiffe://strait.local/zone/a/gateway".into(),
        )
    }

    #[tokio::test]
    async fn with_workloads_the_clusters_gateways_win_over_registrations_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = ZoneStore::open(dir.path().join("state")).unwrap();
        let (_federation_tx, federation) = watch::channel(Arc::new(FederationView::default()));
        // The cluster lists gw-1 (not ready) and gw-2.
        let mut cluster = LocalInventory::default();
        let mut not_ready = gateway("gw-1", "10.0.0.1:15009");
        not_ready.healthy = false;
        cluster.gateways.insert("gw-1".into(), not_ready.clone());
        cluster
            .gateways
            .insert("gw-2".into(), gateway("gw-2", "10.0.0.2:15009"));
        let (_workloads_tx, workloads) = watch::channel(Arc::new(cluster));
        let (server, zone_inventory) =
            DiscoveryServer::with_workloads(settings(), federation, store, workloads).unwrap();

        // gw-1 streams from this replica (healthy, as far as it knows); gw-3 is a gateway the
        // cluster does not list (outside it).
        gateways::register(&server.inner, gateway("gw-1", "10.0.0.1:15009")).unwrap();
        gateways::register(&server.inner, gateway("gw-3", "192.0.2.3:15009")).unwrap();
        let now = zone_inventory.borrow().clone();
        assert_eq!(
            now.gateways.keys().collect::<Vec<_>>(),
            ["gw-1", "gw-2", "gw-3"]
        );
        assert_eq!(now.gateways["gw-1"], not_ready, "the cluster's gw-1 counts");
        assert_eq!(
            now.local_gateway_addresses(),
            ["10.0.0.2:15009", "192.0.2.3:15009"]
        );
        assert_eq!(now.gateway_endpoints().len(), 2);
    }

    /// A view carrying the policies of `yaml`.
    fn with_policies(yaml: &str) -> FederationView {
        let policies = strait_policy::parse_documents(yaml, "test.yaml")
            .unwrap()
            .into_iter()
            .map(|r| pb::PolicyResource {
                kind: r.kind.to_string(),
                namespace: r.metadata.namespace.clone(),
                name: r.metadata.name.clone(),
                json: r.to_json().unwrap(),
                revision: 1,
            })
            .collect();
        FederationView::new(pb::FederationSnapshot {
            policies,
            ..Default::default()
        })
    }

    /// What a stream would compare, the slow way (the whole config).
    fn full(world: &World, sidecar: &Instance) -> pb::SidecarConfig {
        world.assembled(&settings(), sidecar).config.clone()
    }

    #[test]
    fn equal_worlds_keep_the_generation_and_different_ones_bump_it() {
        let context = WorldContext::from(&settings());
        let now = Instant::now();
        let a = sim("sim", "a1", "");
        let view = Arc::new(FederationView::default());
        let first = context.build(view.clone(), inventory(&[&a]), now, None);
        // A new snapshot version alone changes no config.
        let mut newer = FederationView::default();
        newer.snapshot.version = 7;
        let same = context.build(Arc::new(newer), inventory(&[&a]), now, Some(&first));
        assert_eq!(same.shared.generation, first.shared.generation);
        assert!(Arc::ptr_eq(&same.shared, &first.shared));
        assert!(same_configs(&first, &same));
        assert!(
            first
                .assembled(&settings(), &a)
                .same_config(&same.assembled(&settings(), &a))
        );

        // Another instance changes the services: a new generation, and a different config.
        let b = sim("sim", "b1", "");
        let more = context.build(view, inventory(&[&a, &b]), now, Some(&same));
        assert_eq!(more.shared.generation, first.shared.generation + 1);
        assert!(!same_configs(&same, &more));
        assert_ne!(full(&same, &a), full(&more, &a));
        assert!(
            !same
                .assembled(&settings(), &a)
                .same_config(&more.assembled(&settings(), &a))
        );
    }

    #[test]
    fn an_inbound_policy_change_wakes_the_streams_though_the_shared_part_is_the_same() {
        let context = WorldContext::from(&settings());
        let now = Instant::now();
        let a = sim("sim", "a1", "");
        let before = context.build(
            Arc::new(FederationView::default()),
            inventory(&[&a]),
            now,
            None,
        );
        // MeshTLS is server-side only: the outbound services stay as they were.
        let after = context.build(
            Arc::new(with_policies(
                "apiVersion: strait.dev/v1alpha1
kind: MeshTLS
metadata: {name: permissive, namespace: demo}
spec: {mode: PERMISSIVE}
",
            )),
            inventory(&[&a]),
            now,
            Some(&before),
        );
        assert_eq!(before.shared.generation, after.shared.generation);
        assert!(!same_configs(&before, &after), "the streams must be woken");
        assert_ne!(full(&before, &a), full(&after, &a));
        assert!(
            !before
                .assembled(&settings(), &a)
                .same_config(&after.assembled(&settings(), &a))
        );
    }

    #[test]
    fn sidecars_of_one_service_and_subzone_share_one_assembled_config() {
        let context = WorldContext::from(&settings());
        let (a1, a2) = (sim("sim", "a1", "r1"), sim("sim", "a2", "r1"));
        let (other_rack, other_service) = (sim("sim", "a3", "r2"), sim("web", "w1", "r1"));
        let world = context.build(
            Arc::new(FederationView::default()),
            inventory(&[&a1, &a2, &other_rack, &other_service]),
            Instant::now(),
            None,
        );
        let shared = world.assembled(&settings(), &a1);
        assert!(Arc::ptr_eq(&shared, &world.assembled(&settings(), &a2)));
        // The group config is exactly what compiling for that sidecar alone gives.
        for sidecar in [&a1, &a2, &other_rack, &other_service] {
            let alone = compile::compile(&compile::CompileInput {
                context: ZoneContext {
                    zone: "a",
                    region: "eu",
                    trust_domain: "strait.local",
                    vip_cidr: settings().vip_cidr,
                    inventory: &world.inventory,
                    federation: &world.view,
                    policies: &world.policies,
                    local_gateways: &[],
                },
                sidecar,
            });
            assert_eq!(full(&world, sidecar), alone, "{}", sidecar.instance);
        }
        let rack = world.assembled(&settings(), &other_rack);
        assert!(!shared.same_config(&rack), "the subzone differs");
        let web = world.assembled(&settings(), &other_service);
        assert_eq!(shared.generation, web.generation);
        assert_eq!(lock(&world.groups).len(), 3);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_dns_label("f", "demo-1").is_ok());
        for bad in ["", "Demo", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(check_dns_label("f", bad).is_err(), "{bad:?}");
        }
        assert!(check_instance_name("echo-7f9c.v1_a").is_ok());
        assert!(check_instance_name("").is_err());
        assert!(check_instance_name("a/b").is_err());
    }
}
