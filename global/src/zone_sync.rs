//! The `strait.v1.ZoneSync` gRPC service: `Join` lets a new zone in with its token; `Sync` is
//! the one long-lived stream per zone — inventory up, the federation down.
//!
//! Down: a full `FederationSnapshot` at the current revision whenever what the zone would see
//! changed. Snapshots are complete, never deltas, and global keeps a disconnected zone's
//! inventory, so a reconnect (to any node) can never show other zones a transient deletion.
//! Up: the zone's complete inventory, accepted only for the zone named in the caller's
//! certificate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::RngCore;
use strait_proto as pb;
use strait_trust::ca::RootCa;
use strait_trust::spiffe::{IdentityKind, SpiffeId};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::context::{NodeContext, now_ms};
use crate::state::{
    Command, CommandResult, ExportedService, FederationState, LocalityCount, Port, ServiceKey,
    SubsetCount,
};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Changes closer together than this go out as one snapshot.
const COALESCE: Duration = Duration::from_millis(20);

/// Serves `strait.v1.ZoneSync`.
#[derive(Debug, Clone)]
pub struct ZoneSyncService {
    ctx: Arc<NodeContext>,
}

impl ZoneSyncService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

/// The federation as zone `zone` sees it at the state's current revision (`nonce` empty).
pub fn snapshot(state: &FederationState) -> pb::FederationSnapshot {
    let ca = state.ca.as_ref();
    let zones = state
        .zones
        .values()
        .filter(|z| z.is_active())
        .map(|z| {
            let inventory = state.inventories.get(&z.name);
            pb::RemoteZone {
                name: z.name.clone(),
                region: z.region.clone(),
                connected: z.is_connected(),
                last_seen_unix_ms: z
                    .connection
                    .as_ref()
                    .map_or(0, |c| i64::try_from(c.last_seen_ms).unwrap_or(i64::MAX)),
                inventory_version: inventory.map_or(0, |i| i.version),
                services: inventory
                    .map(|i| {
                        i.services
                            .iter()
                            .map(|(key, svc)| exported_pb(key, svc))
                            .collect()
                    })
                    .unwrap_or_default(),
                gateways: inventory
                    .map(|i| {
                        i.gateways
                            .iter()
                            .map(|address| pb::GatewayEndpoint {
                                address: address.clone(),
                                ..Default::default()
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    pb::FederationSnapshot {
        version: state.revision,
        nonce: String::new(),
        policies: state
            .policies
            .values()
            .map(|p| pb::PolicyResource {
                kind: p.key.kind.clone(),
                namespace: p.key.namespace.clone(),
                name: p.key.name.clone(),
                json: p.json.clone(),
                revision: p.revision,
            })
            .collect(),
        zones,
        vips: state
            .vips
            .iter()
            .map(|(key, index)| pb::ServiceVip {
                service: Some(service_ref(key)),
                index: *index,
            })
            .collect(),
        zone_vips: state
            .zone_vips
            .iter()
            .map(|((key, zone), index)| pb::ZoneVip {
                service: Some(service_ref(key)),
                zone: zone.clone(),
                index: *index,
            })
            .collect(),
        trust_bundle_pem: ca.map(|c| c.bundle_pem.clone()).unwrap_or_default(),
        deny_list: state.deny_list().into_iter().map(str::to_owned).collect(),
        drains: state
            .drains
            .iter()
            .map(|(key, zone)| pb::Drain {
                service: Some(service_ref(key)),
                zone: zone.clone(),
            })
            .collect(),
        trust_domain: ca.map(|c| c.trust_domain.clone()).unwrap_or_default(),
    }
}

fn service_ref(key: &ServiceKey) -> pb::ServiceRef {
    pb::ServiceRef {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// Localities travel as `region/zone/subzone` in the replicated state.
fn locality_key(l: &pb::Locality) -> String {
    format!("{}/{}/{}", l.region, l.zone, l.subzone)
}

fn locality_pb(key: &str) -> pb::Locality {
    let mut parts = key.splitn(3, '/');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    pb::Locality {
        region: next(),
        zone: next(),
        subzone: next(),
    }
}

pub fn protocol_name(protocol: i32) -> &'static str {
    match pb::Protocol::try_from(protocol).unwrap_or(pb::Protocol::Unspecified) {
        pb::Protocol::Tcp => "tcp",
        pb::Protocol::Http => "http",
        pb::Protocol::Http2 => "http2",
        pb::Protocol::Grpc => "grpc",
        pb::Protocol::Unspecified => "",
    }
}

pub fn protocol_pb(name: &str) -> pb::Protocol {
    match name {
        "tcp" => pb::Protocol::Tcp,
        "http" => pb::Protocol::Http,
        "http2" => pb::Protocol::Http2,
        "grpc" => pb::Protocol::Grpc,
        _ => pb::Protocol::Unspecified,
    }
}

fn exported_pb(key: &ServiceKey, svc: &ExportedService) -> pb::ExportedService {
    pb::ExportedService {
        service: Some(service_ref(key)),
        ports: svc
            .ports
            .iter()
            .map(|p| pb::Port {
                name: p.name.clone(),
                port: u32::from(p.port),
                protocol: protocol_pb(&p.protocol).into(),
            })
            .collect(),
        localities: svc
            .localities
            .iter()
            .map(|l| pb::LocalityEndpoints {
                locality: Some(locality_pb(&l.locality)),
                healthy: l.healthy,
                total: l.total,
            })
            .collect(),
        identities: svc.identities.clone(),
        subsets: svc
            .subsets
            .iter()
            .map(|s| pb::SubsetCount {
                labels: s.labels.clone().into_iter().collect(),
                healthy: s.healthy,
                total: s.total,
            })
            .collect(),
    }
}

/// At most this many label subsets per exported service (one per subset its routes use).
const MAX_SUBSETS: usize = 64;

/// At most this many identities per exported service (a zone reports one per service account).
const MAX_IDENTITIES: usize = 64;

/// A zone's report as the state machine's model; refuses what cannot be a service. Public
/// for the fuzz target (`fuzz/fuzz_targets/zone_inventory.rs`): it reads what a zone sends.
pub fn inventory_model(
    report: &pb::InventoryReport,
) -> Result<BTreeMap<ServiceKey, ExportedService>, String> {
    let mut services = BTreeMap::new();
    for exported in &report.services {
        let service = exported
            .service
            .as_ref()
            .ok_or("an exported service has no name")?;
        if service.name.is_empty() || service.namespace.is_empty() {
            return Err("an exported service has an empty name or namespace".to_owned());
        }
        let ports = exported
            .ports
            .iter()
            .map(|p| {
                let port = u16::try_from(p.port).map_err(|_| {
                    format!(
                        "{}/{}: port {} out of range",
                        service.namespace, service.name, p.port
                    )
                })?;
                Ok(Port {
                    name: p.name.clone(),
                    port,
                    protocol: protocol_name(p.protocol).to_owned(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let localities = exported
            .localities
            .iter()
            .map(|l| LocalityCount {
                locality: locality_key(&l.locality.clone().unwrap_or_default()),
                healthy: l.healthy.min(l.total),
                total: l.total,
            })
            .collect();
        if exported.identities.len() > MAX_IDENTITIES {
            return Err(format!(
                "{}/{}: more than {MAX_IDENTITIES} identities",
                service.namespace, service.name
            ));
        }
        for id in &exported.identities {
            let parsed: SpiffeId = id.parse().map_err(|e| {
                format!(
                    "{}/{}: identity {id:?}: {e}",
                    service.namespace, service.name
                )
            })?;
            if !matches!(parsed.kind(), IdentityKind::Workload { .. }) {
                return Err(format!(
                    "{}/{}: identity {id} is not a workload identity",
                    service.namespace, service.name
                ));
            }
        }
        if exported.subsets.len() > MAX_SUBSETS {
            return Err(format!(
                "{}/{}: more than {MAX_SUBSETS} subsets",
                service.namespace, service.name
            ));
        }
        let subsets = exported
            .subsets
            .iter()
            .map(|s| {
                // The header's rules: a subset another zone's gateway will be asked for.
                strait_proto::tunnel::check_subset(&s.labels)
                    .map_err(|e| format!("{}/{}: {e}", service.namespace, service.name))?;
                let labels = s.labels.clone().into_iter().collect();
                Ok(SubsetCount {
                    labels,
                    healthy: s.healthy.min(s.total),
                    total: s.total,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let key = ServiceKey::new(&service.namespace, &service.name);
        let identities = exported.identities.clone();
        if services
            .insert(
                key,
                ExportedService {
                    ports,
                    localities,
                    identities,
                    subsets,
                },
            )
            .is_some()
        {
            return Err(format!(
                "{}/{} is listed twice",
                service.namespace, service.name
            ));
        }
    }
    Ok(services)
}

fn nonce() -> String {
    let mut bytes = [0_u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn error_detail(code: pb::ErrorCode, message: impl Into<String>) -> pb::ErrorDetail {
    pb::ErrorDetail {
        code: code.into(),
        message: message.into(),
        field: String::new(),
    }
}

/// One zone's stream, after the hello.
struct ZoneStream {
    ctx: Arc<NodeContext>,
    zone: String,
    /// An observer (a standby replica of the zone's control plane) gets snapshots only: it
    /// neither reports inventory nor renews, and its coming and going is not the zone's
    /// connection state.
    observer: bool,
    /// Random per stream: tells this stream's end from a newer stream's on the same node.
    session: u64,
    out: mpsc::Sender<Result<pb::GlobalMessage, Status>>,
}

impl ZoneStream {
    async fn send(&self, msg: pb::global_message::Msg) -> bool {
        self.out
            .send(Ok(pb::GlobalMessage { msg: Some(msg) }))
            .await
            .is_ok()
    }

    /// Records connection state; a failure (no quorum) is logged, the stream goes on: zones
    /// keep getting what this node has.
    async fn record(&self, cmd: Command) {
        match self.ctx.cluster.write(cmd).await {
            Ok(CommandResult::Ok { .. }) => {}
            Ok(CommandResult::Rejected(r)) => {
                tracing::warn!(zone = %self.zone, %r, "sync bookkeeping refused")
            }
            Err(err) => tracing::warn!(zone = %self.zone, %err, "sync bookkeeping not committed"),
        }
    }

    async fn run(self, mut inbound: Streaming<pb::ZoneMessage>, known_version: u64) {
        let node_id = self.ctx.cluster.id();
        if !self.observer {
            self.record(Command::SetZoneConnection {
                zone: self.zone.clone(),
                connected: true,
                node_id,
                session: self.session,
                now_ms: now_ms(),
            })
            .await;
        }
        let mut revisions = self.ctx.state.subscribe();
        let mut last_sent: Option<pb::FederationSnapshot> = None;
        let mut first = true;
        loop {
            // Send what changed since the last snapshot, if anything the zone sees did.
            // A zone removed while connected is cut off at once, not at its next reconnect.
            if !self
                .ctx
                .read(|s| s.zone(&self.zone).is_some_and(|z| z.is_active()))
            {
                let removed = Status::permission_denied(format!(
                    "zone {} was removed from the federation",
                    self.zone
                ));
                let _ = self.out.send(Err(removed)).await;
                tracing::info!(zone = %self.zone, "zone removed: sync stream closed");
                return;
            }
            let mut current = self.ctx.read(snapshot);
            let resume = first && current.version == known_version;
            first = false;
            let unchanged = last_sent.as_ref().is_some_and(|last| {
                let mut last = last.clone();
                last.version = current.version;
                last.nonce = String::new();
                last == current
            });
            if !resume && !unchanged {
                current.nonce = nonce();
                last_sent = Some(current.clone());
                if !self.send(pb::global_message::Msg::Snapshot(current)).await {
                    break;
                }
            }
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    tokio::time::sleep(COALESCE).await;
                    revisions.borrow_and_update();
                }
                message = inbound.next() => match message {
                    Some(Ok(message)) => {
                        if !self.handle(message).await {
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        tracing::debug!(zone = %self.zone, %status, "sync stream failed");
                        break;
                    }
                    None => break,
                },
            }
        }
        tracing::info!(zone = %self.zone, observer = self.observer, "zone disconnected");
        if !self.observer {
            self.record(Command::SetZoneConnection {
                zone: self.zone.clone(),
                connected: false,
                node_id,
                session: self.session,
                now_ms: now_ms(),
            })
            .await;
        }
    }

    /// Handles one message from the zone; `false` ends the stream.
    async fn handle(&self, message: pb::ZoneMessage) -> bool {
        match message.msg {
            Some(pb::zone_message::Msg::Inventory(report)) if self.observer => {
                let ack = pb::InventoryAck {
                    version: report.version,
                    error: Some(error_detail(
                        pb::ErrorCode::Denied,
                        "an observer stream cannot report inventory: only the zone's primary control plane speaks for it",
                    )),
                };
                self.send(pb::global_message::Msg::InventoryAck(ack)).await
            }
            Some(pb::zone_message::Msg::Inventory(report)) => {
                let ack = match inventory_model(&report) {
                    Err(reason) => pb::InventoryAck {
                        version: report.version,
                        error: Some(error_detail(pb::ErrorCode::Invalid, reason)),
                    },
                    Ok(services) => {
                        let cmd = Command::ReportInventory {
                            zone: self.zone.clone(),
                            version: report.version,
                            services,
                            gateways: report.gateways.iter().map(|g| g.address.clone()).collect(),
                            now_ms: now_ms(),
                        };
                        match self.ctx.cluster.write(cmd).await {
                            Ok(CommandResult::Ok { .. }) => pb::InventoryAck {
                                version: report.version,
                                error: None,
                            },
                            Ok(CommandResult::Rejected(r)) => pb::InventoryAck {
                                version: report.version,
                                error: Some(error_detail(pb::ErrorCode::Stale, r.to_string())),
                            },
                            Err(err) => pb::InventoryAck {
                                version: report.version,
                                error: Some(error_detail(pb::ErrorCode::NoQuorum, err.to_string())),
                            },
                        }
                    }
                };
                self.send(pb::global_message::Msg::InventoryAck(ack)).await
            }
            Some(pb::zone_message::Msg::Ack(ack)) => {
                if let Some(error) = ack.error {
                    tracing::warn!(zone = %self.zone, version = ack.version, message = %error.message, "zone rejected a snapshot");
                } else {
                    tracing::debug!(zone = %self.zone, version = ack.version, "snapshot acknowledged");
                }
                true
            }
            Some(pb::zone_message::Msg::Renew(_)) if self.observer => {
                let response = pb::RenewResponse {
                    error: Some(error_detail(
                        pb::ErrorCode::Denied,
                        "an observer stream cannot renew: only the zone's primary control plane renews its credentials",
                    )),
                    ..Default::default()
                };
                self.send(pb::global_message::Msg::Renew(response)).await
            }
            Some(pb::zone_message::Msg::Renew(renew)) => {
                let response = self.renew(&renew);
                self.send(pb::global_message::Msg::Renew(response)).await
            }
            Some(pb::zone_message::Msg::Hello(_)) | None => {
                tracing::warn!(zone = %self.zone, "unexpected message on the sync stream");
                true
            }
        }
    }

    /// Signs a zone's renewed intermediate and control plane certificates, unless the zone was
    /// removed (its credentials then expire on their own).
    fn renew(&self, renew: &pb::RenewRequest) -> pb::RenewResponse {
        let refused = |code, message: String| pb::RenewResponse {
            error: Some(error_detail(code, message)),
            ..Default::default()
        };
        let (active, ca) = self.ctx.read(|s| {
            (
                s.zone(&self.zone).is_some_and(|z| z.is_active()),
                s.ca.clone(),
            )
        });
        if !active {
            return refused(
                pb::ErrorCode::Denied,
                format!(
                    "zone {} was removed: its credentials are not renewed",
                    self.zone
                ),
            );
        }
        let Some(ca) = ca else {
            return refused(pb::ErrorCode::Internal, "federation not initialized".into());
        };
        let root = match RootCa::from_pem(&ca.trust_domain, &ca.root_cert_pem, &ca.root_key_pem.0) {
            Ok(root) => root,
            Err(e) => return refused(pb::ErrorCode::Internal, e.to_string()),
        };
        let mut response = pb::RenewResponse {
            trust_bundle_pem: ca.bundle_pem.clone(),
            ..Default::default()
        };
        if !renew.ca_csr_pem.is_empty() {
            match root.sign_intermediate(
                &renew.ca_csr_pem,
                &self.zone,
                self.ctx.config.zone_ca_validity,
            ) {
                Ok(issued) => response.intermediate_cert_pem = issued.cert_pem,
                Err(e) => {
                    return refused(
                        pb::ErrorCode::Invalid,
                        format!("intermediate CA request refused: {e}"),
                    );
                }
            }
        }
        if !renew.cp_csr_pem.is_empty() {
            let id = match SpiffeId::zone_cp(&ca.trust_domain, &self.zone) {
                Ok(id) => id,
                Err(e) => return refused(pb::ErrorCode::Invalid, e.to_string()),
            };
            match root.sign_leaf(&renew.cp_csr_pem, &id, self.ctx.config.zone_cp_validity) {
                Ok(issued) => response.cp_cert_chain_pem = issued.chain_pem,
                Err(e) => {
                    return refused(
                        pb::ErrorCode::Invalid,
                        format!("control plane certificate request refused: {e}"),
                    );
                }
            }
        }
        tracing::info!(zone = %self.zone, "renewed zone credentials");
        response
    }
}

#[tonic::async_trait]
impl pb::zone_sync_server::ZoneSync for ZoneSyncService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        crate::join_service::zone_join(&self.ctx, request).await
    }

    type SyncStream = futures::stream::BoxStream<'static, Result<pb::GlobalMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::ZoneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let zone = crate::auth::require_zone_cp(&request)?;
        match self.ctx.read(|s| s.zone(&zone).map(|z| z.is_active())) {
            None => return Err(Status::not_found(format!("zone {zone} does not exist"))),
            Some(false) => {
                return Err(Status::permission_denied(format!(
                    "zone {zone} was removed from the federation"
                )));
            }
            Some(true) => {}
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(pb::ZoneMessage {
                msg: Some(pb::zone_message::Msg::Hello(hello)),
            }))) => hello,
            Ok(Some(Ok(_))) => {
                return Err(Status::invalid_argument(
                    "the first message of a sync stream must be a hello",
                ));
            }
            Ok(Some(Err(status))) => return Err(status),
            Ok(None) | Err(_) => {
                return Err(Status::deadline_exceeded("no hello on the sync stream"));
            }
        };
        // The certificate decides which zone this is; a zone cannot speak for another.
        if hello.zone != zone {
            return Err(Status::permission_denied(format!(
                "the credentials of zone {zone} cannot speak for zone {}",
                hello.zone
            )));
        }
        let observer = hello.role() == pb::SyncRole::Observer;
        if !hello.vip_cidr.is_empty() && !observer {
            if let Err(e) = hello.vip_cidr.parse::<strait_proto::vip::VipCidr>() {
                return Err(Status::invalid_argument(e.to_string()));
            }
            let known = self
                .ctx
                .read(|s| s.zone(&zone).and_then(|z| z.vip_cidr.clone()));
            if known.as_deref() != Some(hello.vip_cidr.as_str()) {
                let cmd = Command::SetZoneVipCidr {
                    zone: zone.clone(),
                    vip_cidr: hello.vip_cidr.clone(),
                };
                if let Err(err) = self.ctx.cluster.write(cmd).await {
                    tracing::warn!(%zone, %err, "recording the zone's VIP range");
                }
            }
        }
        tracing::info!(%zone, known_version = hello.known_version, observer, "zone connected");
        let (tx, rx) = mpsc::channel(16);
        let stream = ZoneStream {
            ctx: self.ctx.clone(),
            zone,
            observer,
            session: rand::random::<u64>() | 1,
            out: tx,
        };
        tokio::spawn(stream.run(inbound, hello.known_version));
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }
}
