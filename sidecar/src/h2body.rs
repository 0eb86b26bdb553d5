//! Bodies of HTTP/2 messages moved with the `h2` crate itself (see [`crate::h2client`] for why
//! not through hyper): a received stream read as an [`http_body::Body`], and any body written
//! to a stream under the peer's flow control.

use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The error type of the bodies the sidecar moves between hyper and h2.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A received HTTP/2 message body.
///
/// The flow-control window is given back as soon as a chunk is handed on: whoever reads this
/// body applies backpressure by not polling it, and the peer can send at most one window
/// ahead.
#[derive(Debug)]
pub(crate) struct RecvBody {
    stream: RecvStream,
    /// What `Content-Length` says is still to come (h2 checks that the DATA frames add up to
    /// it), so that a server writing the body on HTTP/1.1 can frame it with a length too.
    remaining: Option<u64>,
    data_done: bool,
}

impl RecvBody {
    pub(crate) fn new(stream: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Self {
            stream,
            remaining,
            data_done: false,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only when the stream is already gone: the next poll says so.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => this.data_done = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Writes `body` to `stream`, a chunk at a time as the peer's window allows, ending the
/// stream with the last chunk or the trailers. Stops when the peer resets the stream; resets
/// it when the body fails.
pub(crate) async fn pipe<B>(body: B, mut stream: SendStream<Bytes>)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            reset = std::future::poll_fn(|cx| stream.poll_reset(cx)) => {
                tracing::debug!(?reset, "the peer reset the stream a body was being sent on");
                return;
            }
        };
        let frame = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(err)) => {
                tracing::debug!(%err, "reading a body to forward failed");
                stream.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
                continue;
            }
        };
        let last = body.is_end_stream();
        if data.is_empty() {
            if last {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            continue;
        }
        loop {
            // Hold back until the peer's window has room: a slow reader slows the writer
            // instead of the sidecar buffering the body.
            stream.reserve_capacity(data.len());
            let room = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(room)) => room,
                Some(Err(err)) => {
                    tracing::debug!(%err, "a stream closed while a body was sent on it");
                    return;
                }
                None => return,
            };
            let chunk = data.split_to(room.min(data.len()));
            let end = last && data.is_empty();
            if stream.send_data(chunk, end).is_err() {
                return;
            }
            if data.is_empty() {
                break;
            }
        }
        if last {
            return;
        }
    }
}
