#!/usr/bin/env python3
"""beltcam frame tap client: the newest JPEG frames of a camera, from shared memory, no copy by the daemon.

Standard library only (Python 3.9+, Linux). The protocol is docs/tap.md:

    from beltcam_tap import Tap
    with Tap("/run/beltcam/tap.sock", "belt", fps=1) as tap:
        for frame in tap.frames():
            jpeg = frame.jpeg            # bytes, copied out of the ring and checked
            ...                          # decode, infer

Run as a script it reads COUNT frames and writes them to a folder, then prints a JSON summary:

    python3 beltcam_tap.py /run/beltcam/tap.sock belt --count 300 --out /tmp/frames [--fps 2]
"""
import argparse
import json
import mmap
import os
import socket
import struct
import sys
import time
from collections import namedtuple

Frame = namedtuple("Frame", "seq timestamp_us width height jpeg")
HEADER = struct.Struct("<4sIQIII4xQ")  # magic, version, seq, len, width, height, pad, timestamp_us


class TapError(Exception):
    pass


class Tap:
    def __init__(self, path, camera, fps=None, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        line = "SUBSCRIBE %s%s\n" % (camera, (" fps=%g" % fps) if fps else "")
        self.sock.send(line.encode())
        msg, fds, _flags, _addr = socket.recv_fds(self.sock, 512, 1)
        text = msg.decode(errors="replace").strip()
        if not text.startswith("OK ") or not fds:
            for fd in fds:
                os.close(fd)
            raise TapError(text or "no answer")
        opts = dict(w.split("=", 1) for w in text.split()[2:] if "=" in w)
        self.slots, self.slot_size, self.header = (int(opts[k]) for k in ("slots", "slot_size", "header"))
        self.map = mmap.mmap(fds[0], self.slots * self.slot_size, prot=mmap.PROT_READ)
        os.close(fds[0])
        self.torn = 0      # frames overwritten while being read (dropped)
        self.received = 0
        self.ended = None  # the reason the daemon gave for ending the subscription (END)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.map.close()
        self.sock.close()

    def read(self, slot, seq):
        """The frame announced as (slot, seq), or None if it was overwritten before it was copied."""
        base = slot * self.slot_size
        magic, _ver, seq1, length, width, height, ts = HEADER.unpack_from(self.map, base)
        if magic != b"BTAP" or seq1 != seq:
            return None
        start = base + self.header
        jpeg = self.map[start:start + length]
        seq2 = struct.unpack_from("<Q", self.map, base + 8)[0]
        if seq2 != seq:
            return None
        return Frame(seq, ts, width, height, jpeg)

    def frames(self):
        """Yields frames as the daemon announces them; skips (and counts) torn ones."""
        while True:
            msg = self.sock.recv(256)
            if not msg:
                return
            words = msg.decode().split()
            if words and words[0] == "END":
                # The daemon ended the subscription (the camera was removed by a reload).
                self.ended = " ".join(words[1:])
                return
            if len(words) != 7 or words[0] != "FRAME":
                raise TapError("unexpected message %r" % msg)
            slot, seq, _len, _ts, _w, _h = (int(w) for w in words[1:])
            frame = self.read(slot, seq)
            if frame is None:
                self.torn += 1
                continue
            self.received += 1
            yield frame


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("socket")
    p.add_argument("camera")
    p.add_argument("--fps", type=float)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--out")
    p.add_argument("--seconds", type=float, default=60.0, help="give up after this long")
    a = p.parse_args()
    t0 = time.monotonic()
    seqs = []
    with Tap(a.socket, a.camera, a.fps) as tap:
        for f in tap.frames():
            if a.out:
                with open(os.path.join(a.out, "%08d.jpg" % f.seq), "wb") as out:
                    out.write(f.jpeg)
            seqs.append(f.seq)
            if len(seqs) >= a.count or time.monotonic() - t0 > a.seconds:
                break
        json.dump({"frames": len(seqs), "torn": tap.torn, "first_seq": seqs[0] if seqs else None,
                   "last_seq": seqs[-1] if seqs else None,
                   "seconds": round(time.monotonic() - t0, 3)}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
