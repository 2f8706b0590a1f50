use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;

use super::ParseError;

/// The address a request came from, as far as keygate can trust it: the socket's peer, or
/// the client named in `X-Forwarded-For` when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        // An IPv4 client reached over a dual-stack socket shows up as `::ffff:a.b.c.d`; it is
        // the same client, and must share one brute-force counter with its plain form.
        Self(ip.to_canonical())
    }

    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// The unit failed logins are counted in: the address itself for IPv4, its /64 for
    /// IPv6. One IPv6 host usually holds a whole /64 and could otherwise rotate through
    /// 2^64 addresses, each with a fresh counter.
    pub fn lockout_key(&self) -> String {
        match self.0 {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                let net = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The proxies whose `X-Forwarded-For` keygate believes (`KEYGATE_TRUSTED_PROXIES`). Empty
/// by default: then the header is ignored, because any client can send it and would
/// otherwise choose its own brute-force counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// More entries than any deployment needs; a bound keeps the per-request scan trivial.
const MAX_PROXIES: usize = 64;
/// Hops of `X-Forwarded-For` considered; a longer chain is cut to its last hops.
const MAX_HOPS: usize = 32;

impl TrustedProxies {
    /// A comma-separated list of addresses and CIDR blocks, e.g. `10.0.0.0/8, ::1`.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let mut nets = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match IpNet::from_str(item) {
                Ok(net) => net,
                Err(_) => IpAddr::from_str(item)
                    .map(IpNet::from)
                    .map_err(|_| ParseError("expected addresses or CIDR blocks, e.g. 10.0.0.0/8, ::1"))?,
            };
            nets.push(net.trunc());
        }
        if nets.len() > MAX_PROXIES {
            return Err(ParseError("at most 64 entries"));
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`. `forwarded_for` are the values of every `X-Forwarded-For`
    /// header, in order. Each trusted proxy appends the address it received the request
    /// from, so the chain is read from the right: the first hop that is not a trusted proxy
    /// is the client. Anything to its left was written by the client itself and is ignored.
    /// A hop that does not parse ends the walk at the last trusted hop, which is then the
    /// best address we know.
    pub fn client_addr<'a>(&self, peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>) -> ClientAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return ClientAddr::new(peer);
        }
        let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
        let mut client = peer;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        ClientAddr::new(client)
    }
}

/// One `X-Forwarded-For` entry: an address, optionally bracketed or with a port, as proxies
/// write them (`203.0.113.7`, `203.0.113.7:5000`, `[2001:db8::1]:443`, `2001:db8::1`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(hop) {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = std::net::SocketAddr::from_str(hop) {
        return Some(sock.ip().to_canonical());
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    Ipv6Addr::from_str(inner).ok().map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_lists_and_refuses_junk() {
        let t = TrustedProxies::parse(" 10.0.0.0/8, ::1 ,192.168.1.7").unwrap();
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/8;", "*"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TrustedProxies::parse(&vec!["10.0.0.1"; 65].join(",")).is_err());
    }

    #[test]
    fn forwarded_for_only_from_a_trusted_peer() {
        let none = TrustedProxies::default();
        assert_eq!(none.client_addr(ip("10.0.0.2"), ["203.0.113.9"]).ip(), ip("10.0.0.2"));

        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // Untrusted peer: its header is the attacker's own words.
        assert_eq!(t.client_addr(ip("198.51.100.1"), ["203.0.113.9"]).ip(), ip("198.51.100.1"));
        // Trusted peer: the rightmost untrusted hop; a client-written prefix is ignored.
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["1.1.1.1, 203.0.113.9, 10.0.0.5"]).ip(), ip("203.0.113.9"));
        // Several headers are one list, in order.
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["1.1.1.1", "203.0.113.9"]).ip(), ip("203.0.113.9"));
        // Ports and brackets, as some proxies write them.
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["[2001:db8::1]:443"]).ip(), ip("2001:db8::1"));
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["203.0.113.9:5000"]).ip(), ip("203.0.113.9"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["203.0.113.9, nonsense"]).ip(), ip("10.0.0.2"));
        // No header: the proxy itself.
        assert_eq!(t.client_addr(ip("10.0.0.2"), []).ip(), ip("10.0.0.2"));
        // A v4-mapped peer is the same peer.
        assert_eq!(t.client_addr(ip("::ffff:10.0.0.2"), ["203.0.113.9"]).ip(), ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = ClientAddr::new(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientAddr::new(ip("2001:db8:1:2:bbbb::2"));
        assert_eq!(a.lockout_key(), b.lockout_key());
        assert_eq!(a.lockout_key(), "2001:db8:1:2::/64");
        assert_eq!(ClientAddr::new(ip("::ffff:192.0.2.1")).lockout_key(), "192.0.2.1");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = TrustedProxies::parse(&s);
        }

        #[test]
        fn client_addr_never_panics_and_is_the_peer_or_a_listed_hop(
            headers in proptest::collection::vec("[0-9a-f.:, \\[\\]]{0,60}", 0..4),
            peer in any::<[u8; 4]>(),
        ) {
            let t = TrustedProxies::parse("0.0.0.0/0, ::/0").unwrap();
            let peer = IpAddr::from(peer);
            let got = t.client_addr(peer, headers.iter().map(String::as_str)).ip();
            let listed = headers.iter().flat_map(|h| h.split(',')).filter_map(|h| parse_hop(h.trim())).any(|h| h == got);
            prop_assert!(got == peer.to_canonical() || listed);
        }

        #[test]
        fn untrusted_peer_is_always_the_client(header in ".{0,100}", peer in any::<[u8; 16]>()) {
            let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
            let peer = IpAddr::from(peer);
            prop_assume!(!t.contains(peer));
            prop_assert_eq!(t.client_addr(peer, [header.as_str()]).ip(), peer.to_canonical());
        }

        #[test]
        fn parsed_lists_round_trip(nets in proptest::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..8)) {
            let text: Vec<String> = nets.iter().map(|(a, p)| format!("{}/{p}", IpAddr::from(*a))).collect();
            let parsed = TrustedProxies::parse(&text.join(",")).unwrap();
            let again = parsed.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            prop_assert_eq!(TrustedProxies::parse(&again).unwrap(), parsed);
        }
    }
}
