//! The gRPC side of a drill's load: `strait.demo.v1.Greeter/Hello` calls over one long-lived
//! HTTP/2 channel (as a real gRPC client holds one), each with a deadline, recording which
//! zone answered or which gRPC status the call failed with.
//!
//! [`outcome`] and [`status_of`] are pure: a call's result in, a sample (or the status label a
//! failure is counted under) out.

use std::net::SocketAddr;
use std::time::Duration;

use strait_proto::demo::v1::greeter_client::GreeterClient;
use strait_proto::demo::v1::{CountRequest, HelloReply, HelloRequest};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::timeline::SampleResult;

/// How a failed gRPC call's reason starts: `grpc UNAVAILABLE: ...`.
const PREFIX: &str = "grpc ";
/// The longest status message kept in a reason (the rest of a long message adds nothing to
/// the count by reason and makes it unbounded).
const MAX_MESSAGE: usize = 200;

/// A `Greeter` client on a channel to `target` that connects on first use (and reconnects by
/// itself after the connection breaks). Must be called inside a tokio runtime.
pub fn client(target: SocketAddr) -> GreeterClient<Channel> {
    let endpoint = Endpoint::from(
        http::Uri::builder()
            .scheme("http")
            .authority(target.to_string())
            .path_and_query("/")
            .build()
            .unwrap_or_default(),
    )
    .connect_timeout(Duration::from_secs(1))
    .tcp_nodelay(true);
    GreeterClient::new(endpoint.connect_lazy())
}

/// One `Hello`, with `timeout` as its gRPC deadline (sent as `grpc-timeout`, so the mesh
/// knows it too).
pub async fn hello(client: &GreeterClient<Channel>, timeout: Duration) -> SampleResult {
    let mut request = tonic::Request::new(HelloRequest {
        name: "strait-drill".to_owned(),
    });
    request.set_timeout(timeout);
    // A clone shares the channel: calls are multiplexed on its connection.
    let result = client.clone().hello(request).await;
    outcome(result.map(|r| r.into_inner().zone))
}

/// One `Hello` to `target` on a channel of its own (outside a load: `strait demo`'s check),
/// with `timeout` as its deadline; the whole reply.
pub async fn hello_once(
    target: SocketAddr,
    timeout: Duration,
) -> Result<HelloReply, tonic::Status> {
    let mut request = tonic::Request::new(HelloRequest {
        name: "strait-demo".to_owned(),
    });
    request.set_timeout(timeout);
    let mut client = client(target);
    let call = client.hello(request);
    match tokio::time::timeout(timeout + Duration::from_millis(100), call).await {
        Ok(reply) => reply.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

/// A server-streaming `Count` of `count` answers to `target`, with `timeout` for the whole
/// stream: the answers' numbers and the zone of the last one.
pub async fn count_once(
    target: SocketAddr,
    count: u32,
    timeout: Duration,
) -> Result<(Vec<u32>, String), tonic::Status> {
    let call = async {
        let mut request = tonic::Request::new(CountRequest {
            count,
            interval_ms: 10,
        });
        request.set_timeout(timeout);
        let mut stream = client(target).count(request).await?.into_inner();
        let mut numbers = Vec::new();
        let mut zone = String::new();
        while let Some(reply) = stream.message().await? {
            numbers.push(reply.n);
            zone = reply.zone;
        }
        Ok((numbers, zone))
    };
    match tokio::time::timeout(timeout + Duration::from_millis(100), call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "the stream did not end within {timeout:?}"
        ))),
    }
}

/// A call's outcome: the zone that answered, or the status it failed with.
pub fn outcome(result: Result<String, tonic::Status>) -> SampleResult {
    match result {
        Ok(zone) if zone.is_empty() => SampleResult::Answered {
            zone: "unknown".to_owned(),
        },
        Ok(zone) => SampleResult::Answered { zone },
        Err(status) => {
            let mut message: String = status.message().chars().take(MAX_MESSAGE).collect();
            if message.is_empty() {
                message = "(no message)".to_owned();
            }
            SampleResult::Failed {
                reason: format!("{PREFIX}{}: {message}", code_name(status.code())),
            }
        }
    }
}

/// The status a failure is counted under in a report: the gRPC code of a gRPC failure
/// (`UNAVAILABLE`), the HTTP status of an HTTP one (`503`), `transport` for a failure without
/// either (refused, reset, timed out, not sent).
pub fn status_of(reason: &str) -> &str {
    if let Some(rest) = reason.strip_prefix(PREFIX) {
        return rest.split(':').next().unwrap_or(rest).trim();
    }
    match reason.split(' ').next() {
        Some(first) if first.len() == 3 && first.bytes().all(|b| b.is_ascii_digit()) => first,
        _ => "transport",
    }
}

/// The canonical name of a gRPC status code, as `grpc-status` documents them.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_their_zone_and_failures_their_status() {
        assert_eq!(
            outcome(Ok("b".into())),
            SampleResult::Answered { zone: "b".into() }
        );
        assert_eq!(
            outcome(Ok(String::new())),
            SampleResult::Answered {
                zone: "unknown".into()
            }
        );
        assert_eq!(
            outcome(Err(tonic::Status::unavailable("no-healthy-upstream"))),
            SampleResult::Failed {
                reason: "grpc UNAVAILABLE: no-healthy-upstream".into()
            }
        );
        assert_eq!(
            outcome(Err(tonic::Status::internal(""))),
            SampleResult::Failed {
                reason: "grpc INTERNAL: (no message)".into()
            }
        );
        let long = "x".repeat(1_000);
        let SampleResult::Failed { reason } = outcome(Err(tonic::Status::unknown(long))) else {
            panic!("a failure answered");
        };
        assert!(reason.len() <= MAX_MESSAGE + 40, "{}", reason.len());
    }

    #[test]
    fn failures_are_counted_by_status() {
        assert_eq!(
            status_of("grpc UNAVAILABLE: no-healthy-upstream"),
            "UNAVAILABLE"
        );
        assert_eq!(
            status_of("grpc DEADLINE_EXCEEDED: a: b"),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(status_of("503 zone-unreachable"), "503");
        assert_eq!(status_of("502"), "502");
        assert_eq!(status_of("connect: Connection refused"), "transport");
        assert_eq!(status_of("timed out after 5s"), "transport");
        assert_eq!(status_of("closed without an answer"), "transport");
        assert_eq!(status_of(""), "transport");
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        assert_eq!(code_name(Code::from_i32(14)), "UNAVAILABLE");
        assert_eq!(code_name(Code::from_i32(4)), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::from_i32(16)), "UNAUTHENTICATED");
    }
}
