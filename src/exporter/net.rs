//! IP networks for the endpoint's allowlist.

use std::net::IpAddr;

/// An IP network: address plus prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub(super) fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    /// Parses `addr/prefix` (or a bare address as a single host). Host bits may be set.
    pub(super) fn parse(input: &str) -> Result<Self, &'static str> {
        let (addr, prefix) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| "not an ip address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| "prefix length out of range")?
            }
            Some(_) => return Err("prefix length must be a decimal number"),
        };
        if prefix > max {
            return Err("prefix length out of range");
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` (or its IPv4 form, if it is IPv4-mapped IPv6) is inside the network.
    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        self.contains_exact(ip) || self.contains_exact(ip.to_canonical())
    }

    /// Whether the network is too wide to guard anything on its own: wider
    /// than an IPv4 /8 or an IPv6 /16 (or the IPv4-mapped range wider than
    /// a /8 of IPv4).
    pub(super) fn is_too_wide(&self) -> bool {
        match self.addr {
            IpAddr::V4(_) => self.prefix < 8,
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && self.prefix >= 96 => {
                self.prefix < 104
            }
            IpAddr::V6(_) => self.prefix < 16,
        }
    }

    fn contains_exact(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => (u32::from(net).into(), u32::from(ip).into(), 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net), u128::from(ip), 128),
            _ => return false,
        };
        // Equal in the top `prefix` bits of a `bits`-wide value.
        (net ^ ip)
            .checked_shr(bits - u32::from(self.prefix))
            .unwrap_or(0)
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ipv4_and_ipv6_networks() {
        assert_eq!(
            IpNet::parse("10.0.0.0/8"),
            Ok(IpNet {
                addr: ip("10.0.0.0"),
                prefix: 8
            })
        );
        assert_eq!(
            IpNet::parse("::1/128"),
            Ok(IpNet {
                addr: ip("::1"),
                prefix: 128
            })
        );
        assert_eq!(
            IpNet::parse("0.0.0.0/0"),
            Ok(IpNet {
                addr: ip("0.0.0.0"),
                prefix: 0
            })
        );
        assert_eq!(
            IpNet::parse("192.168.1.7"),
            Ok(IpNet::host(ip("192.168.1.7")))
        );
        assert_eq!(
            IpNet::parse("fe80::"),
            Ok(IpNet {
                addr: ip("fe80::"),
                prefix: 128
            })
        );
    }

    #[test]
    fn rejects_bad_networks() {
        for bad in [
            "",
            "/8",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            " 10.0.0.0/8",
            "10.0.0.0/0008",
            "10.0.0.0/256",
            "localhost/8",
            "[::1]/128",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn networks_too_wide_to_guard() {
        for wide in [
            "0.0.0.0/0",
            "0.0.0.0/1",
            "128.0.0.0/1",
            "10.0.0.0/7",
            "::/0",
            "2000::/3",
            "::ffff:0:0/96",
            "::ffff:0:0/100",
        ] {
            assert!(IpNet::parse(wide).unwrap().is_too_wide(), "{wide}");
        }
        for narrow in [
            "10.0.0.0/8",
            "192.168.0.0/16",
            "fd00::/16",
            "2001:db8::/32",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(!IpNet::parse(narrow).unwrap().is_too_wide(), "{narrow}");
        }
    }

    #[test]
    fn membership() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("127.0.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped peers match IPv4 networks"
        );
        let odd = IpNet::parse("192.168.1.200/26").unwrap();
        assert!(odd.contains(ip("192.168.1.192")) && odd.contains(ip("192.168.1.255")));
        assert!(!odd.contains(ip("192.168.1.191")));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("::1")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("::1")));
        assert!(IpNet::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(!IpNet::parse("::1/128").unwrap().contains(ip("::2")));
    }
}
