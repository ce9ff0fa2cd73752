#!/bin/bash
# build.sh - build the tiny VM beltcam's real-device test (tests/vm_vivid.rs) runs in:
# a VM (Debian kernel + busybox initramfs) that exposes a
# real kernel V4L2 device via the `vivid` test driver, with v4l2-ctl and
# ustreamer inside.  Everything comes from Debian .debs (apt-get download +
# dpkg -x); nothing is installed into the host's /boot or /lib/modules.
#
# usage: ./build.sh [amd64|arm64]        (default: amd64)
# env:   VMH_DIR   output root and package cache (default: target/vmh of this checkout)
#        VMH_EXTRA_PKGS  extra Debian packages to unpack into the initramfs
#        VMH_LOOPBACK=1  also build Debian's v4l2loopback module (needs gcc-12 + make,
#                        native arch only) -> MJPEG webcam in the guest via `vmh-mjpeg-cam`
# output: $VMH_DIR/out/$ARCH/{vmlinuz,initrd.cpio.gz,kver}
#
# host needs: apt-get, dpkg, cpio, gzip (+ qemu-system-x86 / qemu-system-arm to run)
set -euo pipefail

ARCH=${1:-amd64}
HERE=$(cd "$(dirname "$0")" && pwd)
VMH_DIR=${VMH_DIR:-$HERE/../../target/vmh}   # the cache: downloaded .debs, kernel, initramfs
DEBS=$VMH_DIR/debs/$ARCH
WORK=$VMH_DIR/work/$ARCH
OUT=$VMH_DIR/out/$ARCH
HOSTARCH=$(dpkg --print-architecture)

case $ARCH in
  amd64) FLAVOR=amd64; TRIPLET=x86_64-linux-gnu ;;
  arm64) FLAVOR=arm64; TRIPLET=aarch64-linux-gnu ;;
  *) echo "unsupported arch $ARCH" >&2; exit 2 ;;
esac
Q=""; [ "$ARCH" != "$HOSTARCH" ] && Q=":$ARCH"

# kernel modules wanted in the guest (deps are resolved from modules.dep)
MODULES="vivid virtio_pci virtio_net 9pnet_virtio 9p"
# userspace packages (dependency closure is resolved with apt-cache)
PKGS="busybox-static v4l-utils ustreamer ${VMH_EXTRA_PKGS:-}"

debof() { { ls "$DEBS/$1"_*_"$ARCH".deb "$DEBS/$1"_*_all.deb 2>/dev/null || true; } | head -1 | grep . ; }
log() { printf '[build %s +%ss] %s\n' "$ARCH" "$SECONDS" "$*"; }

mkdir -p "$DEBS" "$OUT"
rm -rf "$WORK"; mkdir -p "$WORK"

if [ -n "$Q" ] && ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
  log "adding foreign architecture $ARCH to dpkg + apt-get update"
  dpkg --add-architecture "$ARCH"
  apt-get update -qq
fi

# ---------------------------------------------------------------- download
KPKG=$(apt-cache depends "linux-image-$FLAVOR$Q" | awk '/Depends: linux-image-/{print $2; exit}')
KPKG=${KPKG%%:*}
[ -n "$KPKG" ] || { echo "cannot resolve linux-image-$FLAVOR (run apt-get update?)" >&2; exit 1; }
# closure of the userspace packages (drop virtual <...> entries)
CLOSURE=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances $(for p in $PKGS; do echo "$p$Q"; done) |
  grep -v '^ ' | grep -v '^<' | sed 's/:.*//' | sort -u)
log "kernel package: $KPKG; userspace closure: $(echo $CLOSURE)"
( cd "$DEBS"
  want=""
  for p in $KPKG $CLOSURE; do debof "$p" >/dev/null || want="$want $p$Q"; done
  if [ -n "$want" ]; then log "apt-get download$want"; apt-get download $want 2>&1 | grep -v '^W: Download is performed unsandboxed' || true; fi )

# host-side busybox (for depmod); the target one may be a foreign arch
HOSTBB=$VMH_DIR/work/hostbb/bin/busybox
if [ ! -x "$HOSTBB" ]; then
  ( cd "$VMH_DIR/debs" && mkdir -p "$HOSTARCH" && cd "$HOSTARCH" &&
    { ls busybox-static_*.deb >/dev/null 2>&1 || apt-get download busybox-static 2>/dev/null; } )
  mkdir -p "$VMH_DIR/work/hostbb"; dpkg -x "$VMH_DIR"/debs/"$HOSTARCH"/busybox-static_*.deb "$VMH_DIR/work/hostbb"
fi

# ---------------------------------------------------------------- kernel
log "unpacking kernel"
dpkg -x "$(debof "$KPKG")" "$WORK/kernel"
KVER=$(ls "$WORK/kernel/lib/modules")
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
rm -f "$OUT/vmlinux"
if [ "$ARCH" = amd64 ]; then
  # Uncompressed ELF vmlinux, booted by qemu through the PVH entry point: skips the
  # bzImage's xz decompression, which takes ~3.5 s under TCG (boot 6.2 s -> 2.7 s).
  for magic in 'fd377a585a00:xz -dc' '28b52ffd:zstd -dcq' '1f8b0800:gzip -dcq'; do
    off=$(od -An -v -tx1 "$OUT/vmlinuz" | tr -d ' \n' | grep -bo "${magic%%:*}" | head -1 | cut -d: -f1) || true
    [ -n "$off" ] || continue
    tail -c +$((off / 2 + 1)) "$OUT/vmlinuz" | ${magic#*:} > "$OUT/vmlinux" 2>/dev/null || true
    if [ "$(head -c 4 "$OUT/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then break; fi
    rm -f "$OUT/vmlinux"
  done
  [ -f "$OUT/vmlinux" ] || log "warning: could not extract vmlinux, run.sh will boot the (slower) bzImage"
fi
echo "$KVER" > "$OUT/kver"
KMOD=$WORK/kernel/lib/modules/$KVER
"$HOSTBB" depmod -b "$WORK/kernel" "$KVER"      # .deb ships no modules.dep

# ---------------------------------------------------------------- rootfs
R=$WORK/root
mkdir -p "$R"
log "unpacking userspace"
for p in $CLOSURE; do dpkg -x "$(debof "$p")" "$R"; done
rm -rf "$R"/usr/share/{doc,man,locale,lintian,info,bug,bash-completion} "$R/usr/lib/$TRIPLET/gconv" \
       "$R"/usr/lib/$TRIPLET/libstdc++.so.*-gdb.py
mkdir -p "$R"/{proc,sys,dev,tmp,run,mnt/host,root,etc,vmh}
# busybox applet links (applet list is arch independent)
for a in $("$HOSTBB" --list-full); do
  [ -e "$R/$a" ] || [ -L "$R/$a" ] || { mkdir -p "$(dirname "$R/$a")"; ln -s /bin/busybox "$R/$a"; }
done
echo "root:x:0:0:root:/root:/bin/sh" > "$R/etc/passwd"
echo "root:x:0:" > "$R/etc/group"
printf '127.0.0.1 localhost\n10.0.2.15 vm\n' > "$R/etc/hosts"

# modules: copy closure, decompress if needed, trimmed modules.dep
log "collecting modules: $MODULES"
DST=$R/lib/modules/$KVER; mkdir -p "$DST"
: > "$DST/modules.dep"
mods=""
for m in $MODULES; do
  re=$(echo "$m" | sed 's/[-_]/[-_]/g')
  line=$(grep -E "(^|/)${re}\.ko(\.(xz|zst|gz))?:" "$KMOD/modules.dep") || { echo "module $m not found" >&2; exit 1; }
  mods="$mods ${line//:/}"
done
for f in $(echo $mods | tr ' ' '\n' | sort -u); do
  mkdir -p "$DST/$(dirname "$f")"; cp "$KMOD/$f" "$DST/$f"
  grep -E "^$f:" "$KMOD/modules.dep" >> "$DST/modules.dep"
done
find "$DST" -name '*.ko.xz' -exec xz -d {} +
find "$DST" -name '*.ko.zst' -exec zstd -q -d --rm {} +
find "$DST" -name '*.ko.gz' -exec gzip -d {} +
sed -i -E 's/\.ko\.(xz|zst|gz)/.ko/g' "$DST/modules.dep"
cp "$KMOD/modules.builtin" "$DST/" 2>/dev/null || true

# optional: v4l2loopback (out of tree, from v4l2loopback-source) built against the
# matching linux-headers .debs unpacked under $WORK (nothing installed on the host)
if [ "${VMH_LOOPBACK:-0}" = 1 ]; then
  [ "$ARCH" = "$HOSTARCH" ] || { echo "VMH_LOOPBACK=1 is only supported for native builds" >&2; exit 1; }
  command -v gcc-12 >/dev/null && command -v make >/dev/null || { echo "VMH_LOOPBACK=1 needs gcc-12 and make" >&2; exit 1; }
  HDR=linux-headers-$KVER
  HDEPS=$(apt-cache depends "$HDR" | awk '/Depends: linux-(headers|kbuild)/{print $2}' | sed 's/:.*//' | sort -u)
  want=""; for p in $HDR $HDEPS v4l2loopback-source; do debof "$p" >/dev/null || want="$want $p"; done
  if [ -n "$want" ]; then ( cd "$DEBS" && apt-get download $want 2>&1 | grep -v '^W: Download is performed unsandboxed' || true ); fi
  log "building v4l2loopback against $HDR ($(echo $HDEPS))"
  H=$WORK/hdr; mkdir -p "$H/build"
  for p in $HDR $HDEPS v4l2loopback-source; do dpkg -x "$(debof "$p")" "$H"; done
  sed -i "s|include /usr/src/|include $H/usr/src/|" "$H/usr/src/$HDR/Makefile"
  tar -xjf "$H/usr/src/v4l2loopback.tar.bz2" -C "$H/build"
  make -s -C "$H/usr/src/$HDR" M="$H/build/modules/v4l2loopback" modules >"$WORK/v4l2loopback-build.log" 2>&1 ||
    { cat "$WORK/v4l2loopback-build.log"; exit 1; }
  mkdir -p "$DST/extra"; cp "$H/build/modules/v4l2loopback/v4l2loopback.ko" "$DST/extra/"
  vdev=$(grep -E '/videodev\.ko:' "$DST/modules.dep")
  echo "extra/v4l2loopback.ko: ${vdev%%:*}${vdev#*:}" >> "$DST/modules.dep"
fi

# ---------------------------------------------------------------- /init
cat > "$R/init" <<'EOF'
#!/bin/sh
# vmharness init: mounts, modules, network, vivid, then /vmh/payload
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run
# defaults; /vmh/env (from run.sh's payload archive) may override
VIVID_OPTS="n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"
CTL_PORT=5555
[ -f /vmh/env ] && . /vmh/env
echo 4 > /proc/sys/kernel/printk
modprobe virtio_pci 2>/dev/null    # may be built in on other kernels/arches
modprobe virtio_net
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up
# no default route on purpose: the guest only answers host-forwarded connections
if grep -qx 0x0009 /sys/bus/virtio/devices/*/device 2>/dev/null; then   # virtio 9p device present
  modprobe 9pnet_virtio; modprobe 9p
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmhshare /mnt/host || echo "VMH: 9p mount failed"
fi
if [ "${VIVID_OPTS}" != "none" ]; then
  modprobe vivid $VIVID_OPTS || echo "VMH: modprobe vivid failed"
fi
# control shell: every TCP connection to CTL_PORT gets a /bin/sh (forward it with run.sh --ctl)
[ "$CTL_PORT" != "0" ] && nc -ll -p "$CTL_PORT" -e /bin/vmh-ctl-shell </dev/null >/dev/null 2>&1 &
echo "VMH_READY uptime=$(cut -d' ' -f1 /proc/uptime) devices: $(ls /dev/video* 2>/dev/null | tr '\n' ' ')"
rc=0
if [ -x /vmh/payload ]; then
  cd /root; /vmh/payload; rc=$?
else
  echo "VMH: no /vmh/payload, starting a shell"; setsid cttyhack sh
fi
echo "VMH_EXIT=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync; poweroff -f; reboot -f
EOF
chmod +x "$R/init"

printf '#!/bin/sh\nexec /bin/sh 2>&1\n' > "$R/bin/vmh-ctl-shell"; chmod +x "$R/bin/vmh-ctl-shell"
cat > "$R/usr/bin/vmh-mjpeg-cam" <<'CAM'
#!/bin/sh
# vmh-mjpeg-cam [WxH] [FPS] [VIDEO_NR]  (needs an image built with VMH_LOOPBACK=1)
# Creates an MJPEG-only "webcam" /dev/video$NR (v4l2loopback, exclusive_caps=1) and feeds
# it JPEG frames that ustreamer encoded from vivid's /dev/video0. Runs in the foreground.
RES=${1:-640x480} FPS=${2:-25} NR=${3:-10} N=${VMH_MJPEG_FRAMES:-25}
W=${RES%x*} H=${RES#*x} D=/run/mjpeg-frames/$RES
if [ ! -e "$D/f$(printf %02d $((N - 1))).jpg" ]; then
  mkdir -p "$D"
  ustreamer -d /dev/video0 -r "$RES" --host 127.0.0.1 -p 8099 >/run/mjpeg-ustreamer.log 2>&1 & up=$!
  i=0 tries=0
  while [ $i -lt "$N" ] && [ $tries -lt 600 ]; do
    tries=$((tries + 1)); f=$D/f$(printf %02d $i).jpg
    if wget -S -q -O "$f" http://127.0.0.1:8099/snapshot 2>&1 | grep -q 'X-UStreamer-Online: true'; then i=$((i + 1)); fi
    usleep 100000
  done
  kill $up; wait $up 2>/dev/null
  [ $i -eq "$N" ] || { echo "vmh-mjpeg-cam: could not grab frames from /dev/video0" >&2; exit 1; }
fi
grep -q '^v4l2loopback ' /proc/modules ||
  modprobe v4l2loopback devices=1 video_nr="$NR" exclusive_caps=1 card_label=vmh-mjpeg-cam max_buffers=4 || exit 1
exec 3>/dev/video"$NR"     # keep the output side open: format + buffers only live while open
v4l2-ctl -d /dev/video"$NR" --set-fmt-video-out=width="$W",height="$H",pixelformat=MJPG || exit 1
us=$((1000000 / FPS))
echo "vmh-mjpeg-cam: /dev/video$NR MJPEG ${W}x${H} ~${FPS} fps"
while :; do for f in "$D"/*.jpg; do dd if="$f" bs=8M 2>/dev/null >&3 || exit 1; usleep $us; done; done
CAM
chmod +x "$R/usr/bin/vmh-mjpeg-cam"

# ---------------------------------------------------------------- sanity + pack
if [ "$ARCH" = "$HOSTARCH" ]; then
  for b in usr/bin/v4l2-ctl usr/bin/ustreamer bin/busybox; do
    chroot "$R" /$b --help >/dev/null 2>&1 || chroot "$R" /$b --version >/dev/null 2>&1 ||
      { echo "sanity: /$b does not run in the rootfs:"; chroot "$R" /$b --version; exit 1; }
  done
fi
log "packing initramfs ($(du -sh "$R" | cut -f1) unpacked)"
( cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 > "$OUT/initrd.cpio.gz" )
log "done: $OUT/vmlinuz ($(du -h "$OUT/vmlinuz" | cut -f1)), $OUT/initrd.cpio.gz ($(du -h "$OUT/initrd.cpio.gz" | cut -f1)), kernel $KVER"
[ "${VMH_KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK/kernel" "$WORK/hdr"   # ~400 MB of unpacked modules/headers
