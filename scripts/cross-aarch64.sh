#!/usr/bin/env bash
# Build beltcam for aarch64 (Raspberry Pi 4/5, Jetson Orin) on an x86_64 Debian/Ubuntu host without
# Docker, run the vivid VM test with it in an arm64 VM (qemu-system-aarch64), then run the workspace's
# tests under qemu-user.
#
#   scripts/cross-aarch64.sh              # build --release, then test
#   scripts/cross-aarch64.sh --no-test    # build only
#
# The binary lands in target/aarch64-unknown-linux-gnu/release/beltcam.
# When the Rust target or the cross toolchain cannot be installed here, it says why and exits 0 (skip).
# With Docker or Podman, `cross build --target aarch64-unknown-linux-gnu` (see Cross.toml) is the
# alternative.
#
# Environment knobs:
#   CROSS_TEST_PROFILE=release|dev  profile for the tests (default release: the test build then reuses
#                                   the release build's dependencies, and emulated code runs ~5x faster)
#   BELTCAM_VM_ARM64=0|1            the vivid VM test (tests/vm_vivid.rs) in the arm64 VM
#                                   (qemu-system-aarch64, TCG; package qemu-system-arm) with this build,
#                                   right after the build. Default: with the tests (not with --no-test);
#                                   =1 runs it with --no-test too, =0 leaves it out. It costs ~1 min with
#                                   the image cached in target/vmh, ~2.5 min without (tests/vm/README.md).
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
cd "$(dirname "$0")/.."

run_tests=1
for arg in "$@"; do
    case "$arg" in
        --no-test) run_tests=0 ;;
        *) echo "usage: $0 [--no-test]" >&2; exit 2 ;;
    esac
done
vm_arm64=${BELTCAM_VM_ARM64:-$run_tests}

skip() {
    echo "cross-aarch64: SKIP: $*"
    exit 0
}

# --- Rust standard library for the target -------------------------------------------------------------
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    command -v rustup >/dev/null || skip "rustup not found; cannot add the $TARGET standard library"
    rustup target add "$TARGET" || skip "rustup could not install the $TARGET standard library"
fi

# --- Cross toolchain, target headers, libclang, cmake, qemu-user ----------------------------------------
# gcc/g++ link and compile libjpeg-turbo (turbojpeg-sys builds it with cmake); libc6-dev-arm64-cross and
# linux-libc-dev-arm64-cross are the sysroot bindgen parses <linux/videodev2.h> from; libclang-dev is
# bindgen's parser (a host library: it cross-parses with --target); qemu-user runs the test binaries.
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
[ -e "$SYSROOT/lib/libc.so.6" ] || missing+=(libc6-dev-arm64-cross)
[ -e "$SYSROOT/include/linux/videodev2.h" ] || missing+=(linux-libc-dev-arm64-cross)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang*.so*" >/dev/null \
    || missing+=(libclang-dev)
command -v cmake >/dev/null || missing+=(cmake)
[ "$vm_arm64" = 1 ] && { command -v qemu-system-aarch64 >/dev/null || missing+=(qemu-system-arm); }
binfmt_ok() { [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; }
if [ "$run_tests" = 1 ]; then
    command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user)
    # Tests that spawn the daemon exec an aarch64 binary from inside the emulator, which takes a
    # binfmt_misc handler: qemu-user-static provides one, binfmt-support's update-binfmts registers it.
    if ! binfmt_ok; then
        command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
        command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); else
            skip "need root (or passwordless sudo) to install: ${missing[*]}"
        fi
    fi
    command -v apt-get >/dev/null || skip "no apt-get; install the equivalents of: ${missing[*]}"
    echo "cross-aarch64: installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
        "${sudo[@]}" apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" \
            || skip "apt-get could not install: ${missing[*]}"
    fi
fi

if [ "$run_tests" = 1 ] && ! binfmt_ok && command -v update-binfmts >/dev/null; then
    root=(); [ "$(id -u)" = 0 ] || root=(sudo -n)
    # Containers often lack the binfmt_misc mount; registering a handler is what installing
    # qemu-user-static does on a normal host. Best effort: without it only the spawning tests fail.
    [ -e /proc/sys/fs/binfmt_misc/register ] \
        || "${root[@]}" mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    "${root[@]}" update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi

# --- Environment -----------------------------------------------------------------------------------------
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# The cc crate (and through it the cmake crate, which also sets CMAKE_SYSTEM_NAME/PROCESSOR itself when
# target != host) reads these to compile C for the target.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# bindgen (v4l2-sys-mit) adds --target from cargo's TARGET; it must also read the target's headers, not
# the host's /usr/include. The per-target variable leaves host build scripts alone.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=$SYSROOT -I$SYSROOT/include"
# turbojpeg-sys: build the bundled libjpeg-turbo 3.x for aarch64 with cmake (NEON SIMD, no nasm needed)
# rather than looking for an arm64 libturbojpeg through pkg-config, which would need multiarch packages.
export TURBOJPEG_SOURCE=vendor

echo "cross-aarch64: $(rustc --version), $(aarch64-linux-gnu-gcc --version | head -n1)"
start=$(date +%s)
cargo build --locked --target "$TARGET" --release --workspace
built=$(date +%s)
echo "cross-aarch64: build took $((built - start)) s -> target/$TARGET/release/beltcam"
file "target/$TARGET/release/beltcam" 2>/dev/null || true

# --- The vivid VM test on arm64: the host's test harness boots the arm64 VM with this build ------------
if [ "$vm_arm64" = 1 ]; then
    vm_start=$(date +%s)
    # The harness is a host build, the one `cargo test` made: TURBOJPEG_SOURCE above is not
    # per-target, and would rebuild the host's turbojpeg and everything above it.
    BELTCAM_VM_ARCH=arm64 BELTCAM_VM_BIN="$PWD/target/$TARGET/release/beltcam" \
        env -u TURBOJPEG_SOURCE cargo test --locked --test vm_vivid -- --nocapture
    echo "cross-aarch64: arm64 VM test took $(( $(date +%s) - vm_start )) s"
fi

[ "$run_tests" = 1 ] || exit 0

# --- Tests under qemu-user -------------------------------------------------------------------------------
qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static)
# cargo runs each test binary through the runner; -L points the emulated dynamic loader at the sysroot.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$qemu -L $SYSROOT"
# Children the tests spawn run through the binfmt_misc handler; QEMU_LD_PREFIX plays -L's role for them.
export QEMU_LD_PREFIX="$SYSROOT"
if ! binfmt_ok; then
    echo "cross-aarch64: note: no binfmt_misc handler for aarch64; tests that exec the daemon binary fail" \
        "with 'Exec format error' (install qemu-user-static + binfmt-support to register one)"
fi
# qemu-user implements no io_uring: the daemon runs its epoll backend, and tests that force
# --io-backend uring skip themselves on this variable.
export BELTCAM_SKIP_URING=1
# Emulation runs several times slower than the hardware: tests that assert frame rates skip
# themselves on this variable (printing why); everything else runs as on the native build.
export BELTCAM_EMULATED=1

profile=()
[ "${CROSS_TEST_PROFILE:-release}" = release ] && profile=(--release)
cargo test --locked --target "$TARGET" "${profile[@]}" --workspace
done_at=$(date +%s)
echo "cross-aarch64: tests under $(basename "$qemu") took $((done_at - built)) s; total $((done_at - start)) s"
