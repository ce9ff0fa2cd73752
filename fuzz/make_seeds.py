#!/usr/bin/env python3
"""Writes the hand-written seed inputs of beltcam's fuzz targets into fuzz/seeds/<target>/.

Seeds are what real clients and cameras send, kept apart from fuzz/corpus/ so `cargo fuzz cmin`
never minimizes them away; scripts/fuzz.sh hands both folders to libFuzzer and
tests/fuzz_regression.rs replays both. The output is committed: run this again (needs Pillow) only
to change the seeds. Requests are transcribed from the clients named in each file name.
"""
import io
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def out(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(*lines):
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


CHROME_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/124.0.0.0 Safari/537.36")
REQUESTS = {
    # A browser opening the stream page directly, then as an <img> on OctoPrint's page.
    "chrome-stream": crlf(
        "GET /stream HTTP/1.1", "Host: 192.168.1.50:8080", "Connection: keep-alive",
        "Upgrade-Insecure-Requests: 1", "User-Agent: " + CHROME_UA,
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        "image/apng,*/*;q=0.8", "Accept-Encoding: gzip, deflate", "Accept-Language: en-US,en;q=0.9"),
    "chrome-img-octoprint": crlf(
        "GET /webcam/?action=stream HTTP/1.1", "Host: octopi.local", "Connection: keep-alive",
        "User-Agent: " + CHROME_UA, "Accept: image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
        "Referer: http://octopi.local/", "Accept-Encoding: gzip, deflate",
        "Accept-Language: en-US,en;q=0.9", "Cookie: session_P80=abc; remember_token_P80=x|y"),
    "firefox-mjpg-streamer": crlf(
        "GET /?action=stream HTTP/1.1", "Host: 10.0.0.7:8080",
        "User-Agent: Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Accept: image/avif,image/webp,*/*", "Accept-Language: en-US,en;q=0.5",
        "Accept-Encoding: gzip, deflate", "Connection: keep-alive", "Referer: http://10.0.0.7:5000/",
        "Sec-Fetch-Dest: image", "Sec-Fetch-Mode: no-cors", "Sec-Fetch-Site: same-site"),
    "safari-index": crlf(
        "GET / HTTP/1.1", "Host: beltcam.local:8080",
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "Upgrade-Insecure-Requests: 1",
        "User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Accept-Language: en-GB,en;q=0.9", "Accept-Encoding: gzip, deflate", "Connection: keep-alive"),
    "vlc-stream": crlf(
        "GET /stream HTTP/1.1", "Host: 10.0.0.5:8080", "Accept: */*", "Accept-Language: en_US",
        "User-Agent: VLC/3.0.20 LibVLC/3.0.20", "Range: bytes=0-"),
    "ffmpeg-cam": crlf(
        "GET /cam/front/stream HTTP/1.1", "User-Agent: Lavf/60.16.100", "Accept: */*",
        "Range: bytes=0-", "Connection: close", "Host: 127.0.0.1:8080", "Icy-MetaData: 1"),
    "ffmpeg-frigate-snapshot": crlf(
        "GET /cam/back/snapshot HTTP/1.1", "User-Agent: Lavf/59.27.100", "Accept: */*",
        "Range: bytes=0-", "Connection: close", "Host: beltcam:8080", "Icy-MetaData: 1"),
    "curl-snapshot": crlf(
        "GET /snapshot HTTP/1.1", "Host: localhost:8080", "User-Agent: curl/8.5.0", "Accept: */*"),
    "curl-head": crlf(
        "HEAD /stream HTTP/1.1", "Host: localhost:8080", "User-Agent: curl/8.5.0", "Accept: */*"),
    "curl-http10": crlf(
        "GET /health HTTP/1.0", "Host: localhost:8080", "User-Agent: curl/7.88.1", "Accept: */*"),
    "curl-basic-auth": crlf(
        "GET /stats HTTP/1.1", "Host: cam:8080", "Authorization: Basic YWRtaW46c2VjcmV0",
        "User-Agent: curl/8.5.0", "Accept: */*"),
    "octoprint-snapshot-requests": crlf(
        "GET /?action=snapshot HTTP/1.1", "Host: 127.0.0.1:8080",
        "User-Agent: python-requests/2.31.0", "Accept-Encoding: gzip, deflate", "Accept: */*",
        "Connection: keep-alive"),
    "mjpg-streamer-http10": b"GET /?action=stream HTTP/1.0\r\n\r\n",
    "ustreamer-state": crlf("GET /state HTTP/1.1", "Host: pikvm"),
    "ustreamer-extra-headers": crlf("GET /stream?extra_headers=1&key=v HTTP/1.1", "Host: pikvm"),
    "home-assistant": crlf(
        "GET /snapshot HTTP/1.1", "Host: cam:8080",
        "User-Agent: HomeAssistant/2024.5.0 aiohttp/3.9.5 Python/3.12",
        "Accept: */*", "Accept-Encoding: gzip, deflate, br", "Authorization: Bearer abc.def.ghi"),
    "prometheus-stats": crlf(
        "GET /stats HTTP/1.1", "Host: cam:8080", "User-Agent: Prometheus/2.51.0",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "Accept-Encoding: gzip", "X-Prometheus-Scrape-Timeout-Seconds: 10"),
    "wget-index": crlf(
        "GET /index.html HTTP/1.1", "User-Agent: Wget/1.21.4", "Accept: */*",
        "Accept-Encoding: identity", "Host: cam:8080", "Connection: Keep-Alive"),
    "pipelined-keepalive": crlf("GET /health HTTP/1.1", "Host: a") + crlf("GET /stats HTTP/1.1", "Host: a")
    + crlf("GET /snapshot HTTP/1.1", "Connection: close"),
    "pipelined-http10-keepalive": crlf("GET / HTTP/1.0", "Connection: Keep-Alive") + b"GET /health HTTP/1.0\r\n\r\n",
    "post-with-body": crlf("POST /stream HTTP/1.1", "Host: a", "Content-Length: 5") + b"hello",
    "delete-cam": crlf("DELETE /cam/front/stream HTTP/1.1", "Host: a"),
    "options-star": crlf("OPTIONS * HTTP/1.1", "Host: a"),
    "connect": crlf("CONNECT cam:443 HTTP/1.1", "Host: cam:443"),
    "chunked": crlf("POST / HTTP/1.1", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
    "bad-content-length": crlf("GET / HTTP/1.1", "Content-Length: -1"),
    "huge-content-length": crlf("GET / HTTP/1.1", "Content-Length: 99999999999999999999999"),
    "lf-only": b"GET /?action=snapshot HTTP/1.1\nHost: a\nConnection: close\n\n",
    "lowercase-method": crlf("get /stream HTTP/1.1"),
    "absolute-form": crlf("GET http://cam:8080/stream HTTP/1.1", "Host: cam:8080"),
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "http09": b"GET /stream\r\n\r\n",
    "folded-header": b"GET / HTTP/1.1\r\nX-Long: a\r\n b\r\nHost: a\r\n\r\n",
    "nul-in-path": b"GET /str\x00eam HTTP/1.1\r\n\r\n",
    "utf8-path": "GET /cam/küche/stream HTTP/1.1\r\n\r\n".encode(),
    "cam-empty-name": crlf("GET /cam//stream HTTP/1.1"),
    "cam-extra-segment": crlf("GET /cam/front/stream/extra HTTP/1.1"),
    "query-edge-cases": crlf("GET /?action&action=stream&=x&& HTTP/1.1"),
    "partial-head": b"GET /stream HTTP/1.1\r\nHost: a\r\n",
    "connection-list": crlf("GET / HTTP/1.1", "Connection: Upgrade, close"),
    "websocket-upgrade": crlf(
        "GET /stream HTTP/1.1", "Host: a", "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"),
    "tls-client-hello": bytes.fromhex(
        "16030100a5010000a10303") + bytes(32) + bytes.fromhex("000004130113020100007400000010000e00000b"),
    "empty": b"",
    "too-many-headers": crlf("GET / HTTP/1.1", *("X-H%d: v" % i for i in range(40))),
    "head-at-limit": crlf("GET / HTTP/1.1", "X-Fill: " + "a" * (8192 - 16 - 10 - 4)),
    "head-over-limit": crlf("GET / HTTP/1.1", "X-Fill: " + "a" * 8300),
}


def jpegs():
    from PIL import Image
    ramp = Image.new("RGB", (16, 16))
    ramp.putdata([(x * 16, y * 16, (x + y) * 8) for y in range(16) for x in range(16)])

    def enc(img, **kw):
        b = io.BytesIO()
        img.save(b, "JPEG", **kw)
        return b.getvalue()

    j = {
        "pil-16x16-q75": enc(ramp, quality=75),
        "pil-16x16-optimized": enc(ramp, quality=50, optimize=True),
        "pil-16x16-progressive": enc(ramp, quality=60, progressive=True),
        "pil-16x16-444": enc(ramp, quality=90, subsampling=0),
        "pil-8x8-gray": enc(ramp.convert("L").resize((8, 8)), quality=80),
        "pil-16x16-exif": enc(ramp, quality=70, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"),
        "pil-16x16-cmyk": enc(ramp.convert("CMYK"), quality=70),
        "pil-32x8-restart": enc(ramp.resize((32, 8)), quality=70, restart_marker_blocks=1),
    }
    # The project's fixtures: good and broken frames, a real vivid webcam frame, the same without
    # its DHT (as UVC cameras send it) and cut short.
    data_dir = os.path.join(ROOT, "tests", "data")
    for name in sorted(os.listdir(data_dir)):
        if name.endswith(".jpg"):
            with open(os.path.join(data_dir, name), "rb") as f:
                j["tests-data-" + name[: -len(".jpg")]] = f.read()
    base = j["pil-16x16-q75"]
    # UVC cameras: no DHT (decoders assume Annex K), zero padding up to the buffer size.
    j["uvc-no-dht"] = strip_dht(base)
    j["uvc-no-dht-padded"] = strip_dht(base) + bytes(64)
    j["uvc-padded"] = base + bytes(200)
    # USB glitches: cut short, EOI lost, a corrupted segment length.
    j["truncated-scan"] = base[: len(base) * 2 // 3]
    j["truncated-keep-eoi"] = base[:60] + b"\xff\xd9"
    j["fill-bytes-before-sos"] = insert_before_sos(base, b"\xff\xff\xff")
    j["rst-before-sos"] = insert_before_sos(base, b"\xff\xd0")
    j["zero-size-sof"] = zero_sof(base)
    j["app-segment-overrun"] = base[:2] + b"\xff\xe1\xff\xf0" + base[2:]
    return j


def segments(j):
    """(offset, marker, total length) of each segment before SOS; assumes a well-formed file."""
    pos, segs = 2, []
    while j[pos + 1] != 0xDA:
        n = 2 + struct.unpack(">H", j[pos + 2: pos + 4])[0]
        segs.append((pos, j[pos + 1], n))
        pos += n
    return segs, pos


def strip_dht(j):
    segs, sos = segments(j)
    return j[:2] + b"".join(j[p: p + n] for p, m, n in segs if m != 0xC4) + j[sos:]


def insert_before_sos(j, extra):
    _, sos = segments(j)
    return j[:sos] + extra + j[sos:]


def zero_sof(j):
    segs, _ = segments(j)
    p = next(p for p, m, _ in segs if m == 0xC0)
    return j[: p + 5] + b"\x00\x00" + j[p + 7:]


def main():
    for name, data in REQUESTS.items():
        out("request", name, data)
    for name, data in jpegs().items():
        out("jpeg_check", name, data)
    # (jpeg_len, timestamp_us, seq) as three little-endian u64.
    for name, nums in {
        "zeros": (0, 0, 0),
        "typical": (48213, 1_700_000_000_123_456, 42),
        "max": (2**64 - 1, 2**64 - 1, 2**64 - 1),
    }.items():
        out("multipart_header", name, struct.pack("<QQQ", *nums))
    # Upstream MJPEG streams as relayed cameras send them (boundary "b"); the first two bytes pick the
    # read size and the part limit (see fuzz/src/lib.rs).
    for name, data in UPSTREAMS.items():
        out("part_reader", name, b"\x07\x20" + data)


def part(body, length=True, lf=False, before=True):
    nl = "\n" if lf else "\r\n"
    head = "Content-Type: image/jpeg" + nl
    if length:
        head += "Content-Length: %d%s" % (len(body), nl)
    return ((("--b" + nl) if before else "") + head + nl).encode() + body + nl.encode()


UPSTREAMS = {
    # beltcam / ustreamer: delimiter line, then headers with Content-Length, body, CRLF.
    "beltcam-framing": b"--b\r\n" + part(b"\xff\xd8abc\xff\xd9", before=False) + b"--b\r\n"
    + part(b"\xff\xd8de\xff\xd9", before=False) + b"--b\r\n",
    # mjpg-streamer style: boundary before each part, no Content-Length.
    "no-length": b"\r\n" + part(b"\xff\xd8one\xff\xd9", length=False) + part(b"\xff\xd8two\xff\xd9", length=False) + b"--b--\r\n",
    "lf-only": part(b"\xff\xd8lf\xff\xd9", lf=True) + part(b"x", length=False, lf=True) + b"--b\n",
    "garbage-between": b"junk\r\n" + part(b"A") + b"more junk here\r\n" + part(b"B") + b"--b\r\n",
    "oversize": part(b"X" * 600) + part(b"ok") + part(b"Y" * 600, length=False) + part(b"ok2") + b"--b\r\n",
    "dashes": b"----b\r\nContent-Length: 1\r\n\r\nA\r\n----b--\r\n",
}


if __name__ == "__main__":
    sys.exit(main())
