#!/usr/bin/env bash
# Read benchmark (not a test): one ext4 image holding a 1 GiB file and a 20,000-file tree, read
# through vhost-ext4's FUSE mount, fuse2fs, and the kernel's ext4 on a loop device. Every phase
# starts from a fresh mount with the page cache dropped. Prints seconds, MB/s and the ratios.
#
# Usage: sudo bash ci/bench-read.sh [FILES]   (FILES in the tree, default 20000)
# Needs root, /dev/fuse, loop devices, e2fsprogs and fuse2fs (bash .ci/run installs them).
set -euo pipefail
FILES=${1:-20000}
cd "$(dirname "$0")/.."
fail() { echo "bench-read: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (mounts, drop_caches)"
[ -c /dev/fuse ] || fail "/dev/fuse is missing"
for tool in mke2fs fuse2fs mountpoint timeout; do
    command -v "$tool" >/dev/null || fail "$tool is required (apt-get install e2fsprogs fuse2fs util-linux coreutils)"
done

timeout 1200 cargo build --release --quiet
BIN=$PWD/target/release/vhost-ext4
WORK=$(mktemp -d /tmp/vhe-bench-read.XXXXXX)
MNT=$WORK/mnt
DAEMON_PID=
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$MNT" "$WORK/src/tree"

echo "bench-read: building the image (1 GiB file, $FILES small files)..."
timeout 300 head -c 1G /dev/urandom > "$WORK/src/big"
# 100 files per directory keeps mke2fs -d fast (its directory inserts are linear).
for ((i = 0; i < FILES; i++)); do
    d=$WORK/src/tree/d$((i / 100))
    if ((i % 100 == 0)); then mkdir -p "$d"; fi
    printf 'file %d %*s\n' "$i" $((i % 3000)) x > "$d/f$i"
done
timeout 600 mke2fs -q -F -t ext4 -b 4096 -N $((FILES + 10000)) -d "$WORK/src" "$WORK/bench.img" 2G
rm -rf "$WORK/src"
IMG=$WORK/bench.img

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

wait_mounted() {
    local deadline=$((SECONDS + 30))
    until mountpoint -q "$MNT"; do
        ((SECONDS < deadline)) || fail "$1 did not mount within 30 s"
        sleep 0.05
    done
}

mount_as() {
    case $1 in
        vhost-ext4)
            "$BIN" mount "$IMG" "$MNT" --read-only 2>"$WORK/daemon.log" &
            DAEMON_PID=$!
            wait_mounted "$1"
            ;;
        fuse2fs)
            # fuse2fs daemonizes itself once mounted.
            timeout 60 fuse2fs "$IMG" "$MNT" -o ro,fakeroot >"$WORK/fuse2fs.log" 2>&1
            wait_mounted "$1"
            ;;
        kernel)
            timeout 60 mount -t ext4 -o loop,ro "$IMG" "$MNT"
            ;;
    esac
}

unmount() {
    timeout 60 umount "$MNT" || fail "umount $MNT ($1) failed"
    if [ -n "$DAEMON_PID" ]; then
        timeout 60 tail --pid="$DAEMON_PID" -f /dev/null || fail "vhost-ext4 did not exit after umount"
        wait "$DAEMON_PID" || fail "vhost-ext4 exited with an error: $(cat "$WORK/daemon.log")"
        DAEMON_PID=
    fi
    # fuse2fs exits by itself after umount; give it a moment to release the image.
    sleep 0.3
}

# Prints the seconds a shell command took (its output discarded), bounded by a timeout.
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    timeout 900 bash -c "$1" >/dev/null || fail "timed out or failed: $1"
    t1=$(date +%s.%N)
    awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }'
}
declare -A READ WALK
for who in vhost-ext4 fuse2fs kernel; do
    drop_caches
    mount_as "$who"
    READ[$who]=$(timed "cat '$MNT/big'")
    unmount "$who"
    drop_caches
    mount_as "$who"
    n=$(find "$MNT" -type f | wc -l)
    [ "$n" = $((FILES + 1)) ] || fail "$who shows $n files, expected $((FILES + 1))"
    unmount "$who"
    drop_caches
    mount_as "$who"
    WALK[$who]=$(timed "find '$MNT' -printf '%s %m\\n' | wc -l")
    unmount "$who"
    echo "bench-read: $who done"
done

echo
awk -v r1="${READ[vhost-ext4]}" -v r2="${READ[fuse2fs]}" -v r3="${READ[kernel]}" \
    -v w1="${WALK[vhost-ext4]}" -v w2="${WALK[fuse2fs]}" -v w3="${WALK[kernel]}" -v files="$FILES" '
BEGIN {
    mb = 1024
    printf "%-12s %14s %10s %22s\n", "", "read 1 GiB (s)", "MB/s", "walk+stat " files " (s)"
    printf "%-12s %14.2f %10.0f %22.2f\n", "vhost-ext4", r1, mb / r1, w1
    printf "%-12s %14.2f %10.0f %22.2f\n", "fuse2fs", r2, mb / r2, w2
    printf "%-12s %14.2f %10.0f %22.2f\n", "kernel ext4", r3, mb / r3, w3
    printf "\nvhost-ext4 time / fuse2fs time: read %.2f, walk %.2f\n", r1 / r2, w1 / w2
    printf "vhost-ext4 time / kernel time:  read %.2f, walk %.2f\n", r1 / r3, w1 / w3
}'
