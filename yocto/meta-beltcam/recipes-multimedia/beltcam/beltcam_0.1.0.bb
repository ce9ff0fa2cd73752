SUMMARY = "Bounded, zero-copy MJPEG streaming daemon for V4L2 cameras"
DESCRIPTION = "beltcam captures V4L2 camera frames and serves them as MJPEG over HTTP (ustreamer / \
mjpg-streamer compatible URLs), with fixed memory, a fixed session table, io_uring with an epoll \
fallback, and a systemd watchdog."
HOMEPAGE = "https://github.com/beltcam/beltcam"
SECTION = "multimedia"
# Cargo.toml: license = "MIT OR Apache-2.0". The tree carries no license text yet, so the checksums
# point at oe-core's copies of the two licenses.
LICENSE = "MIT | Apache-2.0"
LIC_FILES_CHKSUM = " \
    file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
    file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10 \
"

# Where releases come from: the project's git repository, branch main; a release is the commit the
# version bump (PV here, version in Cargo.toml) lands on, and this recipe pins it with SRCREV. The URL
# is the project's HOMEPAGE; if you build from a mirror or a fork, change SRC_URI and SRCREV together.
# SRCREV must stay a fixed commit: a floating one makes bitbake run `git ls-remote` while parsing,
# which fails with the network off (BB_NO_NETWORK) and halts the parse of every recipe.
# destsuffix=${BP} with the default S (${WORKDIR}/${BP} up to walnascar, ${UNPACKDIR}/${BP} from
# whinlatter on) keeps one recipe valid across the releases without setting S.
# The kas files in yocto/kas/ build the checkout at hand instead (EXTERNALSRC), which drops this URL.
SRC_URI = "git://github.com/beltcam/beltcam.git;protocol=https;branch=main;destsuffix=${BP}"
# beltcam 0.1.0: the commit whose Cargo.lock beltcam-crates.inc lists (bump both together).
SRCREV = "705010cf5cf9d07ad4a5b826b9aa676a2b287793"

# Every registry crate in Cargo.lock with its checksum: bitbake fetches them, cargo builds --frozen.
# Regenerate with scripts/gen-crates-inc.py (or `bitbake -c update_crates beltcam`) whenever
# Cargo.lock changes; tests/deploy_files.rs fails while they disagree.
require beltcam-crates.inc

# update_crates reads every Cargo.lock under CARGO_LOCK_SRC_DIR (default ${S}). The tree has a second
# one, fuzz/Cargo.lock (cargo-fuzz, its own workspace, never built here), which would add its crates
# to the list; point the class at a folder holding only the workspace's Cargo.lock.
CARGO_LOCK_SRC_DIR = "${WORKDIR}/update-crates"
do_update_crates[prefuncs] += "beltcam_workspace_lock"
python beltcam_workspace_lock() {
    import shutil
    dest = d.getVar('CARGO_LOCK_SRC_DIR')
    bb.utils.remove(dest, recurse=True)
    bb.utils.mkdirhier(dest)
    shutil.copy(os.path.join(d.getVar('S'), 'Cargo.lock'), dest)
}

inherit cargo cargo-update-recipe-crates systemd useradd pkgconfig features_check

# Only systemd starts it (Type=notify, watchdog, socket activation). poky defaults to sysvinit:
# set INIT_MANAGER = "systemd" in local.conf or the distro.
REQUIRED_DISTRO_FEATURES = "systemd"

# libjpeg-turbo: libturbojpeg from the image instead of the copy turbojpeg-sys would build with cmake.
# clang-native: libclang for bindgen (v4l2-sys-mit generates <linux/videodev2.h> bindings at build time).
DEPENDS += "libjpeg-turbo clang-native"

# turbojpeg-sys's build script reads this: find libturbojpeg >= 3.0 with pkg-config (cargo_common
# already exports PKG_CONFIG_ALLOW_CROSS=1; the pkgconfig class points pkg-config at the sysroot).
export TURBOJPEG_SOURCE = "pkg-config"

# bindgen loads libclang at run time from here (clang-native installs libclang.so into it).
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
# bindgen passes --target from cargo's TARGET; clang must also parse the target's headers, not the
# build host's. On 32-bit ARM, clang's default float ABI for *-gnueabi is soft, and glibc's
# <gnu/stubs.h> then asks for stubs-soft.h, which a hard-float sysroot lacks.
export BINDGEN_EXTRA_CLANG_ARGS = "--sysroot=${STAGING_DIR_TARGET}"
BINDGEN_EXTRA_CLANG_ARGS:append:arm = " ${@bb.utils.contains('TUNE_FEATURES', 'callconvention-hard', '-mfloat-abi=hard', '-mfloat-abi=soft', d)}"

# A static system user, so files such as /etc/beltcam/admin.token can be given to it; in group video
# for /dev/video* (root:video 0660). video comes from base-passwd.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --groups video --no-create-home \
    --home-dir ${localstatedir}/lib/beltcam --shell /sbin/nologin beltcam"

SYSTEMD_PACKAGES = "${PN}"
# Both enabled: the socket holds port 8080 across restarts, the service starts at boot (capture and the
# watchdog run before the first viewer) and receives the socket from systemd.
SYSTEMD_SERVICE:${PN} = "beltcam.service beltcam.socket"
SYSTEMD_AUTO_ENABLE = "enable"

# cargo_do_install installs the root package's binary (only `beltcam`: the workspace root builds its
# own package, not bench/). Then the units and the default configuration, from the source tree.
do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/beltcam.service ${D}${systemd_system_unitdir}/beltcam.service
    install -m 0644 ${S}/systemd/beltcam.socket ${D}${systemd_system_unitdir}/beltcam.socket
    # The units name /usr/bin and /etc literally; follow the distro's paths if they differ.
    sed -i -e 's#/usr/bin/beltcam#${bindir}/beltcam#g' -e 's#/etc/beltcam#${sysconfdir}/beltcam#g' \
        ${D}${systemd_system_unitdir}/beltcam.service

    install -d ${D}${sysconfdir}/beltcam
    install -m 0644 ${S}/config/beltcam.example.toml ${D}${sysconfdir}/beltcam/beltcam.toml
}

# Keep local edits of the configuration across package upgrades.
CONFFILES:${PN} += "${sysconfdir}/beltcam/beltcam.toml"

# curl for `curl http://localhost:8080/health` on the box is useful but not required.
RRECOMMENDS:${PN} += "curl"
