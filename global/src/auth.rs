//! Who is calling: the SPIFFE identity of a gRPC client, from the certificate it presented.
//!
//! The TLS layer has already verified the chain to the trust bundle (a certificate that does
//! not verify never gets this far). Client certificates are optional at the TLS layer only
//! because joiners have none yet; every service except the two `Join` calls requires one here.

use std::str::FromStr;

use strait_trust::spiffe::{IdentityKind, SpiffeId};
use tonic::{Request, Status};

use crate::types::NodeId;

/// The verified SPIFFE ID of the caller, or `Unauthenticated`.
pub fn caller<T>(request: &Request<T>) -> Result<SpiffeId, Status> {
    let certs = strait_proto::transport::peer_certificates(request)
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    strait_trust::cert_info::leaf_spiffe_id(leaf).map_err(|e| {
        Status::unauthenticated(format!("client certificate has no usable SPIFFE ID: {e}"))
    })
}

/// The caller must be an operator (`spiffe://TD/admin/NAME`).
pub fn require_admin<T>(request: &Request<T>) -> Result<SpiffeId, Status> {
    let id = caller(request)?;
    match id.kind() {
        IdentityKind::Admin { .. } => Ok(id),
        _ => Err(Status::permission_denied(format!(
            "{id} is not an admin identity"
        ))),
    }
}

/// The caller must be a global node; returns its node id.
pub fn require_global_node<T>(request: &Request<T>) -> Result<NodeId, Status> {
    let id = caller(request)?;
    match id.kind() {
        IdentityKind::GlobalNode { node } => NodeId::from_str(node).map_err(|_| {
            Status::permission_denied(format!("{id}: global node name is not a number"))
        }),
        _ => Err(Status::permission_denied(format!(
            "{id} is not a global node"
        ))),
    }
}

/// The caller must be a zone control plane; returns the zone name from its certificate, which
/// is the only zone it may speak for.
pub fn require_zone_cp<T>(request: &Request<T>) -> Result<String, Status> {
    let id = caller(request)?;
    match id.kind() {
        IdentityKind::ZoneControlPlane { zone } => Ok(zone.to_owned()),
        _ => Err(Status::permission_denied(format!(
            "{id} is not a zone control plane"
        ))),
    }
}
