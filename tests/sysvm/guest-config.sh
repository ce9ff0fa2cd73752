#!/bin/bash
# guest-config.sh ROOTFS_DIR - configure the mmdebstrap'ed bookworm tree for tests/systemd_vm.rs (idempotent).
# Adapted from the team's shared/sysvm rig: no demo service; a vivid webcam loaded at boot (as tests/vm
# loads it); the host's share (virtio-9p, tag "hostshare") mountable at /mnt/host; a control shell on
# port 5555 (socket-activated bash per connection, reachable only through run.sh --ctl's port forward).
set -euo pipefail
R=${1:?usage: guest-config.sh ROOTFS_DIR}
echo sysvm > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 sysvm\n' > "$R/etc/hosts"
cat > "$R/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,noatime 0 0
hostshare /mnt/host 9p trans=virtio,version=9p2000.L,msize=262144,noauto 0 0
EOF
mkdir -p "$R/mnt/host"
# fixed machine-id: otherwise every boot of the pristine image is a "first boot" (preset-all etc.)
echo 5f1d0c0e8b3a4c6e9d2f7a1b3c5e7f90 > "$R/etc/machine-id"
chroot "$R" passwd -d root >/dev/null                       # empty root password (throwaway VM)
mkdir -p "$R/etc/systemd/system/serial-getty@ttyS0.service.d"
cat > "$R/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
EOF

# vivid: one raw webcam (/dev/video0, 640x480 YUYV at 25 fps among others), loaded at boot like a camera
echo 'options vivid n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0' > "$R/etc/modprobe.d/vivid.conf"
echo vivid > "$R/etc/modules-load.d/vivid.conf"

# network: static address on qemu's user-mode net (10.0.2.0/24); networkd ships with systemd
mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/10-en.network" <<'EOF'
[Match]
Type=ether
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF

# control shell for the host test: each connection to :5555 is one bash reading commands from the socket
cat > "$R/etc/systemd/system/sysvm-ctl.socket" <<'EOF'
[Unit]
Description=sysvm control shell (test harness)
[Socket]
ListenStream=5555
Accept=yes
[Install]
WantedBy=sockets.target
EOF
cat > "$R/etc/systemd/system/sysvm-ctl@.service" <<'EOF'
[Unit]
Description=sysvm control shell connection
[Service]
ExecStart=/bin/bash
StandardInput=socket
StandardOutput=socket
StandardError=socket
Environment=SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb
CollectMode=inactive-or-failed
EOF

# payload runner: after multi-user.target, run the host-supplied script (qemu -fw_cfg
# name=opt/sysvm/payload); output goes to ttyS1 (a file on the host); then power off,
# unless the kernel command line has sysvm.keep
cat > "$R/usr/local/sbin/sysvm-payload" <<'EOF'
#!/bin/bash
exec >/dev/ttyS1 2>&1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
echo "SYSVM_BEGIN uptime=$(cut -d' ' -f1 /proc/uptime)"
state=$(timeout 120 systemctl is-system-running --wait)
echo "SYSVM_STATE=$state uptime=$(cut -d' ' -f1 /proc/uptime)"
P=/sys/firmware/qemu_fw_cfg/by_name/opt/sysvm/payload/raw
[ -e "$P" ] || modprobe qemu_fw_cfg 2>/dev/null
rc=0
if [ -r "$P" ]; then
  cat "$P" > /run/sysvm-payload; chmod +x /run/sysvm-payload; /run/sysvm-payload; rc=$?
else
  echo "== systemd-analyze"; systemd-analyze
  echo "== failed units"; systemctl --failed --no-pager
  echo "== journalctl -p warning -b"; journalctl -p warning -b --no-pager | tail -20
fi
echo "SYSVM_EXIT=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
grep -qw sysvm.keep /proc/cmdline || systemctl --no-block --job-mode=replace-irreversibly start poweroff.target
EOF
chmod +x "$R/usr/local/sbin/sysvm-payload"
cat > "$R/etc/systemd/system/sysvm-payload.service" <<'EOF'
[Unit]
Description=sysvm payload runner
After=multi-user.target
[Service]
Type=exec
ExecStart=/usr/local/sbin/sysvm-payload
[Install]
WantedBy=multi-user.target
EOF

chroot "$R" systemctl enable -q systemd-networkd sysvm-payload sysvm-ctl.socket
# nothing useful in a throwaway VM: timers, tty1 getty (no VGA)
chroot "$R" systemctl mask -q apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
  fstrim.timer e2scrub_all.timer e2scrub_reap.service getty@tty1.service 2>/dev/null || true
