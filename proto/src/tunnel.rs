//! The east-west tunnel protocol shared by the sidecar (client of its local gateway) and the
//! gateway: header names and status codes of the HTTP/2 CONNECT leg, the ALPNs, and the
//! length-prefixed [`TunnelHeader`](crate::v1::TunnelHeader)/[`TunnelResponse`] framing of the gateway ↔ gateway leg.
//!
//! It lives here rather than in the gateway crate so that the sidecar can use it without
//! depending on the gateway (which depends on the sidecar for its identity).
//!
//! Framing: a 2-byte big-endian length, then the protobuf-encoded message; at most
//! [`MAX_FRAME`] bytes of message, so a peer can never make a gateway buffer more than that
//! before it decides.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::v1::{TunnelResponse, TunnelStatus};

/// ALPN of the gateway ↔ gateway QUIC connections.
pub const ALPN_TUNNEL: &[u8] = b"strait-tunnel/1";
/// ALPN of the sidecar → local gateway connection (HTTP/2 CONNECT over mutual TLS).
pub const ALPN_H2: &[u8] = b"h2";
/// The only tunnel header version spoken today.
pub const TUNNEL_VERSION: u32 = 1;
/// Largest encoded header or response accepted or sent.
pub const MAX_FRAME: usize = 4096;

/// CONNECT request: the zone that must serve the tunnel (required).
pub const HEADER_TARGET_ZONE: &str = "x-strait-target-zone";
/// CONNECT response: the zone that served it.
pub const HEADER_SERVED_BY_ZONE: &str = "x-strait-served-by-zone";
/// CONNECT response: the endpoint instance that served it.
pub const HEADER_SERVED_BY_INSTANCE: &str = "x-strait-served-by-instance";
/// CONNECT refusal: the machine-readable code ([`status_code_name`]).
pub const HEADER_TUNNEL_STATUS: &str = "x-strait-tunnel-status";
/// CONNECT refusal: free text for humans and logs.
pub const HEADER_TUNNEL_REASON: &str = "x-strait-tunnel-reason";
/// CONNECT request: the route's label subset, `k=v,k2=v2` ([`encode_subset`]); the serving
/// zone picks only endpoints carrying every label.
pub const HEADER_SUBSET: &str = "x-strait-subset";
/// Most labels a subset may name.
pub const MAX_SUBSET_LABELS: usize = 16;
/// Longest label key or value accepted in a subset (Kubernetes' limit for a key with prefix).
pub const MAX_SUBSET_LABEL_LEN: usize = 317;
/// W3C trace context, passed through to the remote gateway.
pub const HEADER_TRACEPARENT: &str = "traceparent";
pub const HEADER_TRACESTATE: &str = "tracestate";

/// Every status, for tables and exhaustive tests.
pub const ALL_STATUSES: [TunnelStatus; 8] = [
    TunnelStatus::Ok,
    TunnelStatus::UnknownService,
    TunnelStatus::NotExported,
    TunnelStatus::NoHealthyUpstream,
    TunnelStatus::ZoneUnreachable,
    TunnelStatus::Denied,
    TunnelStatus::BadHeader,
    TunnelStatus::UnsupportedVersion,
];

/// The code of a status as carried in `x-strait-tunnel-status` and used as a metric label.
pub fn status_code_name(status: TunnelStatus) -> &'static str {
    match status {
        TunnelStatus::Ok => "ok",
        TunnelStatus::UnknownService => "unknown-service",
        TunnelStatus::NotExported => "not-exported",
        TunnelStatus::NoHealthyUpstream => "no-healthy-upstream",
        TunnelStatus::ZoneUnreachable => "zone-unreachable",
        TunnelStatus::Denied => "denied",
        TunnelStatus::BadHeader => "bad-header",
        TunnelStatus::UnsupportedVersion => "unsupported-version",
    }
}

/// The inverse of [`status_code_name`].
pub fn status_from_name(name: &str) -> Option<TunnelStatus> {
    ALL_STATUSES
        .into_iter()
        .find(|s| status_code_name(*s) == name)
}

/// The HTTP status a CONNECT answer carries for `status`.
pub fn http_status(status: TunnelStatus) -> u16 {
    match status {
        TunnelStatus::Ok => 200,
        TunnelStatus::UnknownService | TunnelStatus::NotExported => 404,
        TunnelStatus::NoHealthyUpstream | TunnelStatus::ZoneUnreachable => 503,
        TunnelStatus::Denied => 403,
        TunnelStatus::BadHeader | TunnelStatus::UnsupportedVersion => 400,
    }
}

/// Whether the caller should try another locality (the zone cannot serve now) rather than
/// treat the refusal as final for this request.
pub fn is_retriable_elsewhere(status: TunnelStatus) -> bool {
    matches!(
        status,
        TunnelStatus::UnknownService
            | TunnelStatus::NotExported
            | TunnelStatus::NoHealthyUpstream
            | TunnelStatus::ZoneUnreachable
    )
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the frame announces {len} bytes, more than the {MAX_FRAME}-byte limit")]
    TooLarge { len: usize },
    #[error("the frame is empty")]
    Empty,
    #[error("the frame does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("{extra} bytes follow the frame")]
    Trailing { extra: usize },
    #[error("the stream ended before a whole frame was read")]
    Truncated,
    #[error("reading the frame failed: {0}")]
    Io(std::io::Error),
}

/// `message` framed for the wire. Fails only when it encodes to more than [`MAX_FRAME`]
/// bytes (the other side would refuse it).
pub fn encode_frame<M: Message>(message: &M) -> Result<Vec<u8>, FrameError> {
    let len = message.encoded_len();
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    let mut out = Vec::with_capacity(2 + len);
    // `len <= MAX_FRAME < u16::MAX`.
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    message.encode_raw(&mut out);
    Ok(out)
}

/// Decodes one whole frame held in `bytes` (length prefix included); trailing bytes are an
/// error. For tests and fuzzing of the same rules [`read_frame`] applies.
pub fn decode_frame<M: Message + Default>(bytes: &[u8]) -> Result<M, FrameError> {
    let [a, b, rest @ ..] = bytes else {
        return Err(FrameError::Truncated);
    };
    let len = usize::from(u16::from_be_bytes([*a, *b]));
    check_len(len)?;
    if rest.len() < len {
        return Err(FrameError::Truncated);
    }
    if rest.len() > len {
        return Err(FrameError::Trailing {
            extra: rest.len() - len,
        });
    }
    Ok(M::decode(rest)?)
}

fn check_len(len: usize) -> Result<(), FrameError> {
    if len == 0 {
        // A header always carries its version; responses are built with [`response`], which
        // never encodes to nothing. An empty frame is a peer that does not speak the protocol.
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok(())
}

/// Reads one frame from `reader`. Never reads past the frame, never buffers more than
/// [`MAX_FRAME`] bytes, and reports a too-large announcement before reading its body.
pub async fn read_frame<M, R>(reader: &mut R) -> Result<M, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; 2];
    reader.read_exact(&mut prefix).await.map_err(io_error)?;
    let len = usize::from(u16::from_be_bytes(prefix));
    check_len(len)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(io_error)?;
    Ok(M::decode(body.as_slice())?)
}

fn io_error(err: std::io::Error) -> FrameError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(err)
    }
}

/// A response frame. An OK response with no other field encodes to zero bytes, which the
/// reader refuses as empty, so responses always carry a reason or the serving zone; this
/// helper fills a placeholder reason when both are empty.
pub fn response(
    status: TunnelStatus,
    reason: impl Into<String>,
    served_by_zone: impl Into<String>,
    served_by_instance: impl Into<String>,
) -> TunnelResponse {
    let mut r = TunnelResponse {
        status: status as i32,
        reason: reason.into(),
        served_by_zone: served_by_zone.into(),
        served_by_instance: served_by_instance.into(),
    };
    if r.encoded_len() == 0 {
        r.reason = status_code_name(status).to_owned();
    }
    r
}

/// The status of a decoded response; an unknown number (a newer peer) is treated as a
/// refusal the caller does not understand: `BadHeader`.
pub fn response_status(response: &TunnelResponse) -> TunnelStatus {
    TunnelStatus::try_from(response.status).unwrap_or(TunnelStatus::BadHeader)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::v1::{ServiceRef, TraceContext, TunnelHeader};

    fn header() -> TunnelHeader {
        TunnelHeader {
            version: TUNNEL_VERSION,
            service: Some(ServiceRef {
                namespace: "demo".into(),
                name: "echo".into(),
            }),
            port: 8080,
            source_zone: "a".into(),
            target_zone: "b".into(),
            trace: Some(TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: String::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn status_names_round_trip_and_map_to_http() {
        for s in ALL_STATUSES {
            assert_eq!(status_from_name(status_code_name(s)), Some(s));
        }
        assert_eq!(status_from_name("nope"), None);
        assert_eq!(http_status(TunnelStatus::UnknownService), 404);
        assert_eq!(http_status(TunnelStatus::NotExported), 404);
        assert_eq!(http_status(TunnelStatus::NoHealthyUpstream), 503);
        assert_eq!(http_status(TunnelStatus::ZoneUnreachable), 503);
        assert_eq!(http_status(TunnelStatus::Denied), 403);
        assert_eq!(http_status(TunnelStatus::BadHeader), 400);
        assert_eq!(http_status(TunnelStatus::UnsupportedVersion), 400);
        assert!(is_retriable_elsewhere(TunnelStatus::ZoneUnreachable));
        assert!(!is_retriable_elsewhere(TunnelStatus::Denied));
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_stream() {
        let mut wire = encode_frame(&header()).unwrap();
        let resp = response(TunnelStatus::Ok, "", "", "");
        wire.extend(encode_frame(&resp).unwrap());
        wire.extend_from_slice(b"tls bytes follow");
        let mut reader = wire.as_slice();
        let got: TunnelHeader = read_frame(&mut reader).await.unwrap();
        assert_eq!(got, header());
        let got: TunnelResponse = read_frame(&mut reader).await.unwrap();
        assert_eq!(response_status(&got), TunnelStatus::Ok);
        assert_eq!(
            reader, b"tls bytes follow",
            "nothing past the frames was read"
        );
        assert_eq!(
            decode_frame::<TunnelHeader>(&encode_frame(&header()).unwrap()).unwrap(),
            header()
        );
    }

    #[tokio::test]
    async fn limits_and_truncation_are_errors() {
        let mut big = header();
        big.trace = Some(TraceContext {
            traceparent: "x".repeat(MAX_FRAME),
            tracestate: String::new(),
        });
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
        // A too-large announcement is refused before its body arrives.
        let mut reader: &[u8] = &[0xff, 0xff];
        let err = read_frame::<TunnelHeader, _>(&mut reader)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 65535 }), "{err}");
        let mut reader: &[u8] = &[0x00, 0x00];
        assert!(matches!(
            read_frame::<TunnelHeader, _>(&mut reader).await,
            Err(FrameError::Empty)
        ));
        let mut reader: &[u8] = &[0x00, 0x05, 0x08];
        assert!(matches!(
            read_frame::<TunnelHeader, _>(&mut reader).await,
            Err(FrameError::Truncated)
        ));
        let mut reader: &[u8] = &[0x00, 0x02, 0xff, 0xff];
        assert!(matches!(
            read_frame::<TunnelHeader, _>(&mut reader).await,
            Err(FrameError::Decode(_))
        ));
    }

    /// A tiny deterministic generator (xorshift), so the fuzz loop needs no extra crate and
    /// every failure is reproducible from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    /// Random and mutated frames never panic the decoders: every input is a value or an error.
    #[tokio::test]
    async fn fuzz_decoders_never_panic() {
        let valid = encode_frame(&header()).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let mut input = if round % 2 == 0 {
                let mut v = valid.clone();
                for _ in 0..=rng.below(6) {
                    match rng.below(4) {
                        0 if !v.is_empty() => {
                            let i = rng.below(v.len());
                            v[i] = rng.next() as u8;
                        }
                        1 if !v.is_empty() => {
                            v.truncate(rng.below(v.len()));
                        }
                        2 => v.insert(rng.below(v.len() + 1), rng.next() as u8),
                        _ => {
                            let i = rng.below(v.len() + 1);
                            let n = rng.below(16);
                            for _ in 0..n {
                                v.insert(i, rng.next() as u8);
                            }
                        }
                    }
                }
                v
            } else {
                let len = rng.below(64);
                (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
            };
            if round % 7 == 0 && input.len() >= 2 {
                // Keep the length prefix consistent so the protobuf decoder sees the bytes.
                let body = u16::try_from(input.len() - 2).unwrap_or(0).to_be_bytes();
                input[..2].copy_from_slice(&body);
            }
            let _ = decode_frame::<TunnelHeader>(&input);
            let _ = decode_frame::<TunnelResponse>(&input);
            let mut reader = input.as_slice();
            let _ = read_frame::<TunnelHeader, _>(&mut reader).await;
        }
    }
}

/// A label subset as the value of [`HEADER_SUBSET`]: `k=v` pairs joined by `,`, in key order.
/// Label keys and values never hold `=` or `,` (see [`parse_subset`]), so this is unambiguous.
pub fn encode_subset<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut pairs: Vec<(&String, &String)> = labels.into_iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`encode_subset`], for input from a peer; the labels pass [`check_subset`].
pub fn parse_subset(value: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = std::collections::BTreeMap::new();
    if value.is_empty() {
        return Ok(labels);
    }
    for pair in value.split(',') {
        let (key, val) = pair
            .split_once('=')
            .ok_or_else(|| format!("subset entry {pair:?} is not key=value"))?;
        if labels.insert(key.to_owned(), val.to_owned()).is_some() {
            return Err(format!("subset label {key:?} appears twice"));
        }
    }
    check_subset(&labels)?;
    Ok(labels)
}

/// Whether labels can be a subset on the wire: at most [`MAX_SUBSET_LABELS`], keys of
/// letters, digits, `.`, `_`, `-` and `/`, values of letters, digits, `.`, `_` and `-` (empty
/// allowed), each at most [`MAX_SUBSET_LABEL_LEN`] bytes. For subsets that arrive already as a
/// map (a tunnel header, a zone's report).
pub fn check_subset<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    for (count, (key, val)) in labels.into_iter().enumerate() {
        if count == MAX_SUBSET_LABELS {
            return Err(format!("a subset names at most {MAX_SUBSET_LABELS} labels"));
        }
        let key_ok = !key.is_empty()
            && key.len() <= MAX_SUBSET_LABEL_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(format!("subset label key {key:?} is invalid"));
        }
        let value_ok = val.len() <= MAX_SUBSET_LABEL_LEN
            && val
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !value_ok {
            return Err(format!("subset label value {val:?} is invalid"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod subset_tests {
    use super::*;

    #[test]
    fn subsets_round_trip_and_bad_ones_are_refused() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("version".to_owned(), "v2".to_owned()),
            ("app.kubernetes.io/tier".to_owned(), "back_end-1".to_owned()),
        ]
        .into();
        let text = encode_subset(&labels);
        assert_eq!(text, "app.kubernetes.io/tier=back_end-1,version=v2");
        assert_eq!(parse_subset(&text).unwrap(), labels);
        assert!(parse_subset("").unwrap().is_empty());
        for bad in [
            "version",
            "=v2",
            "version=v 2",
            "version=v2,version=v3",
            "k=v,",
            "k=a=b",
            "k\n=v",
        ] {
            assert!(parse_subset(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_SUBSET_LABELS).map(|i| format!("k{i}=v")).collect();
        assert!(parse_subset(&many.join(",")).is_err());
    }
}
