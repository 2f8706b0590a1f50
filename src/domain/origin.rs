use std::fmt;

use super::ParseError;

/// A web origin (RFC 6454): scheme, host and port, as browsers send it in `Origin`.
/// Normalised (lower case, default port dropped) so that equal origins compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

const BAD: ParseError = ParseError("expected an origin such as https://auth.example.com (no path)");

impl Origin {
    /// `scheme://host[:port]`. A trailing `/` is tolerated (people paste it); a path,
    /// query, user info or the opaque origin `null` are not origins we can match.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let raw = raw.trim();
        let raw = raw.strip_suffix('/').unwrap_or(raw);
        let (scheme, rest) = raw.split_once("://").ok_or(BAD)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(BAD);
        }
        let (host, port) = split_authority(rest).ok_or(BAD)?;
        let default = if scheme == "https" { 443 } else { 80 };
        Ok(Self { scheme, host, port: port.filter(|&p| p != default) })
    }

    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// Whether this origin names the same host and port as a `Host` header. The scheme is
    /// not compared: behind a TLS-terminating proxy keygate cannot know it.
    pub fn matches_host(&self, host_header: &str) -> bool {
        let Some((host, port)) = split_authority(host_header.trim()) else { return false };
        let default = if self.scheme == "https" { 443 } else { 80 };
        // `Host` omits the port when it is the scheme's default, as `Origin` does.
        host == self.host && port.filter(|&p| p != default) == self.port
    }
}

/// `host[:port]` with a bracketed IPv6 literal allowed; lower-cased. `None` when malformed.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() || authority.len() > 260 {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", inner.to_ascii_lowercase()), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    let valid_host = !host.is_empty()
        && (host.starts_with('[') || host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.')));
    if !valid_host {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises() {
        let o = Origin::parse("HTTPS://Auth.Example.COM:443/").unwrap();
        assert_eq!(o.to_string(), "https://auth.example.com");
        assert_eq!(Origin::parse("http://127.0.0.1:8080").unwrap().to_string(), "http://127.0.0.1:8080");
        assert_eq!(Origin::parse("http://[::1]:80").unwrap().to_string(), "http://[::1]");
        for bad in ["null", "", "auth.example.com", "ftp://x", "https://x/path", "https://u@x", "https://x:99999"] {
            assert!(Origin::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn matches_the_host_header() {
        let o = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert!(o.matches_host("127.0.0.1:8080"));
        assert!(!o.matches_host("127.0.0.1:8081"));
        assert!(!o.matches_host("127.0.0.1"));
        let o = Origin::parse("https://auth.example.com").unwrap();
        assert!(o.matches_host("AUTH.example.com"));
        assert!(o.matches_host("auth.example.com:443"));
        assert!(!o.matches_host("evil.example.com"));
        assert!(!o.matches_host("auth.example.com.evil.io"));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,120}", h in ".{0,80}") {
            if let Ok(o) = Origin::parse(&s) {
                let _ = o.matches_host(&h);
            }
        }

        #[test]
        fn round_trips(scheme in "https?", host in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}", port in proptest::option::of(1u16..)) {
            let raw = match port { Some(p) => format!("{scheme}://{host}:{p}"), None => format!("{scheme}://{host}") };
            let o = Origin::parse(&raw).unwrap();
            prop_assert_eq!(Origin::parse(&o.to_string()).unwrap(), o.clone());
            let authority = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
            prop_assert!(o.matches_host(&authority));
        }
    }
}
