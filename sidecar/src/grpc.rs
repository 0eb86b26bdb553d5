//! gRPC over the mesh: what a sidecar must know of it to carry it faithfully. Pure: headers in,
//! decisions out.
//!
//! - A request is gRPC when its `content-type` is `application/grpc` or `application/grpc+…`
//!   (gRPC-Web, `application/grpc-web…`, is HTTP/1.1-compatible and is not).
//! - A call's outcome is its `grpc-status`: in the response headers for a *trailers-only*
//!   response (the server answered with a status and no message), else in the trailers. The
//!   HTTP status of a gRPC response is 200 whatever happened.
//! - `grpc-timeout` is the call's deadline (`1S`, `250m`, …: at most 8 digits and a unit).
//! - An error the mesh itself produces for a gRPC caller is a gRPC error (HTTP 200,
//!   trailers-only, `grpc-status` and `grpc-message`), never an HTTP 503 that a gRPC client
//!   turns into an opaque `UNAVAILABLE: Received http2 header with status: 503`.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

/// `grpc-status`.
pub(crate) const STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub(crate) const MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`.
pub(crate) const TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The status codes of gRPC (`google.rpc.Code`) the mesh names.
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const DATA_LOSS: u32 = 15;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Whether `headers` (of a request) are those of a gRPC call.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

fn is_grpc_content_type(value: &[u8]) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    value.len() >= PREFIX.len()
        && value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(value.get(PREFIX.len()), None | Some(b'+' | b';'))
}

/// The `grpc-status` in `headers` (response headers of a trailers-only response, or
/// trailers), if there is one that reads as a number.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get(STATUS)?.to_str().ok()?;
    value.trim().parse().ok()
}

/// Whether a call that ended with `code` says the server (or the path to it) failed, for
/// metrics and outlier detection: `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`,
/// `DATA_LOSS`, as an HTTP 5xx would. The other codes are answers about the call itself
/// (`NOT_FOUND`, `INVALID_ARGUMENT`, `PERMISSION_DENIED`, …) from a healthy server.
pub fn is_server_failure(code: u32) -> bool {
    matches!(
        code,
        code::UNKNOWN
            | code::DEADLINE_EXCEEDED
            | code::INTERNAL
            | code::UNAVAILABLE
            | code::DATA_LOSS
    )
}

/// The metric label of a gRPC outcome: `ok`, `client-error` (the call was refused as asked:
/// `NOT_FOUND`, `INVALID_ARGUMENT`, `CANCELLED`, …) or `server-error`
/// ([`is_server_failure`]).
pub fn status_class(code: u32) -> &'static str {
    if code == code::OK {
        "ok"
    } else if is_server_failure(code) {
        "server-error"
    } else {
        "client-error"
    }
}

/// Reads a `grpc-timeout` value: up to 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). Anything else is `None` (and the call has no deadline from it).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount.checked_mul(3600)?),
        b'M' => Duration::from_secs(amount.checked_mul(60)?),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The gRPC code for an error the mesh answered itself with HTTP `status` and
/// `x-strait-error` `error`: timeouts are `DEADLINE_EXCEEDED` and refusals by policy
/// `PERMISSION_DENIED` (what a gRPC client can act on), a rate limit `RESOURCE_EXHAUSTED`; the
/// rest follows gRPC's HTTP-to-gRPC mapping (503 and the other gateway errors →
/// `UNAVAILABLE`, which clients may retry).
pub fn code_for_mesh_error(status: StatusCode, error: &str) -> u32 {
    match error {
        "request-timeout" | "upstream-timeout" => code::DEADLINE_EXCEEDED,
        "denied" | "plaintext-refused" => code::PERMISSION_DENIED,
        "rate-limited" => code::RESOURCE_EXHAUSTED,
        _ => match status.as_u16() {
            400 => code::INTERNAL,
            401 => code::UNAUTHENTICATED,
            403 => code::PERMISSION_DENIED,
            404 => code::UNIMPLEMENTED,
            429 | 502..=504 => code::UNAVAILABLE,
            _ => code::UNKNOWN,
        },
    }
}

/// The headers of a trailers-only gRPC error: `content-type: application/grpc`,
/// `grpc-status: code` and `grpc-message` (percent-encoded, as gRPC requires), added to
/// `headers`. The response carrying them must have status 200 and an empty body.
pub fn set_error(headers: &mut HeaderMap, code: u32, message: &str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(STATUS, HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(MESSAGE, value);
    }
}

/// An error the sidecar answered itself (it carries `x-strait-error`) as a gRPC error for a
/// gRPC caller: status 200, trailers-only, the code from [`code_for_mesh_error`] and the
/// error's name in the message; `x-strait-error` stays. Any other response is returned as is.
pub(crate) fn mesh_error_as_grpc<B: Default>(response: Response<B>) -> Response<B> {
    let Some(error) = response.headers().get(&crate::headers::ERROR) else {
        return response;
    };
    if response.headers().contains_key(STATUS) {
        return response;
    }
    let error = String::from_utf8_lossy(error.as_bytes()).into_owned();
    let (mut parts, _) = response.into_parts();
    let code = code_for_mesh_error(parts.status, &error);
    let message = format!("strait sidecar: {error} (HTTP {})", parts.status.as_u16());
    parts.status = StatusCode::OK;
    set_error(&mut parts.headers, code, &message);
    Response::from_parts(parts, B::default())
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, everything else as `%XX`
/// of its UTF-8 bytes.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn grpc_content_types_and_not_grpc_web() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn status_reads_numbers_only() {
        assert_eq!(status(&headers(&[("grpc-status", "14")])), Some(14));
        assert_eq!(status(&headers(&[("grpc-status", "0")])), Some(0));
        assert_eq!(status(&headers(&[("grpc-status", "x")])), None);
        assert_eq!(status(&HeaderMap::new()), None);
    }

    #[test]
    fn failures_and_classes() {
        assert_eq!(status_class(code::OK), "ok");
        assert_eq!(status_class(code::UNAVAILABLE), "server-error");
        assert_eq!(status_class(code::INTERNAL), "server-error");
        assert_eq!(status_class(5), "client-error"); // NOT_FOUND
        assert_eq!(status_class(code::CANCELLED), "client-error");
        assert!(is_server_failure(code::DEADLINE_EXCEEDED));
        assert!(!is_server_failure(code::PERMISSION_DENIED));
    }

    #[test]
    fn timeouts_in_every_unit_and_garbage_refused() {
        let t = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1s", "-1S", "1.5S", "1 S", "10"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mesh_errors_map_to_codes_clients_act_on() {
        let c = code_for_mesh_error;
        assert_eq!(
            c(StatusCode::SERVICE_UNAVAILABLE, "no-healthy-upstream"),
            code::UNAVAILABLE
        );
        assert_eq!(
            c(StatusCode::SERVICE_UNAVAILABLE, "overflow"),
            code::UNAVAILABLE
        );
        assert_eq!(
            c(StatusCode::BAD_GATEWAY, "upstream-reset"),
            code::UNAVAILABLE
        );
        assert_eq!(
            c(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
            code::DEADLINE_EXCEEDED
        );
        assert_eq!(
            c(StatusCode::GATEWAY_TIMEOUT, "request-timeout"),
            code::DEADLINE_EXCEEDED
        );
        assert_eq!(c(StatusCode::FORBIDDEN, "denied"), code::PERMISSION_DENIED);
        assert_eq!(
            c(StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            code::RESOURCE_EXHAUSTED
        );
        assert_eq!(
            c(StatusCode::TOO_MANY_REQUESTS, "fault-injected"),
            code::UNAVAILABLE
        );
        assert_eq!(c(StatusCode::IM_A_TEAPOT, "fault-injected"), code::UNKNOWN);
    }

    #[test]
    fn only_sidecar_errors_become_grpc_errors() {
        let mut refused = Response::new(String::from("no healthy upstream\n"));
        *refused.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        refused.headers_mut().insert(
            "x-strait-error",
            HeaderValue::from_static("no-healthy-upstream"),
        );
        let converted = mesh_error_as_grpc(refused);
        assert_eq!(converted.status(), StatusCode::OK);
        assert_eq!(converted.headers()["grpc-status"], "14");
        assert_eq!(converted.headers()["x-strait-error"], "no-healthy-upstream");
        assert!(converted.body().is_empty());
        let mut app = Response::new(String::from("teapot"));
        *app.status_mut() = StatusCode::IM_A_TEAPOT;
        let kept = mesh_error_as_grpc(app);
        assert_eq!(kept.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(kept.body(), "teapot");
    }

    #[test]
    fn error_headers_are_a_trailers_only_response() {
        let mut h = headers(&[("content-type", "text/plain"), ("content-length", "12")]);
        set_error(
            &mut h,
            code::UNAVAILABLE,
            "no healthy upstream: 100% ejected\n",
        );
        assert_eq!(h["content-type"], "application/grpc");
        assert!(!h.contains_key("content-length"));
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no healthy upstream: 100%25 ejected%0A");
    }
}
