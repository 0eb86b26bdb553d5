//! The demo WebSocket app (`strait demo-app --protocol websocket`): an echo over WebSocket that
//! says who it is, and the client side of one round trip (`strait demo`, tests).
//!
//! - `GET /` with `Upgrade: websocket` → `101 Switching Protocols` carrying
//!   `x-strait-zone` and `x-strait-instance`; the first message is a text frame with JSON
//!   `{"service", "zone", "instance", "peer_identity"}`; then every text or binary message
//!   comes back unchanged until the client closes.
//! - `GET /ready`, `GET /healthz` → `200 ok` (what `strait up` polls).
//! - anything else → `426 Upgrade Required`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::inbound::PEER_IDENTITY_HEADER;

/// Response header of the upgrade naming the zone that answered.
pub const ZONE_HEADER: &str = "x-strait-zone";
/// Response header of the upgrade naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-strait-instance";

/// Who the app says it is.
#[derive(Debug, Clone)]
struct Whoami {
    service: String,
    zone: String,
    instance: String,
}

/// Why a request is not a WebSocket handshake this app accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a GET")]
    NotGet,
    #[error("no `Upgrade: websocket`")]
    NoUpgrade,
    #[error("no `Connection: upgrade`")]
    NoConnectionUpgrade,
    #[error("`Sec-WebSocket-Version` is not 13")]
    Version,
    #[error("no `Sec-WebSocket-Key`")]
    NoKey,
}

fn header_has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks an HTTP/1.1 WebSocket handshake (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value of its answer.
pub fn accept_key(method: &Method, headers: &HeaderMap) -> Result<String, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if !header_has_token(headers, UPGRADE, "websocket") {
        return Err(HandshakeError::NoUpgrade);
    }
    if !header_has_token(headers, CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HandshakeError::Version);
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::NoKey)?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// The first message of a connection: who answered and who called.
fn hello(me: &Whoami, peer_identity: Option<&str>) -> String {
    serde_json::json!({
        "service": me.service,
        "zone": me.zone,
        "instance": me.instance,
        "peer_identity": peer_identity,
    })
    .to_string()
}

/// Serves the WebSocket echo on `listener` until `shutdown` completes (open connections are
/// then closed).
pub async fn run_demo_ws(
    listener: TcpListener,
    service: String,
    zone: String,
    instance: String,
    shutdown: impl Future,
) {
    let me = Arc::new(Whoami {
        service,
        zone,
        instance,
    });
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(listen = ?listener.local_addr().ok(), service = %me.service, zone = %me.zone, instance = %me.instance, "demo WebSocket app serving");
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let me = me.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                            std::future::ready(Ok::<_, Infallible>(respond(&me, request)))
                        });
                        let connection = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30))
                            .serve_connection(TokioIo::new(tcp), service)
                            .with_upgrades();
                        if let Err(err) = connection.await {
                            tracing::debug!(%peer, %err, "demo WebSocket connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "demo WebSocket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

fn respond(me: &Arc<Whoami>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/ready" || path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let key = match accept_key(request.method(), request.headers()) {
        Ok(key) => key,
        Err(err) => {
            let mut response = text(
                StatusCode::UPGRADE_REQUIRED,
                &format!("a WebSocket echo: {err}\n"),
            );
            response
                .headers_mut()
                .insert(UPGRADE, HeaderValue::from_static("websocket"));
            return response;
        }
    };
    let peer_identity = request
        .headers()
        .get(PEER_IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let first = hello(me, peer_identity.as_deref());
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    for (name, value) in [(ZONE_HEADER, &me.zone), (INSTANCE_HEADER, &me.instance)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                if let Err(err) = echo(ws, first).await {
                    tracing::debug!(%err, "demo WebSocket session ended with an error");
                }
            }
            Err(err) => tracing::debug!(%err, "demo WebSocket upgrade failed"),
        }
    });
    response
}

/// Sends `first`, then echoes text and binary messages until the peer closes.
async fn echo<S>(
    mut ws: WebSocketStream<S>,
    first: String,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(first)).await?;
    while let Some(message) = ws.next().await {
        match message? {
            m @ (Message::Text(_) | Message::Binary(_)) => ws.send(m).await?,
            // Pings are answered by tungstenite itself; a close is answered and ends the loop.
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What one WebSocket round trip saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundTrip {
    /// The zone and instance of the upgrade's answer headers.
    pub zone: Option<String>,
    pub instance: Option<String>,
    /// The app's first message (JSON naming who answered and who called).
    pub hello: serde_json::Value,
    /// The message sent, echoed back unchanged.
    pub echoed: String,
}

/// A WebSocket round trip failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The handshake failed: a status other than 101 (the sidecar's 426 while it cannot
    /// upgrade outbound), or a bad answer.
    #[error("upgrade refused: {0}")]
    Handshake(String),
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("the first message is not the app's JSON hello: {0:?}")]
    NoHello(String),
    #[error("sent {sent:?}, got back {got:?}")]
    Mismatch { sent: String, got: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Connects to `addr` (an app, or a VIP through a sidecar), upgrades `GET /` to WebSocket,
/// reads the app's hello and checks that `message` comes back unchanged; all within `timeout`.
pub async fn round_trip(
    addr: SocketAddr,
    message: &str,
    timeout: Duration,
) -> Result<RoundTrip, RoundTripError> {
    tokio::time::timeout(timeout, round_trip_inner(addr, message))
        .await
        .unwrap_or(Err(RoundTripError::Timeout(timeout)))
}

async fn round_trip_inner(addr: SocketAddr, message: &str) -> Result<RoundTrip, RoundTripError> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| RoundTripError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .map_err(|err| match err {
            WsError::Http(response) => {
                let status = response.status();
                let reason = response
                    .headers()
                    .get("x-strait-error")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                RoundTripError::Handshake(format!("{status} {reason}").trim().to_owned())
            }
            other => RoundTripError::Handshake(other.to_string()),
        })?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let ws_err = |e: WsError| RoundTripError::WebSocket(e.to_string());
    let first = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        Some(Ok(other)) => return Err(RoundTripError::NoHello(format!("{other:?}"))),
        Some(Err(e)) => return Err(ws_err(e)),
        None => return Err(RoundTripError::NoHello("the connection closed".into())),
    };
    let hello: serde_json::Value =
        serde_json::from_str(&first).map_err(|_| RoundTripError::NoHello(first.clone()))?;
    ws.send(Message::text(message.to_owned()))
        .await
        .map_err(ws_err)?;
    let echoed = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => break t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                return Err(RoundTripError::Mismatch {
                    sent: message.to_owned(),
                    got: format!("{other:?}"),
                });
            }
            Some(Err(e)) => return Err(ws_err(e)),
            None => return Err(RoundTripError::WebSocket("closed before the echo".into())),
        }
    };
    if echoed != message {
        return Err(RoundTripError::Mismatch {
            sent: message.to_owned(),
            got: echoed,
        });
    }
    let _ = ws.close(None).await;
    Ok(RoundTrip {
        zone: header(ZONE_HEADER),
        instance: header(INSTANCE_HEADER),
        hello,
        echoed,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn handshake() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn the_rfc_handshake_is_accepted_and_others_say_why_not() {
        // RFC 6455 §1.3's example key and answer.
        assert_eq!(
            accept_key(&Method::GET, &handshake()).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            accept_key(&Method::POST, &handshake()),
            Err(HandshakeError::NotGet)
        );
        let mut h = handshake();
        h.remove(UPGRADE);
        assert_eq!(accept_key(&Method::GET, &h), Err(HandshakeError::NoUpgrade));
        let mut h = handshake();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(
            accept_key(&Method::GET, &h),
            Err(HandshakeError::NoConnectionUpgrade)
        );
        let mut h = handshake();
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(accept_key(&Method::GET, &h), Err(HandshakeError::Version));
        let mut h = handshake();
        h.remove(SEC_WEBSOCKET_KEY);
        assert_eq!(accept_key(&Method::GET, &h), Err(HandshakeError::NoKey));
    }

    #[test]
    fn the_hello_names_the_instance_and_the_caller() {
        let me = Whoami {
            service: "wsecho".into(),
            zone: "c".into(),
            instance: "wsecho-c".into(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&hello(&me, Some("spiffe://strait.local/ns/demo/sa/client")))
                .unwrap();
        assert_eq!(json["service"], "wsecho");
        assert_eq!(json["zone"], "c");
        assert_eq!(json["instance"], "wsecho-c");
        assert_eq!(
            json["peer_identity"],
            "spiffe://strait.local/ns/demo/sa/client"
        );
    }

    /// The app on loopback: a round trip echoes, the answer names the instance; a plain GET
    /// is refused with 426, which the client reports as a failed upgrade.
    #[tokio::test]
    async fn a_round_trip_echoes_and_a_refused_upgrade_is_a_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run_demo_ws(
            listener,
            "wsecho".into(),
            "a".into(),
            "wsecho-a".into(),
            stopped,
        ));
        let trip = round_trip(addr, "ping 1", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(trip.zone.as_deref(), Some("a"));
        assert_eq!(trip.instance.as_deref(), Some("wsecho-a"));
        assert_eq!(trip.hello["instance"], "wsecho-a");
        assert!(trip.hello["peer_identity"].is_null());
        assert_eq!(trip.echoed, "ping 1");

        // Something that answers 426 to the upgrade, as a sidecar that cannot upgrade does.
        let refuser = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refuser_addr = refuser.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = refuser.accept().await.unwrap();
            let mut buf = [0_u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 426 Upgrade Required\r\nx-strait-error: upgrade-unsupported\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let err = round_trip(refuser_addr, "x", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RoundTripError::Handshake(r) if r.contains("426")),
            "{err}"
        );

        let _ = stop.send(());
        server.await.unwrap();
    }
}
