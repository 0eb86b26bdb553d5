//! How gRPC calls ended: the `grpc-status` of a trailers-only answer, or of the trailers at the
//! end of the response body (the HTTP status of a gRPC call is 200 whatever happened, so
//! neither `strait_sidecar_outbound_requests_total` nor the response headers can tell). It
//! counts calls by status class, and tells outlier detection the outcome of a call whose
//! status came in trailers.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::metrics::ZoneLabel;
use crate::grpc;
use crate::h2body::BoxError;
use crate::pool::Body;

/// `response` to a gRPC call of `service` answered by `zone`, counted in `calls` when its
/// status is known: now for a trailers-only answer, else when the trailers arrive (`none` if
/// the body ends without them).
pub(super) fn count(
    calls: &prometheus::IntCounterVec,
    service: &str,
    zone: &ZoneLabel,
    response: Response<Body>,
) -> Response<Body> {
    let counter = |class: &str| calls.with_label_values(&[service, zone.as_ref(), class]);
    if let Some(code) = grpc::status(response.headers()) {
        counter(grpc::status_class(code)).inc();
        return response;
    }
    // Resolved now, while the labels are at hand: the end of the body has only the counters.
    let classes = [
        counter("ok"),
        counter("client-error"),
        counter("server-error"),
        counter("none"),
    ];
    on_end(response, move |ending| {
        let index = match ending {
            Ending::Status(code) => match grpc::status_class(code) {
                "ok" => 0,
                "client-error" => 1,
                _ => 2,
            },
            Ending::Missing | Ending::Abandoned => 3,
        };
        classes[index].inc();
    })
}

/// How the body of a gRPC response ended, as far as the call's status goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// Its trailers said this `grpc-status`.
    Status(u32),
    /// It ended, or failed (a reset stream), without one.
    Missing,
    /// It was dropped before its end: the caller went away.
    Abandoned,
}

/// `response` with `then` called once, when its body ends, with how it ended.
pub(super) fn on_end<F>(response: Response<Body>, then: F) -> Response<Body>
where
    F: FnOnce(Ending) + Send + Sync + Unpin + 'static,
{
    response.map(|inner| {
        Watched {
            inner,
            then: Some(then),
        }
        .boxed()
    })
}

/// A response body that reports how it ended, once.
struct Watched<F: FnOnce(Ending)> {
    inner: Body,
    /// Taken when called.
    then: Option<F>,
}

impl<F: FnOnce(Ending)> Watched<F> {
    fn end(&mut self, ending: Ending) {
        if let Some(then) = self.then.take() {
            then(ending);
        }
    }
}

impl<F: FnOnce(Ending)> Drop for Watched<F> {
    fn drop(&mut self) {
        self.end(Ending::Abandoned);
    }
}

impl<F: FnOnce(Ending) + Unpin> http_body::Body for Watched<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let ending = grpc::status(trailers).map_or(Ending::Missing, Ending::Status);
                    self.end(ending);
                }
            }
            Some(Err(_)) | None => self.end(Ending::Missing),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
