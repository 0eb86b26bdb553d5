//! The `strait.v1.ZoneSync` gRPC service. `Join` lets a new zone in with its token; the `Sync`
//! stream (inventory up, federation state down) is served from here too.

use std::sync::Arc;

use strait_proto as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::context::NodeContext;

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
        // The stream's state machine arrives with the zone control plane; refusing clearly
        // beats accepting a stream that would never send anything.
        Err(Status::unimplemented(format!(
            "zone {zone}: the sync stream is not served by this version"
        )))
    }
}
