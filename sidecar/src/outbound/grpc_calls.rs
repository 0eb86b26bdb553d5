//! Counting gRPC calls by how they ended: the `grpc-status` of a trailers-only answer, or of the
//! trailers at the end of the response body (the HTTP status of a gRPC call is 200 whatever
//! happened, so `strait_sidecar_outbound_requests_total` cannot tell).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;

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
    let classes = [
        counter("ok"),
        counter("client-error"),
        counter("server-error"),
        counter("none"),
    ];
    response.map(|inner| {
        Counted {
            inner,
            classes: Some(classes),
        }
        .boxed()
    })
}

/// A response body that counts its call once, by its trailers.
struct Counted {
    inner: Body,
    /// ok, client-error, server-error, none; taken when counted.
    classes: Option<[IntCounter; 4]>,
}

impl Counted {
    fn record(&mut self, code: Option<u32>) {
        if let Some(classes) = self.classes.take() {
            let index = match code.map(grpc::status_class) {
                Some("ok") => 0,
                Some("client-error") => 1,
                Some(_) => 2,
                None => 3,
            };
            classes[index].inc();
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Dropped before its end: the caller went away, or the stream was reset.
        self.record(None);
    }
}

impl http_body::Body for Counted {
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
                    let code = grpc::status(trailers);
                    self.record(code);
                }
            }
            Some(Err(_)) | None => self.record(None),
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
