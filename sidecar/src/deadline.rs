//! `Timeout.request` to the end of the response: a body that fails once its deadline passes.
//!
//! The outbound side holds a request to its `Timeout` in two steps: until the response headers
//! (`responseHeaders`, and `request` — nothing else is known yet), then, for the body, until
//! the request's start plus `request` for a unary response, or plus `stream` for a streaming
//! one ([`is_stream`]: server-sent events, gRPC, an upgrade), which without `stream` has no
//! total deadline (only `idle` closes it). A body past its deadline ends with an error, which
//! hyper turns into a reset stream (HTTP/2) or a closed connection (HTTP/1.1): the caller sees
//! a failed response, never a truncated one that looks complete.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::h2body::BoxError;
use crate::pool::Body as BoxedBody;

/// Whether a response streams, so that `Timeout.request` covers only its headers: an upgrade
/// (`101`), server-sent events, or gRPC (whose calls carry their own deadline).
pub fn is_stream(status: StatusCode, headers: &HeaderMap) -> bool {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return true;
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("text/event-stream") || ct.starts_with("application/grpc")
        })
}

/// The body error when the deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("the response did not end within its Timeout ({0:?})")]
pub struct DeadlineExceeded(std::time::Duration);

/// `inner`, failing at `deadline`.
///
/// The timer is made only when the body first has to wait: most responses are already whole
/// when they are first polled, and then cost no timer at all.
#[derive(Debug)]
pub struct DeadlineBody {
    inner: BoxedBody,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    limit: std::time::Duration,
    expired: bool,
}

impl DeadlineBody {
    /// `limit` is only for the error message (the configured duration).
    pub fn new(inner: BoxedBody, deadline: Instant, limit: std::time::Duration) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
            limit,
            expired: false,
        }
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        // The body first: data that is already there is delivered even at the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.expired = true;
            return Poll::Ready(Some(Err(Box::new(DeadlineExceeded(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn streams_are_told_by_status_and_content_type() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            h
        };
        assert!(is_stream(
            StatusCode::SWITCHING_PROTOCOLS,
            &HeaderMap::new()
        ));
        assert!(is_stream(
            StatusCode::OK,
            &with("text/event-stream; charset=utf-8")
        ));
        assert!(is_stream(StatusCode::OK, &with("application/grpc+proto")));
        assert!(is_stream(StatusCode::OK, &with("Application/GRPC")));
        assert!(!is_stream(StatusCode::OK, &with("application/json")));
        assert!(!is_stream(StatusCode::OK, &HeaderMap::new()));
    }

    /// A body that sends one chunk, then nothing until `gap`, then a second one.
    fn slow_body(gap: std::time::Duration) -> BoxedBody {
        let chunks = futures::stream::unfold(0, move |i| async move {
            match i {
                0 => Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a"))), 1)),
                1 => {
                    tokio::time::sleep(gap).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"b"))), 2))
                }
                _ => None,
            }
        });
        StreamBody::new(chunks).boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_past_its_deadline_fails_and_one_within_it_is_whole() {
        let limit = std::time::Duration::from_secs(2);
        let late = DeadlineBody::new(
            slow_body(std::time::Duration::from_secs(5)),
            Instant::now() + limit,
            limit,
        );
        let err = late.collect().await.unwrap_err();
        assert!(err.to_string().contains("did not end within"), "{err}");

        let on_time = DeadlineBody::new(
            slow_body(std::time::Duration::from_secs(1)),
            Instant::now() + limit,
            limit,
        );
        let body = on_time.collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ab");
    }
}
