#!/usr/bin/env bash
# scripts/tap-cpu.sh - the daemon's CPU for one frame-tap consumer at full rate against one /stream
# viewer of the same camera (issue 13 part 4). A dir: camera loops one 1280x720 JPEG at 30 fps, so no
# encoding is in the figures. Each case runs SECONDS (default 10) on loopback; prints CPU-seconds of
# the daemon per second for: no consumer, one tap consumer (clients/beltcam_tap.py), one stream viewer.
#   scripts/tap-cpu.sh [target/release/beltcam]
set -euo pipefail
BIN="${1:-target/release/beltcam}"
SECS="${SECONDS_PER_CASE:-10}"
dir=$(mktemp -d); trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" --listen "127.0.0.1:$port" --source synthetic:1280x720@1 --log-level warn & pid=$!
for _ in $(seq 100); do curl -fsS -o "$dir/f.jpg" "http://127.0.0.1:$port/snapshot" && break; sleep 0.1; done
kill $pid; wait $pid 2>/dev/null || true
mkdir "$dir/frames"; cp "$dir/f.jpg" "$dir/frames/a.jpg"
printf '[tap]\nsocket = "%s/tap.sock"\n[[camera]]\nname = "belt"\nsource = "dir:%s/frames@30"\n' "$dir" "$dir" > "$dir/c.toml"
"$BIN" --listen "127.0.0.1:$port" --config "$dir/c.toml" --log-level warn & pid=$!
for _ in $(seq 100); do [ -S "$dir/tap.sock" ] && curl -fsS -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.1; done
ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
measure() { local a b; a=$(ticks); sleep "$SECS"; b=$(ticks); echo "scale=4; ($b-$a)/$hz/$SECS" | bc; }
sleep 2
echo "frame: $(stat -c %s "$dir/f.jpg") bytes, 30 fps, ${SECS} s per case"
echo "no consumer:        $(measure) CPU-s/s"
python3 clients/beltcam_tap.py "$dir/tap.sock" belt --count 100000 --seconds $((SECS + 4)) >/dev/null & c=$!
sleep 2; echo "one tap consumer:   $(measure) CPU-s/s"; wait $c || true
curl -sS -o /dev/null --max-time $((SECS + 4)) "http://127.0.0.1:$port/stream" & c=$!
sleep 2; echo "one stream viewer:  $(measure) CPU-s/s"; wait $c || true
