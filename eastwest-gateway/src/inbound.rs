//! Tunnels from other zones' gateways: accept QUIC connections from allowed peers, one stream
//! per tunnel, read and check its header, connect to a healthy endpoint of the service, answer,
//! and pipe bytes between the stream and the endpoint (the destination sidecar's inbound mTLS
//! port: the bytes are the two sidecars' TLS, which this gateway never terminates).
//!
//! A bad stream (slow, oversized, undecodable or unsupported header) is answered and ended on
//! its own; the connection and its other streams are untouched.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use strait_proto as pb;
use strait_proto::TunnelStatus;
use strait_proto::tunnel::{FrameError, encode_frame, read_frame, response, status_code_name};
use strait_trust::IdentityKind;
use strait_trust::tls::{PeerRole, authorize_fn};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::gateway::Shared;
use crate::metrics::INBOUND;
use crate::quic;
use crate::select;
use crate::state::Refusal;

/// How long a peer may take to send a stream's header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one endpoint may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a full handshake may take on the server side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC close code for a peer that is (no longer) allowed.
pub const CLOSE_DENIED: u32 = 0x10;
/// Stream error code sent with STOP_SENDING after a refused header.
const STREAM_REFUSED: u32 = 1;

/// Accepts peer gateways on `endpoint` until `shutdown`.
pub(crate) async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>, shutdown: impl Future) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            _ = &mut shutdown => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let remote = incoming.remote_address();
        let shared = shared.clone();
        tokio::spawn(
            async move {
                if let Err(reason) = connection(incoming, shared).await {
                    tracing::info!(%reason, "peer gateway connection refused or failed");
                }
            }
            .instrument(tracing::info_span!("peer", %remote)),
        );
    }
}

async fn connection(incoming: quinn::Incoming, shared: Arc<Shared>) -> Result<(), String> {
    let handshakes = &shared.metrics.handshakes;
    let connecting = incoming.accept().map_err(|e| e.to_string())?;
    // 0.5-RTT: a resumed client's certificate is known from its first flight, so its early
    // streams can be served before the handshake completes. Otherwise wait for it.
    let (conn, established) = match connecting.into_0rtt() {
        Ok(pair) => pair,
        Err(connecting) => {
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                .await
                .map_err(|_| "handshake timed out".to_owned())?
                .map_err(|e| {
                    handshakes.with_label_values(&["server", "error"]).inc();
                    e.to_string()
                })?;
            handshakes.with_label_values(&["server", "ok"]).inc();
            return serve_connection(conn, shared).await;
        }
    };
    if quic::peer_chain(&conn).is_none() {
        let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, established).await;
        if done.is_err() || conn.close_reason().is_some() {
            handshakes.with_label_values(&["server", "error"]).inc();
            return Err(conn.close_reason().map_or_else(
                || "handshake timed out".to_owned(),
                |r| format!("handshake failed: {r}"),
            ));
        }
    } else {
        tokio::spawn(async move {
            established.await;
        });
    }
    handshakes.with_label_values(&["server", "ok"]).inc();
    serve_connection(conn, shared).await
}

/// Checks who the peer is, now, and serves its streams until it goes or is denied.
async fn serve_connection(conn: Connection, shared: Arc<Shared>) -> Result<(), String> {
    let zone = match authorize_peer(&conn, &shared) {
        Ok(zone) => zone,
        Err(reason) => {
            conn.close(VarInt::from_u32(CLOSE_DENIED), reason.as_bytes());
            return Err(reason);
        }
    };
    tracing::info!(%zone, "peer gateway connected");
    let id = conn.stable_id();
    shared
        .inbound
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, (zone.clone(), conn.clone()));
    shared.metrics.inbound_connections.inc();
    let result = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let zone = zone.clone();
                tokio::spawn(
                    async move { stream(send, recv, &zone, &shared).await }
                        .instrument(tracing::debug_span!("tunnel")),
                );
            }
            Err(err) => break err,
        }
    };
    shared
        .inbound
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    shared.metrics.inbound_connections.dec();
    tracing::info!(%zone, reason = %result, "peer gateway disconnected");
    Ok(())
}

/// The peer's zone if its certificate verifies now and its zone may connect now.
fn authorize_peer(conn: &Connection, shared: &Shared) -> Result<String, String> {
    let chain = quic::peer_chain(conn).ok_or("the peer presented no certificate")?;
    let view = shared.view.clone();
    let id = quic::reverify_peer(
        &chain,
        &shared.trust,
        PeerRole::Client,
        &authorize_fn(move |peer: &strait_trust::PeerIdentity| peer_allowed(&view, peer)),
    )?;
    match id.kind() {
        IdentityKind::Gateway { zone } => Ok(zone.to_owned()),
        _ => Err(format!("{id} is not a gateway")),
    }
}

/// The rule for peers: a gateway (`zone/X/gateway`) of a federated zone not on the deny list.
pub fn peer_allowed(
    view: &tokio::sync::watch::Receiver<Arc<crate::state::ConfigView>>,
    peer: &strait_trust::PeerIdentity,
) -> Result<(), String> {
    match peer.id.kind() {
        IdentityKind::Gateway { zone } => view.borrow().peer_allowed(zone),
        _ => Err(format!(
            "{} is not a gateway: only zone/ZONE/gateway identities may connect",
            peer.id
        )),
    }
}

/// Closes the connections of peers whose zone is no longer allowed (a config change).
pub(crate) fn enforce(shared: &Shared) {
    let view = shared.view.borrow().clone();
    let conns = shared
        .inbound
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (zone, conn) in conns.values() {
        if let Err(reason) = view.peer_allowed(zone) {
            tracing::warn!(%zone, %reason, "closing the connection of a peer gateway that is no longer allowed");
            conn.close(VarInt::from_u32(CLOSE_DENIED), reason.as_bytes());
        }
    }
}

async fn stream(mut send: SendStream, mut recv: RecvStream, peer_zone: &str, shared: &Shared) {
    let header =
        match tokio::time::timeout(HEADER_TIMEOUT, read_frame::<pb::TunnelHeader, _>(&mut recv))
            .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(err)) => {
                let status = match err {
                    FrameError::Io(_) | FrameError::Truncated => None,
                    _ => Some(TunnelStatus::BadHeader),
                };
                let reason = format!("bad tunnel header: {err}");
                tracing::info!(%peer_zone, %reason, "tunnel refused");
                if let Some(status) = status {
                    refuse(
                        &mut send,
                        &mut recv,
                        &Refusal::new(status, reason),
                        peer_zone,
                        shared,
                    )
                    .await;
                } else {
                    let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
                }
                return;
            }
            Err(_) => {
                let refusal = Refusal::new(
                    TunnelStatus::BadHeader,
                    format!("no tunnel header within {HEADER_TIMEOUT:?}"),
                );
                refuse(&mut send, &mut recv, &refusal, peer_zone, shared).await;
                return;
            }
        };
    let view = shared.view.borrow().clone();
    if !header.source_zone.is_empty() && header.source_zone != peer_zone {
        let refusal = Refusal::new(
            TunnelStatus::BadHeader,
            format!(
                "source zone {:?} is not the peer's zone {peer_zone:?}",
                header.source_zone
            ),
        );
        refuse(&mut send, &mut recv, &refusal, peer_zone, shared).await;
        return;
    }
    let service = match view.route_inbound(&header) {
        Ok(service) => service,
        Err(refusal) => {
            refuse(&mut send, &mut recv, &refusal, peer_zone, shared).await;
            return;
        }
    };
    let name = header
        .service
        .as_ref()
        .map(|s| format!("{}.{}:{}", s.name, s.namespace, header.port))
        .unwrap_or_default();
    let Some((tcp, endpoint)) = connect_endpoint(&service.endpoints, shared).await else {
        let refusal = Refusal::new(
            TunnelStatus::NoHealthyUpstream,
            format!(
                "no endpoint of {name} in zone {:?} accepted a connection",
                shared.zone
            ),
        );
        refuse(&mut send, &mut recv, &refusal, peer_zone, shared).await;
        return;
    };
    let ok = response(
        TunnelStatus::Ok,
        "",
        shared.zone.clone(),
        endpoint.instance.clone(),
    );
    let Ok(frame) = encode_frame(&ok) else { return };
    if send.write_all(&frame).await.is_err() {
        return;
    }
    shared.metrics.outcome(INBOUND, peer_zone, TunnelStatus::Ok);
    let _active = shared.metrics.active(INBOUND, peer_zone);
    let _load = LoadGuard::new(shared, &endpoint.address);
    tracing::debug!(%peer_zone, service = %name, endpoint = %endpoint.address, trace = ?header.trace, "tunnel open");
    let mut quic = tokio::io::join(recv, send);
    let mut tcp = tcp;
    match tokio::io::copy_bidirectional(&mut quic, &mut tcp).await {
        Ok((to_destination, to_source)) => {
            shared.metrics.add_bytes(INBOUND, to_destination, to_source);
            tracing::debug!(to_destination, to_source, "tunnel closed");
        }
        Err(err) => tracing::debug!(%err, "tunnel ended with an error"),
    }
}

/// Answers a refused stream and ends it: the response, FIN, and STOP_SENDING for whatever the
/// peer still sends. Only this stream is affected.
async fn refuse(
    send: &mut SendStream,
    recv: &mut RecvStream,
    refusal: &Refusal,
    peer_zone: &str,
    shared: &Shared,
) {
    tracing::info!(%peer_zone, code = status_code_name(refusal.status), reason = %refusal.reason, "tunnel refused");
    shared.metrics.outcome(INBOUND, peer_zone, refusal.status);
    let answer = response(
        refusal.status,
        refusal.reason.clone(),
        shared.zone.clone(),
        "",
    );
    if let Ok(frame) = encode_frame(&answer) {
        let _ = send.write_all(&frame).await;
    }
    let _ = send.finish();
    let _ = recv.stop(VarInt::from_u32(STREAM_REFUSED));
}

/// Connects to a healthy endpoint, least loaded first, trying the others on failure.
async fn connect_endpoint(
    endpoints: &[pb::Endpoint],
    shared: &Shared,
) -> Option<(TcpStream, pb::Endpoint)> {
    let mut tried = HashSet::new();
    loop {
        let endpoint = {
            let load = shared
                .endpoint_load
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            select::pick_endpoint(endpoints, &load, &tried, &mut rand::rng())?.clone()
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&endpoint.address)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Some((tcp, endpoint));
            }
            Ok(Err(err)) => {
                tracing::info!(endpoint = %endpoint.address, %err, "endpoint refused the connection; trying another");
            }
            Err(_) => {
                tracing::info!(endpoint = %endpoint.address, "endpoint did not accept within {CONNECT_TIMEOUT:?}; trying another");
            }
        }
        tried.insert(endpoint.address);
    }
}

/// Counts a tunnel on an endpoint while alive (least-active choice).
struct LoadGuard<'a> {
    shared: &'a Shared,
    address: String,
}

impl<'a> LoadGuard<'a> {
    fn new(shared: &'a Shared, address: &str) -> Self {
        *shared
            .endpoint_load
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(address.to_owned())
            .or_insert(0) += 1;
        Self {
            shared,
            address: address.to_owned(),
        }
    }
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        let mut load = self
            .shared
            .endpoint_load
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = load.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                load.remove(&self.address);
            }
        }
    }
}
