#!/bin/sh
# Payload for scripts/vm-peers.sh (beltcam vs ustreamer on the same devices; not part of the test
# suite). Boot with `--vivid "n_devs=2 ..."`: /dev/video0 is beltcam's webcam, /dev/video1
# ustreamer's. Adds two MJPEG-only v4l2loopback devices (/dev/video10 for beltcam, /dev/video11 for
# ustreamer; fed by `peers-feed` while a run uses them), then idles: the host drives each run
# through the control shell with `peers-ctl`, and touches /tmp/stop at the end.
modprobe v4l2loopback devices=2 video_nr=10,11 exclusive_caps=1,1 \
  card_label=peers-mjpeg-b,peers-mjpeg-u max_buffers=4 || echo "peers: no v4l2loopback (MJPEG runs will fail)"
ls /dev/video*
while [ ! -e /tmp/stop ]; do sleep 0.2; done
for f in /tmp/*.pid; do kill "$(cat "$f")" 2>/dev/null; done
echo '---- logs'; tail -n 15 /tmp/*.log
