//! What a drill needs from the global control plane, behind a trait so the orchestration is
//! tested against an in-memory fake; [`AdminClient`] is the real one.

use std::collections::BTreeMap;
use std::future::Future;

use strait_global::admin_client::AdminClient;
use strait_proto as pb;

/// Why a control-plane call failed (the implementation's own error, boxed).
pub type AdminError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An exported service as the drill sees it: its VIP in each zone and its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportedService {
    /// Zone name → the service's VIP in that zone.
    pub vips: BTreeMap<String, String>,
    /// Service ports, first one first.
    pub ports: Vec<u32>,
}

/// The calls a drill makes to the global control plane.
///
/// Rules every implementation keeps: `service` answers `Ok(None)` for a service that is not
/// exported (not an error); `set_drain` is idempotent (draining a drained service, or
/// undraining one that is not drained, succeeds) and takes effect in every zone through the
/// control plane, not at once.
pub trait Admin: Sync {
    /// The exported service `namespace/name`, if any.
    fn service(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ExportedService>, AdminError>> + Send;

    /// Takes `namespace/service` out of `zone` (`drained`) or puts it back.
    fn set_drain(
        &self,
        namespace: &str,
        service: &str,
        zone: &str,
        drained: bool,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
}

impl Admin for AdminClient {
    async fn service(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ExportedService>, AdminError> {
        let reply = self
            .call(|mut c| async move { c.list_services(pb::ListServicesRequest {}).await })
            .await?;
        Ok(reply
            .services
            .into_iter()
            .find(|s| {
                s.service
                    .as_ref()
                    .is_some_and(|r| r.namespace == namespace && r.name == name)
            })
            .map(|s| ExportedService {
                vips: s.vips.into_iter().collect(),
                ports: s.ports.iter().map(|p| p.port).collect(),
            }))
    }

    async fn set_drain(
        &self,
        namespace: &str,
        service: &str,
        zone: &str,
        drained: bool,
    ) -> Result<(), AdminError> {
        let request = pb::SetDrainRequest {
            service: Some(pb::ServiceRef {
                namespace: namespace.to_owned(),
                name: service.to_owned(),
            }),
            zone: zone.to_owned(),
            drained,
        };
        self.call(|mut c| {
            let r = request.clone();
            async move { c.set_drain(r).await }
        })
        .await?;
        Ok(())
    }
}
