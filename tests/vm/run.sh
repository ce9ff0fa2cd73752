#!/bin/bash
# run.sh - boot the vmharness VM (see build.sh) and run a payload inside it.
#
# usage: ./run.sh [options] [--] [payload shell command ...]
#   -a ARCH            amd64 (default; KVM if usable, else TCG) | arm64 (qemu-system-aarch64 -M virt, TCG)
#   -f HOST:GUEST      forward tcp 127.0.0.1:HOST -> guest GUEST (repeatable)
#   --ctl HOST         forward 127.0.0.1:HOST to the guest's control shell
#                      (each connection = one /bin/sh; send commands, shut down write side, read output)
#   --vivid "OPTS"     vivid module options ("none" = do not load vivid)
#   --add SRC[:DST]    copy a host file/dir into the guest (default DST = SRC)
#   --add-bin SRC[:DST] like --add, plus the host shared libraries it needs (ldd)
#   --share DIR        host DIR mounted in the guest at /mnt/host (virtio-9p, read-write)
#   --script FILE      use FILE as the payload instead of the command line
#   -m MB  --smp N     guest memory (512) / cpus (2)
#   --timeout SEC      kill the VM after SEC seconds (default 600); exit code 124
# env: VMH_ACCEL=kvm|tcg (override autodetect), VMH_CPU (TCG cpu model, default max)
#   --log FILE         also write the console log to FILE
# No payload and a terminal on stdin: interactive shell on the serial console.
# Exit status: the payload's exit status (parsed from the VMH_EXIT= console marker).
# The guest is 10.0.2.15; the user-mode network is restrict=on (guest cannot reach
# the host or outside, only forwarded connections come in).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VMH_DIR=${VMH_DIR:-$HERE/../../target/vmh}   # the cache: downloaded .debs, kernel, initramfs
ARCH=amd64 MEM=512 SMP=2 TIMEOUT=600 LOGF="" SCRIPT="" VIVID="" SHARE="" CTL=""
FWDS=() ADDS=() ADDBINS=()
while [ $# -gt 0 ]; do
  case $1 in
    -a) ARCH=$2; shift 2 ;;
    -f) FWDS+=("$2"); shift 2 ;;
    --ctl) CTL=$2; shift 2 ;;
    --vivid) VIVID=$2; shift 2 ;;
    --add) ADDS+=("$2"); shift 2 ;;
    --add-bin) ADDBINS+=("$2"); shift 2 ;;
    --share) SHARE=$(cd "$2" && pwd); shift 2 ;;
    --script) SCRIPT=$2; shift 2 ;;
    -m) MEM=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --log) LOGF=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
OUT=$VMH_DIR/out/$ARCH
[ -f "$OUT/initrd.cpio.gz" ] || { echo "run $VMH_DIR/build.sh $ARCH first" >&2; exit 1; }
KERNEL=$OUT/vmlinuz; [ -f "$OUT/vmlinux" ] && KERNEL=$OUT/vmlinux   # amd64: PVH boot of the ELF

TMP=$(mktemp -d /tmp/vmh-run.XXXXXX)
QPID=""
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

# ---- per-run overlay archive: /vmh/payload, /vmh/env, added files
P=$TMP/p; mkdir -p "$P/vmh"
if [ -n "$SCRIPT" ]; then cp "$SCRIPT" "$P/vmh/payload"
elif [ $# -gt 0 ]; then printf '#!/bin/sh\n%s\n' "$*" > "$P/vmh/payload"; fi
[ -f "$P/vmh/payload" ] && chmod +x "$P/vmh/payload"
{ [ -n "$VIVID" ] && printf 'VIVID_OPTS=%q\n' "$VIVID"; true; } > "$P/vmh/env"
addfile() {  # SRC DST
  mkdir -p "$P/$(dirname "$2")"; cp -a "$1" "$P/$2"
}
for a in ${ADDS[@]+"${ADDS[@]}"}; do src=${a%%:*}; dst=${a#*:}; [ "$dst" = "$a" ] && dst=$src; addfile "$src" "$dst"; done
for a in ${ADDBINS[@]+"${ADDBINS[@]}"}; do
  src=${a%%:*}; dst=${a#*:}; [ "$dst" = "$a" ] && dst=$src; addfile "$src" "$dst"
  for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    [ -e "$P/$lib" ] || addfile "$(readlink -f "$lib")" "$lib"
  done
done
INITRD=$TMP/initrd
( cd "$P" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 ) > "$TMP/payload.cpio.gz"
cat "$OUT/initrd.cpio.gz" "$TMP/payload.cpio.gz" > "$INITRD"   # concatenated initramfs; later files win

# ---- qemu command line
NET="user,id=n0,restrict=on"
for f in ${FWDS[@]+"${FWDS[@]}"}; do NET="$NET,hostfwd=tcp:127.0.0.1:${f%%:*}-:${f##*:}"; done
[ -n "$CTL" ] && NET="$NET,hostfwd=tcp:127.0.0.1:$CTL-:5555"
case $ARCH in
  amd64)
    # /dev/kvm on these machines is kvm_pvm (nested "pagetable VM"): it can only run
    # PVM-aware guest kernels, a stock Debian kernel hangs in its decompressor -> TCG.
    if [ -z "${VMH_ACCEL:-}" ]; then
      VMH_ACCEL=tcg; [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && VMH_ACCEL=kvm
    fi
    if [ "$VMH_ACCEL" = kvm ]; then   # plain "host"/"max" abort under nested KVM (MSR 0x10a)
      QEMU=(qemu-system-x86_64 -machine q35,accel=kvm -cpu host,-arch-capabilities)
    else
      QEMU=(qemu-system-x86_64 -machine q35,accel=tcg -cpu "${VMH_CPU:-max}")
    fi
    [ -f /usr/share/qemu/qboot.rom ] && QEMU+=(-bios /usr/share/qemu/qboot.rom)
    CONSOLE=ttyS0; NETDEV=virtio-net-pci; P9DEV=virtio-9p-pci
    # on a busy host the IO-APIC timer check can miss its window under TCG and panic the kernel
    KARGS="no_timer_check" ;;
  arm64)
    QEMU=(qemu-system-aarch64 -machine virt -cpu cortex-a72)
    CONSOLE=ttyAMA0; NETDEV=virtio-net-pci; P9DEV=virtio-9p-pci ;;
esac
QEMU+=(-m "$MEM" -smp "$SMP" -nodefaults -no-user-config -no-reboot -display none
       -serial stdio -monitor none
       -kernel "$KERNEL" -initrd "$INITRD"
       -append "console=$CONSOLE quiet panic=-1 i8042.noaux i8042.nokbd i8042.nopnp${KARGS:+ $KARGS}"
       -netdev "$NET" -device "$NETDEV,netdev=n0"
       -device virtio-rng-pci)
[ -n "$SHARE" ] && QEMU+=(-fsdev "local,id=fs0,path=$SHARE,security_model=none" -device "$P9DEV,fsdev=fs0,mount_tag=vmhshare")

LOG=$TMP/console.log
if [ ! -f "$P/vmh/payload" ]; then
  [ -t 0 ] || { echo "run.sh: no payload given and stdin is not a terminal" >&2; exit 2; }
  echo "run.sh: interactive shell; 'poweroff -f' or Ctrl-C quits" >&2
  "${QEMU[@]}"; exit $?
fi
# stdin of qemu must not be our terminal (serial stdio would put it into raw mode)
set +e
timeout -s KILL "$TIMEOUT" "${QEMU[@]}" </dev/null > >(tee "$LOG" ${LOGF:+"$LOGF"}) 2>&1 &
QPID=$!
wait "$QPID"; qrc=$?; QPID=""
sleep 0.2   # let tee drain
rc=$(sed -n 's/^VMH_EXIT=\([0-9]*\).*/\1/p' "$LOG" | tail -1)
if [ -z "$rc" ]; then
  [ $qrc -eq 137 ] && { echo "run.sh: VM killed after ${TIMEOUT}s" >&2; exit 124; }
  echo "run.sh: VM ended (qemu rc=$qrc) without VMH_EXIT marker" >&2; exit 1
fi
exit "$rc"
