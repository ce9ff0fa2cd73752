//! Connection handling tested in-process: a `serve::Server` over cameras whose frames the test
//! publishes itself, the real accept loop of `net` on a loopback listener, and tokio's paused clock,
//! so every deadline (request head, slowloris, keep-alive idle, frame send, event-stream write) is
//! checked exactly and without waiting for it. Epoll backend always; io_uring where it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use beltcam::admit::auth::Auth;
use beltcam::capture::Camera;
use beltcam::config::spec::SourceSpec;
use beltcam::config::{Config, Settings};
use beltcam::net::{self, Backend};
use beltcam::obs::events::{Event, EventBus};
use beltcam::obs::health::Health;
use beltcam::obs::stats::CameraState;
use beltcam::serve::Server;
use beltcam::shutdown::Shutdown;

const REQUEST: Duration = Duration::from_millis(5_000);
const KEEPALIVE: Duration = Duration::from_millis(7_000);
const SEND: Duration = Duration::from_millis(10_000);

fn settings() -> Settings {
    let mut s = Config::parse("").unwrap().validate().unwrap();
    s.request_timeout = REQUEST;
    s.keepalive_timeout = KEEPALIVE;
    s.send_timeout = SEND;
    s
}

/// A server with one camera ("cam0") that nothing captures for: tests publish into its pool.
fn server(backend: Backend) -> Arc<Server> {
    let shutdown = Arc::new(Shutdown::new());
    let health = Arc::new(Health::new());
    let events = Arc::new(EventBus::new(4));
    let spec = SourceSpec::Synthetic {
        width: 320,
        height: 240,
        fps: 30.0,
    };
    let cam = Arc::new(Camera::new(
        0,
        "cam0".into(),
        spec,
        80,
        health.register("capture:cam0"),
        Arc::clone(&shutdown),
        Arc::clone(&events),
    ));
    Arc::new(Server::new(
        settings(),
        Auth::open(),
        backend,
        vec![cam],
        health,
        events,
        shutdown,
    ))
}

/// Publishes a frame of `len` bytes (not a JPEG: the server never looks inside).
fn publish(server: &Server, len: usize) {
    let cam = &server.live().cameras[0];
    let mut w = cam.claim().expect("a free slot");
    w.jpeg_buf()[..len].fill(0xAB);
    cam.publish(w, len, beltcam::capture::now_us(), 320, 240);
}

/// Starts the serving side on the current runtime (a LocalSet task running `net`'s accept loop).
fn listen(server: &Arc<Server>, backend: Backend) -> SocketAddr {
    let std = net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = std.local_addr().unwrap();
    let hb = server.health.register("serve-test");
    let (shutdown, handler) = (Arc::clone(&server.shutdown), Arc::clone(server));
    match backend {
        Backend::Epoll => {
            let l = net::epoll::EpollAcceptor::new(tokio::net::TcpListener::from_std(std).unwrap());
            tokio::task::spawn_local(net::run_thread(
                vec![l],
                shutdown,
                hb,
                handler,
                Box::new(|| {}),
            ));
        }
        Backend::Uring => {
            // As a serving thread does: the relay's frame bursts on a ring of the thread's own.
            net::burst::use_uring_on_this_thread();
            let l = net::uring::UringAcceptor::new(std).unwrap();
            tokio::task::spawn_local(net::run_thread(
                vec![l],
                shutdown,
                hb,
                handler,
                Box::new(|| {}),
            ));
        }
    }
    addr
}

/// Reads until EOF or until `limit` bytes; `None` if the peer reset the connection. Panics if the
/// server neither answers nor closes within a minute (of paused time: no real wait).
async fn read_all(c: &mut TcpStream, limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < limit {
        let read = tokio::time::timeout(Duration::from_secs(60), c.read(&mut buf))
            .await
            .expect("the server neither answered nor closed the connection");
        match read {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
    Some(out)
}

/// Runs `test` on a paused-clock runtime of `backend` (io_uring skipped, visibly, where refused).
fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Arc<Server>, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    match backend {
        Backend::Epoll => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&rt, async {
                let s = server(backend);
                let addr = listen(&s, backend);
                test(s, addr).await;
            });
        }
        Backend::Uring => {
            if let Some(e) = net::probe_uring() {
                println!("SKIP io_uring variant: {e}");
                return;
            }
            tokio_uring::start(async {
                tokio::time::pause();
                let s = server(backend);
                let addr = listen(&s, backend);
                test(s, addr).await;
            });
        }
    }
}

fn both(test: impl Fn(Backend)) {
    test(Backend::Epoll);
    test(Backend::Uring);
}

#[test]
fn silent_connection_is_closed_at_the_request_deadline() {
    both(|b| {
        run(b, |s, addr| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let t0 = Instant::now();
            let got = read_all(&mut c, 1 << 16).await.expect("no reset");
            let waited = t0.elapsed();
            assert!(got.is_empty(), "{b:?}: nothing is answered to silence");
            assert!(
                waited >= REQUEST && waited < REQUEST + Duration::from_millis(100),
                "{b:?}: closed after {waited:?}, deadline {REQUEST:?}"
            );
            assert_eq!(s.snapshot().server.request_timeouts, 1, "{b:?}");
        })
    });
}

#[test]
fn partial_head_gets_408_at_the_request_deadline() {
    both(|b| {
        run(b, |s, addr| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            let t0 = Instant::now();
            let got = read_all(&mut c, 1 << 16).await.expect("no reset");
            let waited = t0.elapsed();
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 408 "), "{b:?}: {text}");
            assert!(
                waited >= REQUEST && waited < REQUEST + Duration::from_millis(100),
                "{b:?}: answered after {waited:?}"
            );
            assert_eq!(s.snapshot().server.request_timeouts, 1, "{b:?}");
        })
    });
}

#[test]
fn idle_keep_alive_connection_is_closed_at_its_deadline() {
    both(|b| {
        run(b, |_s, addr| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            // Read exactly one response (head + Content-Length body); the connection stays open.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let body_end = loop {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "{b:?}: closed before the response");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len: usize = text[..h]
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if got.len() >= h + 4 + len {
                        break h + 4 + len;
                    }
                }
            };
            assert_eq!(got.len(), body_end, "{b:?}: nothing after the response");
            assert!(got.starts_with(b"HTTP/1.1 200 "));
            let t0 = Instant::now();
            let rest = read_all(&mut c, 1 << 16).await.expect("no reset");
            let waited = t0.elapsed();
            assert!(rest.is_empty(), "{b:?}");
            assert!(
                waited >= KEEPALIVE && waited < KEEPALIVE + Duration::from_millis(100),
                "{b:?}: idle connection closed after {waited:?}, deadline {KEEPALIVE:?}"
            );
        })
    });
}

#[test]
fn stalled_stream_ends_at_the_send_deadline() {
    both(|b| {
        run(b, |s, addr| async move {
            publish(&s, 100);
            // A viewer with a tiny receive buffer that never reads.
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let mut c = sock.connect(addr).await.unwrap();
            c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            // Frames far larger than every buffer on the way: the send stalls for good.
            let t0 = Instant::now();
            let mut opened = false;
            while t0.elapsed() < SEND * 3 {
                publish(&s, 1_500_000);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let snap = s.snapshot();
                opened |= snap.sessions.active == 1;
                if opened && snap.sessions.active == 0 {
                    break;
                }
            }
            let waited = t0.elapsed();
            let snap = s.snapshot();
            assert!(opened, "{b:?}: the session never opened");
            assert_eq!(
                snap.sessions.active, 0,
                "{b:?}: the session outlived its deadline"
            );
            assert_eq!(snap.server.send_timeouts, 1, "{b:?}");
            assert!(
                waited >= SEND && waited < SEND + Duration::from_secs(2),
                "{b:?}: ended after {waited:?}, send deadline {SEND:?}"
            );
            assert_eq!(
                s.live().cameras[0].pool.stats().leased,
                0,
                "{b:?}: a lease outlived it"
            );
            drop(c);
        })
    });
}

/// A frame larger than the viewer's socket buffer: the relay's one non-blocking send places only
/// its start, and the session writes the rest on its own (the relay's handoff). Each part must
/// arrive whole, every byte of it from its own frame, and the viewer keeps getting new frames.
#[test]
fn a_frame_larger_than_the_socket_buffer_arrives_whole() {
    const BIG: usize = 1_500_000;
    both(|b| {
        run(b, |s, addr| async move {
            // Small frames first: the session sizes its send buffer from them (256 KiB).
            publish_filled(&s, 100, 1);
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut parser = beltcam_testkit::multipart::Parser::strict();
            let mut parts = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut fill = 1u8;
            let t0 = Instant::now();
            while parts.len() < 6 && t0.elapsed() < Duration::from_secs(60) {
                // A new big frame whenever the viewer has what was published so far.
                if parts.last().map_or(true, |p: &FilledPart| p.1 == fill) {
                    fill += 1;
                    publish_filled(&s, BIG, fill);
                }
                read_parts(&mut c, &mut buf, &mut parser, &mut parts)
                    .await
                    .unwrap_or_else(|e| panic!("{b:?}: {e}"));
            }
            assert!(parts.len() >= 6, "{b:?}: {parts:?}");
            for &(len, fill, uniform) in &parts[1..] {
                assert_eq!(len, BIG, "{b:?}: {parts:?}");
                assert!(uniform, "{b:?}: a part of frame {fill} mixes bytes");
            }
            assert_eq!(s.snapshot().sessions.active, 1, "{b:?}");
        })
    });
}

/// Enough plain viewers on one serving thread that its relay sends them each frame by reference
/// from the pool's file (`sendfile(2)`; on io_uring each blocking socket is made non-blocking for
/// its call): every viewer gets every part whole, each from its own frame, and the io_uring
/// sessions go on working after the relay's calls.
#[test]
fn many_viewers_get_whole_frames_sent_by_reference() {
    const VIEWERS: usize = 24;
    const LEN: usize = 150_000;
    both(|b| {
        run(b, |s, addr| async move {
            publish_filled(&s, LEN, 1);
            let mut viewers = Vec::new();
            for i in 0..VIEWERS {
                // One loopback address each: the per-address limit is 8.
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(format!("127.0.0.{}:0", 10 + i).parse().unwrap())
                    .unwrap();
                let mut c = sock.connect(addr).await.unwrap();
                c.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                viewers.push((c, beltcam_testkit::multipart::Parser::strict(), Vec::new()));
            }
            let mut buf = vec![0u8; 256 * 1024];
            let t0 = Instant::now();
            for fill in 2..=6u8 {
                publish_filled(&s, LEN, fill);
                // Each viewer reads until it has this frame.
                for (i, (c, parser, parts)) in viewers.iter_mut().enumerate() {
                    while parts
                        .last()
                        .map_or(true, |&(_, f, _): &(usize, u8, bool)| f < fill)
                    {
                        assert!(
                            t0.elapsed() < Duration::from_secs(60),
                            "{b:?}: viewer {i} stalled"
                        );
                        read_parts(c, &mut buf, parser, parts)
                            .await
                            .unwrap_or_else(|e| panic!("{b:?}: viewer {i}: {e}"));
                    }
                }
            }
            for (i, (_, _, parts)) in viewers.iter().enumerate() {
                assert_eq!(
                    parts.last().map(|p| p.1),
                    Some(6),
                    "{b:?}: viewer {i}: {parts:?}"
                );
                for &(len, fill, uniform) in parts {
                    assert_eq!(len, LEN, "{b:?}: viewer {i}: {parts:?}");
                    assert!(
                        uniform,
                        "{b:?}: viewer {i}: a part of frame {fill} mixes bytes"
                    );
                }
            }
            assert_eq!(s.snapshot().sessions.active, VIEWERS, "{b:?}");
        })
    });
}

/// A part as the tests of filled frames see it: its length, its first byte, and whether every byte
/// is that one.
type FilledPart = (usize, u8, bool);

/// One read of the stream (30 s at most, of paused time) fed to `parser`; whole parts go to `parts`.
async fn read_parts(
    c: &mut TcpStream,
    buf: &mut [u8],
    parser: &mut beltcam_testkit::multipart::Parser,
    parts: &mut Vec<FilledPart>,
) -> Result<(), String> {
    let n = tokio::time::timeout(Duration::from_secs(30), c.read(buf))
        .await
        .map_err(|_| "the stream stalled".to_string())?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the stream ended".into());
    }
    parser
        .feed(&buf[..n], |p| {
            let first = p.body.first().copied().unwrap_or(0);
            let uniform = p.body.iter().all(|&x| x == first);
            parts.push((p.len, first, uniform));
        })
        .map_err(|e| format!("broken framing: {e}"))
}

fn publish_filled(server: &Server, len: usize, fill: u8) {
    let cam = &server.live().cameras[0];
    let mut w = cam.claim().expect("a free slot");
    w.jpeg_buf()[..len].fill(fill);
    cam.publish(w, len, beltcam::capture::now_us(), 320, 240);
}

#[test]
fn stalled_event_subscriber_is_dropped_at_the_send_deadline() {
    both(|b| {
        run(b, |s, addr| async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            let mut c = sock.connect(addr).await.unwrap();
            c.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            // Wait (virtual time) for the subscription, then fill every buffer on the way at once:
            // 256 events of 4 KB are more than the socket buffers hold, so the write stalls now.
            let t = Instant::now();
            while s.events.stats().subscribers == 0 && t.elapsed() < SEND {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let subscribed = s.events.stats().subscribers == 1;
            for _ in 0..256 {
                s.events.emit(
                    None,
                    Event::Stats {
                        camera: "x".repeat(4096),
                        fps: 1.0,
                        clients: 0,
                        state: CameraState::Online,
                    },
                );
                tokio::task::yield_now().await;
            }
            let t0 = Instant::now();
            while s.events.stats().subscribers == 1 && t0.elapsed() < SEND * 3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let waited = t0.elapsed();
            assert!(subscribed, "{b:?}: never subscribed");
            assert_eq!(s.events.stats().subscribers, 0, "{b:?}: still subscribed");
            assert!(
                waited >= SEND && waited < SEND + Duration::from_secs(2),
                "{b:?}: dropped after {waited:?}, send deadline {SEND:?}"
            );
            drop(c);
        })
    });
}

#[test]
fn snapshot_and_routes_answer_in_process() {
    both(|b| {
        run(b, |s, addr| async move {
            publish(&s, 1234);
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(
                b"GET /snapshot HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let got = read_all(&mut c, 1 << 20).await.expect("no reset");
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{b:?}: {text}");
            assert!(text.contains("Content-Length: 1234\r\n"), "{b:?}");
            assert!(
                text.contains("HTTP/1.1 404 Not Found\r\n"),
                "{b:?}: pipelined 404"
            );
            let snap = s.snapshot();
            assert_eq!(snap.server.requests, 2, "{b:?}");
            assert_eq!(snap.server.not_found, 1, "{b:?}");
        })
    });
}

#[test]
fn page_links_are_relative() {
    run(Backend::Epoll, |_s, addr| async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut c, 1 << 20).await.expect("no reset");
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("src=\"cam/cam0/stream\""), "{text}");
        // Behind a proxy under /webcam/, an absolute link would leave the prefix.
        assert!(
            !text.contains("href=\"/") && !text.contains("src=\"/"),
            "{text}"
        );
    });
}

#[test]
fn head_of_a_stream_has_no_body() {
    both(|b| {
        run(b, |s, addr| async move {
            publish(&s, 100);
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let got = read_all(&mut c, 1 << 16).await.expect("no reset");
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{b:?}: {text}");
            // RFC 9110 §9.3.2: a HEAD response has no content (it used to carry the boundary).
            assert!(
                text.ends_with("\r\n\r\n"),
                "{b:?}: body bytes after the head: {text:?}"
            );
        })
    });
}
