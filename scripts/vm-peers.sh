#!/bin/bash
# scripts/vm-peers.sh - beltcam against ustreamer 4.9 (Debian bookworm) on real kernel V4L2
# devices, in the vivid VM of tests/vm/ (qemu; TCG on these machines), one VM boot for all runs.
#
#   mode yuyv:  vivid webcam 640x480 YUYV @25, the daemon encodes JPEG (quality 80, 2 workers):
#               beltcam on vivid instance 0 (/dev/video0), ustreamer on instance 1 (/dev/video1)
#   mode mjpeg: MJPEG passthrough: v4l2loopback MJPEG-only cameras (/dev/video10 for beltcam,
#               /dev/video11 for ustreamer) fed 640x480 @25 by tests/vm/guest/peers-feed.c with 25
#               JPEGs that beltcam encoded from vivid (saved from the first yuyv run)
#
# For each mode, daemon and N (one daemon running at a time, so they never share the guest's two
# vCPUs): N viewers on the host read /stream through the forwarded port (scripts/vm-peers-view.py)
# and count whole parts; over a WINDOW-second window the guest reads the daemon's utime+stime from
# /proc/PID/stat. Prints a markdown table: CPU ms per delivered frame (daemon CPU / parts received
# by all viewers), fps per viewer (min / median), the daemon's CPU (% of one vCPU), and the ratio
# beltcam / ustreamer of CPU per delivered frame. Figures are under TCG emulation: compare ratios.
#
# usage: scripts/vm-peers.sh            (env: PEERS_N="1 10 50" PEERS_WINDOW=10 PEERS_MODES="yuyv mjpeg"
#                                        BELTCAM_BIN=target/release/beltcam VMH_DIR=target/vmh)
# needs: qemu-system-x86 cpio xz-utils zstd gcc-12 make bzip2 python3, Debian package access (the
#        image build, cached in VMH_DIR). Not part of the test suite (a run takes ~3 minutes).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NS=${PEERS_N:-1 10 50}
WINDOW=${PEERS_WINDOW:-10}
MODES=${PEERS_MODES:-yuyv mjpeg}
BIN=${BELTCAM_BIN:-$ROOT/target/release/beltcam}
export VMH_DIR=${VMH_DIR:-$ROOT/target/vmh}
OUT=$ROOT/target/vm-peers
SHARE=$OUT/share
mkdir -p "$OUT" "$SHARE" "$VMH_DIR"
log() { printf '[vm-peers +%ss] %s\n' "$SECONDS" "$*" >&2; }

[ -x "$BIN" ] || { log "building $BIN"; (cd "$ROOT" && cargo build --release --bin beltcam); }
IMG=$VMH_DIR/out/amd64/initrd.cpio.gz
if [ ! -f "$IMG" ] || ! zcat "$IMG" | cpio -t --quiet 2>/dev/null | grep -q 'v4l2loopback\.ko$'; then
  log "building the VM image with v4l2loopback"
  VMH_LOOPBACK=1 bash "$ROOT/tests/vm/build.sh" amd64 >&2
fi
gcc-12 -O2 -Wall -static -o "$OUT/peers-feed" "$ROOT/tests/vm/guest/peers-feed.c"

# one VM at a time per cache (tests/vm/mod.rs takes the same lock)
exec 9>"$VMH_DIR/lock"
flock 9

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PB=$(free_port) PU=$(free_port) CTL=$(free_port)
ctl() { bash "$ROOT/tests/vm/ctl.sh" "$CTL" "$@"; }
rm -rf "${SHARE:?}"/*
log "booting the VM (ports: beltcam $PB, ustreamer $PU, control $CTL)"
bash "$ROOT/tests/vm/run.sh" --timeout 1800 --log "$OUT/console.log" \
  --vivid "n_devs=2 node_types=0x1,0x1 num_inputs=1,1 input_types=0x0,0x0" \
  -f "$PB:8080" -f "$PU:8081" --ctl "$CTL" --share "$SHARE" \
  --add-bin "$BIN:/usr/bin/beltcam" --add "$OUT/peers-feed:/usr/bin/peers-feed" \
  --add "$ROOT/tests/vm/guest/peers-ctl:/usr/bin/peers-ctl" \
  --script "$ROOT/tests/vm/guest/peers.sh" >/dev/null 2>&1 &
VM=$!
cleanup() {
  CTL_TIMEOUT=5 ctl 'touch /tmp/stop' >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do kill -0 "$VM" 2>/dev/null || return 0; sleep 0.2; done   # bounded wait for poweroff
  kill "$VM" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  ctl 'ls /dev/video*' >/dev/null 2>&1 && break
  kill -0 "$VM" 2>/dev/null || { log "the VM ended early:"; tail -n 20 "$OUT/console.log" >&2; exit 1; }
  sleep 0.2
done
log "guest devices: $(ctl 'ls /dev/video*' | tr '\n' ' ')"

# waits (bounded) until the daemon on host port $1 answers /stream's first bytes
wait_stream() {
  for _ in $(seq 1 150); do
    curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/snapshot" | grep -q 200 && return 0
    sleep 0.2
  done
  return 1
}

RES=$OUT/results.jsonl
: > "$RES"
for mode in $MODES; do
  if [ "$mode" = mjpeg ]; then
    n=$(ls "$SHARE"/frames/*.jpg 2>/dev/null | wc -l)
    [ "$n" -gt 0 ] || { log "no frames saved for the MJPEG cameras (run mode yuyv first)"; continue; }
    ctl 'mkdir -p /run/peers-frames && cp /mnt/host/frames/*.jpg /run/peers-frames/ && ls /run/peers-frames | wc -l' >/dev/null
  fi
  for d in beltcam ustreamer; do
    port=$PB; [ $d = ustreamer ] && port=$PU
    log "$mode: starting $d"
    ctl "peers-ctl start $d $mode" >&2 || { log "$d did not start"; continue; }
    if ! wait_stream "$port"; then
      log "$d never served a snapshot:"; ctl "peers-ctl stop $d" >&2; continue
    fi
    for n in $NS; do
      save=()   # the MJPEG cameras' frames: beltcam's JPEGs of vivid, from the first yuyv run
      if [ "$mode" = yuyv ] && [ $d = beltcam ] && [ ! -d "$SHARE/frames" ]; then save=(--save "$SHARE/frames"); fi
      line=$(python3 "$ROOT/scripts/vm-peers-view.py" --port "$port" --ctl "$CTL" --daemon $d -n "$n" \
        --window "$WINDOW" ${save[@]+"${save[@]}"})
      log "$mode $d N=$n: $line"
      printf '{"mode":"%s",%s\n' "$mode" "${line#\{}" >> "$RES"
    done
    ctl "peers-ctl stop $d" >&2 || true
  done
done
ctl 'grep -h -i -E "encoder|passthrough|format|error" /tmp/ustreamer.log /tmp/beltcam.log | tail -n 20' \
  > "$OUT/daemon-notes.txt" 2>&1 || true

python3 - "$RES" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def per_frame(r):
    if "ticks" not in r or not r["parts"]:
        return None
    # CPU seconds per guest second / parts per host second (both windows are the same call)
    return (r["ticks"] / 100.0 / r["guest_s"]) / (r["parts"] / r["host_s"]) * 1000.0
print("| mode | N | daemon | CPU ms / delivered frame | fps per viewer (min / median) | daemon CPU % | KB / part | beltcam / ustreamer |")
print("|---|---:|---|---:|---|---:|---:|---:|")
by = {(r["mode"], r["n"], r["daemon"]): r for r in rows}
modes = list(dict.fromkeys(r["mode"] for r in rows))
rows.sort(key=lambda r: (modes.index(r["mode"]), r["n"], r["daemon"]))
fmt = lambda v, f: "n/a" if v is None else format(v, f)
for r in rows:
    pf = per_frame(r)
    cpu = r["ticks"] / r["guest_s"] if "ticks" in r else None
    ratio = ""
    if r["daemon"] == "beltcam":
        u = by.get((r["mode"], r["n"], "ustreamer"))
        pu = per_frame(u) if u else None
        if pf is not None and pu:
            ratio = f"{pf / pu:.2f}x"
    note = "" if not r["errors"] and r["warm"] == r["n"] else f" ({r['warm']}/{r['n']} warm; {', '.join(r['errors'])})"
    print(f"| {r['mode']} | {r['n']} | {r['daemon']} | {fmt(pf, '.2f')} | "
          f"{r['fps_min']:.1f} / {r['fps_med']:.1f}{note} | {fmt(cpu, '.0f')} | {r['kb_per_part']:.1f} | {ratio} |")
print()
print("Where the daemon's CPU went (thread name: % of one vCPU over the window; threads of one name summed):")
print()
print("| mode | N | daemon | threads |")
print("|---|---:|---|---|")
for r in rows:
    t = r.get("threads", {})
    top = ", ".join(f"{k} {v / r['guest_s']:.0f}" for k, v in list(t.items())[:4] if v > 0)
    print(f"| {r['mode']} | {r['n']} | {r['daemon']} | {top or 'n/a'} |")
EOF
