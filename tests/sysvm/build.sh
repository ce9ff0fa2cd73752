#!/bin/bash
# build.sh - the image tests/systemd_vm.rs boots: Debian bookworm (mmdebstrap) with systemd as PID 1,
# Debian's 6.1 kernel (the one that carries vivid, as in tests/vm), a busybox initrd that mounts the
# root disk and switch_roots to systemd. Adapted from the team's shared/sysvm rig.
#
# usage: build.sh [KERNEL_DEB]   (default: apt-get download of the kernel linux-image-amd64 points to)
# env:   SYSVM_DIR   output root and package cache (default: target/sysvm of this checkout)
#        SYSVM_KEEP_ROOTFS=1  keep the unpacked tree ($SYSVM_DIR/rootfs, ~200 MB) after making the image
# out:   $SYSVM_DIR/out/{vmlinux|vmlinuz, initrd.cpio.gz, rootfs.ext4, kver}
# host:  root (mmdebstrap's root mode, chroot), mmdebstrap, e2fsprogs (mke2fs -d), cpio, xz-utils, apt-get.
#        Needs the Debian mirror (~100 MB of .debs); booting the result needs no network.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
D=${SYSVM_DIR:-$HERE/../../target/sysvm}; R=$D/rootfs; OUT=$D/out; K=$D/kernel; I=$D/initrd
# passwd: useradd (the README's install step); curl: the guest-side checks; python3: the frame tap's
# client (clients/beltcam_tap.py, standard library only)
PKGS="systemd,systemd-sysv,udev,dbus,kmod,iproute2,passwd,curl,procps,python3"
# modules for the rootfs (closure added by modules.dep); the initrd gets only what mounts /
MODS="virtio_pci virtio_blk virtio_net virtio_rng virtio_console qemu_fw_cfg ext4 crc32c_generic
      binfmt_misc 9p 9pnet_virtio autofs4 fuse loop configfs efi_pstore vivid"
INITRD_MODS="virtio_pci virtio_blk crc32c_generic ext4"
log() { printf '[sysvm-build +%ss] %s\n' "$SECONDS" "$*"; }
[ "$(id -u)" = 0 ] || { echo "build.sh: must run as root (mmdebstrap root mode, chroot)" >&2; exit 1; }
mkdir -p "$D/debs" "$OUT"

# ---- kernel (+ busybox-static for the initrd): Debian .debs, unpacked, nothing installed
KDEB=${1:-}
if [ -z "$KDEB" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$KPKG" ] || { echo "cannot resolve linux-image-amd64 (run apt-get update?)" >&2; exit 1; }
  ls "$D"/debs/"$KPKG"_*.deb >/dev/null 2>&1 || (cd "$D/debs" && apt-get download "$KPKG")
  KDEB=$(ls "$D"/debs/"$KPKG"_*.deb | head -1)
fi
ls "$D"/debs/busybox-static_*.deb >/dev/null 2>&1 || (cd "$D/debs" && apt-get download busybox-static)
rm -rf "$K" "$I"; mkdir -p "$K" "$I"
dpkg -x "$KDEB" "$K"; KVER=$(ls "$K/lib/modules"); echo "$KVER" > "$OUT/kver"
depmod -b "$K" "$KVER"
cp "$K/boot/vmlinuz-$KVER" "$OUT/vmlinuz"; rm -f "$OUT/vmlinux"
# uncompressed ELF for qemu's PVH entry: skips the xz decompressor (~3.5 s under TCG)
off=$(od -An -v -tx1 "$OUT/vmlinuz" | tr -d ' \n' | grep -bo fd377a585a00 | head -1 | cut -d: -f1) || true
[ -n "$off" ] && tail -c +$((off / 2 + 1)) "$OUT/vmlinuz" | xz -dc > "$OUT/vmlinux" 2>/dev/null || true
[ "$(head -c4 "$OUT/vmlinux" 2>/dev/null | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || rm -f "$OUT/vmlinux"
log "kernel $KVER"

# module closure in load order (deps first)
declare -A SEEN; ORDER=()
add() { local line m=$1; m=$(echo "$m" | sed 's/[-_]/[-_]/g')
  line=$(grep -E "(^|/)${m}\.ko(\.[a-z]+)?:" "$K/lib/modules/$KVER/modules.dep") || { log "no module $1 (builtin?)"; return 0; }
  local f=${line%%:*} deps=${line#*:} d rev=""
  [ -n "${SEEN[$f]:-}" ] && return 0; SEEN[$f]=1
  for d in $deps; do rev="$d $rev"; done
  for d in $rev; do add "$(basename "${d%%.ko*}")"; done
  ORDER+=("$f"); }

# ---- rootfs
rm -rf "$R"; t0=$SECONDS
mmdebstrap --quiet --variant=apt --include="$PKGS" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  bookworm "$R"
log "mmdebstrap: $((SECONDS - t0)) s, $(du -sh "$R" | cut -f1)"
rm -rf "$R/lib/modules"; mkdir -p "$R/lib/modules/$KVER"
for m in $MODS; do add "$m"; done
for f in "${ORDER[@]}"; do install -D -m644 "$K/lib/modules/$KVER/$f" "$R/lib/modules/$KVER/$f"; done
cp "$K/lib/modules/$KVER"/modules.{builtin,builtin.modinfo,order} "$R/lib/modules/$KVER/"
depmod -b "$R" "$KVER"
"$HERE/guest-config.sh" "$R"

# ---- initrd: busybox-static + the modules to mount /dev/vda, then switch_root to systemd
dpkg -x "$(ls "$D"/debs/busybox-static_*.deb | head -1)" "$I/bb"
mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}; mv "$I/bb/bin/busybox" "$I/bin/"; rm -rf "$I/bb"
for a in sh mount umount insmod switch_root mkdir cat sleep echo; do ln -sf busybox "$I/bin/$a"; done
SEEN=(); ORDER=(); for m in $INITRD_MODS; do add "$m"; done
for f in "${ORDER[@]}"; do cp "$K/lib/modules/$KVER/$f" "$I/lib/modules/"; echo "${f##*/}"; done > "$I/modules.list"
cat > "$I/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod /lib/modules/$m; done
root=/dev/vda; for a in $(cat /proc/cmdline); do case $a in root=*) root=${a#root=};; esac; done
i=0; while [ ! -b $root ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
mount -t ext4 -o rw,noatime $root /newroot || { echo "sysvm-initrd: cannot mount $root"; exec sh; }
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
chmod +x "$I/init"
(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$OUT/initrd.cpio.gz"

# ---- ext4 image without loop mounts (size: content + 25% + 64 MiB of free space)
t0=$SECONDS; SZ=$(( $(du -sm "$R" | cut -f1) * 5 / 4 + 64 ))
rm -f "$OUT/rootfs.ext4"
mke2fs -q -t ext4 -L sysvmroot -E root_owner=0:0 -d "$R" "$OUT/rootfs.ext4" "${SZ}M"
log "rootfs.ext4 ${SZ} MiB (mke2fs -d $((SECONDS - t0)) s), rootfs $(du -sh "$R" | cut -f1), initrd $(du -h "$OUT/initrd.cpio.gz" | cut -f1)"
[ "${SYSVM_KEEP_ROOTFS:-0}" = 1 ] || rm -rf "$R" "$K" "$I"
log done
