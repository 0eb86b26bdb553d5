//! Mutual TLS connections from this sidecar to other sidecars: directly in this zone, and
//! through this zone's east-west gateways to other zones.
//!
//! - **Same zone**: TCP + TLS to the endpoint's inbound listener, whose certificate must be
//!   the endpoint's SPIFFE ID. HTTP goes on one pooled HTTP/2 connection per endpoint; TCP
//!   (ALPN `strait-tcp`) gets a fresh connection each time.
//! - **Another zone** ([`Remote`]): an HTTP/2 `CONNECT` to one of this zone's gateways (one
//!   pooled mTLS connection per gateway, `spiffe://TD/zone/ZONE/gateway` required, ALPN `h2`;
//!   see `docs/gateway.md` for the protocol), `:authority` = `NAME.NAMESPACE:PORT`, the zone in
//!   `x-strait-target-zone`. The remote gateway picks an endpoint and pipes bytes; this sidecar
//!   then runs its **own** TLS through the tunnel to the destination sidecar, requiring one of
//!   the service's identities in that zone: gateways only ever see TLS records. HTTP rides one
//!   pooled HTTP/2 connection per (zone, service, port) inside such a tunnel; TCP gets a
//!   tunnel per connection.
//!
//! **`CircuitBreaker.maxConnections`**: a connection opened for a service carries an
//! [`OwnedPermit`] of that service's connection counter, given back when the connection ends
//! (its driver task finishes, or the TCP stream is dropped). The gateway connections tunnels
//! ride on are shared by every service and carry none; each tunnel counts as one connection of
//! its service. The callers check the limit before they ask for a new connection, and find an
//! open pooled one without waiting ([`Pool::open_sender`], [`Pool::open_remote_sender`]).
//!
//! A gateway that refuses a tunnel says why ([`TunnelStatus`], e.g. `zone-unreachable`): the
//! caller counts it as a connect failure (so the balancer moves to the next locality) and
//! shows the code to the app when nothing else answers. Local gateways are tried in turn: one
//! that cannot be reached is skipped, a refusal is final (the others would hear the same from
//! the remote zone).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_proto::TunnelStatus;
use strait_proto::tunnel as wire;
use strait_trust::tls::{CredentialStore, TrustStore};
use strait_trust::{AllowExactly, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::h2body::BoxError;
use crate::h2client::{self, Sender};
use crate::headers::ALPN_H2;
use crate::limits::breaker::{Counter, OwnedPermit};

/// The request and response bodies the outbound side moves.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// HTTP/2 keepalive pings on pooled connections to this zone's sidecars and gateways, to notice
/// a dead peer (a process that dies is noticed at once: its socket is reset).
const H2_KEEPALIVE: Duration = Duration::from_secs(10);
/// Keepalive on connections through a tunnel: a path to another zone can go silent (a
/// partition, a gateway lost) with nothing reset, and every request on it would wait.
const TUNNEL_KEEPALIVE: Duration = Duration::from_secs(1);
/// The name handed to rustls; SPIFFE certificates carry none, the verifier ignores it.
const SERVER_NAME: &str = "strait.invalid";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("invalid SPIFFE ID {0:?}")]
    Identity(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] strait_trust::Error),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("the server did not agree to ALPN {0}")]
    Alpn(String),
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("no east-west gateway in this zone: other zones cannot be reached")]
    NoGateway,
    #[error("the gateway refused the tunnel: {}: {reason}", wire::status_code_name(*status))]
    Refused {
        status: TunnelStatus,
        reason: String,
    },
    #[error("the gateway answered the tunnel with HTTP {0} and no tunnel status")]
    BadGatewayAnswer(StatusCode),
    #[error("maxConnections reached: no new connection may be opened for this service")]
    Overflow,
}

impl ConnectError {
    /// The `x-strait-error` value for a request that failed with this error and nothing else.
    pub(crate) fn error_code(&self) -> &'static str {
        match self {
            ConnectError::Refused { status, .. } => wire::status_code_name(*status),
            ConnectError::NoGateway => "no-gateway",
            ConnectError::Overflow => "overflow",
            _ => "no-healthy-upstream",
        }
    }
}

type TlsStream<IO> = tokio_rustls::client::TlsStream<IO>;
/// TLS client configs by (accepted SPIFFE IDs, space separated; ALPN).
type TlsKey = (String, &'static [u8]);
/// A pooled connection for an identity (or identities, space separated).
type Slot<S> = Arc<tokio::sync::Mutex<Option<(String, S)>>>;
/// To gateways: hyper's client, for its `CONNECT` upgrades.
type GatewaySender = SendRequest<Body>;

/// A pooled connection's handle.
trait Pooled: Clone {
    fn is_closed(&self) -> bool;
}

impl Pooled for Sender {
    fn is_closed(&self) -> bool {
        Sender::is_closed(self)
    }
}

impl Pooled for GatewaySender {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

/// What a pool slot holds for a target, looked up without waiting.
pub(crate) enum Lookup {
    /// An open connection for the right identity.
    Open(Sender),
    /// Someone is connecting (or holds the slot this instant): wait for it and share it.
    Busy,
    /// Nothing usable: a new connection is needed.
    Vacant,
}

/// What a new pooled connection holds for its life: a place in its service's
/// `maxConnections`.
pub(crate) enum ConnPermit {
    /// Taken by the caller, which saw that a connection was needed.
    Held(OwnedPermit),
    /// To take from this counter (against this limit) only if a connection must be opened:
    /// for callers that found a connect under way and expect to share it.
    Later(Arc<Counter>, Option<u32>),
}

impl ConnPermit {
    fn take(self) -> Result<OwnedPermit, ConnectError> {
        match self {
            ConnPermit::Held(permit) => Ok(permit),
            ConnPermit::Later(counter, max) => {
                counter.acquire_owned(max).ok_or(ConnectError::Overflow)
            }
        }
    }
}

/// A service in another zone, reached through this zone's gateways.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote<'a> {
    pub zone: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub port: u16,
    /// Whom the TLS through the tunnel may reach (the service's identities there).
    pub identities: &'a [String],
    /// This zone's gateways (HTTP/2 CONNECT addresses).
    pub gateways: &'a [String],
    /// Who those gateways must be: `spiffe://TD/zone/THIS_ZONE/gateway`.
    pub gateway_id: &'a str,
    /// The route's label subset (the tunnel header's form): the remote zone serves the
    /// tunnel from an endpoint in it. `None`: any endpoint.
    pub subset: Option<&'a str>,
}

impl Remote<'_> {
    /// A tunnel ends at one remote endpoint, so connections are pooled per subset too: a v2
    /// request must never ride a tunnel to a v1 instance.
    fn pool_key(&self) -> String {
        format!(
            "{}/{}/{}:{}#{}",
            self.zone,
            self.namespace,
            self.name,
            self.port,
            self.subset.unwrap_or("")
        )
    }
}

/// See the module docs.
pub(crate) struct Pool {
    creds: CredentialStore,
    trust: TrustStore,
    /// To endpoints of this zone, by address.
    h2: Mutex<HashMap<String, Slot<Sender>>>,
    /// To this zone's gateways, by address.
    gateways: Mutex<HashMap<String, Slot<GatewaySender>>>,
    /// Through tunnels, by [`Remote::pool_key`].
    tunnelled: Mutex<HashMap<String, Slot<Sender>>>,
    tls: Mutex<HashMap<TlsKey, Arc<rustls::ClientConfig>>>,
    /// Spreads tunnels over the zone's gateways.
    next_gateway: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The slot of `key` in `slots`, made empty when there is none yet.
fn slot<S>(slots: &Mutex<HashMap<String, Slot<S>>>, key: &str) -> Slot<S> {
    lock(slots).entry(key.to_owned()).or_default().clone()
}

impl Pool {
    pub(crate) fn new(creds: CredentialStore, trust: TrustStore) -> Self {
        Self {
            creds,
            trust,
            h2: Mutex::default(),
            gateways: Mutex::default(),
            tunnelled: Mutex::default(),
            tls: Mutex::default(),
            next_gateway: AtomicUsize::new(0),
        }
    }

    /// Drops pooled connections to addresses (endpoints, gateways) no longer in the config,
    /// and tunnelled ones to zones no longer in it.
    pub(crate) fn retain(&self, addresses: &HashSet<String>, zones: &HashSet<String>) {
        lock(&self.h2).retain(|a, _| addresses.contains(a));
        lock(&self.gateways).retain(|a, _| addresses.contains(a));
        lock(&self.tunnelled).retain(|key, _| {
            key.split_once('/')
                .is_some_and(|(zone, _)| zones.contains(zone))
        });
    }

    pub(crate) fn forget(&self, address: &str) {
        lock(&self.h2).remove(address);
    }

    fn forget_gateway(&self, address: &str) {
        lock(&self.gateways).remove(address);
    }

    pub(crate) fn forget_remote(&self, remote: &Remote<'_>) {
        lock(&self.tunnelled).remove(&remote.pool_key());
    }

    /// A client config that accepts exactly `ids`, with `alpn`.
    fn tls_config(
        &self,
        ids: &[&str],
        alpn: &'static [u8],
    ) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
        let key = (ids.join(" "), alpn);
        let mut cache = lock(&self.tls);
        if let Some(config) = cache.get(&key) {
            return Ok(config.clone());
        }
        let parsed = ids
            .iter()
            .map(|id| {
                id.parse::<SpiffeId>()
                    .map_err(|_| ConnectError::Identity((*id).to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = Arc::new(strait_trust::client_config(
            &self.creds,
            &self.trust,
            Arc::new(AllowExactly(parsed)),
            vec![alpn.to_vec()],
        )?);
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// TLS over `io` to a server that must be one of `ids` and agree to `alpn`.
    async fn tls<IO>(
        &self,
        io: IO,
        ids: &[&str],
        alpn: &'static [u8],
    ) -> Result<TlsStream<IO>, ConnectError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.tls_config(ids, alpn)?;
        let name = rustls_pki_types::ServerName::try_from(SERVER_NAME)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, io)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(alpn) {
            return Err(ConnectError::Alpn(
                String::from_utf8_lossy(alpn).into_owned(),
            ));
        }
        Ok(tls)
    }

    /// A new mutual TLS connection to `address`, whose certificate must be `spiffe_id`.
    pub(crate) async fn connect(
        &self,
        address: &str,
        spiffe_id: &str,
        alpn: &'static [u8],
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let connect = async {
            let tcp = TcpStream::connect(address).await?;
            let _ = tcp.set_nodelay(true);
            self.tls(tcp, &[spiffe_id], alpn).await
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    /// The pooled HTTP/2 connection to `address` if one is open for `spiffe_id` and free
    /// this instant (no connect under way): the fast path, without waiting.
    pub(crate) fn open_sender(&self, address: &str, spiffe_id: &str) -> Lookup {
        let slots = lock(&self.h2);
        slots.get(address).map_or(Lookup::Vacant, |slot| {
            look_up(slot, |held| held == spiffe_id)
        })
    }

    /// The pooled HTTP/2 connection to the endpoint at `address`, opened when there is none
    /// (or it closed). A new connection holds `permit` for its life.
    pub(crate) async fn sender(
        &self,
        address: &str,
        spiffe_id: &str,
        timeout: Duration,
        permit: ConnPermit,
    ) -> Result<Sender, ConnectError> {
        let slot = slot(&self.h2, address);
        pooled(
            &slot,
            |held| held == spiffe_id,
            spiffe_id,
            move || async move {
                let permit = permit.take()?;
                let tls = self.connect(address, spiffe_id, ALPN_H2, timeout).await?;
                Ok(h2client::handshake(tls, address.to_owned(), H2_KEEPALIVE, permit).await?)
            },
        )
        .await
    }

    /// The pooled HTTP/2 connection to the gateway at `address`, which must be `spiffe_id`.
    /// Shared by every service: it holds no `maxConnections` permit.
    async fn gateway_sender(
        &self,
        address: &str,
        spiffe_id: &str,
        timeout: Duration,
    ) -> Result<GatewaySender, ConnectError> {
        let slot = slot(&self.gateways, address);
        pooled(
            &slot,
            |held| held == spiffe_id,
            spiffe_id,
            move || async move {
                let tls = self.connect(address, spiffe_id, ALPN_H2, timeout).await?;
                gateway_handshake(tls, address.to_owned()).await
            },
        )
        .await
    }

    /// A tunnel to `remote` through one of this zone's gateways: the raw byte stream to the
    /// endpoint the remote gateway picked.
    async fn tunnel(
        &self,
        remote: &Remote<'_>,
        timeout: Duration,
    ) -> Result<Upgraded, ConnectError> {
        if remote.gateways.is_empty() {
            return Err(ConnectError::NoGateway);
        }
        let start = self.next_gateway.fetch_add(1, Ordering::Relaxed);
        let mut last = ConnectError::NoGateway;
        for i in 0..remote.gateways.len() {
            let gateway = &remote.gateways[(start + i) % remote.gateways.len()];
            match self.tunnel_via(gateway, remote, timeout).await {
                Ok(io) => return Ok(io),
                Err(err @ (ConnectError::Refused { .. } | ConnectError::BadGatewayAnswer(_))) => {
                    return Err(err);
                }
                Err(err) => {
                    tracing::debug!(%gateway, %err, "local gateway unusable; trying the next");
                    self.forget_gateway(gateway);
                    last = err;
                }
            }
        }
        Err(last)
    }

    async fn tunnel_via(
        &self,
        gateway: &str,
        remote: &Remote<'_>,
        timeout: Duration,
    ) -> Result<Upgraded, ConnectError> {
        let open = async {
            let mut sender = self
                .gateway_sender(gateway, remote.gateway_id, timeout)
                .await?;
            sender.ready().await?;
            let mut request = Request::builder()
                .method(Method::CONNECT)
                .uri(format!(
                    "{}.{}:{}",
                    remote.name, remote.namespace, remote.port
                ))
                .header(wire::HEADER_TARGET_ZONE, remote.zone);
            if let Some(subset) = remote.subset.filter(|s| !s.is_empty()) {
                request = request.header(wire::HEADER_SUBSET, subset);
            }
            let request = request
                .body(
                    Empty::<Bytes>::new()
                        .map_err(|never: Infallible| match never {})
                        .boxed(),
                )
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let response = sender.send_request(request).await?;
            if response.status() == StatusCode::OK {
                return Ok(hyper::upgrade::on(response).await?);
            }
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            match header(wire::HEADER_TUNNEL_STATUS).and_then(|s| wire::status_from_name(&s)) {
                Some(status) => Err(ConnectError::Refused {
                    status,
                    reason: header(wire::HEADER_TUNNEL_REASON).unwrap_or_default(),
                }),
                None => Err(ConnectError::BadGatewayAnswer(response.status())),
            }
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    /// TLS through a new tunnel to one of `remote`'s identities, with `alpn`.
    pub(crate) async fn connect_remote(
        &self,
        remote: &Remote<'_>,
        alpn: &'static [u8],
        timeout: Duration,
    ) -> Result<TlsStream<TokioIo<Upgraded>>, ConnectError> {
        let io = self.tunnel(remote, timeout).await?;
        let ids: Vec<&str> = remote.identities.iter().map(String::as_str).collect();
        if ids.is_empty() {
            return Err(ConnectError::Identity(format!(
                "no identity is known for {}/{} in zone {}",
                remote.namespace, remote.name, remote.zone
            )));
        }
        tokio::time::timeout(timeout, self.tls(TokioIo::new(io), &ids, alpn))
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    /// [`Pool::open_sender`] for `remote`, through a tunnel.
    pub(crate) fn open_remote_sender(&self, remote: &Remote<'_>) -> Lookup {
        let slots = lock(&self.tunnelled);
        slots
            .get(&remote.pool_key())
            .map_or(Lookup::Vacant, |slot| {
                look_up(slot, |held| joined_eq(held, remote.identities))
            })
    }

    /// The pooled HTTP/2 connection to `remote` through a tunnel. A new connection holds
    /// `permit` for its life.
    pub(crate) async fn remote_sender(
        &self,
        remote: &Remote<'_>,
        timeout: Duration,
        permit: ConnPermit,
    ) -> Result<Sender, ConnectError> {
        let key = remote.pool_key();
        let slot = slot(&self.tunnelled, &key);
        let ids = remote.identities.join(" ");
        pooled(
            &slot,
            |held| held == ids,
            &ids,
            move || async move {
                let permit = permit.take()?;
                let tls = self.connect_remote(remote, ALPN_H2, timeout).await?;
                Ok(h2client::handshake(tls, key, TUNNEL_KEEPALIVE, permit).await?)
            },
        )
        .await
    }
}

/// Whether `held` is `ids` joined by single spaces (without allocating the join).
fn joined_eq(held: &str, ids: &[String]) -> bool {
    if ids.is_empty() {
        return held.is_empty();
    }
    let mut parts = held.split(' ');
    ids.iter().all(|id| parts.next() == Some(id.as_str())) && parts.next().is_none()
}

/// What `slot` holds for an id `matches` accepts, without waiting.
fn look_up(slot: &Slot<Sender>, matches: impl Fn(&str) -> bool) -> Lookup {
    let Ok(guard) = slot.try_lock() else {
        return Lookup::Busy;
    };
    match guard.as_ref() {
        Some((held, sender)) if matches(held) && !sender.is_closed() => {
            Lookup::Open(sender.clone())
        }
        _ => Lookup::Vacant,
    }
}

/// The connection in `slot` if it is open and was made for an id `matches` accepts (`id`),
/// else a new one from `connect`. One connect per slot at a time: concurrent callers wait for
/// it and share it.
async fn pooled<S, F, Fut>(
    slot: &Slot<S>,
    matches: impl Fn(&str) -> bool,
    id: &str,
    connect: F,
) -> Result<S, ConnectError>
where
    S: Pooled,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<S, ConnectError>>,
{
    let mut guard = slot.lock().await;
    if let Some((held, sender)) = guard.as_ref()
        && matches(held)
        && !sender.is_closed()
    {
        return Ok(sender.clone());
    }
    *guard = None;
    // Boxed: a connect (TCP, TLS and HTTP/2 handshakes, through a tunnel for a remote zone)
    // is a ~7 KB future; inline, it would make the future of every request that awaits the
    // pool that big, copied several times per request even when the connection is open.
    let sender = Box::pin(connect()).await?;
    *guard = Some((id.to_owned(), sender.clone()));
    Ok(sender)
}

/// hyper's HTTP/2 client handshake with a gateway over `io` (with upgrades, for `CONNECT`);
/// the connection is driven by its own task. A ping unanswered for [`H2_KEEPALIVE`] closes
/// the connection.
async fn gateway_handshake<IO>(io: IO, label: String) -> Result<GatewaySender, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(upstream = %label, %err, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_ids_compare_without_a_join() {
        let ids = [
            "spiffe://td/ns/a/sa/x".to_owned(),
            "spiffe://td/ns/a/sa/y".to_owned(),
        ];
        assert!(joined_eq(&ids.join(" "), &ids));
        assert!(!joined_eq("spiffe://td/ns/a/sa/x", &ids));
        assert!(!joined_eq(&format!("{} z", ids.join(" ")), &ids));
        assert!(joined_eq("", &[]));
        assert!(!joined_eq("x", &[]));
    }
}
