#!/usr/bin/env bash
# rss-split.sh - where beltcam's memory goes at N viewers: peak RSS against the frame pool's
# touched bytes (issue 15: "peak RSS at 1,000 viewers no more than 8 MiB above the pool bytes
# actually touched").
#
#   scripts/rss-split.sh [BACKEND [VIEWERS [WxH [SECONDS]]]]     defaults: uring 1000 640x480 6
#
# Starts target/release/beltcam on a free loopback port with a `dir:` camera looping one JPEG of
# that size (made by beltcam-bench), attaches beltcam-bench with VIEWERS viewers, and samples
# /proc/PID/status every 0.2 s while they stream. Prints one Markdown row: JPEG KiB, idle RSS, peak
# RSS (VmHWM), RssAnon, RssFile and RssShmem at the peak sample (MiB; the frame pool is shared
# memory, see src/pool/memory.rs), the pool's touched bytes (below), and peak RSS minus those. Needs `cargo build --release -p beltcam -p beltcam-bench` first.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=${1:-uring}
viewers=${2:-1000}
size=${3:-640x480}
seconds=${4:-6}
bin=${BELTCAM_BIN:-target/release/beltcam}
bench=target/release/beltcam-bench
[ -x "$bin" ] && [ -x "$bench" ] || { echo "build first: cargo build --release -p beltcam -p beltcam-bench" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/dir"
w=${size%x*}; h=${size#*x}
if command -v ffmpeg >/dev/null; then
  ffmpeg -loglevel error -y -f lavfi -i "testsrc2=size=${w}x${h}:rate=1" -frames:v 1 -q:v 3 "$work/dir/frame.jpg"
else
  echo "rss-split.sh: needs ffmpeg for the test JPEG" >&2; exit 1
fi
"$bin" --listen "127.0.0.1:$port" --io-backend "$backend" --source "dir:$work/dir@30" \
  --max-clients-per-ip 1024 --connects-per-minute 1000000 \
  >"$work/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/health" && break
  sleep 0.1
done
field() { awk -v k="$1" '$1==k {print $2}' "/proc/$pid/status"; }
# The pool's touched bytes: every slot has held the JPEG (the camera loops one file), and a slot is
# written from its start through the part header room, the JPEG and its trailer; counted in whole
# pages, with 8 KiB for the header room, trailer and the allocation's page offset (an upper bound).
pool_kib() {
  local slots jpeg
  slots=$(curl -fs "http://127.0.0.1:$port/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool"]["slots"])')
  jpeg=$(stat -c %s "$work/dir/frame.jpg")
  echo $(( slots * ((jpeg + 8192 + 4095) / 4096) * 4 ))
}
idle=$(field VmRSS:)
jpeg_kib=$(( $(stat -c %s "$work/dir/frame.jpg") / 1024 ))
"$bench" --url "http://127.0.0.1:$port" --pid "$pid" --viewers "$viewers" --size "$size" --fps 30 \
  --no-baseline --seconds "$seconds" --connect-timeout 60 >"$work/bench.md" 2>&1 &
bpid=$!
best_rss=0; anon=0; file=0; shmem=0; pool=0
# Bounded: at most (connect timeout + seconds + 30) s of 0.2 s samples.
for _ in $(seq 1 $(( (seconds + 90) * 5 ))); do
  kill -0 "$bpid" 2>/dev/null || break
  rss=$(field VmRSS:)
  if [ "${rss:-0}" -gt "$best_rss" ]; then
    best_rss=$rss; anon=$(field RssAnon:); file=$(field RssFile:); shmem=$(field RssShmem:)
  fi
  sleep 0.2
done
wait "$bpid" || true
hwm=$(field VmHWM:)
pool=$(pool_kib)
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
echo "| $backend | $viewers | $size | $jpeg_kib | $(mib "$idle") | $(mib "$hwm") | $(mib "$anon") | $(mib "$file") | $(mib "$shmem") | $(mib "$pool") | $(mib $(( hwm - pool ))) |"
grep -E '^\| beltcam' "$work/bench.md" | head -1 >&2 || cat "$work/bench.md" >&2
