use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::ParseError;

/// The address a request came from, as far as keygate can trust it: the socket's peer, or
/// the client named in `X-Forwarded-For` when the peer is a trusted proxy; or, when a
/// trusted proxy names the client with something that is not an address, a stand-in for
/// what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(Source);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Ip(IpAddr),
    /// A hop that does not parse, written by the trusted proxy `via`: a digest of its bytes
    /// (never the bytes themselves, which may be anything), and the proxy.
    Unparsed {
        digest: [u8; 8],
        via: IpAddr,
    },
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        // An IPv4 client reached over a dual-stack socket shows up as `::ffff:a.b.c.d`; it is
        // the same client, and must share one brute-force counter with its plain form.
        Self(Source::Ip(ip.to_canonical()))
    }

    fn unparsed(hop: &[u8], via: IpAddr) -> Self {
        let hash = Sha256::digest(hop);
        let mut digest = [0; 8];
        digest.copy_from_slice(&hash[..8]);
        Self(Source::Unparsed { digest, via: via.to_canonical() })
    }

    /// The client's address; `None` for the stand-in of a hop that is not one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.0 {
            Source::Ip(ip) => Some(ip),
            Source::Unparsed { .. } => None,
        }
    }

    /// The unit failed logins are counted in: the address itself for IPv4, its /64 for
    /// IPv6. One IPv6 host usually holds a whole /64 and could otherwise rotate through
    /// 2^64 addresses, each with a fresh counter. A stand-in is its own unit.
    pub fn lockout_key(&self) -> String {
        match self.0 {
            Source::Ip(IpAddr::V4(v4)) => v4.to_string(),
            Source::Ip(IpAddr::V6(v6)) => {
                let s = v6.segments();
                let net = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
            Source::Unparsed { .. } => self.to_string(),
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Ip(ip) => ip.fmt(f),
            Source::Unparsed { digest, via } => {
                f.write_str("unparsed-")?;
                digest.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
                write!(f, "@{via}")
            }
        }
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

    /// The list as `parse` reads it back: `10.0.0.0/8,::1/128`.
    pub fn to_list(&self) -> String {
        self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`. `forwarded_for` are the raw values of every
    /// `X-Forwarded-For` header line, in order: one comma-separated list (RFC 9110 §5.3),
    /// split and parsed as bytes, so a hop that is not UTF-8 spoils only itself.
    ///
    /// Each trusted proxy appends the address it received the request from, so the chain is
    /// read from the right: the first hop that is not a trusted proxy is the client, and
    /// what the client wrote to its left is never even parsed. A hop in the client's place
    /// that is not an address was written by the trusted proxy to its right (`unknown`, an
    /// obfuscated name); the client is then a stand-in derived from that hop and that proxy,
    /// not the proxy itself, so clients behind it do not share the proxy's counter, and
    /// nobody can pick another stand-in without a trusted proxy writing it.
    pub fn client_addr<'a, H>(&self, peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a H>) -> ClientAddr
    where
        H: AsRef<[u8]> + ?Sized + 'a,
    {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return ClientAddr::new(peer);
        }
        let lines: Vec<&[u8]> = forwarded_for.into_iter().map(AsRef::as_ref).collect();
        // RFC 9110 §5.6.1: empty list elements are ignored.
        let hops = lines
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(|&b| b == b','))
            .map(|hop| hop.trim_ascii())
            .filter(|hop| !hop.is_empty());
        let mut client = peer;
        for hop in hops.take(MAX_HOPS) {
            let Some(ip) = parse_hop(hop) else { return ClientAddr::unparsed(hop, client) };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        ClientAddr::new(client)
    }
}

/// The longest hop that can be an address: `[` IPv6 with an embedded IPv4 `]:65535`.
const MAX_HOP_LEN: usize = 64;

/// One `X-Forwarded-For` entry: an address, optionally bracketed or with a port, as proxies
/// write them (`203.0.113.7`, `203.0.113.7:5000`, `[2001:db8::1]:443`, `2001:db8::1`).
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    if hop.len() > MAX_HOP_LEN {
        return None;
    }
    let hop = std::str::from_utf8(hop).ok()?;
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

    /// An `X-Forwarded-For` element: a trusted or untrusted address, or any bytes at all.
    fn hop() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0u8..=255).prop_map(|n| format!("10.0.0.{n}").into_bytes()),
            any::<[u8; 4]>().prop_map(|a| IpAddr::from(a).to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ]
    }

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

    fn client(t: &TrustedProxies, peer: &str, lines: &[&[u8]]) -> ClientAddr {
        t.client_addr(ip(peer), lines.iter().copied())
    }

    #[test]
    fn forwarded_for_only_from_a_trusted_peer() {
        let none = TrustedProxies::default();
        assert_eq!(none.client_addr(ip("10.0.0.2"), ["203.0.113.9"]).ip(), Some(ip("10.0.0.2")));

        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // Untrusted peer: its header is the attacker's own words.
        assert_eq!(t.client_addr(ip("198.51.100.1"), ["203.0.113.9"]).ip(), Some(ip("198.51.100.1")));
        // Trusted peer: the rightmost untrusted hop; a client-written prefix is ignored.
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["1.1.1.1, 203.0.113.9, 10.0.0.5"]).ip(), Some(ip("203.0.113.9")));
        // Several headers are one list, in order.
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["1.1.1.1", "203.0.113.9"]).ip(), Some(ip("203.0.113.9")));
        // Ports and brackets, as some proxies write them; empty elements are skipped.
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["[2001:db8::1]:443"]).ip(), Some(ip("2001:db8::1")));
        assert_eq!(t.client_addr(ip("10.0.0.2"), ["203.0.113.9:5000, ,"]).ip(), Some(ip("203.0.113.9")));
        // No header: the proxy itself.
        assert_eq!(t.client_addr(ip("10.0.0.2"), [] as [&str; 0]).ip(), Some(ip("10.0.0.2")));
        // A v4-mapped peer is the same peer.
        assert_eq!(t.client_addr(ip("::ffff:10.0.0.2"), ["203.0.113.9"]).ip(), Some(ip("203.0.113.9")));
    }

    #[test]
    fn bytes_that_are_not_an_address_spoil_only_their_own_hop() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let addr = Some(ip("203.0.113.9"));
        // Not UTF-8, control bytes, obs-text: to the left of the client, never looked at.
        assert_eq!(client(&t, "10.0.0.2", &[b"\xff\xfe\x80, 203.0.113.9"]).ip(), addr);
        assert_eq!(client(&t, "10.0.0.2", &[b"\xff,\x01\x7f", b"203.0.113.9, 10.0.0.7"]).ip(), addr);
        assert_eq!(client(&t, "10.0.0.2", &[b"\xff\xfe", b"203.0.113.9"]).ip(), addr);
        // In the client's place: a stand-in of its own, never the proxy that wrote it.
        let unknown = client(&t, "10.0.0.2", &[b"203.0.113.9, unknown"]);
        assert_eq!(unknown.ip(), None);
        assert_eq!(unknown.to_string(), "unparsed-b23a6a8439c0dde5@10.0.0.2");
        assert_eq!(unknown.lockout_key(), unknown.to_string());
        assert_eq!(client(&t, "10.0.0.2", &[b"unknown"]), unknown);
        assert_ne!(client(&t, "10.0.0.3", &[b"unknown"]), unknown);
        assert_ne!(client(&t, "10.0.0.2", &[b"unknowN"]), unknown);
        // Written by a trusted hop further in: that hop, not the peer, is named.
        assert_eq!(client(&t, "10.0.0.2", &[b"\xff, 10.0.0.7"]).to_string().rsplit('@').next(), Some("10.0.0.7"));
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
            let got = t.client_addr(peer, headers.iter().map(String::as_str));
            let listed = headers.iter().flat_map(|h| h.split(',')).filter_map(|h| parse_hop(h.trim().as_bytes()));
            let listed: Vec<IpAddr> = listed.collect();
            match got.ip() {
                Some(got) => prop_assert!(got == peer.to_canonical() || listed.contains(&got)),
                None => prop_assert!(got.to_string().starts_with("unparsed-")),
            }
        }

        /// Whatever the bytes: once a hop the walk reaches is not a trusted proxy, the answer
        /// is neither the peer nor any other trusted proxy.
        #[test]
        fn never_a_trusted_proxy_when_a_hop_is_not_one(
            lines in proptest::collection::vec(proptest::collection::vec(hop(), 0..6), 0..4),
            peer in 0u8..=255,
        ) {
            let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
            let peer = IpAddr::from([10, 0, 0, peer]);
            let raw: Vec<Vec<u8>> = lines.iter().map(|hops| hops.join(&b","[..])).collect();
            let got = t.client_addr(peer, raw.iter());
            let walked: Vec<&[u8]> = raw
                .iter()
                .rev()
                .flat_map(|line| line.rsplit(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|hop| !hop.is_empty())
                .take(MAX_HOPS)
                .collect();
            let untrusted_hop = walked.iter().any(|hop| parse_hop(hop).is_none_or(|ip| !t.contains(ip)));
            if untrusted_hop {
                prop_assert!(got.ip().is_none_or(|ip| !t.contains(ip)), "{got} from {raw:?}");
            }
        }

        /// A client behind trusted proxies is named by its own address, whatever it wrote
        /// itself in front of it.
        #[test]
        fn the_client_is_named_whatever_it_wrote(
            written in proptest::collection::vec(any::<u8>(), 0..80),
            client in any::<[u8; 4]>(),
            proxies in proptest::collection::vec(0u8..=255, 0..4),
            own_line in any::<bool>(),
        ) {
            let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
            let client = IpAddr::from(client);
            prop_assume!(!t.contains(client));
            let mut appended = client.to_string();
            for p in &proxies {
                appended.push_str(&format!(", 10.1.1.{p}"));
            }
            let lines: Vec<Vec<u8>> = if own_line {
                vec![written, appended.into_bytes()]
            } else {
                vec![[written, b", ".to_vec(), appended.into_bytes()].concat()]
            };
            prop_assert_eq!(t.client_addr(ip("10.0.0.2"), lines.iter()).ip(), Some(client));
        }

        #[test]
        fn untrusted_peer_is_always_the_client(header in ".{0,100}", peer in any::<[u8; 16]>()) {
            let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
            let peer = IpAddr::from(peer);
            prop_assume!(!t.contains(peer));
            prop_assert_eq!(t.client_addr(peer, [header.as_str()]).ip(), Some(peer.to_canonical()));
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
