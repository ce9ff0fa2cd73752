#!/usr/bin/env bash
# scripts/fuzz.sh - run beltcam's cargo-fuzz (libFuzzer) targets for a bounded time each and print,
# per target, the executions, speed, corpus size and crashes found.
#
#   FUZZ_SECONDS=60 scripts/fuzz.sh              every target for 60 s (the default is 60)
#   scripts/fuzz.sh request jpeg_check           only these targets
#   FUZZ_CMIN=1 scripts/fuzz.sh                  afterwards minimize fuzz/corpus/<target>/ (cargo fuzz
#                                                cmin) so the committed corpus stays small: run
#                                                this before committing a grown corpus
#
# Inputs: fuzz/corpus/<target>/ (grown by libFuzzer, minimized, committed) and fuzz/seeds/<dir>/
# (hand-written, read-only here). A crash leaves its input in fuzz/artifacts/<target>/ (ignored by
# git): reproduce with `cargo fuzz run -O <target> <file>` from fuzz/, shrink with `cargo fuzz tmin`,
# and commit it to fuzz/regressions/<target>/ so tests/fuzz_regression.rs replays it on every
# `cargo test`. Exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

# cargo-fuzz builds with -Zsanitizer=address and other -Z flags, which only a nightly rustc takes.
# The project's machines and CI have a stable toolchain only and cannot fetch nightly, so
# RUSTC_BOOTSTRAP=1 lets stable rustc accept those flags. It applies to this script's fuzz builds
# only (their own target dir, fuzz/target), never to the product build.
export RUSTC_BOOTSTRAP=1

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
CARGO_FUZZ_VERSION="0.13.2"

# target -> seed folder under fuzz/seeds/, and the largest input libFuzzer may generate (the
# request target must get past the 8 KiB head limit; the JPEG targets hold a small real frame).
declare -A SEEDS=([request]=request [jpeg_check]=jpeg_check [dht_insert]=jpeg_check
    [dht_strip]=jpeg_check [multipart_header]=multipart_header [part_reader]=part_reader)
declare -A MAX_LEN=([request]=12288 [jpeg_check]=16384 [dht_insert]=16384 [dht_strip]=16384
    [multipart_header]=64 [part_reader]=8192)
ALL_TARGETS=(request jpeg_check dht_insert dht_strip multipart_header part_reader)

if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
for t in "${TARGETS[@]}"; do
    [ -n "${SEEDS[$t]:-}" ] || { echo "fuzz.sh: unknown target $t (${ALL_TARGETS[*]})" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

LOGS=target/fuzz-logs
mkdir -p "$LOGS"
echo "fuzz.sh: building the fuzz targets (log: fuzz/$LOGS/build.log)" >&2
if ! cargo fuzz build -O >"$LOGS/build.log" 2>&1; then
    tail -n 30 "$LOGS/build.log" >&2
    exit 1
fi
crashed=0
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    log="$LOGS/$t.log"
    echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s (log: fuzz/$log)" >&2
    # libFuzzer exits non-zero on a crash; the summary below reports it.
    status=0
    cargo fuzz run -O "$t" "corpus/$t" "seeds/${SEEDS[$t]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len="${MAX_LEN[$t]}" \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    new_artifacts=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
    result="ok"
    if [ "$status" -ne 0 ] || [ "$new_artifacts" -gt 0 ]; then
        crashed=1
        result="CRASH (exit $status): $(grep -o 'artifacts/[^ ]*' "$log" | sort -u | tr '\n' ' ')"
        grep -m 3 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer" "$log" >&2 || true
    fi
    if [ "${FUZZ_CMIN:-0}" = 1 ]; then
        # Edge coverage only (no hit-count buckets): keeps the committed corpus to a few hundred
        # files; a fuzzing run regrows the finer corpus from it in seconds.
        cargo fuzz cmin -O "$t" "corpus/$t" -- -use_counters=0 -max_len="${MAX_LEN[$t]}" \
            >"$LOGS/$t.cmin.log" 2>&1 ||
            echo "fuzz.sh: cmin $t failed, see fuzz/$LOGS/$t.cmin.log" >&2
    fi
    files=$(find "corpus/$t" -type f | wc -l)
    summary+=("$(printf '%-17s %12s execs %8s/s  corpus %4s files  %s' \
        "$t" "${execs:-?}" "${speed:-?}" "$files" "$result")")
done

echo "fuzz.sh: ${SECONDS_PER_TARGET}s per target"
printf '%s\n' "${summary[@]}"
exit "$crashed"
