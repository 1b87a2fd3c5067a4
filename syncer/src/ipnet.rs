//! IP networks (pure): parsing, containment, first and last address. Used by the service-CIDR
//! detection and by the NetworkPolicy translation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: its network address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

impl IpCidr {
    /// The network of length `prefix` containing `addr` (host bits are cleared); `None` when
    /// `prefix` exceeds the address width.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (bits, v6) = to_bits(addr);
        let width = width(v6);
        (prefix <= width).then(|| Self {
            addr: from_bits(bits & !host_mask(prefix, width), v6),
            prefix,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, v6) = to_bits(ip);
        let (net, net_v6) = to_bits(self.addr);
        v6 == net_v6 && bits & !host_mask(self.prefix, width(v6)) == net
    }

    /// Whether every address of `other` is in this network (same family, equal or longer prefix).
    pub fn covers(&self, other: &IpCidr) -> bool {
        self.is_ipv6() == other.is_ipv6() && self.prefix <= other.prefix && self.contains(other.addr)
    }

    /// The network address (first address).
    pub fn first(&self) -> IpAddr {
        self.addr
    }

    /// The last address (the IPv4 broadcast address).
    pub fn last(&self) -> IpAddr {
        let (net, v6) = to_bits(self.addr);
        from_bits(net | host_mask(self.prefix, width(v6)), v6)
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrParseError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for IpCidr {
    type Err = CidrParseError;

    /// Parses `addr/prefix`; the address must be the network address (`10.96.0.1/12` is refused).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrParseError {
            input: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(|| err("missing /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
        let cidr = Self::new(addr, prefix).ok_or_else(|| err("prefix longer than the address"))?;
        if cidr.addr != addr {
            return Err(err("host bits set"));
        }
        Ok(cidr)
    }
}

pub(crate) fn to_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

pub(crate) fn from_bits(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        IpAddr::V4(Ipv4Addr::from((bits & 0xffff_ffff) as u32))
    }
}

pub(crate) fn width(v6: bool) -> u8 {
    if v6 { 128 } else { 32 }
}

/// The host part of a `/prefix` network in a `width`-bit address (low `width - prefix` bits).
pub(crate) fn host_mask(prefix: u8, width: u8) -> u128 {
    match width.saturating_sub(prefix) {
        0 => 0,
        h if h >= 128 => u128::MAX,
        h => (1u128 << h) - 1,
    }
}
