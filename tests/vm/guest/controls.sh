#!/bin/sh
# Payload for the controls run: beltcam from a config file with vivid's webcam, its
# [camera.controls] table and a synthetic camera (no controls), and an admin token (the host's
# requests arrive through qemu's NAT, not loopback); then idle until the host touches /tmp/stop.
echo "vm-controls-admin-token-0123456789" > /tmp/admin-token
cat > /tmp/controls.toml <<'EOF'
[server]
listen = ["0.0.0.0:8080"]

[limits]
connects_per_minute = 100000

[auth]
admin_token_file = "/tmp/admin-token"

[[camera]]
name = "vivid"
source = "v4l2:/dev/video0:640x480@25:YUYV"

[camera.controls]
brightness = 200
contrast = 90

[[camera]]
name = "synth"
source = "synthetic:320x240@5"
EOF
setsid beltcam --config /tmp/controls.toml </dev/null >/tmp/controls.log 2>&1 &
echo $! > /tmp/controls.pid
while [ ! -e /tmp/stop ]; do sleep 0.2; done
for f in /tmp/*.pid; do kill "$(cat "$f")" 2>/dev/null; done
echo '---- beltcam log'; tail -n 30 /tmp/controls.log
