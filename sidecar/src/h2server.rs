//! The inbound side's HTTP/2 server for other sidecars (ALPN `h2` over mutual TLS), on the
//! `h2` crate itself, like [`crate::h2client`]: hyper's server spawns a task for every
//! request and moves it through its own service plumbing; here the connection's task runs
//! its requests itself, as a set of futures it polls alongside the connection, and each one
//! answers on its stream directly. Plaintext callers (PERMISSIVE) and HTTP/1.1 stay on hyper.

use std::future::{Future, poll_fn};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h2body::{RecvBody, pipe};

/// hyper's server defaults, which the inbound side ran with before.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Serves HTTP/2 on `io`: every request is answered by `handle`, until the client closes the
/// connection or, once `stop` resolves, the requests under way have been answered (the client
/// is told with a `GOAWAY` to open no more).
pub(crate) async fn serve<IO, H, Fut, B>(io: IO, handle: H, stop: impl Future<Output = ()>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RecvBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .handshake::<_, Bytes>(io)
        .await;
    let mut conn = match handshake {
        Ok(conn) => conn,
        Err(err) => {
            tracing::debug!(%err, "inbound HTTP/2 handshake failed");
            return;
        }
    };
    let mut requests = FuturesUnordered::new();
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => requests.push(answer(&handle, request, respond)),
                Some(Err(err)) => {
                    tracing::debug!(%err, "inbound HTTP/2 connection ended with an error");
                    break;
                }
                None => break,
            },
            Some(()) = requests.next(), if !requests.is_empty() => {}
            () = &mut stop, if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
}

/// One request: `handle` it (given up if the client resets the stream meanwhile), then send
/// the response's headers and stream its body under the client's flow control.
async fn answer<H, Fut, B>(
    handle: &H,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) where
    H: Fn(Request<RecvBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, stream) = request.into_parts();
    let body = RecvBody::new(stream, &parts.headers);
    let response = tokio::select! {
        response = handle(Request::from_parts(parts, body)) => response,
        reset = poll_fn(|cx| respond.poll_reset(cx)) => {
            tracing::debug!(?reset, "the caller gave up on a request before its response");
            return;
        }
    };
    let (mut parts, body) = response.into_parts();
    // The framing of the app's HTTP/1.1 hop; HTTP/2 frames by itself (and h2 refuses it).
    parts.headers.remove(header::TRANSFER_ENCODING);
    if let Some(len) = body.size_hint().exact()
        && len > 0
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(stream) if !end => pipe(body, stream).await,
        Ok(_) => {}
        Err(err) => tracing::debug!(%err, "a response could not be sent"),
    }
}
