//! QUIC setup between gateways: transport parameters (keepalive and idle timeout that detect a
//! dead peer in under 3 s), TLS configs with resumption and 0-RTT, the endpoint on a socket the
//! caller bound, and re-verification of a peer after the handshake.
//!
//! # 0-RTT and client authentication
//!
//! rustls accepts 0-RTT with client certificates: with *stateful* resumption (the gateway's
//! server keeps sessions in memory) the client's certificate chain is restored from the
//! session, so the server knows who sent the early data at the first flight. It is not
//! verified again by rustls, so every connection — full or resumed — is re-verified here
//! against the trust bundle and the config in force *now* ([`reverify_peer`]): a removed root
//! or a newly denied zone takes effect on resumed connections too. Early data can be replayed
//! by someone who captured it; what a tunnel sends in it (a header naming a service, then the
//! sidecar's TLS ClientHello) is idempotent: a replay opens a connection to a service whose TLS
//! handshake the attacker cannot complete.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::{CertificateDer, UnixTime};
use strait_proto::tunnel::ALPN_TUNNEL;
use strait_trust::tls::{Authorize, CredentialStore, PeerRole, TrustStore};
use strait_trust::{AllowExactly, SpiffeId};

/// Keepalive pings on every peer connection: three are missed before the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_millis(750);
/// A peer silent for this long is dead: its connection closes and its tunnels fail.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(2500);
/// Tunnels one peer connection may carry at once in each direction.
const MAX_STREAMS: u32 = 10_000;

/// Why QUIC could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("building the QUIC TLS config: {0}")]
    Tls(#[from] strait_trust::Error),
    #[error("the TLS config has no QUIC initial cipher suite: {0}")]
    CipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("binding the QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// Transport parameters shared by both sides.
pub fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // 2.5 s fits a VarInt of milliseconds; the fallback is never taken.
    t.max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(t)
}

/// The server side: peers are checked by `authorizer` during full handshakes.
pub fn server_config(
    creds: &CredentialStore,
    trust: &TrustStore,
    authorizer: Arc<dyn Authorize>,
) -> Result<quinn::ServerConfig, QuicError> {
    let tls = strait_trust::tls::quic_server_config(
        creds,
        trust,
        authorizer,
        vec![ALPN_TUNNEL.to_vec()],
    )?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport());
    Ok(config)
}

/// The client side for dialing gateways of `zone`. Keep one per zone: the resumption tickets
/// that make 0-RTT possible live in it.
pub fn client_config(
    creds: &CredentialStore,
    trust: &TrustStore,
    peer: &SpiffeId,
) -> Result<quinn::ClientConfig, QuicError> {
    let tls = strait_trust::tls::quic_client_config(
        creds,
        trust,
        Arc::new(AllowExactly(vec![peer.clone()])),
        vec![ALPN_TUNNEL.to_vec()],
    )?;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport());
    Ok(config)
}

/// A QUIC endpoint (server and client) on `socket`, which the caller bound. Logs whether the
/// kernel offers GSO, which quinn then uses on its own.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
) -> Result<quinn::Endpoint, QuicError> {
    let gso = quinn::udp::UdpSocketState::new((&socket).into())
        .map(|s| s.max_gso_segments())
        .unwrap_or(1);
    let addr = socket.local_addr()?;
    if gso > 1 {
        tracing::info!(%addr, max_gso_segments = gso, "QUIC endpoint: UDP GSO available");
    } else {
        tracing::info!(%addr, "QUIC endpoint: UDP GSO not available; one datagram per send");
    }
    socket.set_nonblocking(true)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(endpoint)
}

/// A TLS server name for a peer address: ignored by the SPIFFE verifier, but it keys the
/// client's resumption tickets, so each peer gets its own.
pub fn server_name(zone: &str, address: &str) -> String {
    let label: String = address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let zone: String = zone.chars().take(63).collect();
    format!("{}.{zone}.gateway.strait.invalid", label.trim_matches('-'))
}

/// The peer's certificate chain on `conn`, if the handshake has got that far.
pub fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

/// Verifies `chain` again, now, against `trust` and `authorizer` (see the module docs on
/// resumption). Returns the peer's SPIFFE ID.
pub fn reverify_peer(
    chain: &[CertificateDer<'static>],
    trust: &TrustStore,
    role: PeerRole,
    authorizer: &dyn Authorize,
) -> Result<SpiffeId, String> {
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| "the peer presented no certificate".to_owned())?;
    let provider = strait_trust::tls::crypto_provider();
    strait_trust::tls::verify_peer(
        &trust.current(),
        leaf,
        rest,
        UnixTime::now(),
        role,
        authorizer,
        &provider,
    )
    .map(|peer| peer.id)
    .map_err(|e| strait_trust::tls::refusal(&e).map_or_else(|| e.to_string(), ToString::to_string))
}

/// Resolves `address` (`host:port`) to the first socket address.
pub async fn resolve(address: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{address} resolves to nothing"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_valid_and_distinct() {
        let a = server_name("b", "127.0.0.1:4433");
        let b = server_name("b", "127.0.0.1:4434");
        assert_ne!(a, b);
        for name in [a, b, server_name("b", "[::1]:1")] {
            assert!(
                rustls_pki_types::ServerName::try_from(name.as_str()).is_ok(),
                "{name}"
            );
        }
    }
}
