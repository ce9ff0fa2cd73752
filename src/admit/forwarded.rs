//! The client behind a trusted reverse proxy (issue 14).
//!
//! Every viewer that comes through nginx shares nginx's address, so per-address limits would refuse
//! the ninth viewer of a whole plant and `/sessions` would show only the proxy. For a connection
//! from a configured proxy (`[limits] trusted_proxies`) the client is read from `Forwarded`
//! (RFC 7239, its `for=` parameters) or, when that is absent, `X-Forwarded-For`: the list is walked
//! from the right (the hop nearest to us) past every trusted proxy, and the first address that is
//! not one is the client. Entries to its left were written by the client itself and are never
//! believed. A connection from any other address is its own client, whatever its headers say, and
//! an entry that is not an address (`unknown`, an obfuscated `_name`) ends the walk at the proxy.

use std::net::{IpAddr, SocketAddr};

use crate::http::request::Request;

/// The address to count and show for this request: the forwarded client when `peer` is a trusted
/// proxy and the headers name one, else `peer`. A forwarded client's port is not known: 0.
pub fn client(peer: SocketAddr, trusted: &[IpAddr], req: &Request) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.contains(&ip.to_canonical());
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match (&req.forwarded, &req.x_forwarded_for) {
        (Some(f), _) => forwarded_for(f).collect(),
        (None, Some(x)) => x.split(',').map(|h| parse_node(h.trim())).collect(),
        (None, None) => return peer,
    };
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(*ip) => continue,
            Some(ip) => return SocketAddr::new(ip.to_canonical(), 0),
            None => return peer,
        }
    }
    peer
}

/// The `for=` values of a `Forwarded` header (all elements, in order), each parsed as an address.
fn forwarded_for(header: &str) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    header.split(',').filter_map(|element| {
        element.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("for")
                .then(|| parse_node(v.trim().trim_matches('"')))
        })
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`. Anything else (`unknown`, `_hidden`) is `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    fn req(headers: &str) -> Request {
        parse(format!("GET /stream HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes())
            .unwrap()
            .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(ip(s), 5555)
    }

    #[test]
    fn only_a_trusted_proxy_is_believed() {
        let trusted = [ip("127.0.0.2")];
        let r = req("X-Forwarded-For: 203.0.113.9\r\n");
        assert_eq!(
            client(peer("127.0.0.2"), &trusted, &r),
            "203.0.113.9:0".parse().unwrap()
        );
        assert_eq!(client(peer("127.0.0.4"), &trusted, &r), peer("127.0.0.4"));
        assert_eq!(
            client(peer("127.0.0.2"), &trusted, &req("")),
            peer("127.0.0.2")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = [ip("127.0.0.2"), ip("10.0.0.5")];
        // The client wrote "1.1.1.1" itself; nginx appended what it saw (198.51.100.7), then an
        // inner trusted proxy appended 10.0.0.5.
        let r = req("X-Forwarded-For: 1.1.1.1, 198.51.100.7\r\nX-Forwarded-For: 10.0.0.5\r\n");
        assert_eq!(
            client(peer("127.0.0.2"), &trusted, &r).ip(),
            ip("198.51.100.7")
        );
        // Every hop trusted: the leftmost... is still a proxy; the connection's peer is used.
        let r = req("X-Forwarded-For: 10.0.0.5\r\n");
        assert_eq!(client(peer("127.0.0.2"), &trusted, &r), peer("127.0.0.2"));
        // Garbage ends the walk at the proxy rather than trusting what is left of it.
        let r = req("X-Forwarded-For: 198.51.100.7, unknown\r\n");
        assert_eq!(client(peer("127.0.0.2"), &trusted, &r), peer("127.0.0.2"));
    }

    #[test]
    fn forwarded_header_wins_and_its_forms_parse() {
        let trusted = [ip("127.0.0.2")];
        let r = req(
            "Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\"\r\nX-Forwarded-For: 9.9.9.9\r\n",
        );
        assert_eq!(
            client(peer("127.0.0.2"), &trusted, &r).ip(),
            ip("2001:db8:cafe::17")
        );
        let r = req("Forwarded: For=\"198.51.100.17:80\"\r\n");
        assert_eq!(
            client(peer("127.0.0.2"), &trusted, &r).ip(),
            ip("198.51.100.17")
        );
        let r = req("Forwarded: for=_hidden\r\n");
        assert_eq!(client(peer("127.0.0.2"), &trusted, &r), peer("127.0.0.2"));
        // An IPv4-mapped peer is the same proxy.
        let mapped = SocketAddr::new(ip("::ffff:127.0.0.2"), 1);
        let r = req("X-Forwarded-For: 198.51.100.7\r\n");
        assert_eq!(client(mapped, &trusted, &r).ip(), ip("198.51.100.7"));
    }
}
