#!/usr/bin/env bash
# fanout-sitting.sh - issue 15's figures in one sitting: every table of BENCHMARKS.md's "one sitting"
# section, run back to back on the release build, each from the same JPEG and the same load
# generator, with the raw baseline in the same invocation.
#
#   scripts/fanout-sitting.sh OUTDIR [RUNS]        RUNS of the issue6 preset (default 3)
#
# Writes OUTDIR/*.md (one file per step) and prints the load average around each step. Run it on a
# quiet host: the load generator shares the cores with the daemon. Root is needed only for the
# step at Debian's default net.core.wmem_max (212992; restored afterwards), which is skipped
# without it. About 15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/fanout-sitting.sh OUTDIR [RUNS]}
runs=${2:-3}
mkdir -p "$out"
cargo build --release --locked -p beltcam -p beltcam-bench >&2
bench=target/release/beltcam-bench
src='dir:{DIR}@{FPS}'
step() {
  local name=$1; shift
  echo "== $name (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$bench" "$@" --out "$out/$name.md" >"$out/$name.log" 2>&1 || echo "   $name: bench exited $?" >&2
}
{ date -u; git rev-parse --short HEAD; uname -r; nproc; sysctl -n net.core.wmem_max; } >"$out/host.txt"

for i in $(seq 1 "$runs"); do
  step "issue6-$i" --preset issue6 --source "$src" --seconds 6
done
if [ "$(id -u)" -eq 0 ]; then
  old=$(sysctl -n net.core.wmem_max)
  sysctl -qw net.core.wmem_max=212992
  step "issue6-wmem212992" --preset issue6 --source "$src" --seconds 6 || true
  sysctl -qw net.core.wmem_max="$old"
else
  echo "SKIP: wmem_max=212992 step (not root)" >&2
fi
step stalled-100 --viewers 100 --size 640x480 --fps 30 --source "$src" --seconds 6 --stalled-share 10
step slow-100 --viewers 100 --size 640x480 --fps 30 --source "$src" --seconds 6 --slow-share 10
step stalled-1000 --viewers 1000 --size 640x480 --fps 30 --source "$src" --seconds 6 --stalled-share 10
step slow-1000 --viewers 1000 --size 640x480 --fps 30 --source "$src" --seconds 6 --slow-share 10
step viewers-10000 --viewers 10000 --size 320x240 --fps 15 --source "$src" --seconds 6 \
  --connect-timeout 60
for be in uring epoll; do
  echo "== rss-split $be (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  scripts/rss-split.sh "$be" 1000 640x480 6 >>"$out/rss-split.md" 2>>"$out/rss-split.log"
done
echo "== done (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
