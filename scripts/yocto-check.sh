#!/usr/bin/env bash
# scripts/yocto-check.sh - check meta-beltcam with a real bitbake, network off.
#
# For each Yocto LTS release (wrynose 6.0, scarthgap 5.0) and each kas machine (yocto/kas/MACHINE.yml
# for wrynose, MACHINE-scarthgap.yml for scarthgap), it assembles the build the kas file describes
# (bblayers.conf and local.conf written the way kas 5 writes them, with the file's includes; layers
# taken from local checkouts, each compared with the kas lock file) and runs, with BB_NO_NETWORK = "1":
#     bitbake -p;  bitbake -e beltcam;  bitbake -g beltcam beltcam-image;  bitbake -n beltcam-image
# It fails on a non-zero exit, on any ERROR line, and on any WARNING line that names the layer
# (beltcam, meta-beltcam). Nothing is fetched or built: parsing, the task graph and a dry run.
# Then it runs the release's own do_update_crates code (taken from `bitbake -e beltcam`, on the
# Cargo.lock the recipe's prefunc selects, nativepython3 -> host python3) into a scratch file and
# fails unless the result equals the committed beltcam-crates.inc.
#
# Usage: scripts/yocto-check.sh [RELEASE_DIR...]
#   A RELEASE_DIR holds one release's checkouts, each named after its repository:
#     bitbake, openembedded-core, meta-yocto   (or one `poky` checkout instead of these three)
#     meta-raspberrypi, meta-tegra             (the BSPs of the two kas machines)
#     meta-clang, meta-lts-mixins              (scarthgap only: clang-native and a rustc >= 1.81)
#   The release is read from openembedded-core's LAYERSERIES_CORENAMES, not from the folder name.
#   Without arguments: $BELTCAM_YOCTO_SRC/wrynose and $BELTCAM_YOCTO_SRC/scarthgap.
# Environment:
#   BELTCAM_YOCTO_SRC   folder holding the release folders (used when no argument is given)
#   BELTCAM_YOCTO_WORK  where the build folders go (default ${TMPDIR:-/tmp}/beltcam-yocto-check);
#                       always outside the source tree, which EXTERNALSRC hashes
#   BELTCAM_YOCTO_USER  run as root, bitbake refuses to run ("Do not use Bitbake as root"): the
#                       script installs the host packages bitbake's sanity check asks for and the
#                       en_US.UTF-8 locale, creates this unprivileged user (default beltcam-yocto)
#                       and re-runs itself as that user with runuser, on a copy of the working tree
#                       (BELTCAM_YOCTO_WORK/tree: externalsrc writes into the tree's .git)
#   BELTCAM_YOCTO_MACHINES  space-separated subset of the kas machines (default: all)
# With no checkouts at all it prints a SKIP banner and exits 0, also under CI=true: CI has no
# way to get the checkouts (see README, "Yocto").
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
KAS_DIR="$REPO/yocto/kas"
LTS_RELEASES="wrynose scarthgap"

skip_banner() {
  echo "################################################################################"
  echo "### SKIP yocto-check: $*"
  echo "################################################################################"
}

# ---- which release folders ------------------------------------------------------------------
release_dirs=()
if [ $# -gt 0 ]; then
  release_dirs=("$@")
elif [ -n "${BELTCAM_YOCTO_SRC:-}" ]; then
  for r in $LTS_RELEASES; do
    [ -d "$BELTCAM_YOCTO_SRC/$r" ] && release_dirs+=("$BELTCAM_YOCTO_SRC/$r")
  done
fi
if [ ${#release_dirs[@]} -eq 0 ]; then
  skip_banner "no Yocto checkouts (pass release folders or set BELTCAM_YOCTO_SRC; see the script's header)"
  exit 0
fi

# ---- host: the tools bitbake's sanity check asks for, and its locale --------------------------
# (Debian package names; bitbake names whatever is still missing in its first ERROR.)
HOST_PKGS="gawk wget git diffstat unzip texinfo gcc g++ build-essential chrpath socat cpio python3 \
python3-pip python3-pexpect python3-yaml xz-utils debianutils iputils-ping python3-git python3-jinja2 \
python3-subunit zstd liblz4-tool lz4 file locales libacl1"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in $HOST_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "yocto-check: installing ${missing[*]}"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # bitbake wants en_US.UTF-8 ("Please make sure locale 'en_US.UTF-8' is available").
  if ! locale -a 2>/dev/null | grep -qix 'en_US.utf8'; then
    sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
    grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >>/etc/locale.gen
    locale-gen >/dev/null
  fi
fi

# ---- root: re-run as an unprivileged user ---------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
  user=${BELTCAM_YOCTO_USER:-beltcam-yocto}
  if ! id -u "$user" >/dev/null 2>&1; then
    echo "yocto-check: creating user $user (bitbake refuses to run as root)"
    useradd --create-home --shell /bin/bash "$user"
  fi
  work=${BELTCAM_YOCTO_WORK:-${TMPDIR:-/tmp}/beltcam-yocto-check}
  mkdir -p "$work"
  chown "$user": "$work"
  # The layer and the checkouts must be readable by that user; the tree is a git checkout owned by
  # root, which git (externalsrc hashes the tree with git) refuses without safe.directory.
  runuser -u "$user" -- git config --global --replace-all safe.directory '*'
  # externalsrc hashes the tree with `git add -A` into a scratch index, which writes objects (and
  # oe-devtool-tree-sha1-beltcam) into the tree's .git: root's checkout is read-only for that user.
  # So the user gets a copy of the working tree as it is (tracked and untracked files, .gitignore'd
  # ones left out, as EXTERNALSRC's git hash leaves them out) in a git repository of its own.
  tree="$work/tree"
  rm -rf "$tree"
  runuser -u "$user" -- mkdir -p "$tree"
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | runuser -u "$user" -- tar -xf - -C "$tree"
  runuser -u "$user" -- git -C "$tree" init -q
  runuser -u "$user" -- git -C "$tree" add -A
  echo "yocto-check: running as $user on a copy of the working tree: $tree"
  exec runuser -u "$user" -- env -i HOME="$(getent passwd "$user" | cut -d: -f6)" \
    PATH="/usr/local/bin:/usr/bin:/bin" LANG=en_US.UTF-8 \
    BELTCAM_YOCTO_WORK="$work" BELTCAM_YOCTO_MACHINES="${BELTCAM_YOCTO_MACHINES:-}" \
    CI="${CI:-}" bash "$tree/scripts/yocto-check.sh" "${release_dirs[@]}"
fi

WORK=${BELTCAM_YOCTO_WORK:-${TMPDIR:-/tmp}/beltcam-yocto-check}
case "$WORK/" in
  "$REPO"/*) echo "yocto-check: BELTCAM_YOCTO_WORK must be outside $REPO (EXTERNALSRC hashes it)" >&2; exit 2 ;;
esac
mkdir -p "$WORK"
export LANG=en_US.UTF-8
unset LC_ALL
PY=$(command -v python3)

# ---- per release -----------------------------------------------------------------------------
# Prints "release bitbake_dir" and checks the checkouts; the layer paths are resolved in python.
core_dir() { # release folder -> the folder with meta/ (openembedded-core or poky)
  if [ -d "$1/openembedded-core/meta" ]; then echo "$1/openembedded-core"
  elif [ -d "$1/poky/meta" ]; then echo "$1/poky"
  else return 1; fi
}
bitbake_dir() {
  if [ -x "$1/bitbake/bin/bitbake" ]; then echo "$1/bitbake"
  elif [ -x "$1/poky/bitbake/bin/bitbake" ]; then echo "$1/poky/bitbake"
  else return 1; fi
}

# Writes conf/bblayers.conf and conf/local.conf of BUILD from the kas files, as kas 4/5 does
# (headers sorted by key, then MACHINE/DISTRO), mapping each kas repo to RELEASE_DIR/<repo name>.
assemble() { # release_dir build_dir release kas_file [kas_file...]
  "$PY" - "$REPO" "$@" <<'EOF'
import os, sys, yaml
repo, rdir, build, release, *kas = sys.argv[1:]
def merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            merge(a[k], v)
        else:
            a[k] = v
    return a
def load(f):
    # kas semantics: includes (paths relative to the repository root) first, depth-first, then the file.
    doc = yaml.safe_load(open(f)) or {}
    out = {}
    for inc in (doc.get("header") or {}).get("includes") or []:
        merge(out, load(os.path.join(repo, inc)))
    return merge(out, doc)
cfg = {}
for f in kas:
    merge(cfg, load(f))
def checkout(name):
    d = os.path.join(rdir, name)
    if os.path.isdir(d):
        return d
    # poky = bitbake + openembedded-core (meta) + meta-yocto (meta-poky) in one tree
    if name in ("bitbake", "openembedded-core", "meta-yocto") and os.path.isdir(os.path.join(rdir, "poky")):
        return os.path.join(rdir, "poky")
    sys.exit(f"yocto-check: {release}: no checkout {d} (kas repo {name})")
layers = []
for name, spec in (cfg.get("repos") or {}).items():
    spec = spec or {}
    root = repo if "url" not in spec and "path" not in spec else checkout(name)
    lays = spec.get("layers") or {".": None}
    for lay, state in lays.items():
        if state in ("disabled", "excluded", "n", "no", "0", False, 0):
            continue
        p = os.path.normpath(os.path.join(root, lay))
        if not os.path.isfile(os.path.join(p, "conf/layer.conf")):
            sys.exit(f"yocto-check: {release}: {p} is not a layer (kas repo {name})")
        layers.append(p)
layers.sort()  # kas sorts the layer paths too
os.makedirs(os.path.join(build, "conf"), exist_ok=True)
with open(os.path.join(build, "conf/bblayers.conf"), "w") as f:
    for _, text in sorted((cfg.get("bblayers_conf_header") or {}).items()):
        f.write(text.rstrip("\n") + "\n")
    f.write('BBLAYERS ?= " \\\n')
    for p in layers:
        f.write(f"    {p} \\\n")
    f.write('"\nBBPATH ?= "${TOPDIR}"\nBBFILES ??= ""\n')
with open(os.path.join(build, "conf/local.conf"), "w") as f:
    for _, text in sorted((cfg.get("local_conf_header") or {}).items()):
        f.write(text.rstrip("\n") + "\n")
    f.write(f'MACHINE ??= "{cfg["machine"]}"\nDISTRO ??= "{cfg["distro"]}"\nBBMULTICONFIG ?= ""\n')
    # yocto-check's own settings: no network, build state under the build folder.
    f.write('BB_NO_NETWORK = "1"\n')
    f.write('DL_DIR = "${TOPDIR}/downloads"\nSSTATE_DIR = "${TOPDIR}/sstate-cache"\n')
# The kas lock file of the top file: say whether each checkout is at the locked commit.
import subprocess
lockf = os.path.splitext(kas[0])[0] + ".lock.yml"
if os.path.isfile(lockf):
    locked = ((yaml.safe_load(open(lockf)) or {}).get("overrides") or {}).get("repos") or {}
    for name, o in sorted(locked.items()):
        head = subprocess.run(["git", "-C", checkout(name), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        state = ("at the locked commit" if head == o["commit"]
                 else f"at {head} (not the locked commit)" if head else "not a git checkout")
        print(f"   lock {os.path.basename(lockf)}: {name} {o['commit'][:12]}: checkout {state}")
else:
    print(f"   no lock file {lockf}")
EOF
}

failures=0
summary=()
declare -A seen=()

run_bitbake() { # build_dir bitbake_dir core_dir log label args...
  local build=$1 bb=$2 core=$3 log=$4 label=$5
  shift 5
  local rc=0
  echo "---- [$label] bitbake $*"
  (
    cd "$build"
    export PATH="$core/scripts:$bb/bin:$PATH" BBPATH="$build"
    unset BBSERVER
    bitbake "$@"
  ) >"$log" 2>&1 || rc=$?
  # -e and -g print pages of variables / write .dot files: show the log's diagnostics only.
  grep -E '^(ERROR:|WARNING:|NOTE: Resolving|Parsing of|Summary:)' "$log" | head -60 || true
  local errors warnings
  errors=$(grep -cE '^ERROR:' "$log" || true)
  # (the work folder's own path is taken out first: it may contain "beltcam" itself)
  warnings=$(grep -E '^WARNING:' "$log" | sed "s#$WORK##g" | grep -ciE 'beltcam' || true)
  echo "     exit $rc, ERROR lines: $errors, WARNING lines naming the layer: $warnings (log: $log)"
  if [ "$rc" -ne 0 ] || [ "$errors" -ne 0 ] || [ "$warnings" -ne 0 ]; then
    [ "$rc" -ne 0 ] && [ "$errors" -eq 0 ] && tail -20 "$log"
    return 1
  fi
  return 0
}

# do_update_crates needs python3-native built (not possible offline); run the same code on the host.
check_update_crates() { # env_log build_dir
  local envlog=$1 build=$2
  echo "---- update_crates: the release's do_update_crates code on the host"
  if ! grep -q '^do_update_crates() {' "$envlog"; then
    echo "     no do_update_crates in bitbake -e output"; return 1
  fi
  grep -q 'beltcam_workspace_lock' "$envlog" || { echo "     prefunc beltcam_workspace_lock not in bitbake -e output"; return 1; }
  "$PY" - "$envlog" "$build/update-crates" "$REPO/yocto/meta-beltcam/recipes-multimedia/beltcam/beltcam-crates.inc" <<'EOF'
import os, re, shutil, subprocess, sys
envlog, scratch, committed = sys.argv[1:]
text = open(envlog).read()
var = lambda n: re.search(r'^%s="(.*)"$' % n, text, re.M).group(1)
body = re.search(r'^do_update_crates\(\) \{\n(.*?)^\}$', text, re.M | re.S).group(1)
src, lockdir = var("S"), var("CARGO_LOCK_SRC_DIR")
target = re.search(r'TARGET_FILE="([^"]*)"', body).group(1)
print(f"     S={src}\n     CARGO_LOCK_SRC_DIR={lockdir}\n     TARGET_FILE={target}")
# What the prefunc does: CARGO_LOCK_SRC_DIR holds only the workspace Cargo.lock.
shutil.rmtree(scratch, ignore_errors=True)
os.makedirs(os.path.join(scratch, "lock"))
shutil.copy(os.path.join(src, "Cargo.lock"), os.path.join(scratch, "lock"))
out = os.path.join(scratch, "beltcam-crates.inc")
body = body.replace(lockdir, os.path.join(scratch, "lock")).replace(target, out)
body = body.replace("nativepython3", "python3").replace("bbnote", "echo")
subprocess.run(["bash", "-ec", body], check=True)
a, b = open(out).read(), open(committed).read()
if a != b:
    print(f"     DIFFERS from the committed {committed}: {len(a.splitlines())} lines vs {len(b.splitlines())}")
    sys.exit(1)
print(f"     same as the committed beltcam-crates.inc ({len(a.splitlines())} lines)")
EOF
}

machines_all=()
for f in "$KAS_DIR"/*.yml; do
  case "$f" in *.lock.yml | *-scarthgap.yml) continue ;; esac
  m=$(basename "$f" .yml)
  if [ -z "${BELTCAM_YOCTO_MACHINES:-}" ] || [[ " $BELTCAM_YOCTO_MACHINES " == *" $m "* ]]; then
    machines_all+=("$f")
  fi
done

for rdir in "${release_dirs[@]}"; do
  rdir=$(cd "$rdir" && pwd)
  core=$(core_dir "$rdir") || { echo "yocto-check: $rdir: no openembedded-core or poky checkout" >&2; exit 2; }
  bb=$(bitbake_dir "$rdir") || { echo "yocto-check: $rdir: no bitbake checkout" >&2; exit 2; }
  release=$(sed -n 's/^LAYERSERIES_CORENAMES *= *"\([^" ]*\).*/\1/p' "$core/meta/conf/layer.conf")
  seen[$release]=1
  case "$release" in
    wrynose) suffix="" ;;
    scarthgap) suffix="-scarthgap" ;;
    *) echo "yocto-check: $rdir is $release, not an LTS release this layer is checked on ($LTS_RELEASES)" >&2; exit 2 ;;
  esac
  echo "==== $release: $rdir (bitbake $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$bb/lib/bb/__init__.py"))"
  for mfile in "${machines_all[@]}"; do
    m=$(basename "$mfile" .yml)
    kas="$KAS_DIR/$m$suffix.yml"
    build="$WORK/$release-$m"
    rm -rf "$build/conf"
    assemble "$rdir" "$build" "$release" "$kas" || { failures=$((failures + 1)); summary+=("$release $m: FAIL (assembly)"); continue; }
    echo "== $release / $m: $build"
    sed 's/^/   bblayers: /' <(grep -E '^    /' "$build/conf/bblayers.conf")
    ok=1
    start=$(date +%s)
    n=0
    for step in "-p" "-e beltcam" "-g beltcam beltcam-image" "-n beltcam-image"; do
      n=$((n + 1))
      # shellcheck disable=SC2086
      if ! run_bitbake "$build" "$bb" "$core" "$build/step$n.log" "$release/$m" $step; then
        ok=0
        [ $n -eq 1 ] && break # the parse failed: the other three would fail the same way
      fi
      if [ "$step" = "-e beltcam" ]; then
        # What the layer should have resolved to: the checkout, never a remote revision.
        # (SRC_URI without its crate:// entries, which are counted instead)
        grep -E '^(EXTERNALSRC|SRCREV|SRC_URI|PV|S|RUSTVERSION|LAYERSERIES_CORENAMES|CARGO_LOCK_SRC_DIR)=' "$build/step$n.log" |
          sed -E -e 's#crate://[^ "]*##g' -e 's/ +/ /g' -e 's/=" /="/' -e 's/ "$/"/' -e 's/^/     /' || true
        echo "     crate:// entries in SRC_URI: $(grep -E '^SRC_URI=' "$build/step$n.log" | grep -o 'crate://' | wc -l)"
      fi
    done
    if [ $ok -eq 1 ] && ! check_update_crates "$build/step2.log" "$build"; then
      ok=0
    fi
    secs=$(($(date +%s) - start))
    allwarn=$(cat "$build"/step*.log | grep -cE '^WARNING:' || true)
    if [ $ok -eq 1 ]; then
      summary+=("$release $m: PASS (${secs}s; WARNING lines in all four runs: $allwarn, none naming the layer)")
    else
      failures=$((failures + 1))
      summary+=("$release $m: FAIL (${secs}s; see $build/step*.log)")
    fi
  done
done

for r in $LTS_RELEASES; do
  [ -n "${seen[$r]:-}" ] || skip_banner "$r: no checkouts given for this LTS release"
done
echo "==== yocto-check summary"
printf '  %s\n' "${summary[@]}"
[ $failures -eq 0 ] || { echo "yocto-check: $failures FAILED"; exit 1; }
echo "yocto-check: all passed"
