#!/usr/bin/env bash
# dev.sh - the two commands of the README.
#   ./dev.sh run [beltcam flags...]   build (release) and run the daemon; with no camera configured it
#                                     streams a synthetic test pattern at http://127.0.0.1:8080/
#   ./dev.sh test                     the whole test suite (what CI runs): fmt, clippy, cargo test,
#                                     then the aarch64 cross build and its tests under qemu
# Both install the Debian packages they need first, when missing.
set -euo pipefail
cd "$(dirname "$0")"

# Build: bindgen (v4l) needs libclang; turbojpeg builds libjpeg-turbo with cmake and nasm.
BUILD_PKGS="libclang-dev cmake nasm pkg-config"
# Tests: the vivid VM (qemu), systemd-analyze for the unit checks, the systemd VM (mmdebstrap builds
# its Debian rootfs, mke2fs -d its disk, depmod its module list; tests/sysvm/), the arm64 vivid VM
# (qemu-system-arm; scripts/cross-aarch64.sh runs it), prometheus and promtool (tests/prometheus.rs),
# the real clients (ffmpeg, Chromium, GStreamer: tests/stream_clients.rs, tests/browser_lag.rs).
# (the VM tests also download Debian's kernel and tools with apt-get download: they need apt's lists)
TEST_PKGS="qemu-system-x86 cpio xz-utils zstd bzip2 gcc-12 make systemd mmdebstrap e2fsprogs kmod qemu-system-arm prometheus ffmpeg chromium gstreamer1.0-tools gstreamer1.0-plugins-good nginx"

need_pkgs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "dev.sh: installing ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Prints the SKIP lines the last test run left in $skips.
show_skips() {
  if [ -s "$skips" ]; then
    echo "dev.sh: $1: $(wc -l < "$skips") skipped:" >&2
    cat "$skips" >&2
  else
    echo "dev.sh: $1: nothing skipped" >&2
  fi
}

case "${1:-}" in
  run)
    shift
    need_pkgs $BUILD_PKGS
    exec cargo run --release --bin beltcam -- "$@"
    ;;
  test)
    shift
    need_pkgs $BUILD_PKGS $TEST_PKGS
    if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
      sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
      $sudo apt-get update -qq || echo "dev.sh: apt-get update failed; the VM test will skip" >&2
    fi
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    # Every test that cannot run appends a SKIP line to this file (tests/common/mod.rs `skip`;
    # under CI=true a skip not on the test's allow-list fails it). cargo hides a passing test's
    # stderr, so the file is printed after each run.
    skips=target/test-skips.txt
    mkdir -p target && : > "$skips"
    rc=0
    cargo test --workspace --locked "$@" || rc=$?
    show_skips "cargo test"
    [ "$rc" -eq 0 ] || exit "$rc"
    # The declared MSRV (rust-version: the rustc Yocto scarthgap gets from meta-lts-mixins) must build
    # the workspace from Cargo.lock as committed. rustup installs that toolchain when it is missing.
    msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)
    if command -v rustup >/dev/null; then
      rustup toolchain list | grep -q "^$msrv-" || rustup toolchain install "$msrv" --profile minimal
      cargo "+$msrv" check --locked --workspace --target-dir target/msrv
    elif [ "${CI:-}" = true ]; then
      echo "dev.sh: no rustup for the MSRV ($msrv) build" >&2; exit 1
    else
      echo "SKIP: MSRV ($msrv) build: no rustup" >&2
    fi
    # The aarch64 build, and the tests run under qemu-aarch64 (epoll backend). It installs its cross
    # toolchain itself and skips, saying why, where that cannot be done. BELTCAM_NO_CROSS=1 leaves it out.
    if [ -z "${BELTCAM_NO_CROSS:-}" ]; then
      : > "$skips"
      rc=0
      scripts/cross-aarch64.sh || rc=$?
      show_skips "aarch64 tests"
      [ "$rc" -eq 0 ] || exit "$rc"
    fi
    # The Yocto layer under a real bitbake, network off (wrynose and scarthgap, both kas machines).
    # It needs checkouts of the layers (BELTCAM_YOCTO_SRC, see the script); without them it prints a
    # SKIP banner and passes, also in CI, which has no way to get them.
    scripts/yocto-check.sh
    ;;
  *)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
