#!/bin/bash
# run.sh - boot the sysvm image (build.sh) under qemu (TCG), run a payload after multi-user.target,
#          capture its output (2nd serial port -> file) and wait for the VM to power off.
# usage: run.sh [-p PAYLOAD] [-f HOSTPORT:GUESTPORT]... [--ctl HOSTPORT] [--share DIR] [-t TIMEOUT_S]
#               [--log FILE] [-i] [-- EXTRA_KERNEL_ARGS]
#   -p FILE      script run in the guest as root after boot (default: a short boot report)
#   -f H:G       forward tcp 127.0.0.1:H -> guest G (repeatable)
#   --ctl H      forward 127.0.0.1:H to the guest's control shell (:5555; one bash per connection)
#   --share DIR  host DIR as virtio-9p tag "hostshare"; the guest mounts it with `mount /mnt/host`
#   -t SEC       hard kill after SEC seconds (default 180), exit 124
#   --log FILE   console log (host timestamps; default $SYSVM_RUN/console.log)
#   -i           interactive: serial console on this terminal (autologin root), no auto poweroff
# env: SYSVM_DIR (default target/sysvm), SYSVM_MEM (1024), SYSVM_SMP (2), SYSVM_RUN (run dir,
#      default a fresh temporary one)
# out: report printed (and in $SYSVM_RUN/report.txt); exit = the payload's rc
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
D=${SYSVM_DIR:-$HERE/../../target/sysvm}; OUT=$D/out
PAYLOAD="" TIMEOUT=180 INTER=0 FWD="" SHARE="" LOGF=""
while [ $# -gt 0 ]; do case $1 in
  -p) PAYLOAD=$2; shift 2 ;; -f) FWD="$FWD,hostfwd=tcp:127.0.0.1:${2%%:*}-:${2##*:}"; shift 2 ;;
  --ctl) FWD="$FWD,hostfwd=tcp:127.0.0.1:$2-:5555"; shift 2 ;;
  --share) SHARE=$(cd "$2" && pwd); shift 2 ;;
  -t) TIMEOUT=$2; shift 2 ;; --log) LOGF=$2; shift 2 ;; -i) INTER=1; shift ;; --) shift; break ;;
  *) echo "usage: see header of $0" >&2; exit 2 ;; esac; done
[ -f "$OUT/rootfs.ext4" ] || { echo "run $HERE/build.sh first" >&2; exit 1; }
KERNEL=$OUT/vmlinuz; [ -f "$OUT/vmlinux" ] && KERNEL=$OUT/vmlinux   # PVH boot of the ELF
RUN=${SYSVM_RUN:-}; TMPRUN=""
[ -n "$RUN" ] || { RUN=$(mktemp -d /tmp/sysvm-run.XXXXXX); TMPRUN=$RUN; }
mkdir -p "$RUN"; : > "$RUN/report.txt"; LOGF=${LOGF:-$RUN/console.log}
# no_timer_check: on a busy host the kernel's IO-APIC timer check can miss its window under TCG and
# panic ("IO-APIC + timer doesn't work!"); qemu's timer is fine, the check is what fails.
APPEND="console=ttyS0 root=/dev/vda quiet panic=-1 no_timer_check systemd.unit=multi-user.target systemd.show_status=1 $*"
[ $INTER = 1 ] && APPEND="$APPEND sysvm.keep"
Q=(qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m "${SYSVM_MEM:-1024}" -smp "${SYSVM_SMP:-2}"
   -nodefaults -no-user-config -no-reboot -display none -monitor none
   -kernel "$KERNEL" -initrd "$OUT/initrd.cpio.gz" -append "$APPEND"
   -drive "file=$OUT/rootfs.ext4,if=virtio,format=raw,snapshot=on"       # image stays pristine
   -netdev "user,id=n0,restrict=on$FWD" -device virtio-net-pci,netdev=n0 -device virtio-rng-pci)
[ -f /usr/share/qemu/qboot.rom ] && Q+=(-bios /usr/share/qemu/qboot.rom)
[ -n "$PAYLOAD" ] && Q+=(-fw_cfg "name=opt/sysvm/payload,file=$PAYLOAD")
[ -n "$SHARE" ] && Q+=(-fsdev "local,id=fs0,path=$SHARE,security_model=none,readonly=on"
                       -device virtio-9p-pci,fsdev=fs0,mount_tag=hostshare)
if [ $INTER = 1 ]; then exec "${Q[@]}" -serial mon:stdio -serial "file:$RUN/report.txt"; fi

Q+=(-serial stdio -serial "file:$RUN/report.txt")
T0=${EPOCHREALTIME/./}
el() { local d=$(( (${EPOCHREALTIME/./} - T0) / 10000 )); printf '%d.%02d' $((d / 100)) $((d % 100)); }
set +e
# console lines get host-side timestamps (seconds since qemu start)
timeout -s KILL "$TIMEOUT" "${Q[@]}" </dev/null 2>&1 | while IFS= read -r l; do
  printf '[%6s] %s\n' "$(el)" "${l%$'\r'}"; done > "$LOGF"
qrc=${PIPESTATUS[0]}; set -e
END=$(el)
tr -d '\r' < "$RUN/report.txt"
echo "run.sh: qemu rc=$qrc after ${END}s; multi-user reached at $(grep -m1 'Reached target.*Multi-User' "$LOGF" | cut -c2-7 || echo '?')s (host clock)" >&2
rc=$(sed -n 's/^SYSVM_EXIT=\([0-9]*\).*/\1/p' "$RUN/report.txt" | tail -1)
[ -n "$TMPRUN" ] && rm -rf "$TMPRUN"
[ $qrc -eq 137 ] && { echo "run.sh: VM killed after ${TIMEOUT}s" >&2; exit 124; }
[ -n "$rc" ] || { echo "run.sh: no SYSVM_EXIT marker (see $LOGF)" >&2; exit 1; }
exit "$rc"
