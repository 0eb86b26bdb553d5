//! Loopback addresses for a local federation: free TCP ports, and per-zone VIP ranges.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

/// The first octet pair of zone VIP ranges: zone 0 gets `127.240.0.0/16`, zone 1
/// `127.241.0.0/16`, and so on up to `127.255.0.0/16`.
const FIRST_ZONE_OCTET: u8 = 240;

/// Ports could not be found, or a zone index has no range.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("zone index {index} has no loopback range: a local federation has at most {max} zones")]
    ZoneIndexOutOfRange { index: usize, max: usize },
}

/// Where [`free_loopback_ports`] looks: below Linux's ephemeral range (32768-60999 by default).
/// A port in that range that a process is restarted on can be taken meanwhile by a client
/// reconnecting to it: the kernel may pick the very same number as the client's own port, and
/// a TCP connection from a port to itself succeeds (simultaneous open), holding the port.
/// Tests that kill and restart processes hit exactly that.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// `n` distinct free TCP ports on 127.0.0.1, as socket addresses.
///
/// Each is bound to check it is free, from a pseudo-random start in [`PORT_RANGE`] (so two
/// federations started at once rarely probe the same ports), else from `127.0.0.1:0`; all are
/// held until the last is bound (so they are distinct) and then released for the processes to
/// bind. Between that release and a process binding its port, another program may take it: a
/// small race. Callers therefore confirm every process is listening
/// (`supervisor::wait_ready`), which turns a lost race into a clear "address in use" in that
/// process's log rather than a silent misrouting, and `strait up` then starts that process
/// again on new ports (`commands::local::start_on_ports`).
pub fn free_loopback_ports(n: usize) -> Result<Vec<SocketAddr>, PortsError> {
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let start = u16::try_from(seed % u32::from(span)).unwrap_or(0);
    let mut listeners = Vec::with_capacity(n);
    for offset in 0..span {
        if listeners.len() == n {
            break;
        }
        let port = PORT_RANGE.start + (start + offset) % span;
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            listeners.push(listener);
        }
    }
    while listeners.len() < n {
        listeners.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(PortsError::Bind)?);
    }
    listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PortsError::Bind)
}

/// `n` distinct free UDP ports on 127.0.0.1 (for QUIC listeners), with the same small race
/// as [`free_loopback_ports`].
pub fn free_loopback_udp_ports(n: usize) -> Result<Vec<SocketAddr>, PortsError> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(PortsError::Bind)?;
    sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PortsError::Bind)
}

/// The loopback range for zone VIPs of the zone at `zone_index` (0-based, in creation order):
/// `127.240.0.0/16` for the first zone, `127.241.0.0/16` for the second, up to
/// `127.255.0.0/16` for the sixteenth.
///
/// Linux routes all of `127.0.0.0/8` to loopback, so these addresses work without setup;
/// other systems route only `127.0.0.1` unless aliases are added.
pub fn loopback_range(zone_index: usize) -> Result<String, PortsError> {
    let max = usize::from(u8::MAX - FIRST_ZONE_OCTET) + 1;
    u8::try_from(zone_index)
        .ok()
        .and_then(|index| FIRST_ZONE_OCTET.checked_add(index))
        .map(|octet| format!("127.{octet}.0.0/16"))
        .ok_or(PortsError::ZoneIndexOutOfRange {
            index: zone_index,
            max,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_loopback_and_bindable() -> Result<(), Box<dyn std::error::Error>> {
        let addrs = free_loopback_ports(8)?;
        assert_eq!(addrs.len(), 8);
        let distinct: std::collections::BTreeSet<_> = addrs.iter().map(SocketAddr::port).collect();
        assert_eq!(distinct.len(), 8, "{addrs:?}");
        for addr in &addrs {
            assert!(addr.ip().is_loopback());
            assert!(
                PORT_RANGE.contains(&addr.port()),
                "{addr} is not below the ephemeral range"
            );
        }
        // Released: a process can bind one straight away.
        let first = addrs.first().ok_or("no port")?;
        TcpListener::bind(first)?;
        assert!(free_loopback_ports(0)?.is_empty());
        let udp = free_loopback_udp_ports(3)?;
        let distinct: std::collections::BTreeSet<_> = udp.iter().map(SocketAddr::port).collect();
        assert_eq!(distinct.len(), 3, "{udp:?}");
        UdpSocket::bind(udp.first().ok_or("no port")?)?;
        Ok(())
    }

    #[test]
    fn zone_ranges() -> Result<(), PortsError> {
        assert_eq!(loopback_range(0)?, "127.240.0.0/16");
        assert_eq!(loopback_range(1)?, "127.241.0.0/16");
        assert_eq!(loopback_range(15)?, "127.255.0.0/16");
        let err = loopback_range(16).err();
        assert!(
            matches!(
                err,
                Some(PortsError::ZoneIndexOutOfRange { index: 16, max: 16 })
            ),
            "{err:?}"
        );
        assert!(loopback_range(300).is_err());
        Ok(())
    }
}
