//! HTTP/2 client connections from this sidecar to other sidecars, on the `h2` crate itself.
//!
//! Why not hyper's HTTP/2 client: for every request it passes the request through a channel
//! to the connection's task, spawns a task that waits for the response and sends it back
//! through a oneshot, and wraps the body twice; counted with callgrind that was ~X of the
//! client sidecar's instructions per request (docs/benchmarks.md). Here the request's own
//! task opens the stream and awaits the response; the connection's task only drives the
//! connection (and its keepalive pings). A request body is sent from the request's task when
//! it is buffered, and piped by a task of its own only when it streams.
//!
//! Connections to gateways stay on hyper: they carry `CONNECT` tunnels, whose upgraded byte
//! stream hyper provides.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, Reason};
use http::{HeaderValue, Request, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h2body::{RecvBody, pipe};
use crate::limits::breaker::OwnedPermit;

/// hyper's client defaults, which the sidecars ran with before: windows big enough that a
/// response of a few MB is not held back by round trips.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Streams opened before the server's SETTINGS say how many it allows.
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// A request body as it leaves.
pub(crate) enum Outgoing {
    Empty,
    /// Buffered (small): sent with the request, no flow-control wait.
    Full(Bytes),
    /// Streaming: piped under flow control by a task of its own.
    Stream(Incoming),
}

impl Outgoing {
    fn len(&self) -> Option<u64> {
        match self {
            Outgoing::Empty => Some(0),
            Outgoing::Full(bytes) => Some(bytes.len() as u64),
            Outgoing::Stream(body) => body.size_hint().exact(),
        }
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The connection cannot open streams any more (closed, failed, going away): the request
    /// was not sent.
    #[error("connection unusable: {0}")]
    Closed(h2::Error),
    /// The server refused the stream before processing it (`REFUSED_STREAM`): safe to send
    /// again, whatever the method.
    #[error("stream refused: {0}")]
    Refused(h2::Error),
    /// The stream failed after the request went out.
    #[error("{0}")]
    Failed(h2::Error),
}

/// A handle on a pooled HTTP/2 connection; clones share it.
#[derive(Clone)]
pub(crate) struct Sender {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when the connection ends.
    closed: Arc<AtomicBool>,
}

impl Sender {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until the server's stream limit lets one more stream open; fails when the
    /// connection is unusable.
    pub(crate) async fn ready(&mut self) -> Result<(), h2::Error> {
        poll_fn(|cx| self.send.poll_ready(cx)).await
    }

    /// Sends `request` (absolute URI, no connection-specific headers but `Transfer-Encoding`,
    /// which HTTP/1.1 framing leaves and is removed here) and waits for the response headers.
    pub(crate) async fn send(
        &mut self,
        mut request: Request<()>,
        body: Outgoing,
    ) -> Result<Response<RecvBody>, SendError> {
        let headers = request.headers_mut();
        headers.remove(header::TRANSFER_ENCODING);
        // As hyper does: a body of known length says so, which the server may need (an
        // HTTP/1.1 app behind it, without chunked framing).
        if let Some(len) = body.len()
            && (len > 0 || method_has_body_semantics(request.method()))
            && !request.headers().contains_key(header::CONTENT_LENGTH)
        {
            request
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let end = matches!(body, Outgoing::Empty);
        let (response, mut stream) = self
            .send
            .send_request(request, end)
            .map_err(SendError::Closed)?;
        match body {
            Outgoing::Empty => {}
            // Buffered by h2 until the window allows: it is small (the caller buffered it).
            Outgoing::Full(bytes) => {
                // A failure here is the stream's: the response says so.
                let _ = stream.send_data(bytes, true);
            }
            Outgoing::Stream(body) => {
                tokio::spawn(pipe(body, stream));
            }
        }
        let response = response.await.map_err(|err| {
            if err.reason() == Some(Reason::REFUSED_STREAM) {
                SendError::Refused(err)
            } else {
                SendError::Failed(err)
            }
        })?;
        let (parts, stream) = response.into_parts();
        let body = RecvBody::new(stream, &parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// Methods whose request carries a body by definition: an empty one is sent with
/// `Content-Length: 0`.
fn method_has_body_semantics(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    )
}

/// The HTTP/2 client handshake over `io`. The connection is driven by its own task, which
/// holds `permit` (a place in its service's `maxConnections`) until the connection ends and
/// pings the peer every `keepalive`: a ping unanswered for `keepalive` closes the connection.
pub(crate) async fn handshake<IO>(
    io: IO,
    label: String,
    keepalive: Duration,
    permit: OwnedPermit,
) -> Result<Sender, h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let outcome = drive(conn, keepalive).await;
        ended.store(true, Ordering::Release);
        if let Err(err) = outcome {
            tracing::debug!(upstream = %label, %err, "upstream HTTP/2 connection ended");
        }
    });
    Ok(Sender { send, closed })
}

/// Drives `conn` until it ends, with a keepalive ping every `keepalive`.
async fn drive<IO>(
    mut conn: h2::client::Connection<IO, Bytes>,
    keepalive: Duration,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = conn.ping_pong();
    let mut conn = pin!(conn);
    loop {
        tokio::select! {
            ended = conn.as_mut() => return ended.map_err(|e| e.to_string()),
            () = tokio::time::sleep(keepalive) => {}
        }
        let Some(pings) = pings.as_mut() else {
            continue;
        };
        // The connection keeps being driven while the pong is awaited: it is what reads it.
        let pong = tokio::time::timeout(keepalive, pings.ping(Ping::opaque()));
        tokio::select! {
            ended = conn.as_mut() => return ended.map_err(|e| e.to_string()),
            answered = pong => match answered {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(format!("keepalive ping: {err}")),
                Err(_) => {
                    return Err(format!("keepalive ping unanswered for {keepalive:?}"));
                }
            },
        }
    }
}
