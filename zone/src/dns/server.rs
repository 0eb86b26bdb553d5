//! The DNS server's sockets: UDP and TCP on one address, answering from the current
//! [`Table`], which is rebuilt whenever the zone's compiled services change (the world is
//! recompiled within ~20 ms of an inventory or federation change, so answers follow within
//! that plus a rebuild).
//!
//! The wire format is hickory's (`hickory-proto`); the loops are ours rather than
//! `hickory-server`'s `Server`, which logs two `info` lines per query and answers FORMERR
//! before a handler sees the packet: here every packet, malformed ones included, goes through
//! [`respond`] and is counted.
//!
//! Nothing a client sends can stop the server: a malformed packet gets FORMERR (or nothing,
//! without a readable header), a UDP receive error is skipped, and a TCP connection that sends
//! a partial message or nothing at all is closed after a timeout, with at most
//! [`MAX_TCP_CONNECTIONS`] open at once.
//!
//! # Metrics
//!
//! `strait_zone_dns_queries_total{protocol, type, rcode}` (type: A, AAAA, SRV, SOA, NS, ANY,
//! other, none; rcode: NOERROR, NXDOMAIN, NODATA is NOERROR, REFUSED, FORMERR, NOTIMP,
//! SERVFAIL, other, dropped), `strait_zone_dns_names` (names in the table),
//! `strait_zone_dns_table_updates_total`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use strait_proto as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{DnsSettings, Table, Transport, respond};

/// Open TCP connections at most; further ones are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long a client may take to send the rest of a message, or to read our reply.
const TCP_IO: Duration = Duration::from_secs(5);
/// Large enough for any UDP datagram a client may send us.
const UDP_BUFFER: usize = 65_535;
/// The UDP socket's receive buffer (capped by `net.core.rmem_max`). The kernel charges each
/// queued datagram about 1 KB whatever its size, so the default (208 KB on Linux) drops a
/// burst of a few hundred queries — a resolver's cache expiring at once, or dnsperf's start.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// The services the server answers for: [`crate::discovery::DiscoveryServer::services`].
pub type ServicesWatch = watch::Receiver<Arc<Vec<pb::OutboundService>>>;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind the DNS address {addr} ({protocol}): {source}")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        source: io::Error,
    },
    #[error("DNS metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The UDP socket and TCP listener of one address.
#[derive(Debug)]
pub struct DnsSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

impl DnsSockets {
    /// Binds UDP and TCP on `addr`. With port 0, TCP takes the port UDP got.
    pub async fn bind(addr: SocketAddr) -> Result<Self, DnsError> {
        // With port 0 the kernel picks a free UDP port, and the same TCP port may be taken by
        // some other connection: pick again rather than fail (a few times, then say so).
        let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
        let mut attempt = 1;
        loop {
            match Self::bind_once(addr).await {
                Err(DnsError::Bind { source, .. })
                    if attempt < attempts && source.kind() == io::ErrorKind::AddrInUse => {}
                result => return result,
            }
            attempt += 1;
        }
    }

    async fn bind_once(addr: SocketAddr) -> Result<Self, DnsError> {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr,
                protocol: "UDP",
                source,
            })?;
        let udp_addr = udp.local_addr().map_err(|source| DnsError::Bind {
            addr,
            protocol: "UDP",
            source,
        })?;
        let tcp = TcpListener::bind(udp_addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr: udp_addr,
                protocol: "TCP",
                source,
            })?;
        Ok(Self { udp, tcp })
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// How many port pairs [`DnsSockets::bind`] tries for port 0.
const BIND_ATTEMPTS: u32 = 16;

/// The DNS server's metrics, registered in the node's registry.
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    queries: IntCounterVec,
    names: IntGauge,
    updates: IntCounter,
}

impl DnsMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queries = IntCounterVec::new(
            Opts::new(
                "strait_zone_dns_queries_total",
                "DNS packets received, by transport, question type and the rcode answered (dropped: no reply).",
            ),
            &["protocol", "type", "rcode"],
        )?;
        let names = IntGauge::with_opts(Opts::new(
            "strait_zone_dns_names",
            "Names the DNS server answers for, empty non-terminals included.",
        ))?;
        let updates = IntCounter::with_opts(Opts::new(
            "strait_zone_dns_table_updates_total",
            "Times the DNS table was rebuilt because the zone's services changed.",
        ))?;
        registry.register(Box::new(queries.clone()))?;
        registry.register(Box::new(names.clone()))?;
        registry.register(Box::new(updates.clone()))?;
        Ok(Self {
            queries,
            names,
            updates,
        })
    }

    fn count(&self, transport: Transport, qtype: Option<RecordType>, rcode: Option<ResponseCode>) {
        let protocol = match transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        let qtype = match qtype {
            None => "none",
            Some(RecordType::A) => "A",
            Some(RecordType::AAAA) => "AAAA",
            Some(RecordType::SRV) => "SRV",
            Some(RecordType::SOA) => "SOA",
            Some(RecordType::NS) => "NS",
            Some(RecordType::ANY) => "ANY",
            Some(_) => "other",
        };
        let rcode = match rcode {
            None => "dropped",
            Some(ResponseCode::NoError) => "NOERROR",
            Some(ResponseCode::NXDomain) => "NXDOMAIN",
            Some(ResponseCode::Refused) => "REFUSED",
            Some(ResponseCode::FormErr) => "FORMERR",
            Some(ResponseCode::NotImp) => "NOTIMP",
            Some(ResponseCode::ServFail) => "SERVFAIL",
            Some(_) => "other",
        };
        self.queries
            .with_label_values(&[protocol, qtype, rcode])
            .inc();
    }
}

/// Serves DNS on `sockets` from `services` until `shutdown` completes.
pub async fn run(
    sockets: DnsSockets,
    mut services: ServicesWatch,
    settings: DnsSettings,
    metrics: DnsMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let mut serial = Serial::default();
    let first = Table::build(&services.borrow_and_update(), &settings, serial.next());
    metrics
        .names
        .set(i64::try_from(first.names()).unwrap_or(i64::MAX));
    let (tables_tx, tables) = watch::channel(Arc::new(first));

    let mut tasks = JoinSet::new();
    {
        let metrics = metrics.clone();
        tasks.spawn(async move {
            // Ends when the services' sender is gone (the zone is stopping).
            while services.changed().await.is_ok() {
                let table = Table::build(&services.borrow_and_update(), &settings, serial.next());
                tracing::debug!(
                    services = table.services(),
                    names = table.names(),
                    "DNS table updated"
                );
                metrics
                    .names
                    .set(i64::try_from(table.names()).unwrap_or(i64::MAX));
                metrics.updates.inc();
                tables_tx.send_replace(Arc::new(table));
            }
        });
    }
    if let Err(err) = socket2::SockRef::from(&sockets.udp).set_recv_buffer_size(UDP_RECEIVE_BUFFER)
    {
        tracing::debug!(%err, "the DNS UDP receive buffer keeps its default size");
    }
    let udp = Arc::new(sockets.udp);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    for _ in 0..workers {
        tasks.spawn(serve_udp(udp.clone(), tables.clone(), metrics.clone()));
    }
    tasks.spawn(serve_tcp(sockets.tcp, tables, metrics));

    shutdown.await;
    tasks.shutdown().await;
}

/// SOA serials: the Unix time at the first build, then one more on every rebuild (at least
/// the current time), so a secondary or a cache always sees it grow.
#[derive(Debug, Default)]
struct Serial(u32);

impl Serial {
    fn next(&mut self) -> u32 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        self.0 = now.max(self.0.wrapping_add(1));
        self.0
    }
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    tables: watch::Receiver<Arc<Table>>,
    metrics: DnsMetrics,
) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // ICMP errors from earlier replies (ECONNREFUSED) and the like: the socket is fine.
            Err(err) => {
                tracing::debug!(%err, "DNS UDP receive failed");
                continue;
            }
        };
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        let table = tables.borrow().clone();
        let reply = respond(&table, packet, Transport::Udp);
        metrics.count(Transport::Udp, reply.query_type, reply.rcode);
        if let Some(bytes) = reply.bytes
            && let Err(err) = socket.send_to(&bytes, peer).await
        {
            tracing::debug!(%err, %peer, "DNS UDP reply not sent");
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    tables: watch::Receiver<Arc<Table>>,
    metrics: DnsMetrics,
) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Dropped (aborting every connection) when this task is.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS TCP connections; closing");
            continue;
        };
        let tables = tables.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            if let Err(err) = serve_connection(stream, &tables, &metrics).await {
                tracing::debug!(%err, %peer, "DNS TCP connection closed");
            }
            drop(slot);
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2), answered in order, until the client closes,
/// idles or stalls.
async fn serve_connection(
    mut stream: TcpStream,
    tables: &watch::Receiver<Arc<Table>>,
    metrics: &DnsMetrics,
) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut prefix = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(err)) => return Err(err),
            Err(_) => return Ok(()),
        }
        buf.resize(usize::from(u16::from_be_bytes(prefix)), 0);
        timed(stream.read_exact(&mut buf)).await?;
        let table = tables.borrow().clone();
        let reply = respond(&table, &buf, Transport::Tcp);
        metrics.count(Transport::Tcp, reply.query_type, reply.rcode);
        let Some(bytes) = reply.bytes else {
            continue;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        timed(stream.write_all(&framed)).await?;
    }
}

async fn timed<T>(io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(TCP_IO, io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "DNS client too slow"))?
}

#[cfg(test)]
mod tests;
