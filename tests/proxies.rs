//! Behind a reverse proxy (issue 14): `[limits] trusted_proxies` makes per-address limits,
//! `/sessions` and the admin loopback rule apply to the client a trusted proxy names in
//! `X-Forwarded-For` / `Forwarded`, and only then; `[limits] monitoring` hosts are exempt from the
//! per-address connection rate. Against the real binary, from distinct loopback addresses.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = r#"
[limits]
trusted_proxies = ["127.0.0.2"]
monitoring = ["127.0.0.1", "127.0.0.3"]
"#;

/// Connects from `src` and sends `GET path` with `extra` header lines; returns the status and the
/// open connection (a stream stays admitted while it is held).
fn open_from(src: &str, port: u16, path: &str, extra: &str) -> (u16, TcpStream) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !head.ends_with(b"\r\n\r\n") && Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status from {src}: {text:?}"));
    (code, s)
}

fn wait_sessions(port: u16, n: usize) -> Vec<String> {
    let mut peers = Vec::new();
    let ok = wait_for(Duration::from_secs(5), || {
        peers = session_peers(port);
        peers.len() == n
    });
    assert!(ok, "expected {n} sessions, /sessions shows {peers:?}");
    peers
}

#[test]
fn a_trusted_proxy_forwards_its_clients_and_nobody_else_does() {
    let dir = std::env::temp_dir().join(format!("beltcam-proxies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("beltcam.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let d = Daemon::start(&[
        "--config",
        &cfg,
        "--source",
        "synthetic:160x120@5",
        "--max-clients-per-ip",
        "2",
        "--connects-per-minute",
        "5",
    ]);
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");

    // Three viewers through the trusted proxy: three clients, each under its limit of 2.
    let mut held = Vec::new();
    for ip in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let (code, s) = open_from("127.0.0.2", d.port, "/stream", &xff(ip));
        assert_eq!(code, 200, "viewer {ip} through the proxy");
        held.push(s);
    }
    let mut peers = wait_sessions(d.port, 3);
    peers.sort();
    assert_eq!(
        peers,
        ["198.51.100.1:0", "198.51.100.2:0", "198.51.100.3:0"],
        "/sessions shows the forwarded clients"
    );
    // The per-address limit is the forwarded client's: a second stream of .1 is admitted, a
    // third is not. A client-written entry left of the proxy's own is not believed.
    let (code, s) = open_from(
        "127.0.0.2",
        d.port,
        "/stream",
        &xff("10.9.9.9, 198.51.100.1"),
    );
    assert_eq!(code, 200);
    held.push(s);
    let (code, _) = open_from("127.0.0.2", d.port, "/stream", &xff("198.51.100.1"));
    assert_eq!(code, 429, "third stream of one forwarded client");
    let (code, _) = open_from(
        "127.0.0.2",
        d.port,
        "/stream",
        "Forwarded: for=\"198.51.100.1:4711\";proto=http\r\n",
    );
    assert_eq!(code, 429, "the same client named by Forwarded");

    // An untrusted address's headers are ignored: it is one client, limited to 2.
    for ip in ["203.0.113.1", "203.0.113.2"] {
        let (code, s) = open_from("127.0.0.4", d.port, "/stream", &xff(ip));
        assert_eq!(code, 200);
        held.push(s);
    }
    let (code, _) = open_from("127.0.0.4", d.port, "/stream", &xff("203.0.113.3"));
    assert_eq!(
        code, 429,
        "an untrusted peer's X-Forwarded-For is not believed"
    );
    let peers = wait_sessions(d.port, 6);
    assert_eq!(
        peers.iter().filter(|p| p.starts_with("127.0.0.4:")).count(),
        2,
        "{peers:?}"
    );

    // Admin's loopback rule applies to the forwarded client: through the proxy, a remote client
    // is not loopback; the proxy's own request is.
    let (code, _) = open_from("127.0.0.2", d.port, "/sessions", &xff("198.51.100.9"));
    assert_eq!(code, 403, "a forwarded remote client is not loopback");
    let (code, _) = open_from("127.0.0.2", d.port, "/sessions", "");
    assert_eq!(code, 200);
    drop(held);

    // Connection rate (5 a minute here): a monitoring host and the trusted proxy are exempt,
    // any other address is limited.
    for src in ["127.0.0.3", "127.0.0.2"] {
        for i in 0..12 {
            let (code, _, _) = get_from(src, d.port, "/health").unwrap();
            assert_eq!(code, 200, "{src}: poll {i}");
        }
    }
    let codes: Vec<u16> = (0..12)
        .map(|_| get_from("127.0.0.5", d.port, "/health").unwrap().0)
        .collect();
    assert!(
        codes.contains(&429) && codes[..5].iter().all(|&c| c == 200),
        "127.0.0.5 is rate limited after 5: {codes:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
