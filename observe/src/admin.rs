//! The admin HTTP server every component runs: `/metrics`, `/ready`, `/healthz`, `/config`.
//!
//! Plain HTTP/1.1 on a loopback or cluster-internal port, for scrapers, probes and
//! `strait up`. It never reads request bodies and bounds connections, header size and header
//! wait, so a misbehaving client costs little and can never panic the component.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::ConfigSnapshot;
use crate::readiness::Readiness;

/// Content type of the Prometheus text exposition format served at `/metrics`.
pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4";

/// More open admin connections than this are closed on accept: scrapers and probes need a
/// handful, and the bound keeps a flood from costing the component memory.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this; idle keep-alive connections end then.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read buffer per connection, which bounds the size of request headers.
const MAX_BUF_SIZE: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the admin server reports: the component's metrics, readiness and config.
///
/// Cheap to clone; the component keeps clones of the handles to update them.
#[derive(Debug, Clone, Default)]
pub struct AdminState {
    /// Served at `/metrics`. Register the component's metrics here.
    pub registry: Registry,
    /// Served at `/ready`.
    pub readiness: Readiness,
    /// Served at `/config`.
    pub config: ConfigSnapshot,
}

impl AdminState {
    /// State serving `registry`, with a fresh (not ready) readiness handle and a `null` config.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            readiness: Readiness::new(),
            config: ConfigSnapshot::default(),
        }
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
///
/// Routes (`GET`, and `HEAD` which hyper answers without the body):
/// - `/metrics`: `state.registry` in the Prometheus text format.
/// - `/ready`: `200 ready` or `503 not ready: REASON`, from `state.readiness`.
/// - `/healthz`: `200 ok` while the process runs.
/// - `/config`: `state.config` as JSON.
///
/// Other paths get 404; other methods on these paths get 405. Each connection is served in its
/// own task; on shutdown the server stops accepting and ends open connections (admin requests
/// are short, and a scraper's idle keep-alive connection must not hold shutdown up).
///
/// The listener is bound by the caller, so tests pass `127.0.0.1:0`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future) {
    let state = Arc::new(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = finished
                    && err.is_panic()
                {
                    warn!(error = %err, "admin connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        warn!(%peer, limit = MAX_CONNECTIONS, "too many admin connections; closing");
                        continue;
                    };
                    let span = info_span!("admin_conn", %peer);
                    connections.spawn(serve_connection(stream, peer, state.clone(), slot).instrument(span));
                }
                Err(err) => {
                    warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AdminState>,
    _slot: OwnedSemaphorePermit,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&state, request.method(), request.uri().path());
        debug!(
            method = %request.method(),
            path = request.uri().path(),
            status = response.status().as_u16(),
            "admin request"
        );
        // The body is never read: dropping `request` makes hyper close the connection if a
        // body was sent, rather than buffering it.
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE);
    if let Err(err) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        // Clients that hang up or time out are routine for probes; not worth more than debug.
        debug!(%peer, error = %err, "admin connection ended with an error");
    }
}

/// The response for a request, from method and path alone: a pure function, so routing is
/// tested without sockets.
fn respond(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let route = match path {
        "/metrics" => Route::Metrics,
        "/ready" => Route::Ready,
        "/healthz" => Route::Healthz,
        "/config" => Route::Config,
        _ => return text(StatusCode::NOT_FOUND, format!("not found: {path}\n")),
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {path}; use GET\n"),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match route {
        Route::Metrics => metrics(&state.registry),
        Route::Ready => match state.readiness.status() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        Route::Healthz => text(StatusCode::OK, "ok\n".to_owned()),
        Route::Config => match serde_json::to_vec_pretty(&state.config.get()) {
            Ok(mut body) => {
                body.push(b'\n');
                with_type(StatusCode::OK, body, "application/json")
            }
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render the config: {err}\n"),
            ),
        },
    }
}

enum Route {
    Metrics,
    Ready,
    Healthz,
    Config,
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut body) {
        Ok(()) => with_type(StatusCode::OK, body, CONTENT_TYPE_METRICS),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {err}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, body.into_bytes(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: Vec<u8>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path_then_method() {
        let state = AdminState::default();
        assert_eq!(
            respond(&state, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        // An unknown path is 404 whatever the method: there is nothing there to allow.
        assert_eq!(
            respond(&state, &Method::POST, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        let post = respond(&state, &Method::POST, "/ready");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            post.headers().get(ALLOW),
            Some(&HeaderValue::from_static("GET, HEAD"))
        );
        assert_eq!(
            respond(&state, &Method::HEAD, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&state, &Method::GET, "/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
