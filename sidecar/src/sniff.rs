//! The protocol sniffer: the first bytes of a plaintext connection say whether it is HTTP
//! (an HTTP/1.x request line or the HTTP/2 preface) or opaque TCP. Used by the outbound
//! listeners and by the inbound side's PERMISSIVE plaintext connections; it sits below both
//! so neither imports the other for it.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long a connection may stay silent before it is taken as TCP.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(300);

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    Http,
    Tcp,
    /// Too few bytes to tell yet.
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Classifies a connection by its first bytes: an HTTP/1.x method and a space, or the
/// HTTP/2 connection preface, is HTTP; a prefix of one of them needs more bytes; anything
/// else is TCP.
pub fn sniff(bytes: &[u8]) -> Sniff {
    if bytes.is_empty() {
        return Sniff::NeedMore;
    }
    let mut need_more = false;
    for pattern in METHODS.iter().copied().chain([H2_PREFACE]) {
        let n = bytes.len().min(pattern.len());
        if bytes[..n] == pattern[..n] {
            if n == pattern.len() {
                return Sniff::Http;
            }
            need_more = true;
        }
    }
    if need_more {
        Sniff::NeedMore
    } else {
        Sniff::Tcp
    }
}

/// Peeks at the first bytes until [`sniff`] can tell, or [`SNIFF_TIMEOUT`] passes (TCP).
/// `None` when the client closed without sending anything.
pub(crate) async fn sniff_stream(tcp: &TcpStream) -> Option<Sniff> {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0_u8; 24];
    loop {
        let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await;
        match peeked {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Err(_) => return Some(Sniff::Tcp),
            Ok(Ok(n)) => match sniff(&buf[..n]) {
                Sniff::NeedMore => {
                    if tokio::time::Instant::now() >= deadline {
                        return Some(Sniff::Tcp);
                    }
                    // The bytes so far stay readable, so `peek` would return at once: wait.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                decided => return Some(decided),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_http_from_tcp() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http);
        assert_eq!(sniff(b"POST /x HTTP/1.0\r\n"), Sniff::Http);
        assert_eq!(sniff(b"OPTIONS * HTTP/1.1"), Sniff::Http);
        assert_eq!(sniff(H2_PREFACE), Sniff::Http);
        assert_eq!(sniff(b"GE"), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HT"), Sniff::NeedMore);
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"GETX"), Sniff::Tcp);
        assert_eq!(sniff(b"get / HTTP/1.1"), Sniff::Tcp);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniff::Tcp);
        assert_eq!(sniff(b"hello tcp\n"), Sniff::Tcp);
        assert_eq!(sniff(b"PRI * HTTP/1.1"), Sniff::Tcp);
    }
}
