//! Carrying the gRPC services over Strait's own mutual TLS.
//!
//! tonic's built-in TLS takes a CA bundle but no custom certificate verifier, and Strait's peers
//! are checked by SPIFFE identity (see `strait-trust`). So TLS is terminated here with a
//! caller-built `rustls` config, and tonic is handed already-encrypted streams: a connector for
//! clients, an incoming stream for servers. The peer's certificate chain reaches handlers
//! through tonic's `TlsConnectInfo` request extension ([`peer_certificates`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Channel, Endpoint};

/// SNI sent to Strait servers. Certificates carry SPIFFE URIs, not DNS names, so the verifier
/// ignores it; it only has to be a syntactically valid name.
const SNI: &str = "strait.invalid";

/// How long a TLS handshake may take before the connection is dropped, so that a peer that
/// opens sockets and says nothing cannot hold server resources.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazily connecting gRPC channel to `addr` (`host:port`, resolved at each connect so a
/// Kubernetes DNS name follows its pod) over mutual TLS with `tls`.
///
/// `tls` must offer ALPN `h2`. Connection failures surface as `tonic::Status::unavailable` on
/// the call, and the channel reconnects on the next call.
pub fn channel(addr: &str, tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> Channel {
    let addr: Arc<str> = Arc::from(addr);
    // The URI is only a label for tonic; the connector decides where to dial.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1"))
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tls.clone();
        let addr = addr.clone();
        async move {
            let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(&*addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    )
                })??;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(SNI).map_err(std::io::Error::other)?;
            let stream = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TLS handshake with {addr} timed out"),
                )
            })??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint.connect_with_connector_lazy(connector)
}

/// Accepts TCP connections on `listener` and yields them once their TLS handshake with `tls`
/// succeeded, for `tonic::transport::Server::serve_with_incoming`.
///
/// Handshakes run concurrently, each in its own task, so one slow or hostile client never delays
/// the others; failed handshakes are logged and dropped (tonic would stop serving on an error
/// item). The stream ends when the listener fails permanently.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // EMFILE and friends are transient: back off instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The certificate chain the client presented on this request's connection (leaf first), or
/// `None` when it presented none.
pub fn peer_certificates<T>(
    request: &tonic::Request<T>,
) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .filter(|certs| !certs.is_empty())
}

/// The client's socket address on this request's connection.
pub fn peer_address<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
}

/// Largest control-plane message accepted or sent (federation snapshots, inventories, sidecar
/// configs). tonic's 4 MiB default is reached at about 60,000 services across a federation;
/// this leaves room for ten times that while still bounding what a peer can make us buffer.
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024 * 1024;

/// How long a stopping server lets in-flight requests finish before it closes what is left.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `serve` (a tonic server with graceful shutdown on `stopping`) to completion, but once
/// `stopping` has resolved, waits at most `drain` for it.
///
/// Graceful shutdown waits for every in-flight request, and Strait's long-lived streams (zone
/// sync, sidecar discovery) never finish on their own: without a bound a stopping process
/// would hang until killed. Dropping the server closes those streams; their clients reconnect
/// elsewhere, which is what they do for any broken stream.
pub async fn serve_with_drain<E>(
    serve: impl std::future::Future<Output = Result<(), E>>,
    stopping: impl std::future::Future<Output = ()>,
    drain: Duration,
) -> Result<(), E> {
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result,
        () = async { stopping.await; tokio::time::sleep(drain).await } => {
            tracing::info!(?drain, "closing streams still open after the drain period");
            Ok(())
        }
    }
}
