//! HTTP edge cases against the real binary, each a proxy or request-smuggling concern: Host is
//! required on HTTP/1.1, conflicting Content-Length is refused, absolute-form targets and
//! %-encoded paths reach the same routes, and auth scheme names are case-insensitive.

mod common;

use common::{raw, Daemon};

const CAM: &str = "front=synthetic:160x120@10";

fn status(d: &Daemon, request: &str) -> u16 {
    raw(d.port, request.as_bytes()).expect("a response").0
}

#[test]
fn http11_without_host_is_400() {
    let d = Daemon::start(&["--source", CAM]);
    assert_eq!(
        status(&d, "GET /snapshot HTTP/1.1\r\nConnection: close\r\n\r\n"),
        400
    );
    assert_eq!(
        status(
            &d,
            "GET /snapshot HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"
        ),
        400
    );
    assert_eq!(
        status(
            &d,
            "GET /snapshot HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ),
        200
    );
    assert_eq!(status(&d, "GET /snapshot HTTP/1.0\r\n\r\n"), 200);
}

#[test]
fn conflicting_content_lengths_are_400() {
    let d = Daemon::start(&["--source", CAM]);
    let smuggle = "GET /snapshot HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 44\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&d, smuggle), 400);
}

#[test]
fn absolute_form_targets_are_served() {
    let d = Daemon::start(&["--source", CAM]);
    let (code, head, body) = raw(
        d.port,
        b"GET http://cam.local:8080/cam/front/snapshot HTTP/1.1\r\nHost: cam.local:8080\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(code, 200, "{head}");
    assert_eq!(&body[..2], [0xFF, 0xD8], "a JPEG");
    assert_eq!(
        status(
            &d,
            "GET http://h/health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        ),
        200
    );
}

#[test]
fn percent_encoded_paths_are_decoded_and_encoded_slashes_refused() {
    let d = Daemon::start(&["--source", CAM]);
    let get = |p: &str| {
        status(
            &d,
            &format!("GET {p} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(get("/cam/f%72ont/snapshot"), 200);
    assert_eq!(get("/cam/front/sn%61pshot"), 200);
    assert_eq!(get("/cam/fr%2Font/snapshot"), 400);
    assert_eq!(get("/cam/fr%00ont/snapshot"), 400);
    assert_eq!(get("/cam/fr%zzont/snapshot"), 400);
}

#[test]
fn auth_scheme_names_are_case_insensitive() {
    let dir = std::env::temp_dir().join(format!("beltcam-http-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let viewers = dir.join("viewers");
    let token = dir.join("token");
    std::fs::write(&viewers, "op:belt-2026\n").unwrap();
    std::fs::write(&token, "0123456789abcdef-token\n").unwrap();
    let d = Daemon::start(&[
        "--source",
        CAM,
        "--viewers-file",
        viewers.to_str().unwrap(),
        "--admin-token-file",
        token.to_str().unwrap(),
    ]);
    // base64("op:belt-2026")
    for scheme in ["Basic", "basic", "BASIC"] {
        let req = format!("GET /snapshot HTTP/1.1\r\nHost: t\r\nAuthorization: {scheme} b3A6YmVsdC0yMDI2\r\nConnection: close\r\n\r\n");
        assert_eq!(status(&d, &req), 200, "{scheme}");
    }
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let req = format!("GET /sessions HTTP/1.1\r\nHost: t\r\nAuthorization: {scheme} 0123456789abcdef-token\r\nConnection: close\r\n\r\n");
        assert_eq!(status(&d, &req), 200, "{scheme}");
    }
    let wrong = "GET /sessions HTTP/1.1\r\nHost: t\r\nAuthorization: bearer nope\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&d, wrong), 401);
    let _ = std::fs::remove_dir_all(&dir);
}
