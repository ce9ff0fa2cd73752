#!/usr/bin/env python3
# restart-repro.py BELTCAM [auto|uring|epoll] - what tests/systemd_vm.rs sees across
# `systemctl restart beltcam`, without a VM: this script holds the listening socket (as systemd does
# for beltcam.socket), runs beltcam with it (LISTEN_FDS=1), sends GET /health from 3 threads on
# 127.0.0.1, and 5 times SIGTERMs the daemon and starts a new one. Prints how many connections were
# answered and how many were closed unanswered. Bounded: ~10 s, at most 900000 connections.
import os, socket, subprocess, sys, threading, time, signal
BIN = sys.argv[1]; backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(1024); port = ls.getsockname()[1]
def start():
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="http")
    # fd 3 is the listener; LISTEN_PID must be the daemon's pid: a shell sets it and execs
    return subprocess.Popen(["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', BIN, "--source", "synthetic:320x240@5",
        "--io-backend", backend, "--connects-per-minute", "1000000", "--log-level", "warn"],
        env=env, pass_fds=(3,), preexec_fn=lambda: os.dup2(ls.fileno(), 3), stderr=subprocess.DEVNULL)
T0 = time.time(); p = start(); time.sleep(1.5)
stop = False; ok = 0; bad = []; lock = threading.Lock()
def client():
    global ok
    for _ in range(300000):
        if stop: return
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                d = s.recv(65536)
                if not d: break
                data += d
            s.close()
            with lock:
                if data.startswith(b"HTTP/1.1 "): ok += 1
                else: bad.append(repr(data[:40]))
        except Exception as e:
            with lock: bad.append(str(e))
ts = [threading.Thread(target=client) for _ in range(3)]
[t.start() for t in ts]; time.sleep(1)
for i in range(5):
    p.send_signal(signal.SIGTERM); p.wait(timeout=20); p = start(); time.sleep(1.5)
stop = True; [t.join() for t in ts]; p.send_signal(signal.SIGTERM); p.wait(timeout=20)
print(f"t={time.time()-T0:.1f}s backend={backend}: 5 restarts: {ok} answered, {len(bad)} not: {bad[:6]}")
