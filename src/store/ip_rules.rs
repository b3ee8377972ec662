//! IP rules stored on keys and routes (`allow_cidrs`, `deny_cidrs`): the CIDR type, its
//! parsing and matching, with `std::net` only.
//!
//! An IPv4 client is also an IPv6 client `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2): IPv6 rules
//! are matched against that form, so `::ffff:0:0/96` holds every IPv4 client and `::/0`
//! every client; IPv4 rules never match a (real) IPv6 client. Clients are canonicalised
//! first (`::ffff:1.2.3.4` is `1.2.3.4`), so a mapped address meets the IPv4 rules.

use std::fmt;
use std::net::IpAddr;

/// A network: an address with every bit after the first `len` zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::/n`, or a bare address (`/32` or `/128`). Host bits set after the
    /// prefix (`10.1.2.3/8`) are refused rather than masked: the writer meant either the
    /// address or the network, and guessing which would widen or narrow the rule silently.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            // Digits only: `u8::from_str` would take `+8`.
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => l
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
            Some(_) => return Err(format!("{s:?}: prefix length must be 0 to {max}")),
        };
        let cidr = Cidr { net, len };
        if cidr.masked(net) != bits(net) {
            return Err(format!(
                "{s:?} has bits set after the /{len} prefix; the network is {}",
                Cidr {
                    net: from_bits(net, cidr.masked(net)),
                    len
                }
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` (already canonical) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V4(_), IpAddr::V6(_)) => return false,
            _ => ip,
        };
        self.masked(ip) == bits(self.net)
    }

    /// `ip`'s bits with everything after the prefix cleared (as a 128-bit number).
    fn masked(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host = u32::from(width - self.len);
        let mask = u128::MAX.checked_shl(host).unwrap_or(0);
        bits(ip) & mask
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(like: IpAddr, b: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((b as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(b.into()),
    }
}

/// Always with the prefix length, as stored and shown: `10.0.0.0/8`, `2001:db8::/32`.
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// A key's or a route's rules. Empty lists admit everyone, so unused rules cost one
/// length check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRules {
    /// When non-empty, the client must be in one of these.
    pub allow: Vec<Cidr>,
    /// A client in any of these is refused, even if an `allow` entry holds it.
    pub deny: Vec<Cidr>,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` (any form; it is canonicalised here) passes: not denied, and allowed
    /// when there is an allow list.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }

    /// Reads the stored columns. They are `cidr[]`, which Postgres has already checked, so
    /// an entry that does not parse here is a bug: it is logged and, on a deny list,
    /// denies everyone rather than open a hole.
    pub(super) fn from_db(allow: Vec<String>, deny: Vec<String>) -> IpRules {
        let read = |list: Vec<String>, fallback: Cidr| -> Vec<Cidr> {
            list.iter()
                .map(|s| {
                    Cidr::parse(s).unwrap_or_else(|e| {
                        log::error!("stored IP rule unreadable: {e}");
                        fallback
                    })
                })
                .collect()
        };
        // On a deny list `::/0` denies everyone; on an allow list `::/128` adds nobody.
        let all = Cidr {
            net: IpAddr::V6(0.into()),
            len: 0,
        };
        let none = Cidr {
            net: IpAddr::V6(0.into()),
            len: 128,
        };
        IpRules {
            allow: read(allow, none),
            deny: read(deny, all),
        }
    }

    /// The lists as the `cidr[]` columns take them (bound as `text[]`).
    pub(super) fn to_db(list: &[Cidr]) -> Vec<String> {
        list.iter().map(Cidr::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        let p = |l: &[&str]| l.iter().map(|s| Cidr::parse(s).unwrap()).collect();
        IpRules {
            allow: p(allow),
            deny: p(deny),
        }
    }

    #[test]
    fn parses_networks_and_bare_addresses_and_shows_the_prefix() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse(" 1.2.3.4 ").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(
            Cidr::parse("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            Cidr::parse("2001:DB8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(Cidr::parse("::/0").unwrap().to_string(), "::/0");
    }

    #[test]
    fn refuses_garbage_bad_lengths_and_host_bits() {
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0/8",
            "1.2.3.4/8/8",
            "example.com",
            "10.0.0.0/0008",
            "[::1]/128",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        let e = Cidr::parse("10.1.2.3/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        assert!(Cidr::parse("2001:db8::1/32").is_err());
    }

    #[test]
    fn edges_slash_zero_full_length_and_boundaries() {
        let all4 = rules(&["0.0.0.0/0"], &[]);
        assert!(all4.admits(ip("255.255.255.255")) && all4.admits(ip("0.0.0.0")));
        assert!(
            !all4.admits(ip("2001:db8::1")),
            "an IPv4 rule holds no IPv6 client"
        );
        let all = rules(&["::/0"], &[]);
        assert!(all.admits(ip("1.2.3.4")) && all.admits(ip("2001:db8::1")));
        let one = rules(&["192.0.2.7/32"], &[]);
        assert!(one.admits(ip("192.0.2.7")));
        assert!(!one.admits(ip("192.0.2.6")) && !one.admits(ip("192.0.2.8")));
        let one6 = rules(&["2001:db8::7/128"], &[]);
        assert!(one6.admits(ip("2001:db8::7")) && !one6.admits(ip("2001:db8::8")));
        let net = rules(&["10.0.0.0/8"], &[]);
        assert!(net.admits(ip("10.255.255.255")) && !net.admits(ip("11.0.0.0")));
        assert!(!net.admits(ip("9.255.255.255")));
    }

    #[test]
    fn mapped_clients_meet_ipv4_rules_and_mapped_rules_hold_ipv4_clients() {
        let v4 = rules(&["203.0.113.0/24"], &[]);
        assert!(v4.admits(ip("::ffff:203.0.113.9")));
        assert!(!v4.admits(ip("::ffff:203.0.114.9")));
        let mapped = rules(&["::ffff:0:0/96"], &[]);
        assert!(mapped.admits(ip("8.8.8.8")) && mapped.admits(ip("::ffff:8.8.8.8")));
        assert!(!mapped.admits(ip("2001:db8::1")));
        let narrow = rules(&["::ffff:10.0.0.0/104"], &[]);
        assert!(narrow.admits(ip("10.9.9.9")) && !narrow.admits(ip("11.9.9.9")));
    }

    #[test]
    fn deny_wins_and_empty_rules_admit_everyone() {
        assert!(IpRules::default().admits(ip("1.2.3.4")));
        let r = rules(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        assert!(r.admits(ip("10.2.0.1")));
        assert!(!r.admits(ip("10.1.0.1")));
        assert!(!r.admits(ip("192.0.2.1")));
        let deny_only = rules(&[], &["::/0"]);
        assert!(!deny_only.admits(ip("1.2.3.4")) && !deny_only.admits(ip("::1")));
    }

    #[test]
    fn stored_lists_round_trip_and_unreadable_entries_fail_closed() {
        let r = rules(&["10.0.0.0/8", "2001:db8::/32"], &["1.2.3.4/32"]);
        let back = IpRules::from_db(IpRules::to_db(&r.allow), IpRules::to_db(&r.deny));
        assert_eq!(back, r);
        let broken = IpRules::from_db(vec!["nonsense".into()], vec!["nonsense".into()]);
        assert!(!broken.admits(ip("1.2.3.4")) && !broken.admits(ip("2001:db8::1")));
    }
}
