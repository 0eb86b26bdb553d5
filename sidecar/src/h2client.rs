//! HTTP/2 client connections from this sidecar to other sidecars, on the `h2` crate itself.
//!
//! Why not hyper's HTTP/2 client: for every request it passes the request through a channel
//! to the connection's task, spawns a task that waits for the response and sends it back
//! through a oneshot, and wraps the body twice. Counted with callgrind, the client sidecar
//! does 11 % fewer instructions per request without it (76,000 → 67,400; docs/benchmarks.md,
//! "HTTP/2 between sidecars on h2 itself"). Here the request's own
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use h2::server::SendResponse;
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use tokio::io::DuplexStream;

    use super::*;
    use crate::limits::breaker::Counter;

    const KEEPALIVE: Duration = Duration::from_secs(10);

    fn permit(counter: &Arc<Counter>) -> OwnedPermit {
        counter.acquire_owned(None).unwrap()
    }

    /// A client [`Sender`] and the server end of its connection, over an in-memory pipe.
    async fn connected(keepalive: Duration) -> (Sender, DuplexStream, Arc<Counter>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let counter = Arc::new(Counter::default());
        let sender = handshake(client, "test".into(), keepalive, permit(&counter))
            .await
            .unwrap();
        (sender, server, counter)
    }

    /// Serves every request on `io` with `answer`, until the client goes away.
    fn serve<F>(io: DuplexStream, answer: F)
    where
        F: Fn(Request<h2::RecvStream>, SendResponse<Bytes>) + Send + 'static,
    {
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(io).await.unwrap();
            while let Some(Ok((request, respond))) = conn.accept().await {
                answer(request, respond);
            }
        });
    }

    fn get(path: &str) -> Request<()> {
        Request::get(format!("http://svc.test{path}"))
            .body(())
            .unwrap()
    }

    /// The server echoes the request body back, with the request's `content-length` (or
    /// `none`) in a header.
    fn echo(request: Request<h2::RecvStream>, mut respond: SendResponse<Bytes>) {
        tokio::spawn(async move {
            let length = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
            let (parts, stream) = request.into_parts();
            let body = RecvBody::new(stream, &parts.headers);
            let data = body.collect().await.unwrap().to_bytes();
            let response = Response::builder()
                .header("x-request-length", length)
                .header(header::CONTENT_LENGTH, data.len())
                .body(())
                .unwrap();
            let stream = respond.send_response(response, data.is_empty()).unwrap();
            if !data.is_empty() {
                pipe(http_body_util::Full::new(data), stream).await;
            }
        });
    }

    #[tokio::test]
    async fn bodies_larger_than_every_window_go_both_ways_intact() {
        let (mut sender, server, _) = connected(KEEPALIVE).await;
        serve(server, echo);
        // 3 MB: past the server's default 64 KB windows and the client's 2 MB stream window,
        // so both directions wait for WINDOW_UPDATEs.
        let payload: Bytes = (0..3 * 1024 * 1024_u32).map(|i| i as u8).collect();
        // A streaming body needs a hyper `Incoming`: take one from a real HTTP/1.1 server.
        let (done, finished) = tokio::sync::oneshot::channel();
        let (incoming, feeder) = incoming_from(payload.clone(), finished).await;
        let request = Request::post("http://svc.test/upload").body(()).unwrap();
        let response = sender
            .send(request, Outgoing::Stream(incoming))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.body().size_hint().exact(),
            Some(payload.len() as u64)
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body == payload, "the body came back changed");
        let _ = done.send(());
        feeder.await.unwrap();
    }

    /// A hyper `Incoming` that streams `payload` (chunked, so of unknown length), and the task
    /// that feeds it, which holds its connection open until `finished`.
    async fn incoming_from(
        payload: Bytes,
        finished: tokio::sync::oneshot::Receiver<()>,
    ) -> (Incoming, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(request.into_body());
                }
                async {
                    Ok::<_, std::convert::Infallible>(Response::new(
                        http_body_util::Empty::<Bytes>::new(),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
        let feeder = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
            tcp.write_all(head.as_bytes()).await.unwrap();
            for chunk in payload.chunks(100 * 1024) {
                let frame = format!("{:x}\r\n", chunk.len());
                tcp.write_all(frame.as_bytes()).await.unwrap();
                tcp.write_all(chunk).await.unwrap();
                tcp.write_all(b"\r\n").await.unwrap();
            }
            tcp.write_all(b"0\r\n\r\n").await.unwrap();
            // Held open until the test is done: a closed connection would cut the body short.
            let _ = finished.await;
            drop(tcp);
        });
        (rx.await.unwrap(), feeder)
    }

    #[tokio::test]
    async fn buffered_bodies_carry_their_length_and_empty_gets_have_none() {
        let (mut sender, server, _) = connected(KEEPALIVE).await;
        serve(server, echo);
        let length = |response: &Response<RecvBody>| {
            response.headers()["x-request-length"]
                .to_str()
                .unwrap()
                .to_owned()
        };
        let post = Request::post("http://svc.test/").body(()).unwrap();
        let response = sender
            .send(post, Outgoing::Full(Bytes::from_static(b"hello")))
            .await
            .unwrap();
        assert_eq!(length(&response), "5");
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes()[..],
            b"hello"
        );
        let empty_post = Request::post("http://svc.test/").body(()).unwrap();
        let response = sender.send(empty_post, Outgoing::Empty).await.unwrap();
        assert_eq!(length(&response), "0");
        let response = sender.send(get("/"), Outgoing::Empty).await.unwrap();
        assert_eq!(length(&response), "none");
        // HTTP/1.1 framing does not cross into HTTP/2 (h2 would refuse the request).
        let chunked = Request::post("http://svc.test/")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(())
            .unwrap();
        let response = sender
            .send(chunked, Outgoing::Full(Bytes::from_static(b"x")))
            .await
            .unwrap();
        assert_eq!(length(&response), "1");
    }

    #[tokio::test]
    async fn a_refused_stream_is_told_from_a_failed_one() {
        let (mut sender, server, _) = connected(KEEPALIVE).await;
        serve(server, |request, mut respond| {
            let reason = if request.uri().path() == "/refuse" {
                Reason::REFUSED_STREAM
            } else {
                Reason::INTERNAL_ERROR
            };
            respond.send_reset(reason);
        });
        let refused = sender.send(get("/refuse"), Outgoing::Empty).await;
        assert!(matches!(refused, Err(SendError::Refused(_))), "{refused:?}");
        let failed = sender.send(get("/fail"), Outgoing::Empty).await;
        assert!(matches!(failed, Err(SendError::Failed(_))), "{failed:?}");
    }

    #[tokio::test]
    async fn a_closed_connection_is_noticed_and_gives_its_permit_back() {
        let (mut sender, server, counter) = connected(KEEPALIVE).await;
        assert_eq!(counter.current(), 1);
        drop(server);
        // The connection's task sees the pipe close; until then a send may still be tried.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the closed connection was never noticed");
        assert_eq!(counter.current(), 0, "the permit outlived its connection");
        assert!(sender.ready().await.is_err());
        let sent = sender.send(get("/"), Outgoing::Empty).await;
        assert!(matches!(sent, Err(SendError::Closed(_))), "{sent:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_pings_is_dropped() {
        // The server end is held but never read: no pong ever comes back.
        let (sender, _server, counter) = connected(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while !sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("a silent peer kept its connection");
        assert_eq!(counter.current(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_answers_pings_keeps_its_connection() {
        let (mut sender, server, _) = connected(Duration::from_millis(200)).await;
        serve(server, echo);
        // Many keepalive periods of (virtual) silence.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!sender.is_closed());
        let response = sender.send(get("/"), Outgoing::Empty).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
