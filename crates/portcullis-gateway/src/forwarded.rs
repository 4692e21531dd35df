//! Who the client is when portcullis sits behind load balancers: `X-Forwarded-For` is believed
//! only from configured proxies, and only as far back as the chain stays within them.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies (`server.trusted_proxies`) whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// An entry of `server.trusted_proxies` that is neither an address nor a range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither an IP address nor a CIDR range such as \"10.0.0.0/8\"")]
pub struct NotAnAddress(pub String);

impl TrustedProxies {
    /// Comma-separated addresses and CIDR ranges; empty means none.
    pub fn parse(list: &str) -> Result<Self, NotAnAddress> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(NotAnAddress(item.to_owned())),
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a range covers every address of a family (`0.0.0.0/0`, `::/0`): then any client
    /// can name the address it is counted as.
    pub fn trusts_everyone(&self) -> bool {
        self.0.iter().any(|n| n.prefix_len() == 0)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: `peer` itself unless `peer` is a trusted proxy, in which case the
    /// nearest `X-Forwarded-For` hop that is not trusted (or the farthest one, when every hop
    /// is). A hop that is not an address ends the walk: the last believable address wins.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Several X-Forwarded-For lines form one list, in order (RFC 9110 §5.3).
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return client;
            };
            hops.extend(value.split(','));
        }
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`) as the IPv4 address it is.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical_ip(sa.ip()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peers_are_taken_at_their_word_and_nothing_else() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("203.0.113.9"), &headers(&["1.1.1.1"])),
            ip("203.0.113.9")
        );
        let lb = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        assert_eq!(
            lb.client(ip("203.0.113.9"), &headers(&["1.1.1.1"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let lb = TrustedProxies::parse("10.0.0.0/8, 192.0.2.7").expect("parse");
        // A client-forged first hop does not help: the walk stops at the first untrusted hop.
        let h = headers(&["6.6.6.6, 198.51.100.4", "192.0.2.7"]);
        assert_eq!(lb.client(ip("10.1.2.3"), &h), ip("198.51.100.4"));
        // Every hop trusted: the farthest one.
        assert_eq!(
            lb.client(ip("10.1.2.3"), &headers(&["10.9.9.9"])),
            ip("10.9.9.9")
        );
        // No header: the proxy itself.
        assert_eq!(lb.client(ip("10.1.2.3"), &headers(&[])), ip("10.1.2.3"));
        // Ports, brackets and IPv4-mapped IPv6.
        assert_eq!(
            lb.client(ip("::ffff:10.0.0.1"), &headers(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            lb.client(ip("10.0.0.1"), &headers(&["198.51.100.4:5555"])),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn garbage_ends_the_walk_at_the_last_believable_address() {
        let lb = TrustedProxies::parse("10.0.0.0/8").expect("parse");
        assert_eq!(
            lb.client(ip("10.0.0.1"), &headers(&["unknown"])),
            ip("10.0.0.1")
        );
        assert_eq!(
            lb.client(ip("10.0.0.1"), &headers(&["1.1.1.1, nonsense, 10.0.0.2"])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn bad_lists_say_which_item() {
        let e = TrustedProxies::parse("10.0.0.0/8, 10.0.0.300").expect_err("bad");
        assert_eq!(e, NotAnAddress("10.0.0.300".into()));
        assert!(e.to_string().contains("10.0.0.300"), "{e}");
        assert!(TrustedProxies::parse("").expect("empty").is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(
            TrustedProxies::parse("10.0.0.0/8, 0.0.0.0/0")
                .expect("parse")
                .trusts_everyone()
        );
        assert!(
            !TrustedProxies::parse("10.0.0.0/8")
                .expect("parse")
                .trusts_everyone()
        );
    }
}
