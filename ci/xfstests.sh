#!/usr/bin/env bash
# Run fstests (xfstests) against vhost-ext4.
#
# Host mode (the default): fstests runs with FSTYP=fuse and mounts two ext4 image files (TEST and
# SCRATCH) through the mount helper `mount.fuse.vhost-ext4`, which this script installs in /sbin.
# The helper runs `e2fsck -fn` on the image before every mount (fstests cannot check a FUSE file
# system itself) and records each unclean image in a log; the summary reports that count.
#
# Guest mode (--mode guest): fstests runs with FSTYP=virtiofs inside a QEMU guest (vm-images/).
# Two `vhost-ext4 fs` daemons serve the TEST and SCRATCH images as the virtiofs tags vhetest and
# vhescratch. The guest mounts the host's root read-only over 9p and chroots into it, so it runs
# the host's programs and the fstests build of the work dir, which is shared writable (results
# land there). After the run both images get `e2fsck -fn` on the host. The default selection is
# the guest list below (--group generic/quick runs the whole group).
#
# Usage: sudo bash ci/xfstests.sh [--fstests DIR|TARBALL] [--workdir DIR] [--tests "generic/001 ..."]
#            [--group GROUP] [--image-size SIZE] [--mkfs-options "OPTS"] [--test-timeout SECS]
#            [--timeout SECS] [--daemon PATH] [--mode host|guest] [--smp N] [--mem SIZE]
#            [--build-only]
#
# --mkfs-options passes more options to mke2fs for both images (e.g. "-I 256 -O inline_data").
#
# Output (in the work dir): results.tsv (test, result, seconds, class, reason), the fstests results
# directory, the daemons' logs, and one summary line on stdout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

fstests_src=""
workdir=/tmp/vhe-xfstests
tests=""
group="generic/quick"
image_size=2G
mkfs_options=""
test_timeout=600
total_timeout=14400
daemon=""
mode=host
build_only=0
group_set=0
smp=2
mem=2G

# Guest mode's default selection: generic/quick tests that pass through the host mount, spread
# over file data (buffered, O_DIRECT, sparse, append), fsx and fsstress, fallocate, rename, xattrs,
# POSIX ACLs, mmap and a few namespace and attribute tests.
guest_tests="
    generic/002 generic/005 generic/008 generic/011 generic/013 generic/014 generic/023 generic/024
    generic/025 generic/029 generic/030 generic/035 generic/053 generic/062 generic/071 generic/075
    generic/078 generic/080 generic/086 generic/087 generic/088 generic/097 generic/098 generic/099
    generic/103 generic/105 generic/123 generic/124 generic/126 generic/184 generic/213 generic/215
    generic/221 generic/228 generic/236 generic/237 generic/246 generic/247 generic/248 generic/257
    generic/263 generic/314 generic/319 generic/375 generic/377 generic/403 generic/469"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
fail() { echo "ci/xfstests.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --fstests) fstests_src=$2; shift ;;
        --workdir) workdir=$2; shift ;;
        --tests) tests=$2; shift ;;
        --group) group=$2; group_set=1; shift ;;
        --smp) smp=$2; shift ;;
        --mem) mem=$2; shift ;;
        --image-size) image_size=$2; shift ;;
        --mkfs-options) mkfs_options=$2; shift ;;
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

case "$mode" in
    host)
        [ "$(id -u)" = 0 ] || fail "run as root (fstests mounts, and installs a mount helper in /sbin)"
        [ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
        [ -c /dev/fuse ] || fail "/dev/fuse is missing"
        ;;
    guest)
        # Root: the guest runs fstests as root in a chroot of the host's root, read over 9p.
        [ "$(id -u)" = 0 ] || fail "run as root (the guest's fstests run as root on the host's files)"
        command -v qemu-system-x86_64 >/dev/null \
            || fail "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
        qemu_devs=$(qemu-system-x86_64 -device help 2>/dev/null || true)
        grep -q '"virtio-9p-pci"' <<<"$qemu_devs" \
            || fail "this QEMU has no virtio-9p-pci device (9p sharing of the host root)"
        grep -q '"vhost-user-fs-pci"' <<<"$qemu_devs" || fail "this QEMU has no vhost-user-fs-pci device"
        [ -n "$tests" ] || [ "$group_set" = 1 ] || tests=$guest_tests
        ;;
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
    daemon="${CARGO_TARGET_DIR:-$repo/target}/release/vhost-ext4"
fi
daemon=$(realpath "$daemon")
[ -x "$daemon" ] || fail "$daemon is not executable"
logdir="$workdir/logs"
mkdir -p "$logdir"
fsck_log="$logdir/fsck-unclean.log"
if [ "$mode" = guest ]; then
    [ "$build_only" = 1 ] && { echo "fstests built in $src"; exit 0; }
else
# mount(8) finds the helper by the file system type, so there is one /sbin/mount.fuse.vhost-ext4
# for every run on this machine. It holds no setting a run depends on: each run exports its own
# helper script, daemon, log dir and e2fsck log to fstests (local.config below) and mount(8)
# passes them on, so runs from several checkouts at once each mount with their own build. The
# defaults (this run's) serve only mounts made outside a run. The file is replaced atomically.
stub=$(mktemp /sbin/.mount.fuse.vhost-ext4.XXXXXX)
cat >"$stub" <<EOF
#!/bin/sh
# Installed by ci/xfstests.sh: the vhost-ext4 mount helper. A run of ci/xfstests.sh exports the
# VHE_* settings below to fstests; the defaults are those of the last run that installed this file.
export VHE_DAEMON="\${VHE_DAEMON:-$daemon}"
export VHE_LOG_DIR="\${VHE_LOG_DIR:-$logdir}"
export VHE_FSCK_LOG="\${VHE_FSCK_LOG:-$fsck_log}"
exec "\${VHE_MOUNT_HELPER:-$repo/ci/mount.fuse.vhost-ext4}" "\$@"
EOF
chmod 755 "$stub"
mv -f "$stub" /sbin/mount.fuse.vhost-ext4
[ "$build_only" = 1 ] && { echo "fstests built in $src; helper installed"; exit 0; }
fi

# --- users and groups some tests need ---
for u in fsgqa fsgqa2 123456-fsgqa; do
    id "$u" >/dev/null 2>&1 || useradd -m "$u" 2>/dev/null || true
done
getent group fsgqa >/dev/null || groupadd fsgqa 2>/dev/null || true

# --- images ---
test_img="$workdir/test.img"
scratch_img="$workdir/scratch.img"
test_mnt="$workdir/mnt/test"
scratch_mnt="$workdir/mnt/scratch"
if [ "$mode" = host ]; then
    for m in "$test_mnt" "$scratch_mnt"; do
        mountpoint -q "$m" && umount "$m"
        mkdir -p "$m"
    done
fi
# Let any daemon still flushing an image finish before it is replaced.
for img in "$test_img" "$scratch_img"; do
    [ -e "$img" ] && timeout 120 flock "$img" true
    rm -f "$img"
    truncate -s "$image_size" "$img"
    # shellcheck disable=SC2086
    mke2fs -q -F -t ext4 $mkfs_options "$img"
done
: >"$fsck_log"

results="$workdir/results"
rm -rf "$results"
mkdir -p "$results"
if [ -n "$tests" ]; then
    # shellcheck disable=SC2206
    selection=($tests)
else
    selection=(-g "$group")
fi

if [ "$mode" = host ]; then
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
# This run's mount helper settings (see /sbin/mount.fuse.vhost-ext4 above).
export VHE_MOUNT_HELPER=$repo/ci/mount.fuse.vhost-ext4
export VHE_DAEMON=$daemon
export VHE_LOG_DIR=$logdir
export VHE_FSCK_LOG=$fsck_log
EOF
    step "fstests: ${selection[*]} (per test ${test_timeout}s, in all ${total_timeout}s)"
    start=$(date +%s)
    set +e
    bash "$repo/ci/xfstests-check.sh" "$src" "$results" "$workdir/check.out" "$test_timeout" \
        "$total_timeout" "${selection[@]}"
    check_rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
else
    # The mount points live in the guest's /run (a tmpfs), outside the shared work dir.
    guest_test_mnt=/run/vhe-fstests/test
    guest_scratch_mnt=/run/vhe-fstests/scratch
    cat >"$src/local.config" <<EOF
export FSTYP=virtiofs
export TEST_DEV=vhetest
export TEST_DIR=$guest_test_mnt
export SCRATCH_DEV=vhescratch
export SCRATCH_MNT=$guest_scratch_mnt
EOF
    # The guest command runs in the initramfs's busybox sh. It mounts the host's root (read-only
    # and cached: nothing under it changes during the run) and the work dir (writable, not cached,
    # mmap-able) over 9p, the kernel's file systems and tmpfs on /tmp, /run and /var/tmp, then runs
    # fstests in the chroot. Everything in it was checked for characters that need quoting.
    for v in "$repo" "$src" "$workdir" "${selection[@]}"; do
        case "$v" in *[!A-Za-z0-9_./+-]*) fail "guest mode needs plain paths and test names (letters, digits, _ . / + -): '$v'" ;; esac
    done
    guest_cmd=$(cat <<EOF
R=/host
p9='trans=virtio,version=9p2000.L,msize=524288'
fail() { echo "VHE-FSTESTS: \$*"; exit 120; }
mkdir -p \$R
mount -t 9p -o "\$p9,ro,cache=loose" hostroot \$R || fail "cannot mount the host root over 9p"
mount -t proc proc \$R/proc && mount -t sysfs sysfs \$R/sys && mount -t devtmpfs devtmpfs \$R/dev \\
    && mount -t devpts devpts \$R/dev/pts && mount -t tmpfs tmpfs \$R/dev/shm \\
    && mount -t tmpfs tmpfs \$R/tmp && mount -t tmpfs tmpfs \$R/run && mount -t tmpfs tmpfs \$R/var/tmp \\
    || fail "cannot mount proc, sys, dev or a tmpfs in the chroot"
mkdir -p \$R$workdir \$R$guest_test_mnt \$R$guest_scratch_mnt 2>/dev/null
mount -t 9p -o "\$p9,cache=mmap" vhework \$R$workdir || fail "cannot mount the work dir over 9p"
echo "VHE-FSTESTS: chroot ready after \$(cut -d' ' -f1 /proc/uptime)s"
chroot \$R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \\
    TERM=dumb LANG=C.UTF-8 /bin/bash $repo/ci/xfstests-check.sh $src $results $workdir/check.out \\
    $test_timeout $total_timeout ${selection[*]}
rc=\$?
echo "VHE-FSTESTS: check exited with \$rc after \$(cut -d' ' -f1 /proc/uptime)s"
for m in $guest_test_mnt $guest_scratch_mnt; do
    grep -q " \$R\$m " /proc/mounts && { umount \$R\$m || echo "VHE-FSTESTS: umount \$m failed"; }
done
sync
umount \$R$workdir || echo "VHE-FSTESTS: umount of the work dir failed"
exit \$rc
EOF
)
    printf '%s\n' "$guest_cmd" >"$workdir/guest-cmd.sh"
    step "fstests in a guest: ${selection[*]} (per test ${test_timeout}s, in all ${total_timeout}s)"
    start=$(date +%s)
    set +e
    bash "$repo/vm-images/run-guest.sh" --mode none --quiet --keep --daemon "$daemon" \
        --fs "vhetest=$test_img" --fs "vhescratch=$scratch_img" \
        --share "hostroot=/:ro" --share "vhework=$workdir" \
        --smp "$smp" --mem "$mem" --timeout $((total_timeout + 300)) \
        --cmd "$guest_cmd" 2>"$workdir/run-guest.log"
    check_rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
    run_dir=$(sed -n 's/^run-guest: run directory kept: //p' "$workdir/run-guest.log" | tail -n 1)
    if [ -n "$run_dir" ] && [ -d "$run_dir" ]; then
        rm -rf "$logdir/guest"
        mv "$run_dir" "$logdir/guest"
        rm -f "$logdir/guest/initrd" "$logdir/guest/extra.cpio"
    fi
    if [ "$check_rc" != 0 ] && [ "$check_rc" != 1 ]; then
        echo "ci/xfstests.sh: the guest run ended with status $check_rc (logs: $workdir/run-guest.log, $logdir/guest/)" >&2
        tail -n 20 "$workdir/run-guest.log" >&2
    fi
    # fstests cannot check virtiofs: check both images here, once their daemons have exited.
    for img in "$test_img" "$scratch_img"; do
        name=$(basename "$img" .img)
        timeout 120 flock "$img" true || true
        if ! timeout 600 e2fsck -fn "$img" >"$logdir/e2fsck-$name.log" 2>&1; then
            echo "$img: e2fsck -fn after the guest run found errors ($logdir/e2fsck-$name.log)" >>"$fsck_log"
        fi
    done
fi

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
    echo "images e2fsck -fn found unclean ($fsck_log):"
    sed 's/^/  /' "$fsck_log"
fi
echo "xfstests ($mode): $((n_pass + n_fail)) run, $n_pass passed, $n_fail failed ($n_dp data path, $n_known known, $n_other other), $n_notrun not run; unclean images: $n_unclean; ${elapsed}s; results: $tsv"
[ "$n_other" = 0 ] && [ "$n_unclean" = 0 ]
