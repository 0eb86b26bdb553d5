//! The demo workload (`strait demo-app`): a tiny HTTP/1.1 and HTTP/2 (cleartext) server that
//! says who it is and who called it, so a tour or a test can see where a request landed and
//! which identity the sidecar verified.
//!
//! - `GET /healthz` → `200 ok`.
//! - anything else → `200` with JSON `{"service", "zone", "instance", "peer_identity"}`, where
//!   `peer_identity` is the `x-strait-peer-identity` header its sidecar set (or `null` when the
//!   request did not come through a sidecar).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::headers::PEER_IDENTITY_HEADER;

/// Who the demo app says it is.
#[derive(Debug, Clone)]
struct Whoami {
    service: String,
    zone: String,
    instance: String,
}

/// Serves the demo app on `listener` until `shutdown` completes (open connections are then
/// closed).
pub async fn run_demo_app(
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
    tracing::info!(listen = ?listener.local_addr().ok(), service = %me.service, zone = %me.zone, instance = %me.instance, "demo app serving");
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
                            std::future::ready(Ok::<_, Infallible>(respond(&me, &request)))
                        });
                        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        builder
                            .http1()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30));
                        if let Err(err) = builder.serve_connection(TokioIo::new(tcp), service).await {
                            tracing::debug!(%peer, %err, "demo app connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "demo app accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

fn respond<B>(me: &Whoami, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() == "/healthz" {
        return with_body(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            b"ok\n".to_vec(),
        );
    }
    let peer_identity = request
        .headers()
        .get(PEER_IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = serde_json::json!({
        "service": me.service,
        "zone": me.zone,
        "instance": me.instance,
        "peer_identity": peer_identity,
    });
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    with_body(StatusCode::OK, "application/json", bytes)
}

fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn me() -> Whoami {
        Whoami {
            service: "echo".into(),
            zone: "a".into(),
            instance: "echo-1".into(),
        }
    }

    #[test]
    fn says_who_it_is_and_who_called() {
        let request = Request::builder()
            .uri("/anything")
            .header(PEER_IDENTITY_HEADER, "spiffe://strait.local/ns/demo/sa/web")
            .body(())
            .unwrap();
        let response = respond(&me(), &request);
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body();
        let bytes = futures::executor::block_on(http_body_util::BodyExt::collect(body))
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["service"], "echo");
        assert_eq!(json["zone"], "a");
        assert_eq!(json["instance"], "echo-1");
        assert_eq!(
            json["peer_identity"],
            "spiffe://strait.local/ns/demo/sa/web"
        );

        let anonymous = Request::builder().uri("/").body(()).unwrap();
        let bytes = futures::executor::block_on(http_body_util::BodyExt::collect(
            respond(&me(), &anonymous).into_body(),
        ))
        .unwrap()
        .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(json["peer_identity"].is_null());

        let health = Request::builder().uri("/healthz").body(()).unwrap();
        assert_eq!(respond(&me(), &health).status(), StatusCode::OK);
    }
}
