#!/bin/sh
# Payload for the vivid run: record `beltcam devices`, stream vivid's webcam at 640x480 YUYV 25 fps,
# then idle until the host (through the control shell) touches /tmp/stop.
beltcam devices > /tmp/devices.txt 2>&1
beltcam devices --json > /tmp/devices.json 2>/tmp/devices.err
beltcam-start vivid 8080 v4l2:/dev/video0:640x480@25:YUYV
while [ ! -e /tmp/stop ]; do sleep 0.2; done
for f in /tmp/*.pid; do kill "$(cat "$f")" 2>/dev/null; done
echo '---- beltcam logs'; tail -n 30 /tmp/*.log
