//! Header rules shared by the inbound and outbound sides: the hop-by-hop headers no proxy
//! forwards (RFC 9110 §7.6.1), Strait's own header names (parsed once instead of on every
//! request) and the ALPN names of the sidecar-to-sidecar connections. It sits below inbound,
//! outbound and the pool, and imports none of them.

use http::header::{self, HeaderMap, HeaderName};

/// ALPN for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN for raw TCP through the sidecars' mTLS.
pub const ALPN_TCP: &[u8] = b"strait-tcp";

/// The header carrying the caller's verified SPIFFE ID to the app.
pub const PEER_IDENTITY_HEADER: &str = "x-strait-peer-identity";
/// The header naming why the sidecar itself answered with an error.
pub const ERROR_HEADER: &str = "x-strait-error";
/// The header naming the caller's zone on the way out.
pub const ZONE_HEADER: &str = "x-strait-zone";

/// [`PEER_IDENTITY_HEADER`].
pub(crate) const PEER_IDENTITY: HeaderName = HeaderName::from_static(PEER_IDENTITY_HEADER);
/// [`ERROR_HEADER`].
pub(crate) const ERROR: HeaderName = HeaderName::from_static(ERROR_HEADER);
/// [`ZONE_HEADER`].
pub(crate) const ZONE: HeaderName = HeaderName::from_static(ZONE_HEADER);

/// Hop-by-hop headers: about one connection, never forwarded.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// An answer the sidecar makes itself: `status`, `x-strait-error: error`, and `text` as a
/// plain-text body (for people; programs read the header), of either side's body type.
pub(crate) fn sidecar_error<E>(
    status: http::StatusCode,
    error: &'static str,
    text: bytes::Bytes,
) -> http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, E>> {
    use http_body_util::BodyExt;
    let mut response = http::Response::new(
        http_body_util::Full::new(text)
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR, http::HeaderValue::from_static(error));
    response
}

/// The path and query of `uri` for a forwarded request (`/` when it has none), shared with it
/// rather than copied.
pub(crate) fn path_and_query(uri: &http::Uri) -> http::uri::PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
}

/// Removes hop-by-hop headers, including those named by `Connection`, but `TE: trailers`:
/// gRPC requires it end to end (a gRPC server refuses a call without it), and it is the one
/// `TE` HTTP/2 allows.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Almost every message carries none of them, or only `Connection: keep-alive` (nginx
    // sends it on every response): one pass over the few names present finds what to remove,
    // where a removal of each of the eight would hash every one of them, twice per message
    // in each sidecar.
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if doomed.is_empty() {
        return; // (an empty `collect` allocates nothing)
    }
    doomed.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
    );
    let keep_te = doomed.contains(&header::TE) && te_is_trailers(headers);
    for name in doomed {
        if keep_te && name == header::TE {
            continue;
        }
        headers.remove(name);
    }
}

/// `TE` is present and says `trailers` only.
fn te_is_trailers(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    matches!(
        (values.next(), values.next()),
        (Some(value), None) if value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-foo, keep-alive"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-bar"));
    }

    #[test]
    fn te_trailers_stays_for_grpc_and_other_te_goes() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("connection", HeaderValue::from_static("te, keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["te"], "trailers");
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn each_hop_by_hop_header_goes_alone() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} was kept");
            assert!(h.contains_key("x-keep"));
        }
    }

    #[test]
    fn connection_keep_alive_alone_goes() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("content-length", HeaderValue::from_static("5"));
        h.append("connection", HeaderValue::from_static("X-Trace"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-length"));
    }

    #[test]
    fn end_to_end_headers_stay() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("svc"));
        h.insert("x-keep-alive-ish", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }
}
