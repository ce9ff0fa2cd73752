#!/usr/bin/env python3
"""N MJPEG viewers for scripts/vm-peers.sh: open N `GET /stream` connections to 127.0.0.1:PORT,
read them all from one thread (selectors), and count the whole JPEG parts each one receives.

After every viewer has received --warm-parts parts (bounded by --connect-timeout), it runs
`tests/vm/ctl.sh CTL 'peers-ctl sample DAEMON WINDOW'` in a thread (the guest reads the daemon's
utime+stime WINDOW seconds apart) and counts the parts that arrive while that call runs. Prints one
JSON line: per-viewer fps over the host window, the daemon's CPU ticks and the guest window.
With --save DIR, the first --save-n whole JPEGs of viewer 0 are written there (f00.jpg, ...).
Every loop is bounded in time; nothing here sleeps for synchronisation.
"""
import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CTL = os.path.join(HERE, "..", "tests", "vm", "ctl.sh")


class Viewer:
    """One stream connection and a push parser: HTTP head, then parts of `headers CRLF CRLF`
    + Content-Length bytes of body (both beltcam and ustreamer send Content-Length)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"GET /stream HTTP/1.1\r\nHost: vm\r\n\r\n")
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.head_done = False
        self.need = 0  # body bytes still to skip (or keep, when saving)
        self.keep = None  # body being saved
        self.parts = 0
        self.bytes = 0
        self.saved = []
        self.save_n = 0
        self.error = None

    def feed(self, data):
        self.bytes += len(data)
        pos, n = 0, len(data)
        while pos < n:
            if self.need:
                take = min(self.need, n - pos)
                if self.keep is not None:
                    self.keep += data[pos : pos + take]
                self.need -= take
                pos += take
                if self.need == 0:
                    self.part_done()
                continue
            # headers (the HTTP head, then each part's): gather up to the blank line
            self.buf += data[pos:]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.error = "no header end in 64 KiB"
                    self.buf.clear()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            data = memoryview(bytes(self.buf[end + 4 :]))
            pos, n = 0, len(data)
            self.buf = bytearray()
            if not self.head_done:
                self.head_done = True
                if " 200 " not in head.split("\r\n", 1)[0] + " ":
                    self.error = "status: " + head.split("\r\n", 1)[0]
                continue
            length = None
            for line in head.split("\r\n"):
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            if length is None:
                self.error = "part without Content-Length"
                continue
            if len(self.saved) < self.save_n:
                self.keep = bytearray()
            self.need = length
            if length == 0:
                self.part_done()

    def part_done(self):
        self.parts += 1
        if self.keep is not None:
            self.saved.append(bytes(self.keep))
            self.keep = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ctl", type=int, required=True)
    ap.add_argument("--daemon", required=True)
    ap.add_argument("-n", type=int, default=1)
    ap.add_argument("--window", type=float, default=10)
    ap.add_argument("--warm-parts", type=int, default=3)
    ap.add_argument("--connect-timeout", type=float, default=30)
    ap.add_argument("--save")
    ap.add_argument("--save-n", type=int, default=25)
    a = ap.parse_args()

    sel = selectors.DefaultSelector()
    viewers = []
    for i in range(a.n):
        v = Viewer(a.port)
        if i == 0 and a.save:
            v.save_n = a.save_n
        viewers.append(v)
        sel.register(v.sock, selectors.EVENT_READ, v)
    buf = bytearray(1 << 18)
    mv = memoryview(buf)

    def pump(until):
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            for key, _ in sel.select(timeout=min(left, 0.2)):
                v = key.data
                try:
                    k = v.sock.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError as e:
                    v.error = str(e)
                    k = 0
                if k == 0:
                    if not v.error:
                        v.error = "closed"
                    sel.unregister(v.sock)
                    continue
                v.feed(mv[:k])

    # warm-up: every viewer has whole parts coming in (bounded)
    deadline = time.monotonic() + a.connect_timeout
    while time.monotonic() < deadline:
        pump(min(deadline, time.monotonic() + 0.2))
        if all(v.parts >= a.warm_parts or v.error for v in viewers):
            break
    warm = sum(v.parts >= a.warm_parts for v in viewers)

    result = {}

    def sample():
        try:
            out = subprocess.run(
                ["bash", CTL, str(a.ctl), f"peers-ctl sample {a.daemon} {a.window}"],
                capture_output=True,
                text=True,
                timeout=a.window + 60,
                env=dict(os.environ, CTL_TIMEOUT=str(int(a.window) + 30)),
            ).stdout
            lines = [l.split() for l in out.strip().splitlines()]
            (t0, c0), (t1, c1) = [l for l in lines if len(l) == 2][-2:]
            result["guest_s"] = float(t1) - float(t0)
            result["ticks"] = int(c1) - int(c0)
            # per thread name: ticks over the window (threads alive at both ends)
            thr = {k: {l[1]: (l[2], int(l[3])) for l in lines if l[0] == k and len(l) == 4}
                   for k in ("thr0", "thr1")}
            by_name = {}
            for tid, (name, t) in thr["thr1"].items():
                if tid in thr["thr0"]:
                    by_name[name] = by_name.get(name, 0) + t - thr["thr0"][tid][1]
            result["threads"] = dict(sorted(by_name.items(), key=lambda kv: -kv[1]))
        except Exception as e:  # reported, not raised: the table shows the gap
            result["error"] = f"sample: {e!r}"

    before = [v.parts for v in viewers]
    bytes_before = sum(v.bytes for v in viewers)
    t0 = time.monotonic()
    th = threading.Thread(target=sample)
    th.start()
    hard = t0 + a.window + 90
    while th.is_alive() and time.monotonic() < hard:
        pump(time.monotonic() + 0.1)
    t1 = time.monotonic()
    after = [v.parts for v in viewers]
    window_bytes = sum(v.bytes for v in viewers) - bytes_before
    th.join(timeout=1)
    host_s = t1 - t0
    fps = sorted((b - f) / host_s for f, b in zip(before, after))
    errors = sorted({v.error for v in viewers if v.error})
    if a.save and viewers[0].saved:
        os.makedirs(a.save, exist_ok=True)
        for i, jpg in enumerate(viewers[0].saved):
            with open(os.path.join(a.save, f"f{i:02d}.jpg"), "wb") as f:
                f.write(jpg)
    for v in viewers:
        v.sock.close()
    print(
        json.dumps(
            {
                "daemon": a.daemon,
                "n": a.n,
                "warm": warm,
                "host_s": round(host_s, 3),
                "parts": sum(after) - sum(before),
                "fps_min": round(fps[0], 2),
                "fps_med": round(fps[len(fps) // 2], 2),
                "fps_max": round(fps[-1], 2),
                "kb_per_part": round(window_bytes / max(1, sum(after) - sum(before)) / 1e3, 1),
                "errors": errors,
                **result,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
