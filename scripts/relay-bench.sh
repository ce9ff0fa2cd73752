#!/usr/bin/env bash
# scripts/relay-bench.sh - one beltcam relaying another (issue 13 part 1): 1,000 loopback viewers of a
# 1280x720@30 upstream through the relay (one upstream connection), then the same 1,000 viewers on the
# upstream directly. The relay keeps the upstream's X-Timestamp, so its latency column is end to end
# (upstream capture to viewer). Needs target/release/{beltcam,beltcam-bench}.
set -u
ulimit -n 65536
B=target/release/beltcam
UP=18601; RL=18602
L="--max-clients-per-ip 1024 --connects-per-minute 1000000 --log-level warn"
$B --listen 127.0.0.1:$UP --source synthetic:1280x720@30 $L & up=$!
sleep 2
$B --listen 127.0.0.1:$RL --source http://127.0.0.1:$UP/stream $L & rl=$!
for i in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:$RL/snapshot && break; sleep 0.2; done
echo "== relay, 1000 viewers"
target/release/beltcam-bench --url http://127.0.0.1:$RL --pid $rl --viewers 1000 --size 1280x720 --fps 30 --no-baseline --seconds 10 2>&1 | tail -8
echo "upstream sessions during relay: $(curl -s http://127.0.0.1:$UP/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"]["active"])')"
echo "== upstream direct, 1000 viewers"
target/release/beltcam-bench --url http://127.0.0.1:$UP --pid $up --viewers 1000 --size 1280x720 --fps 30 --no-baseline --seconds 10 2>&1 | tail -8
kill $up $rl; wait 2>/dev/null
