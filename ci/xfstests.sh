#!/usr/bin/env bash
# Run fstests (xfstests) against vhost-ext4.
#
# Host mode (the default): fstests runs with FSTYP=fuse and mounts two ext4 image files (TEST and
# SCRATCH) through the mount helper `mount.fuse.vhost-ext4`, which this script installs in /sbin.
# The helper runs `e2fsck -fn` on the image before every mount (fstests cannot check a FUSE file
# system itself) and records each unclean image in a log; the summary reports that count.
#
# Usage: sudo bash ci/xfstests.sh [--fstests DIR|TARBALL] [--workdir DIR] [--tests "generic/001 ..."]
#            [--group GROUP] [--image-size SIZE] [--test-timeout SECS] [--timeout SECS]
#            [--daemon PATH] [--mode host|guest] [--build-only]
#
# Output (in the work dir): results.tsv (test, result, seconds, class, reason), the fstests results
# directory, the mount helper's logs, and one summary line on stdout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

fstests_src=""
workdir=/tmp/vhe-xfstests
tests=""
group="generic/quick"
image_size=2G
test_timeout=600
total_timeout=14400
daemon=""
mode=host
build_only=0

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
fail() { echo "ci/xfstests.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --fstests) fstests_src=$2; shift ;;
        --workdir) workdir=$2; shift ;;
        --tests) tests=$2; shift ;;
        --group) group=$2; shift ;;
        --image-size) image_size=$2; shift ;;
        --test-timeout) test_timeout=$2; shift ;;
        --timeout) total_timeout=$2; shift ;;
        --daemon) daemon=$2; shift ;;
        --mode) mode=$2; shift ;;
        --build-only) build_only=1 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 1 ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || fail "run as root (fstests mounts, and installs a mount helper in /sbin)"
[ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || fail "/dev/fuse is missing"
case "$mode" in
    host) ;;
    guest) fail "--mode guest (FSTYP=virtiofs in a QEMU guest) is not implemented yet: see README.md" ;;
    *) fail "--mode is host or guest" ;;
esac
if [ -z "$fstests_src" ]; then
    for cand in "$repo/../shared/fstests/fstests-63a29724.tar.xz" /work/shared/fstests/fstests-63a29724.tar.xz; do
        [ -e "$cand" ] && { fstests_src=$cand; break; }
    done
    [ -n "$fstests_src" ] || fail "give the fstests source: --fstests DIR|TARBALL"
fi
[ -e "$fstests_src" ] || fail "$fstests_src does not exist"
fstests_src=$(realpath "$fstests_src")
mkdir -p "$workdir"
workdir=$(realpath "$workdir")
case "$workdir/" in "$repo"/*) fail "--workdir must be outside the repository" ;; esac

step() { echo "==> $*" >&2; }

# --- packages: fstests' Debian build and run dependencies (README "Ubuntu or Debian") ---
pkgs=(acl attr automake bc dbench dump e2fsprogs fio gawk gcc indent libacl1-dev libaio-dev
      libcap-dev libgdbm-dev libgdbm-compat-dev libtool libtool-bin liburing-dev libuuid1 make
      psmisc python3 quota sed uuid-dev uuid-runtime xfsprogs xfslibs-dev sqlite3 fuse3 xz-utils)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    timeout 900 apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -qq "${missing[@]}" >/dev/null </dev/null \
        || fail "apt-get install ${missing[*]} failed"
fi

# --- build fstests in the work dir (never in the repository) ---
src="$workdir/fstests"
stamp="$src/.vhe-built"
want_stamp="$fstests_src $(stat -c %Y "$fstests_src")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ]; then
    step "building fstests from $fstests_src in $src"
    rm -rf "$src"
    mkdir -p "$src"
    if [ -d "$fstests_src" ]; then
        cp -a "$fstests_src/." "$src/"
    else
        tar -xaf "$fstests_src" -C "$src"
        # A `git archive` tarball has one top directory.
        top=$(find "$src" -mindepth 1 -maxdepth 1)
        if [ "$(echo "$top" | wc -l)" = 1 ] && [ -d "$top" ]; then
            mv "$top"/* "$top"/.[!.]* "$src/" 2>/dev/null || true
            rmdir "$top"
        fi
    fi
    (cd "$src" && nice timeout 3600 make -j"$(nproc)" >"$workdir/build.log" 2>&1) \
        || { tail -30 "$workdir/build.log" >&2; fail "building fstests failed (log: $workdir/build.log)"; }
    echo "$want_stamp" >"$stamp"
fi

# --- the daemon and the mount helper ---
if [ -z "$daemon" ]; then
    step "cargo build --release"
    (cd "$repo" && nice timeout 3600 cargo build --release -q) || fail "cargo build failed"
    daemon="$repo/target/release/vhost-ext4"
fi
daemon=$(realpath "$daemon")
[ -x "$daemon" ] || fail "$daemon is not executable"
logdir="$workdir/logs"
mkdir -p "$logdir"
fsck_log="$logdir/fsck-unclean.log"
cat >/sbin/mount.fuse.vhost-ext4 <<EOF
#!/bin/sh
# Installed by ci/xfstests.sh: the vhost-ext4 mount helper with this run's settings.
export VHE_DAEMON="\${VHE_DAEMON:-$daemon}"
export VHE_LOG_DIR="\${VHE_LOG_DIR:-$logdir}"
export VHE_FSCK_LOG="\${VHE_FSCK_LOG:-$fsck_log}"
exec "$repo/ci/mount.fuse.vhost-ext4" "\$@"
EOF
chmod 755 /sbin/mount.fuse.vhost-ext4
[ "$build_only" = 1 ] && { echo "fstests built in $src; helper installed"; exit 0; }

# --- users and groups some tests need ---
for u in fsgqa fsgqa2 123456-fsgqa; do
    id "$u" >/dev/null 2>&1 || useradd -m "$u" 2>/dev/null || true
done
getent group fsgqa >/dev/null || groupadd fsgqa 2>/dev/null || true

# --- images and mount points ---
test_img="$workdir/test.img"
scratch_img="$workdir/scratch.img"
test_mnt="$workdir/mnt/test"
scratch_mnt="$workdir/mnt/scratch"
for m in "$test_mnt" "$scratch_mnt"; do
    mountpoint -q "$m" && umount "$m"
    mkdir -p "$m"
done
# Let any daemon still flushing an image finish before it is replaced.
for img in "$test_img" "$scratch_img"; do
    [ -e "$img" ] && timeout 120 flock "$img" true
    rm -f "$img"
    truncate -s "$image_size" "$img"
    mke2fs -q -F -t ext4 "$img"
done
: >"$fsck_log"

cat >"$src/local.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.vhost-ext4
export TEST_DEV=$test_img
export TEST_DIR=$test_mnt
export SCRATCH_DEV=$scratch_img
export SCRATCH_MNT=$scratch_mnt
# subtype= (empty) makes the kernel type plain "fuse", which FSTYP=fuse expects.
export MOUNT_OPTIONS="-o subtype="
export TEST_FS_MOUNT_OPTS="-o subtype="
EOF

# --- run ---
results="$workdir/results"
rm -rf "$results"
mkdir -p "$results"
if [ -n "$tests" ]; then
    # shellcheck disable=SC2206
    selection=($tests)
else
    selection=(-g "$group")
fi
step "fstests: ${selection[*]} (per test ${test_timeout}s, in all ${total_timeout}s)"
start=$(date +%s)
set +e
(
    cd "$src" || exit 1
    export RESULT_BASE="$results"
    exec setsid timeout -k 30 "$total_timeout" ./check -R xunit "${selection[@]}"
) >"$workdir/check.out" 2>&1 &
check_pid=$!
# Watchdog: a test running longer than --test-timeout has its processes killed (check then records
# it as failed and goes on). Only descendants of our check run are touched.
descendants() {
    local p
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$p"
        descendants "$p"
    done
}
current="" since=$start
while kill -0 "$check_pid" 2>/dev/null; do
    sleep 5
    now_test=$(grep -oE '^[a-z0-9]+/[0-9]+' "$workdir/check.out" 2>/dev/null | tail -1 || true)
    if [ "$now_test" != "$current" ]; then
        current=$now_test since=$(date +%s)
    elif [ -n "$current" ] && [ $(($(date +%s) - since)) -gt "$test_timeout" ]; then
        echo "ci/xfstests.sh: $current ran over ${test_timeout}s: killing it" | tee -a "$workdir/check.out" >&2
        for p in $(descendants "$check_pid"); do
            if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "tests/$current"; then
                kill -KILL "$p" $(descendants "$p") 2>/dev/null
            fi
        done
        since=$(date +%s)
    fi
done
wait "$check_pid"
check_rc=$?
set -e
elapsed=$(($(date +%s) - start))
[ "$check_rc" = 124 ] && echo "ci/xfstests.sh: check ran over ${total_timeout}s and was stopped" >&2

# --- results ---
known="$repo/ci/xfstests-known-failures.txt"
tsv="$workdir/results.tsv"
python3 - "$results" "$known" "$tsv" <<'EOF'
import glob, os, sys, xml.etree.ElementTree as ET
results, known_path, tsv = sys.argv[1:4]
known = {}
if os.path.exists(known_path):
    for line in open(known_path):
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, why = line.partition(" ")
            known[name] = why.strip()
rows = []
for xml in glob.glob(os.path.join(results, "**", "result.xml"), recursive=True):
    for tc in ET.parse(xml).getroot().iter("testcase"):
        name, secs = tc.get("name"), tc.get("time", "")
        skip, failure = tc.find("skipped"), tc.find("failure")
        if skip is not None:
            rows.append((name, "notrun", secs, "notrun", skip.get("message", "")))
            continue
        if failure is None:
            rows.append((name, "pass", secs, "pass", ""))
            continue
        reason = failure.get("message", "")
        text = ""
        # The test's own files: NNN.out.bad, NNN.full, and per-run logs such as NNN.0.full.
        for f in glob.glob(os.path.join(results, "**", name + ".*"), recursive=True):
            if not f.endswith(".xml"):
                text += open(f, errors="replace").read()
        if name in known:
            cls, reason = "known", known[name]
        elif "Operation not supported" in text or "EOPNOTSUPP" in text:
            cls = "data-path"
        else:
            cls = "fail"
        rows.append((name, "fail", secs, cls, reason.replace("\t", " ").replace("\n", " ")[:300]))
rows.sort()
with open(tsv, "w") as out:
    out.write("test\tresult\tseconds\tclass\treason\n")
    for r in rows:
        out.write("\t".join(r) + "\n")
EOF
count() { awk -F'\t' -v c="$1" -v col="$2" 'NR > 1 && $col == c' "$tsv" | wc -l; }
n_pass=$(count pass 2) n_fail=$(count fail 2) n_notrun=$(count notrun 2)
n_dp=$(count data-path 4) n_known=$(count known 4) n_other=$(count fail 4)
n_unclean=$(grep -c . "$fsck_log" || true)

if [ "$n_known" -gt 0 ]; then
    echo "known failures (machine-caused, from ci/xfstests-known-failures.txt):"
    awk -F'\t' 'NR > 1 && $4 == "known" { print "  " $1 "\t" $5 }' "$tsv"
fi
if [ "$n_dp" -gt 0 ]; then
    echo "failures expected until the data path lands (EOPNOTSUPP on write/fallocate):"
    awk -F'\t' 'NR > 1 && $4 == "data-path" { printf "  %s", $1 } END { print "" }' "$tsv"
fi
if [ "$n_other" -gt 0 ]; then
    echo "other failures:"
    awk -F'\t' 'NR > 1 && $4 == "fail" { print "  " $1 "\t" $5 }' "$tsv"
fi
if [ "$n_unclean" -gt 0 ]; then
    echo "images e2fsck found unclean before a mount ($fsck_log):"
    sed 's/^/  /' "$fsck_log"
fi
echo "xfstests ($mode): $((n_pass + n_fail)) run, $n_pass passed, $n_fail failed ($n_dp data path, $n_known known, $n_other other), $n_notrun not run; unclean images: $n_unclean; ${elapsed}s; results: $tsv"
[ "$n_other" = 0 ] && [ "$n_unclean" = 0 ]
