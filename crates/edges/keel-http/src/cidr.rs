//! IP networks (CIDR), shared by the gateway's allow and deny lists and the API's trusted
//! proxies.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP network such as `10.0.0.0/8` or `2001:db8::/32`.
///
/// Parsing rejects host bits set below the prefix (`10.0.0.1/8`) instead of silently masking
/// them: such an entry is usually a typo for a single address or a different network, and a
/// security list should not guess which. IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) are
/// stored as their IPv4 form, and [`Cidr::contains`] maps addresses the same way, so a dual-stack
/// listener reporting `::ffff:1.2.3.4` matches an IPv4 entry (and, being IPv4, no IPv6 entry:
/// `::/0` does not cover it, `0.0.0.0/0` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address, host bits zero; IPv4 whenever it can be.
    network: IpAddr,
    /// Leading bits that must match: at most 32 for IPv4, 128 for IPv6.
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`, or a bare address meaning that single host (/32 or /128).
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        let (addr, prefix) = match entry.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (entry, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{entry:?} is not an IP address or CIDR network"))?;
        let max = max_prefix(addr);
        let prefix = match prefix {
            None => max,
            Some(prefix) => parse_prefix(prefix)
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| {
                    format!("{entry:?} has a bad prefix length (expected 0 to {max})")
                })?,
        };
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let network = mask(addr, prefix);
        if network != addr {
            return Err(format!(
                "{entry:?} has host bits set; the network is {}",
                Cidr { network, prefix }
            ));
        }
        Ok(Self { network, prefix })
    }

    /// Whether `ip` is inside this network; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        matches!(
            (self.network, ip),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
        ) && mask(ip, self.prefix) == self.network
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        Self::parse(entry)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Plain decimal only: `u8::from_str` would also take `+8`, which no CIDR tool writes.
fn parse_prefix(text: &str) -> Option<u8> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Zeroes every bit after the first `prefix`; `prefix` is at most the family's width.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}
