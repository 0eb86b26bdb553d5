//! Tunnels from this zone's sidecars: HTTP/2 CONNECT over mutual TLS (as Istio's HBONE). One
//! connection per sidecar carries many tunnels, one CONNECT stream each:
//!
//! ```text
//! :method CONNECT   :authority NAME.NAMESPACE:PORT   x-strait-target-zone: ZONE
//! ← 200 (x-strait-served-by-zone, x-strait-served-by-instance), then bytes both ways
//! ← 4xx/5xx (x-strait-tunnel-status: CODE, x-strait-tunnel-reason: TEXT)
//! ```
//!
//! Only workload identities (`spiffe://TD/ns/NS/sa/SA`) of the trust domain are accepted.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_proto as pb;
use strait_proto::TunnelStatus;
use strait_proto::tunnel::{
    HEADER_SERVED_BY_INSTANCE, HEADER_SERVED_BY_ZONE, HEADER_SUBSET, HEADER_TARGET_ZONE,
    HEADER_TRACEPARENT, HEADER_TRACESTATE, HEADER_TUNNEL_REASON, HEADER_TUNNEL_STATUS,
    TUNNEL_VERSION, http_status, parse_subset, response_status, status_code_name,
};
use strait_trust::IdentityKind;
use strait_trust::tls::PeerIdentity;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::gateway::Shared;
use crate::metrics::OUTBOUND;
use crate::select::{is_dns_label, parse_authority};
use crate::state::Refusal;

/// How long a sidecar's TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest trace header passed on (W3C traceparent is 55 bytes; tracestate at most 512).
const MAX_TRACE_HEADER: usize = 1024;

/// The authorization rule of the local listener: workloads of the trust domain only (the
/// trust-domain check is the verifier's).
pub fn workload_only(peer: &PeerIdentity) -> Result<(), String> {
    match peer.id.kind() {
        IdentityKind::Workload { .. } => Ok(()),
        _ => Err(format!(
            "{} is not a workload: only sidecars may open tunnels here",
            peer.id
        )),
    }
}

/// Serves sidecars on `listener` with `tls` until `shutdown`; open connections are then cut.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: impl Future,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::info!(%err, "sidecar TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!("sidecar TLS handshake timed out");
                        return;
                    }
                };
                let caller = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| strait_trust::peer_identity(c).ok())
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    let caller = caller.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(connect(req, &shared, &caller).await)
                    }
                });
                let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
                if let Err(err) = result {
                    tracing::debug!(%err, "sidecar connection ended with an error");
                }
            }
            .instrument(tracing::info_span!("sidecar", %peer)),
        );
    }
    connections.shutdown().await;
}

/// Handles one CONNECT request.
async fn connect(
    mut req: Request<Incoming>,
    shared: &Shared,
    caller: &str,
) -> Response<Empty<Bytes>> {
    let view = shared.view.borrow().clone();
    let target_zone = req
        .headers()
        .get(HEADER_TARGET_ZONE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let zone_label = view.zone_label(&target_zone);
    let header = match tunnel_header(&req, &shared.zone, &target_zone) {
        Ok(h) => h,
        Err(refusal) => return refuse(&refusal, &zone_label, shared),
    };
    let gateways = match view.route_outbound(&target_zone) {
        Ok(g) => g.to_vec(),
        Err(refusal) => return refuse(&refusal, &zone_label, shared),
    };
    let authority = req
        .uri()
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let tunnel = match shared.pool.open(&target_zone, &gateways, &header).await {
        Ok(t) => t,
        Err(refusal) => return refuse(&refusal, &zone_label, shared),
    };
    let status = response_status(&tunnel.response);
    if status != TunnelStatus::Ok {
        // The remote gateway's refusal goes to the sidecar with its code.
        let refusal = Refusal::new(status, tunnel.response.reason.clone());
        return refuse(&refusal, &zone_label, shared);
    }
    shared
        .metrics
        .outcome(OUTBOUND, &zone_label, TunnelStatus::Ok);
    tracing::debug!(%caller, %authority, zone = %target_zone, served_by = %tunnel.response.served_by_instance, "tunnel open");
    let mut answer = Response::new(Empty::new());
    if let Ok(v) = HeaderValue::from_str(&tunnel.response.served_by_zone) {
        answer.headers_mut().insert(HEADER_SERVED_BY_ZONE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&tunnel.response.served_by_instance) {
        answer.headers_mut().insert(HEADER_SERVED_BY_INSTANCE, v);
    }
    let upgrade = hyper::upgrade::on(&mut req);
    let metrics = shared.metrics.clone();
    tokio::spawn(async move {
        let _active = metrics.active(OUTBOUND, &zone_label);
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(err) => {
                tracing::debug!(%err, "the CONNECT stream never opened");
                return;
            }
        };
        let mut sidecar = TokioIo::new(upgraded);
        let mut quic = tokio::io::join(tunnel.recv, tunnel.send);
        let _peer = tunnel.guard;
        match tokio::io::copy_bidirectional(&mut sidecar, &mut quic).await {
            Ok((to_destination, to_source)) => {
                metrics.add_bytes(OUTBOUND, to_destination, to_source);
            }
            Err(err) => tracing::debug!(%err, "tunnel ended with an error"),
        }
    });
    answer
}

/// The tunnel header for a CONNECT request, or why it cannot be one.
fn tunnel_header(
    req: &Request<Incoming>,
    own_zone: &str,
    target_zone: &str,
) -> Result<pb::TunnelHeader, Refusal> {
    let bad = |reason: String| Refusal::new(TunnelStatus::BadHeader, reason);
    if req.method() != Method::CONNECT {
        return Err(bad(format!("method {} is not CONNECT", req.method())));
    }
    if target_zone.is_empty() {
        return Err(bad(format!("header {HEADER_TARGET_ZONE} is required")));
    }
    if !is_dns_label(target_zone) {
        return Err(bad(format!(
            "header {HEADER_TARGET_ZONE}: {target_zone:?} is not a zone name"
        )));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| bad("the request has no :authority".to_owned()))?;
    let target = parse_authority(authority.as_str()).map_err(bad)?;
    let trace_header = |name: &str| -> Result<String, Refusal> {
        match req.headers().get(name) {
            None => Ok(String::new()),
            Some(v) if v.len() <= MAX_TRACE_HEADER => v
                .to_str()
                .map(ToOwned::to_owned)
                .map_err(|_| bad(format!("header {name} is not text"))),
            Some(_) => Err(bad(format!(
                "header {name} is longer than {MAX_TRACE_HEADER} bytes"
            ))),
        }
    };
    let traceparent = trace_header(HEADER_TRACEPARENT)?;
    let tracestate = trace_header(HEADER_TRACESTATE)?;
    let subset = match req.headers().get(HEADER_SUBSET) {
        None => Default::default(),
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| bad(format!("header {HEADER_SUBSET} is not text")))?;
            parse_subset(text).map_err(|e| bad(format!("header {HEADER_SUBSET}: {e}")))?
        }
    };
    Ok(pb::TunnelHeader {
        version: TUNNEL_VERSION,
        service: Some(pb::ServiceRef {
            namespace: target.namespace,
            name: target.name,
        }),
        port: u32::from(target.port),
        source_zone: own_zone.to_owned(),
        target_zone: target_zone.to_owned(),
        trace: (!traceparent.is_empty() || !tracestate.is_empty()).then_some(pb::TraceContext {
            traceparent,
            tracestate,
        }),
        subset: subset.into_iter().collect(),
    })
}

/// A refusal as the CONNECT answer: the mapped status and the code and reason headers.
fn refuse(refusal: &Refusal, zone_label: &str, shared: &Shared) -> Response<Empty<Bytes>> {
    tracing::info!(zone = %zone_label, code = status_code_name(refusal.status), reason = %refusal.reason, "tunnel refused");
    shared.metrics.outcome(OUTBOUND, zone_label, refusal.status);
    refusal_response(refusal)
}

/// The CONNECT answer for a refusal (pure).
pub fn refusal_response(refusal: &Refusal) -> Response<Empty<Bytes>> {
    let mut answer = Response::new(Empty::new());
    *answer.status_mut() =
        StatusCode::from_u16(http_status(refusal.status)).unwrap_or(StatusCode::BAD_GATEWAY);
    answer.headers_mut().insert(
        HEADER_TUNNEL_STATUS,
        HeaderValue::from_static(status_code_name(refusal.status)),
    );
    // Reasons may carry text a header cannot (newlines, non-ASCII): keep what can be sent.
    let reason: String = refusal
        .reason
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&reason) {
        answer.headers_mut().insert(HEADER_TUNNEL_REASON, v);
    }
    answer
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_code_and_reason() {
        let r = refusal_response(&Refusal::new(
            TunnelStatus::ZoneUnreachable,
            "zone q is not federated\nreally",
        ));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[HEADER_TUNNEL_STATUS], "zone-unreachable");
        assert_eq!(
            r.headers()[HEADER_TUNNEL_REASON],
            "zone q is not federated?really"
        );
        let r = refusal_response(&Refusal::new(TunnelStatus::Denied, "é"));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn only_workloads() {
        let peer = |id: strait_trust::SpiffeId| PeerIdentity {
            id,
            issuer_zone: None,
        };
        let w = strait_trust::SpiffeId::workload("td", "demo", "echo").unwrap();
        assert!(workload_only(&peer(w)).is_ok());
        let g = strait_trust::SpiffeId::gateway("td", "a").unwrap();
        assert!(workload_only(&peer(g)).is_err());
    }
}
