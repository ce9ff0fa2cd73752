#!/bin/sh
# Payload for the MJPEG run: an MJPEG-only camera (/dev/video10, v4l2loopback) fed with the frames
# the host put in /vmh/frames, and beltcam streaming it (passthrough expected).
n=$(ls /vmh/frames/*.jpg | wc -l)
mkdir -p /run/mjpeg-frames/640x480 && cp /vmh/frames/*.jpg /run/mjpeg-frames/640x480/
VMH_MJPEG_FRAMES=$n vmh-mjpeg-cam 640x480 25 10 > /tmp/cam.log 2>&1 &
i=0; while [ $i -lt 200 ] && ! grep -q "vmh-mjpeg-cam:" /tmp/cam.log; do i=$((i + 1)); sleep 0.1; done
cat /tmp/cam.log
beltcam devices > /tmp/devices.txt 2>&1
beltcam-start mjpeg 8080 v4l2:/dev/video10
while [ ! -e /tmp/stop ]; do sleep 0.2; done
for f in /tmp/*.pid; do kill "$(cat "$f")" 2>/dev/null; done
echo '---- beltcam log'; tail -n 30 /tmp/mjpeg.log
