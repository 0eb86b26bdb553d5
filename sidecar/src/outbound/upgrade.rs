//! HTTP/1.1 `Upgrade` on the outbound side (WebSocket, and any other protocol switched to
//! after an HTTP/1.1 handshake).
//!
//! An upgrade cannot ride the pooled HTTP/2 connections between sidecars (HTTP/2 has no
//! `Upgrade`), so it gets a connection of its own, as TCP does: a target picked by the
//! balancer, mutual TLS with ALPN `http/1.1` (through a tunnel of its own for another zone),
//! connect failures retried on another target. The request goes out as HTTP/1.1 with its
//! `Upgrade` and `Connection: upgrade`; the destination sidecar forwards it to its app the
//! same way. When the app answers `101`, the app's connection here and the upstream one become
//! one byte pipe, closed after the service's `Timeout.idle` without a byte either way; any
//! other answer is an ordinary response. The connection holds a place in `maxConnections`
//! for its life, as a TCP connection does.
//!
//! An HTTP/2 extended CONNECT from the app (RFC 8441: `:protocol websocket`, WebSocket over one
//! HTTP/2 stream) goes the same way, as the HTTP/1.1 handshake every WebSocket server speaks:
//! `GET` with `Upgrade: websocket` and a `Sec-WebSocket-Key` of the sidecar's making, whose
//! `Sec-WebSocket-Accept` it checks. The app gets `200` and its stream becomes the pipe, as
//! Envoy converts between the two.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::Shared;
use super::http::error_response;
use super::metrics::{NONE, ZoneLabel, zone_label};
use super::services::{Destination, ServiceState};
use super::tcp::{self, NotConnected};
use crate::headers::{self as names, ALPN_HTTP1};
use crate::limits::breaker::Overflow;
use crate::pool::Body;
use crate::to_app::{keep_upgrade_headers, splice_upgraded};

/// The protocol an HTTP/2 extended CONNECT (RFC 8441) of the app opens, if it is one.
pub(super) fn extended_connect<B>(request: &Request<B>) -> Option<&str> {
    if request.method() != Method::CONNECT {
        return None;
    }
    request
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(hyper::ext::Protocol::as_str)
}

/// Forwards the upgrade `request` of the app to `destination`; the `101` (or whatever the
/// destination answered) and the zone that answered.
pub(super) async fn forward(
    shared: &Shared,
    service: &ServiceState,
    destination: &Destination,
    mut request: Request<Incoming>,
    zone: Option<HeaderValue>,
) -> (Response<Body>, ZoneLabel) {
    // An extended CONNECT's protocol becomes an `Upgrade` header: checked before any
    // connection is made.
    let extended = match extended_connect(&request).map(HeaderValue::from_str) {
        None => None,
        Some(Ok(protocol)) => Some(protocol),
        Some(Err(_)) => {
            return (error_response(StatusCode::BAD_REQUEST, "bad-request"), NONE);
        }
    };
    let policy = service.policy_for(destination.port);
    let metrics = &shared.ctx.metrics;
    let over = |limit: Overflow| {
        metrics
            .overflows
            .with_label_values(&[service.name.as_str(), limit.label()])
            .inc();
        (
            error_response(StatusCode::SERVICE_UNAVAILABLE, "overflow"),
            NONE,
        )
    };
    let Some(pending) = service.pending.acquire(policy.max_pending) else {
        return over(Overflow::Pending);
    };
    let Some(connection) = service.connections.acquire_owned(policy.max_connections) else {
        return over(Overflow::Connections);
    };
    let downstream = hyper::upgrade::on(&mut request);
    let (upstream, target) =
        match tcp::connect(shared, service, &policy, destination, ALPN_HTTP1).await {
            Ok(connected) => connected,
            Err(NotConnected::NoHealthyUpstream | NotConnected::Failed) => {
                return (
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "no-healthy-upstream"),
                    NONE,
                );
            }
        };
    drop(pending);
    let zone_answered = zone_label(&target.key());
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(handshake) => handshake,
            Err(err) => {
                tracing::debug!(%err, "upgrade: HTTP/1.1 handshake upstream failed");
                return (
                    error_response(StatusCode::BAD_GATEWAY, "upstream-reset"),
                    zone_answered,
                );
            }
        };
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "upgrade connection upstream ended with an error");
        }
    });
    let (mut parts, body) = request.into_parts();
    let converted = extended.is_some();
    let (body, websocket_key) = match extended {
        // The stream itself is the pipe: the handshake has no body.
        Some(protocol) => (Body::default(), as_http1_upgrade(&mut parts, protocol)),
        None => (body.map_err(Into::into).boxed(), None),
    };
    parts.uri = Uri::from(names::path_and_query(&parts.uri));
    keep_upgrade_headers(&mut parts.headers);
    parts.headers.remove(names::PEER_IDENTITY);
    if let Some(zone) = zone {
        parts.headers.insert(names::ZONE, zone);
    }
    let mut response = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(%err, "upgrade: no answer upstream");
            return (
                error_response(StatusCode::BAD_GATEWAY, "upstream-reset"),
                zone_answered,
            );
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        return (
            Response::from_parts(parts, body.map_err(Into::into).boxed()),
            zone_answered,
        );
    }
    if let Some(key) = &websocket_key
        && !accepts(response.headers(), key)
    {
        tracing::debug!("extended CONNECT: the upstream's Sec-WebSocket-Accept does not match");
        return (
            error_response(StatusCode::BAD_GATEWAY, "upstream-bad-handshake"),
            zone_answered,
        );
    }
    let upstream = hyper::upgrade::on(&mut response);
    // The upstream connection keeps its place in `maxConnections` while the pipe lasts.
    splice_upgraded(downstream, upstream, policy.idle_timeout, connection);
    let (mut parts, _) = response.into_parts();
    if converted {
        // RFC 8441: a 2xx opens the stream; the HTTP/1.1 handshake's own headers stay here.
        parts.status = StatusCode::OK;
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    } else {
        keep_upgrade_headers(&mut parts.headers);
    }
    (Response::from_parts(parts, Body::default()), zone_answered)
}

/// Makes an extended CONNECT opening `protocol` into the HTTP/1.1 handshake for it (RFC 8441
/// section 5 and RFC 6455); the `Sec-WebSocket-Key` it sent, for a WebSocket.
fn as_http1_upgrade(parts: &mut Parts, protocol: HeaderValue) -> Option<String> {
    parts.method = Method::GET;
    parts.version = Version::HTTP_11;
    parts.extensions.remove::<hyper::ext::Protocol>();
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
    parts.headers.insert(header::UPGRADE, protocol);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if !websocket {
        return None;
    }
    // Base64: always a valid header value.
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let value = HeaderValue::from_str(&key).ok()?;
    parts.headers.insert(header::SEC_WEBSOCKET_KEY, value);
    Some(key)
}

/// Whether a `101` with `headers` accepts the WebSocket handshake that sent `key`.
fn accepts(headers: &http::HeaderMap, key: &str) -> bool {
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(HeaderValue::as_bytes)
        == Some(expected.as_bytes())
}
