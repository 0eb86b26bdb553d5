//! How a request the inbound side accepted reaches the app: the protocol spoken to it, and the
//! request as the app gets it.
//!
//! | the caller's request | to the app |
//! |---|---|
//! | HTTP/1.1 | HTTP/1.1 on a pooled connection ([`AppPool`]) |
//! | HTTP/2 (the client sidecar says so with `x-strait-app-protocol: h2`; a plaintext caller by speaking it) | HTTP/2, prior knowledge, on the app's one connection ([`AppH2`]) |
//! | gRPC (`content-type: application/grpc…`), or any request to a port declared `grpc` or `http2` | HTTP/2 likewise |
//! | HTTP/1.1 `Upgrade` (WebSocket, …) | HTTP/1.1 on a connection of its own; after the app's `101` both connections become one byte pipe, closed after the idle timeout |
//!
//! HTTP/2 keeps trailers, `te: trailers` and streaming both ways; a reset from the app
//! (`RST_STREAM`) reaches the caller with its reason, as hyper maps it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use strait_proto as pb;
use tokio::net::TcpStream;

use crate::app_h2::AppH2;
use crate::app_pool::{AppError, AppPool};
use crate::headers::{self as names, strip_hop_by_hop};
use crate::limits::idle::{self, PipeEnd};

/// The response body the inbound side streams back.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Set by a client sidecar on a request its app sent over HTTP/2, so that the app behind the
/// server sidecar gets HTTP/2 too (the sidecars speak HTTP/2 between them whatever the apps
/// speak). Removed before the app on the HTTP/2 path it selects; a sidecar never sends it
/// otherwise (a plaintext caller's own is ignored, and passed on like any header).
pub const APP_PROTOCOL_HEADER: &str = "x-strait-app-protocol";
pub(crate) const APP_PROTOCOL: HeaderName = HeaderName::from_static(APP_PROTOCOL_HEADER);
/// [`APP_PROTOCOL_HEADER`]'s value for HTTP/2.
pub(crate) const H2: HeaderValue = HeaderValue::from_static("h2");

/// How long connecting to the local app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled HTTP/1.1 connections idle longer than this are closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many idle HTTP/1.1 connections are kept (more are opened under bursts and
/// closed).
const POOL_MAX_IDLE: usize = 64;

/// The protocol a request goes to the app in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppProtocol {
    Http1,
    Http2,
    /// HTTP/1.1 with `Upgrade`: a byte pipe after the `101`.
    Upgrade,
}

/// Which protocol a request with `version` and `headers` (a gRPC call when `grpc`) goes to the
/// app in. `plaintext`: the
/// caller is not a sidecar (PERMISSIVE), so its own HTTP version is the app's; `declared`: the
/// protocol of the app's port (`appProtocol`, or `--app-protocol` in universal mode).
pub(crate) fn app_protocol(
    version: Version,
    headers: &HeaderMap,
    grpc: bool,
    plaintext: bool,
    declared: pb::Protocol,
) -> AppProtocol {
    if version == Version::HTTP_11 && is_upgrade(headers) {
        return AppProtocol::Upgrade;
    }
    let h2 = matches!(declared, pb::Protocol::Http2 | pb::Protocol::Grpc)
        || grpc
        || if plaintext {
            version == Version::HTTP_2
        } else {
            headers.get(APP_PROTOCOL) == Some(&H2)
        };
    if h2 {
        AppProtocol::Http2
    } else {
        AppProtocol::Http1
    }
}

/// An HTTP/1.1 request asking to switch protocols: `Connection: upgrade` and an `Upgrade`.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Why a request did not get an answer from the app.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The request cannot be made into one for the app.
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    App(#[from] AppError),
}

/// The app this sidecar fronts.
pub(crate) struct App {
    pub(crate) addr: SocketAddr,
    /// `addr` as an authority, made once (`None` if it cannot be one, which every request
    /// then reports).
    authority: Option<Authority>,
    h1: Arc<AppPool<Incoming>>,
    h2: AppH2<Incoming>,
}

impl App {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            authority: Authority::try_from(addr.to_string()).ok(),
            h1: AppPool::new(addr, CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE),
            h2: AppH2::new(addr, CONNECT_TIMEOUT),
        }
    }

    /// Sends `request` to the app in `protocol` with the caller's verified `identity` (`None`:
    /// plaintext) and returns its response; an upgraded connection then pipes bytes until both
    /// ends close or nothing moved for `idle_timeout`.
    pub(crate) async fn forward(
        &self,
        request: Request<Incoming>,
        identity: Option<&Result<HeaderValue, String>>,
        protocol: AppProtocol,
        idle_timeout: Duration,
    ) -> Result<Response<Body>, ForwardError> {
        let app = self.authority.as_ref().ok_or_else(|| {
            ForwardError::BadRequest(
                "cannot build the app URI: the app's address is no authority".into(),
            )
        })?;
        match protocol {
            AppProtocol::Http1 => {
                let request = app_request(request, app, identity, false)?;
                let response = self.h1.send(request).await?;
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            AppProtocol::Http2 => {
                let request = h2_request(request, app, identity)?;
                let response = self.h2.send(request).await?;
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            // Boxed: the rare upgrade's state would otherwise enlarge every request's future
            // (moved several times per request).
            AppProtocol::Upgrade => {
                Box::pin(self.upgrade(request, app, identity, idle_timeout)).await
            }
        }
    }

    async fn upgrade(
        &self,
        mut request: Request<Incoming>,
        app: &Authority,
        identity: Option<&Result<HeaderValue, String>>,
        idle_timeout: Duration,
    ) -> Result<Response<Body>, ForwardError> {
        let downstream = hyper::upgrade::on(&mut request);
        let request = app_request(request, app, identity, true)?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| AppError::Connect(format!("timed out after {CONNECT_TIMEOUT:?}")))?
            .map_err(|err| AppError::Connect(err.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|err| AppError::Connect(err.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%err, "upgrade connection to the app ended with an error");
            }
        });
        let mut response = sender
            .send_request(request)
            .await
            .map_err(AppError::Request)?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            return Ok(Response::from_parts(parts, body.boxed()));
        }
        let upstream = hyper::upgrade::on(&mut response);
        splice_upgraded(downstream, upstream, idle_timeout, ());
        let (mut parts, _) = response.into_parts();
        keep_upgrade_headers(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::default()))
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("addr", &self.addr).finish()
    }
}

/// Once both ends of an upgrade have switched (`downstream`, the caller's connection;
/// `upstream`, the connection that answered `101`), copies bytes both ways until both close or
/// nothing moved for `idle_timeout`, in a task of its own that holds `holding` (e.g. a place
/// in `maxConnections`) until then.
pub(crate) fn splice_upgraded<H: Send + 'static>(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    idle_timeout: Duration,
    holding: H,
) {
    tokio::spawn(async move {
        let _holding = holding;
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(%err, "an upgrade did not complete");
                return;
            }
        };
        match idle::pipe(
            TokioIo::new(downstream),
            TokioIo::new(upstream),
            idle_timeout,
        )
        .await
        {
            PipeEnd::Done(up, down) => tracing::debug!(up, down, "upgraded connection finished"),
            PipeEnd::Error(err) => tracing::debug!(%err, "upgraded connection ended with an error"),
            PipeEnd::Idle => tracing::debug!("upgraded connection closed: idle"),
        }
    });
}

/// Strips the hop-by-hop headers of an upgrade request or `101` but the two the upgrade is:
/// `Upgrade` and `Connection: upgrade`.
pub(crate) fn keep_upgrade_headers(headers: &mut HeaderMap) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The request as the app gets it over HTTP/1.1: origin-form `/path?query`, hop-by-hop headers
/// removed (but an upgrade's, with `upgrade`), the caller's verified identity in
/// `x-strait-peer-identity` (whatever the caller sent there is dropped; a plaintext caller,
/// `None`, gets no header at all), `Host` kept, or taken from an HTTP/2 `:authority`, or else
/// the app's address.
fn app_request(
    request: Request<Incoming>,
    app: &Authority,
    identity: Option<&Result<HeaderValue, String>>,
    upgrade: bool,
) -> Result<Request<Incoming>, ForwardError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().cloned();
    parts.uri = Uri::from(names::path_and_query(&parts.uri));
    parts.version = Version::HTTP_11;
    if upgrade {
        keep_upgrade_headers(&mut parts.headers);
    } else {
        strip_hop_by_hop(&mut parts.headers);
    }
    if !parts.headers.contains_key(header::HOST) {
        let host = authority.as_ref().unwrap_or(app);
        if let Ok(value) = HeaderValue::from_str(host.as_str()) {
            parts.headers.insert(header::HOST, value);
        }
    }
    set_identity(&mut parts.headers, identity)?;
    Ok(Request::from_parts(parts, body))
}

/// The request as the app gets it over HTTP/2: absolute `http://AUTHORITY/path?query`, the
/// authority the caller's (`:authority`, or `Host`), else the app's; no `Host`; hop-by-hop
/// headers removed but `te: trailers`; identity as for HTTP/1.1.
fn h2_request(
    request: Request<Incoming>,
    app: &Authority,
    identity: Option<&Result<HeaderValue, String>>,
) -> Result<Request<Incoming>, ForwardError> {
    let (mut parts, body) = request.into_parts();
    let host = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let authority = parts
        .uri
        .authority()
        .cloned()
        .or(host)
        .unwrap_or_else(|| app.clone());
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(names::path_and_query(&parts.uri))
        .build()
        .map_err(|e| ForwardError::BadRequest(format!("the request's URI for the app: {e}")))?;
    parts.version = Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(APP_PROTOCOL);
    set_identity(&mut parts.headers, identity)?;
    Ok(Request::from_parts(parts, body))
}

fn set_identity(
    headers: &mut HeaderMap,
    identity: Option<&Result<HeaderValue, String>>,
) -> Result<(), ForwardError> {
    match identity {
        Some(identity) => {
            // `insert` replaces every value the caller may have sent.
            let value = identity.clone().map_err(ForwardError::BadRequest)?;
            headers.insert(names::PEER_IDENTITY, value);
        }
        None => {
            headers.remove(names::PEER_IDENTITY);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn the_app_gets_the_protocol_its_caller_or_its_port_asks_for() {
        let app_protocol = |v, h: &HeaderMap, plaintext, declared| {
            super::app_protocol(v, h, crate::grpc::is_grpc(h), plaintext, declared)
        };
        use AppProtocol::{Http1, Http2, Upgrade};
        use pb::Protocol::{Grpc, Http, Http2 as DeclaredH2, Tcp};
        let v1 = Version::HTTP_11;
        let v2 = Version::HTTP_2;
        let none = HeaderMap::new();
        let marked = h(&[("x-strait-app-protocol", "h2")]);
        let grpc = h(&[("content-type", "application/grpc")]);
        let ws = h(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        // From a sidecar (always HTTP/2 between sidecars): its marker decides.
        assert_eq!(app_protocol(v2, &none, false, Http), Http1);
        assert_eq!(app_protocol(v2, &marked, false, Http), Http2);
        // A plaintext caller: its own version.
        assert_eq!(app_protocol(v2, &none, true, Http), Http2);
        assert_eq!(app_protocol(v1, &marked, true, Http), Http1);
        // gRPC, or a port declared HTTP/2 or gRPC: HTTP/2 whatever the caller spoke.
        assert_eq!(app_protocol(v2, &grpc, false, Http), Http2);
        assert_eq!(app_protocol(v1, &none, false, DeclaredH2), Http2);
        assert_eq!(app_protocol(v1, &none, true, Grpc), Http2);
        assert_eq!(app_protocol(v1, &none, false, Tcp), Http1);
        // An upgrade is HTTP/1.1 only.
        assert_eq!(app_protocol(v1, &ws, false, Http), Upgrade);
        assert_eq!(app_protocol(v2, &ws, false, Http), Http1);
        assert!(
            !is_upgrade(&h(&[("upgrade", "websocket")])),
            "needs Connection: upgrade"
        );
    }

    #[test]
    fn upgrade_headers_survive_and_other_hop_by_hop_go() {
        let mut headers = h(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("keep-alive", "5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        keep_upgrade_headers(&mut headers);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(headers.contains_key("sec-websocket-key"));
        assert!(!headers.contains_key("x-hop"));
        assert!(!headers.contains_key("keep-alive"));
    }
}
