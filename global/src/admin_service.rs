//! The `strait.v1.Admin` gRPC service: what operators (and `strait` commands) do to the
//! federation. Only the admin identity may call it. Writes go through Raft
//! ([`Cluster::write`]); reads the CLI shows as current are linearizable
//! ([`Cluster::read_barrier`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strait_policy::Kind;
use strait_proto as pb;
use strait_trust::join_token::JoinToken;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::auth::require_admin;
use crate::cluster::MembershipChange;
use crate::context::{NodeContext, cluster_status, now_ms};
use crate::state::{Command, Detail, FederationState, PolicyKey, Port, TokenPurpose, Zone};
use crate::types::NodeInfo;

/// Default lifetime of a join token (DESIGN: 24 h).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long `ClusterStatus` waits for each peer before calling it unreachable.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// Serves `strait.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    ctx: Arc<NodeContext>,
}

impl AdminService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// Commits `cmd`, recording its latency; a rejection becomes the given gRPC status kind.
    async fn write(&self, cmd: Command) -> Result<(u64, Detail), Status> {
        let started = Instant::now();
        let result = self.ctx.cluster.write(cmd).await;
        match result {
            Ok(result) => {
                self.ctx
                    .metrics
                    .write_latency
                    .observe(started.elapsed().as_secs_f64());
                result.into_result().map_err(|r| rejection_status(&r))
            }
            Err(err) => {
                self.ctx.metrics.write_failures.inc();
                Err(cluster_status(err))
            }
        }
    }

    async fn fresh(&self) -> Result<(), Status> {
        self.ctx
            .cluster
            .read_barrier()
            .await
            .map_err(cluster_status)
    }

    /// Creates and stores a join token for `purpose`; returns it with its expiry.
    async fn new_token(
        &self,
        purpose: TokenPurpose,
        ttl_seconds: u64,
    ) -> Result<(String, i64), Status> {
        let pin = self
            .ctx
            .read(|s| {
                s.ca.as_ref()
                    .and_then(|ca| strait_trust::pem::parse_cert(&ca.root_cert_pem, "root CA").ok())
            })
            .map(|der| strait_trust::bundle::pin(&der))
            .ok_or_else(|| Status::unavailable("the federation is not initialized yet"))?;
        let token = JoinToken::generate(&pin).map_err(|e| Status::internal(e.to_string()))?;
        let ttl = if ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(ttl_seconds)
        };
        let now = now_ms();
        let expires_at_ms = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.write(Command::CreateJoinToken {
            token_id: token.id().to_owned(),
            secret_sha256: token.secret_sha256(),
            purpose,
            expires_at_ms,
            now_ms: now,
        })
        .await?;
        Ok((
            token.to_string(),
            i64::try_from(expires_at_ms).unwrap_or(i64::MAX),
        ))
    }

    async fn status(&self) -> pb::ClusterStatusResponse {
        let ctx = &self.ctx;
        let own = ctx.cluster.node_view();
        let members = ctx.cluster.members();
        let views = futures::future::join_all(
            members
                .iter()
                .map(|(id, info, _)| ctx.cluster.peer_view(*id, info, PEER_STATUS_TIMEOUT)),
        )
        .await;
        let nodes = members
            .iter()
            .zip(views)
            .map(|((id, info, _), view)| {
                let role = match view.as_ref().map(|v| v.role.as_str()) {
                    None => pb::NodeRole::Unreachable,
                    Some("leader") => pb::NodeRole::Leader,
                    Some("candidate") => pb::NodeRole::Candidate,
                    Some("learner") => pb::NodeRole::Learner,
                    Some(_) => pb::NodeRole::Follower,
                };
                pb::NodeStatus {
                    id: *id,
                    address: info.api.clone(),
                    admin_address: info.admin.clone(),
                    role: role.into(),
                    term: view.as_ref().map_or(0, |v| v.term),
                    commit_index: view.as_ref().map_or(0, |v| v.last_log_index),
                    applied_index: view.as_ref().map_or(0, |v| v.applied_index),
                }
            })
            .collect();
        let (zones, trust_domain) = ctx.read(|s| {
            (
                s.zones.values().map(zone_pb).collect(),
                s.ca.as_ref().map(|c| c.trust_domain.clone()),
            )
        });
        pb::ClusterStatusResponse {
            nodes,
            leader_id: own.leader.unwrap_or(0),
            term: own.term,
            zones,
            trust_domain: trust_domain.unwrap_or_default(),
        }
    }
}

/// A state machine refusal as the gRPC status a user reads.
fn rejection_status(r: &crate::state::Rejection) -> Status {
    use crate::state::Rejection as R;
    let message = r.to_string();
    match r {
        R::ZoneNotFound { .. } | R::PolicyNotFound { .. } => Status::not_found(message),
        R::ZoneExists { .. }
        | R::ZoneNameRetired { .. }
        | R::TokenExists { .. }
        | R::DuplicatePolicy { .. } => Status::already_exists(message),
        R::Token(_) => Status::permission_denied(message),
        R::InvalidArgument { .. } => Status::invalid_argument(message),
        _ => Status::failed_precondition(message),
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn zone_pb(z: &Zone) -> pb::Zone {
    let connection = z.connection.as_ref();
    pb::Zone {
        name: z.name.clone(),
        region: z.region.clone(),
        labels: z.labels.clone().into_iter().collect(),
        removed: !z.is_active(),
        connected: z.is_connected(),
        last_seen_unix_ms: connection.map_or(0, |c| to_i64(c.last_seen_ms)),
        created_unix_ms: to_i64(z.created_at_ms),
        connected_node: connection.map_or(0, |c| c.node_id),
    }
}

/// The VIP of a service index in every zone that reported its VIP range.
fn zone_vips(
    state: &crate::state::FederationState,
    index: Option<u32>,
) -> std::collections::HashMap<String, String> {
    let Some(index) = index else {
        return Default::default();
    };
    state
        .zones
        .values()
        .filter(|z| z.is_active())
        .filter_map(|z| {
            let cidr: strait_proto::vip::VipCidr = z.vip_cidr.as_deref()?.parse().ok()?;
            Some((z.name.clone(), cidr.address(index).ok()?.to_string()))
        })
        .collect()
}

fn port_pb(p: &Port) -> pb::Port {
    let protocol = match p.protocol.as_str() {
        "tcp" => pb::Protocol::Tcp,
        "http" => pb::Protocol::Http,
        "http2" => pb::Protocol::Http2,
        "grpc" => pb::Protocol::Grpc,
        _ => pb::Protocol::Unspecified,
    };
    pb::Port {
        name: p.name.clone(),
        port: u32::from(p.port),
        protocol: protocol.into(),
    }
}

fn kind_arg(kind: &str) -> Result<Kind, Status> {
    Kind::from_str_case_insensitive(kind).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_zone(
        &self,
        request: Request<pb::CreateZoneRequest>,
    ) -> Result<Response<pb::CreateZoneResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        crate::state::validate_zone_name(&req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let region = if req.region.is_empty() {
            "default".to_owned()
        } else {
            req.region
        };
        self.write(Command::CreateZone {
            name: req.name.clone(),
            region,
            labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
            now_ms: now_ms(),
        })
        .await?;
        let (join_token, expires) = self
            .new_token(
                TokenPurpose::Zone {
                    zone: req.name.clone(),
                },
                req.token_ttl_seconds,
            )
            .await?;
        let zone = self.ctx.read(|s| s.zone(&req.name).map(zone_pb));
        Ok(Response::new(pb::CreateZoneResponse {
            zone,
            join_token,
            token_expires_unix_ms: expires,
        }))
    }

    async fn list_zones(
        &self,
        request: Request<pb::ListZonesRequest>,
    ) -> Result<Response<pb::ListZonesResponse>, Status> {
        require_admin(&request)?;
        self.fresh().await?;
        let zones = self.ctx.read(|s| s.zones.values().map(zone_pb).collect());
        Ok(Response::new(pb::ListZonesResponse { zones }))
    }

    async fn remove_zone(
        &self,
        request: Request<pb::RemoveZoneRequest>,
    ) -> Result<Response<pb::RemoveZoneResponse>, Status> {
        require_admin(&request)?;
        let name = request.into_inner().name;
        self.write(Command::RemoveZone {
            name: name.clone(),
            now_ms: now_ms(),
        })
        .await?;
        let zone = self.ctx.read(|s| s.zone(&name).map(zone_pb));
        Ok(Response::new(pb::RemoveZoneResponse { zone }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let purpose = match req.purpose {
            Some(pb::create_join_token_request::Purpose::Zone(zone)) => TokenPurpose::Zone { zone },
            Some(pb::create_join_token_request::Purpose::NodeId(0)) | None => {
                return Err(Status::invalid_argument(
                    "say what the token is for: a zone name or a node id (1 or more)",
                ));
            }
            Some(pb::create_join_token_request::Purpose::NodeId(node_id)) => {
                if self.ctx.raft_members().contains(&node_id) {
                    return Err(Status::already_exists(format!(
                        "node {node_id} is already a member"
                    )));
                }
                TokenPurpose::Node { node_id }
            }
        };
        let (join_token, expires_unix_ms) = self.new_token(purpose, req.ttl_seconds).await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            join_token,
            expires_unix_ms,
        }))
    }

    async fn create_workload_token(
        &self,
        request: Request<pb::CreateWorkloadTokenRequest>,
    ) -> Result<Response<pb::CreateWorkloadTokenResponse>, Status> {
        use strait_trust::workload_token::{
            Claims, DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL, WorkloadToken, WorkloadTokenError,
        };
        use strait_trust::{RootCa, SpiffeId};

        /// Namespaces, services and service accounts become SPIFFE path segments and DNS
        /// labels: RFC 1123 labels, the same rule as zone names.
        fn dns_label(field: &str, value: &str) -> Result<(), Status> {
            crate::state::validate_zone_name(value).map_err(|_| {
                Status::invalid_argument(format!(
                    "{field} {value:?} must be a DNS label: 1 to 63 lowercase letters, digits \
                     and '-', not starting or ending with '-'"
                ))
            })
        }

        let admin = require_admin(&request)?;
        let req = request.into_inner();
        crate::state::validate_zone_name(&req.zone)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            secs if secs > MAX_TOKEN_TTL.as_secs() => {
                return Err(Status::invalid_argument(format!(
                    "ttl_seconds {secs} is too long: a workload token can not be revoked before \
                     it expires, so the maximum is {} seconds (30 days)",
                    MAX_TOKEN_TTL.as_secs()
                )));
            }
            secs => Duration::from_secs(secs),
        };

        // Fresh reads: a zone removed a moment ago must not get new tokens from a lagging node.
        self.fresh().await?;
        let (zone, ca) = self
            .ctx
            .read(|s| (s.zone(&req.zone).cloned(), s.ca.clone()));
        match zone {
            None => {
                return Err(Status::not_found(format!(
                    "zone {:?} does not exist",
                    req.zone
                )));
            }
            Some(z) if !z.is_active() => {
                return Err(Status::failed_precondition(format!(
                    "zone {:?} has been removed; it can not accept workloads",
                    req.zone
                )));
            }
            Some(_) => {}
        }
        let ca = ca.ok_or_else(|| Status::unavailable("the federation is not initialized yet"))?;

        // The identity. A gateway is asked for explicitly as service `gateway` with no
        // namespace, and gets `spiffe://TD/zone/ZONE/gateway`; anything else is a workload,
        // `spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT` (service account defaulting to the
        // service name), the identity it keeps in every zone.
        let id = if req.namespace.is_empty() && req.service == "gateway" {
            if !req.service_account.is_empty() {
                return Err(Status::invalid_argument(
                    "a gateway token (service \"gateway\", no namespace) takes no service_account",
                ));
            }
            SpiffeId::gateway(&ca.trust_domain, &req.zone)
        } else {
            dns_label("namespace", &req.namespace)?;
            dns_label("service", &req.service)?;
            let sa = if req.service_account.is_empty() {
                &req.service
            } else {
                dns_label("service_account", &req.service_account)?;
                &req.service_account
            };
            SpiffeId::workload(&ca.trust_domain, &req.namespace, sa)
        }
        .map_err(|e| Status::invalid_argument(e.to_string()))?;

        let root = RootCa::from_pem(&ca.trust_domain, &ca.root_cert_pem, &ca.root_key_pem.0)
            .map_err(|e| {
                Status::internal(format!("root CA in the replicated state is unusable: {e}"))
            })?;
        let claims = Claims::new(id, &req.zone, std::time::SystemTime::now(), ttl);
        let token = WorkloadToken::issue(&root, &claims).map_err(|e| match e {
            WorkloadTokenError::RootKey { .. } | WorkloadTokenError::Signing => {
                Status::failed_precondition(e.to_string())
            }
            other => Status::invalid_argument(other.to_string()),
        })?;
        // The token itself is a bearer credential and is never logged; its id is.
        tracing::info!(
            admin = %admin,
            token_id = %claims.id,
            spiffe_id = %claims.spiffe_id,
            zone = %claims.zone,
            expires_at_ms = claims.expires_at_ms,
            "issued a workload token"
        );
        Ok(Response::new(pb::CreateWorkloadTokenResponse {
            token,
            spiffe_id: claims.spiffe_id.to_string(),
            expires_unix_ms: to_i64(claims.expires_at_ms),
        }))
    }

    async fn apply_policies(
        &self,
        request: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let source = if req.source.is_empty() {
            "(request)"
        } else {
            req.source.as_str()
        };
        let resources = strait_policy::parse_documents(&req.yaml, source)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut policies = Vec::with_capacity(resources.len());
        for resource in &resources {
            let key = resource.key();
            let json = resource
                .to_json()
                .map_err(|e| Status::internal(e.to_string()))?;
            policies.push((
                PolicyKey {
                    kind: key.kind.as_str().to_owned(),
                    namespace: key.namespace,
                    name: key.name,
                },
                json,
            ));
        }
        // Outcomes and warnings are computed against the state this node has; the write itself
        // is atomic.
        let (results, warnings) = self.ctx.read(|s| {
            let results = policies
                .iter()
                .map(|(key, json)| pb::PolicyResult {
                    kind: key.kind.clone(),
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    outcome: match s.policies.get(key) {
                        None => "created",
                        Some(stored) if &stored.json == json => "unchanged",
                        Some(_) => "configured",
                    }
                    .to_owned(),
                })
                .collect::<Vec<_>>();
            (results, apply_warnings(s, &resources))
        });
        let revision = if req.dry_run {
            0
        } else {
            self.write(Command::ApplyPolicies { policies }).await?.0
        };
        Ok(Response::new(pb::ApplyPoliciesResponse {
            results,
            revision,
            warnings,
        }))
    }

    async fn get_policies(
        &self,
        request: Request<pb::GetPoliciesRequest>,
    ) -> Result<Response<pb::GetPoliciesResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let kind = if req.kind.is_empty() {
            None
        } else {
            Some(kind_arg(&req.kind)?.as_str())
        };
        self.fresh().await?;
        let resources = self.ctx.read(|s| {
            s.policies
                .values()
                .filter(|p| kind.is_none_or(|k| p.key.kind == k))
                .filter(|p| req.namespace.is_empty() || p.key.namespace == req.namespace)
                .filter(|p| req.name.is_empty() || p.key.name == req.name)
                .map(|p| pb::PolicyResource {
                    kind: p.key.kind.clone(),
                    namespace: p.key.namespace.clone(),
                    name: p.key.name.clone(),
                    json: p.json.clone(),
                    revision: p.revision,
                })
                .collect()
        });
        Ok(Response::new(pb::GetPoliciesResponse { resources }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let kind = kind_arg(&req.kind)?;
        let namespace = if req.namespace.is_empty() {
            strait_policy::DEFAULT_NAMESPACE.to_owned()
        } else {
            req.namespace
        };
        let key = PolicyKey {
            kind: kind.as_str().to_owned(),
            namespace,
            name: req.name,
        };
        let (revision, _) = self.write(Command::DeletePolicy { key }).await?;
        Ok(Response::new(pb::DeletePolicyResponse { revision }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        require_admin(&request)?;
        self.fresh().await?;
        let services = self.ctx.read(|s| {
            s.services()
                .into_iter()
                .map(|view| pb::ServiceStatus {
                    service: Some(pb::ServiceRef {
                        namespace: view.service.namespace.clone(),
                        name: view.service.name.clone(),
                    }),
                    ports: union_ports(&view.zones),
                    vip_index: view.vip.unwrap_or(0),
                    vips: zone_vips(s, view.vip),
                    zones: view
                        .zones
                        .iter()
                        .map(|z| pb::ServiceZone {
                            zone: z.zone.clone(),
                            healthy: u32::try_from(z.healthy).unwrap_or(u32::MAX),
                            total: u32::try_from(z.total).unwrap_or(u32::MAX),
                            drained: z.drained,
                            stale: !z.connected,
                            pinned_vip_index: z.pinned_vip.unwrap_or(0),
                            pinned_vips: zone_vips(s, z.pinned_vip),
                        })
                        .collect(),
                })
                .collect()
        });
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn set_drain(
        &self,
        request: Request<pb::SetDrainRequest>,
    ) -> Result<Response<pb::SetDrainResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let service = req
            .service
            .ok_or_else(|| Status::invalid_argument("service is required"))?;
        let (revision, _) = self
            .write(Command::SetDrain {
                namespace: service.namespace,
                service: service.name,
                zone: req.zone,
                drained: req.drained,
            })
            .await?;
        Ok(Response::new(pb::SetDrainResponse { revision }))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(self.status().await))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        if req.node_id == 0 || req.address.is_empty() {
            return Err(Status::invalid_argument(
                "node_id (1 or more) and address are required",
            ));
        }
        let info = NodeInfo {
            api: req.address,
            admin: req.admin_address,
        };
        self.ctx
            .cluster
            .change_membership(MembershipChange::Add {
                id: req.node_id,
                info,
                learner_only: req.learner_only,
            })
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::AddNodeResponse {
            status: Some(self.status().await),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        require_admin(&request)?;
        let id = request.into_inner().node_id;
        if !self.ctx.raft_members().contains(&id) {
            return Err(Status::not_found(format!(
                "node {id} is not a member of the cluster"
            )));
        }
        self.ctx
            .cluster
            .change_membership(MembershipChange::Remove { id })
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::RemoveNodeResponse {
            status: Some(self.status().await),
        }))
    }
}

/// The ports of a service in every zone that exports it, by number (the first zone's name and
/// protocol for a port several zones list).
fn union_ports(zones: &[crate::state::ServiceZoneView]) -> Vec<pb::Port> {
    let mut ports: BTreeMap<u16, pb::Port> = BTreeMap::new();
    for port in zones.iter().flat_map(|z| &z.ports) {
        ports.entry(port.port).or_insert_with(|| port_pb(port));
    }
    ports.into_values().collect()
}

/// What `strait apply` should warn about once `applied` is stored next to what `state` holds
/// (see [`strait_policy::apply_warnings`]): the services every zone exports are the catalog.
fn apply_warnings(state: &FederationState, applied: &[strait_policy::Resource]) -> Vec<String> {
    let mut set: strait_policy::PolicySet = state
        .policies
        .values()
        .filter_map(|p| strait_policy::Resource::from_json(&p.json).ok())
        .collect();
    set.extend(applied.iter().cloned());
    let mut catalog = strait_policy::ServiceCatalog::new();
    for inventory in state.inventories.values() {
        for (key, exported) in &inventory.services {
            catalog.add(
                &key.namespace,
                &key.name,
                exported.ports.iter().map(|p| p.port),
            );
        }
    }
    let keys: Vec<strait_policy::ResourceKey> = applied.iter().map(|r| r.key()).collect();
    strait_policy::apply_warnings(&set, &keys, &catalog)
}
