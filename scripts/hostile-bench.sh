#!/usr/bin/env bash
# hostile-bench.sh - the figures of issue 10's adversarial suite, as a table.
#
#   scripts/hostile-bench.sh [--control] [--quick] [TEST_FILTER...]
#
# Runs tests/hostile.rs one test at a time with HOSTILE_BENCH=1 (6 s measurement windows, 10
# restart trials instead of 3) and prints every scenario's figures as a Markdown table, PASS or
# FAIL per row. Failing rows are expected before the fixes: the table is the point, so this script
# exits 0 whatever the verdicts (it exits 1 only if the suite did not run).
#   --control  item 1 with no attackers (HOSTILE_ATTACKERS=0): what the same window measures on a
#              quiet daemon, the ceiling the attacked figures are compared with
#   --quick    the suite's own short windows and trial counts (no HOSTILE_BENCH)
# Timing figures (fps, ms) are only as good as the host is quiet: say how loaded it was
# (the script prints the load average before and after).
set -euo pipefail
cd "$(dirname "$0")/.."

bench=1
filters=()
for a in "$@"; do
  case "$a" in
    --control) export HOSTILE_ATTACKERS=0; filters+=(pool_) ;;
    --quick) bench= ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) filters+=("$a") ;;
  esac
done
[ -n "$bench" ] && export HOSTILE_BENCH=1

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores, $(uname -r))" >&2
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >&2
# Build first, so compile time does not overlap the measurements.
cargo test --test hostile --no-run --quiet >&2
set +e
cargo test --quiet --test hostile -- --nocapture --test-threads=1 "${filters[@]}" >"$out" 2>&1
set -e
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# With --nocapture a figure line may share a line with libtest's "test NAME ... ".
figures=$(grep -ao $'HOSTILE\t.*' "$out" || true)
if [ -z "$figures" ]; then
  echo "hostile-bench: no figures; the suite's output follows" >&2
  cat "$out" >&2
  exit 1
fi
grep -ao 'SKIP.*' "$out" >&2 || true

echo "| item | scenario | backend | verdict | figures |"
echo "|---|---|---|---|---|"
printf '%s\n' "$figures" | sort -t$'\t' -k2,2n -k3,3 -k4,4r |
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6 }'
