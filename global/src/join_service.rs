//! The two ways into the federation, both authenticated by a single-use join token rather than
//! a certificate (the caller has none yet): `NodeJoin.Join` for a new global node and
//! `ZoneSync.Join` for a new zone control plane. The caller authenticates global by the root
//! pin in the token before sending anything (see `strait_trust::tls::pinned_client_config`).

use std::sync::Arc;

use strait_proto::{JoinRequest, JoinResponse, NodeJoinRequest, NodeJoinResponse};
use strait_trust::ca::RootCa;
use strait_trust::join_token::{JoinToken, hash_secret};
use strait_trust::spiffe::SpiffeId;
use tonic::{Request, Response, Status};

use crate::context::NodeContext;
use crate::credentials::NODE_CERT_VALIDITY;
use crate::state::{Command, CommandResult, TokenPurpose};
use crate::types::NodeInfo;

/// Consumes `token` for `purpose` through Raft; a refusal becomes `PermissionDenied` with the
/// state machine's reason (expired, already used, another zone...).
async fn consume_token(
    ctx: &NodeContext,
    token: &str,
    purpose: TokenPurpose,
) -> Result<(), Status> {
    let token: JoinToken =
        token
            .parse()
            .map_err(|e: strait_trust::join_token::JoinTokenError| {
                Status::invalid_argument(format!("join token: {e}"))
            })?;
    let cmd = Command::ConsumeJoinToken {
        token_id: token.id().to_owned(),
        secret_sha256: hash_secret(token.secret()),
        purpose,
        now_ms: crate::context::now_ms(),
    };
    match ctx
        .cluster
        .write(cmd)
        .await
        .map_err(crate::context::cluster_status)?
    {
        CommandResult::Ok { .. } => Ok(()),
        CommandResult::Rejected(rejection) => Err(Status::permission_denied(rejection.to_string())),
    }
}

fn root_ca(ctx: &NodeContext) -> Result<RootCa, Status> {
    let ca = ctx
        .read(|s| s.ca.clone())
        .ok_or_else(|| Status::unavailable("the federation is not initialized yet"))?;
    RootCa::from_pem(&ca.trust_domain, &ca.root_cert_pem, &ca.root_key_pem.0)
        .map_err(|e| Status::internal(format!("root CA in the replicated state is unusable: {e}")))
}

/// Serves `strait.v1.NodeJoin`.
#[derive(Debug, Clone)]
pub struct NodeJoinService {
    ctx: Arc<NodeContext>,
}

impl NodeJoinService {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl strait_proto::node_join_server::NodeJoin for NodeJoinService {
    async fn join(
        &self,
        request: Request<NodeJoinRequest>,
    ) -> Result<Response<NodeJoinResponse>, Status> {
        let req = request.into_inner();
        let ctx = &self.ctx;
        if req.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be 1 or more"));
        }
        if req.address.is_empty() || req.admin_address.is_empty() {
            return Err(Status::invalid_argument(
                "address and admin_address are required",
            ));
        }
        let members = ctx.raft_members();
        if members.contains(&req.node_id) {
            return Err(Status::already_exists(format!(
                "node {} is already a member of the cluster",
                req.node_id
            )));
        }
        // Check the CSR before using up the token, so a malformed request can be retried.
        let root = root_ca(ctx)?;
        let id = SpiffeId::global_node(root.trust_domain(), &req.node_id.to_string())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = root
            .sign_leaf(&req.csr_pem, &id, NODE_CERT_VALIDITY)
            .map_err(|e| Status::invalid_argument(format!("certificate request refused: {e}")))?;
        consume_token(
            ctx,
            &req.token,
            TokenPurpose::Node {
                node_id: req.node_id,
            },
        )
        .await?;
        let bundle_pem = ctx
            .read(|s| s.ca.as_ref().map(|ca| ca.bundle_pem.clone()))
            .unwrap_or_default();
        // Membership changes run on the leader once the new node is up and serving: it
        // starts only after this reply, so wait for it in the background.
        ctx.add_node_when_reachable(
            req.node_id,
            NodeInfo {
                api: req.address,
                admin: req.admin_address,
            },
        );
        tracing::info!(node_id = req.node_id, "global node joined");
        Ok(Response::new(NodeJoinResponse {
            trust_domain: root.trust_domain().to_owned(),
            cert_chain_pem: issued.chain_pem,
            trust_bundle_pem: bundle_pem,
        }))
    }
}

/// The join half of `strait.v1.ZoneSync` (the sync stream is in `zone_sync`).
pub async fn zone_join(
    ctx: &NodeContext,
    request: Request<JoinRequest>,
) -> Result<Response<JoinResponse>, Status> {
    let req = request.into_inner();
    crate::state::validate_zone_name(&req.zone)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let root = root_ca(ctx)?;
    let td = root.trust_domain().to_owned();
    let cp_id =
        SpiffeId::zone_cp(&td, &req.zone).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let intermediate = root
        .sign_intermediate(&req.ca_csr_pem, &req.zone, ctx.config.zone_ca_validity)
        .map_err(|e| Status::invalid_argument(format!("intermediate CA request refused: {e}")))?;
    let cp = root
        .sign_leaf(&req.cp_csr_pem, &cp_id, ctx.config.zone_cp_validity)
        .map_err(|e| {
            Status::invalid_argument(format!("control plane certificate request refused: {e}"))
        })?;
    consume_token(
        ctx,
        &req.token,
        TokenPurpose::Zone {
            zone: req.zone.clone(),
        },
    )
    .await?;
    let bundle_pem = ctx
        .read(|s| s.ca.as_ref().map(|ca| ca.bundle_pem.clone()))
        .unwrap_or_default();
    tracing::info!(zone = %req.zone, "zone joined");
    Ok(Response::new(JoinResponse {
        trust_domain: td,
        intermediate_cert_pem: intermediate.cert_pem,
        cp_cert_chain_pem: cp.chain_pem,
        trust_bundle_pem: bundle_pem,
        global_addresses: ctx
            .raft_nodes()
            .into_iter()
            .map(|(_, info)| info.api)
            .collect(),
        vip_cidr: String::new(),
    }))
}
