//! The prober of ejected targets: without it a restarted instance would wait out its whole
//! ejection (30 s and more) before it gets traffic again.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Shared, lock};
use crate::lb::Target;
use crate::pool::ConnPermit;

/// How often endpoints ejected for connect failures are probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe (TCP + TLS + HTTP/2 handshake) may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Tries to connect to the targets that were ejected for connect failures, every
/// [`PROBE_INTERVAL`], and puts back the ones that answer (the pooled connection the probe
/// opened serves the next request). Ends when the outbound side is gone.
pub(super) async fn probe_ejected(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let services = shared.table.services();
        let gateway_id = shared.table.gateway_id();
        for service in services {
            let candidates = lock(&service.balancer).probe_candidates(Instant::now());
            let port = service.probe_port();
            let max_connections = service.max_connections();
            // The connection a probe opens stays pooled for requests: it counts.
            let permit = || ConnPermit::Later(Arc::clone(&service.connections), max_connections);
            for target in candidates {
                let reached = match &target {
                    Target::Endpoint {
                        address, spiffe_id, ..
                    } => shared
                        .pool
                        .sender(address, spiffe_id, PROBE_TIMEOUT, permit())
                        .await
                        .is_ok(),
                    Target::Remote { .. } => match service.remote(&target, port, &gateway_id) {
                        Some(remote) => shared
                            .pool
                            .remote_sender(&remote, PROBE_TIMEOUT, permit())
                            .await
                            .is_ok(),
                        None => false,
                    },
                };
                if reached && lock(&service.balancer).reinstate(&target.key(), Instant::now()) {
                    tracing::info!(service = %service.name, target = ?target.key(), "ejected target answers again; reinstated");
                }
            }
        }
    }
}
