//! VIP addressing, the convention every component shares: global allocates each exported
//! service a stable index (1, 2, ...); a zone maps it into its VIP CIDR as `base + index`.
//! Pure arithmetic, so global (for `strait services`), zones and sidecars always agree.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 VIP range such as `127.240.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipCidr {
    base: Ipv4Addr,
    prefix: u8,
}

/// Why a string is not a usable VIP range, or an index does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipError {
    #[error("invalid VIP CIDR {0:?}: expected IPv4 address/prefix such as 127.240.0.0/16")]
    Syntax(String),
    #[error("invalid VIP CIDR {cidr:?}: prefix must be between 8 and 30")]
    Prefix { cidr: String },
    #[error("invalid VIP CIDR {cidr:?}: host bits are set (did you mean {suggestion}?)")]
    HostBits { cidr: String, suggestion: String },
    #[error("VIP index {index} does not fit in {cidr} ({capacity} usable addresses)")]
    OutOfRange {
        index: u32,
        cidr: String,
        capacity: u32,
    },
}

impl VipCidr {
    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// How many indexes fit: every address but the network (index 0) and broadcast ones.
    pub fn capacity(&self) -> u32 {
        (1_u32 << (32 - u32::from(self.prefix))) - 2
    }

    /// The VIP of service index `index` (1-based) in this range.
    pub fn address(&self, index: u32) -> Result<Ipv4Addr, VipError> {
        if index == 0 || index > self.capacity() {
            return Err(VipError::OutOfRange {
                index,
                cidr: self.to_string(),
                capacity: self.capacity(),
            });
        }
        Ok(Ipv4Addr::from(u32::from(self.base) + index))
    }

    /// The index of `ip`, if it is a VIP of this range.
    pub fn index(&self, ip: Ipv4Addr) -> Option<u32> {
        let ip = u32::from(ip);
        if ip & Self::mask(self.prefix) != u32::from(self.base) {
            return None;
        }
        let index = ip - u32::from(self.base);
        (index >= 1 && index <= self.capacity()).then_some(index)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.base)
    }
}

impl FromStr for VipCidr {
    type Err = VipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| VipError::Syntax(s.to_owned()))?;
        let base: Ipv4Addr = addr.parse().map_err(|_| VipError::Syntax(s.to_owned()))?;
        let prefix: u8 = prefix.parse().map_err(|_| VipError::Syntax(s.to_owned()))?;
        if !(8..=30).contains(&prefix) {
            return Err(VipError::Prefix { cidr: s.to_owned() });
        }
        let network = Ipv4Addr::from(u32::from(base) & Self::mask(prefix));
        if network != base {
            return Err(VipError::HostBits {
                cidr: s.to_owned(),
                suggestion: format!("{network}/{prefix}"),
            });
        }
        Ok(Self { base, prefix })
    }
}

impl fmt::Display for VipCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> VipCidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn maps_indexes_into_the_range_and_back() {
        let c = cidr("127.240.0.0/16");
        assert_eq!(c.address(1), Ok(Ipv4Addr::new(127, 240, 0, 1)));
        assert_eq!(c.address(300), Ok(Ipv4Addr::new(127, 240, 1, 44)));
        assert_eq!(c.index(Ipv4Addr::new(127, 240, 1, 44)), Some(300));
        assert_eq!(c.index(Ipv4Addr::new(127, 241, 0, 1)), None);
        assert_eq!(c.capacity(), 65_534);
        assert!(c.address(0).is_err());
        assert!(c.address(65_535).is_err());
        assert_eq!(c.to_string(), "127.240.0.0/16");
    }

    #[test]
    fn refuses_bad_ranges_with_a_reason() {
        assert!(matches!(
            "127.240.0.0".parse::<VipCidr>(),
            Err(VipError::Syntax(_))
        ));
        assert!(matches!(
            "127.240.0.0/31".parse::<VipCidr>(),
            Err(VipError::Prefix { .. })
        ));
        let err = "127.240.0.5/16".parse::<VipCidr>();
        assert!(
            matches!(err, Err(VipError::HostBits { ref suggestion, .. }) if suggestion == "127.240.0.0/16")
        );
        assert!(matches!(
            "banana/16".parse::<VipCidr>(),
            Err(VipError::Syntax(_))
        ));
    }
}
