#!/usr/bin/env bash
# Data-path benchmark (not a test): large sequential WRITE and READ, 1 MiB per request, through
#  * the vhost-user-fs backend, driven by the test frontend (tests/vhost_frontend.rs,
#    bench_virtio_data_path) with 4 requests in flight: new data, overwrite, cached read x2;
#  * the vhost-user-blk backend the same way (OUT and IN on a raw image);
#  * the /dev/fuse mount with dd (write + fsync, then a read served from our page cache after
#    the kernel's own cache is dropped).
# Prints MB/s and the daemon's CPU seconds per phase (CPU time is steadier than wall time on a
# busy machine). Give a second binary (an older build) to time both, one after the other, ROUNDS
# times.
#
# Usage: bash ci/bench-virtio.sh [OTHER_BINARY] [MB] [ROUNDS]   (MB default 512, ROUNDS 3)
# The /dev/fuse part needs root and /dev/fuse (it is skipped with a message otherwise).
set -euo pipefail
OTHER=${1:-}
MB=${2:-512}
ROUNDS=${3:-3}
cd "$(dirname "$0")/.."
fail() { echo "bench-virtio: $*" >&2; exit 1; }
command -v mke2fs >/dev/null || fail "mke2fs is required (apt-get install e2fsprogs)"

timeout 1200 cargo build --release --quiet
timeout 1200 cargo test --release --quiet --test vhost_frontend --no-run
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/vhost-ext4
[ -z "$OTHER" ] || [ -x "$OTHER" ] || fail "$OTHER is not an executable"

WORK=$(mktemp -d /tmp/vhe-bench-virtio.XXXXXX)
MNT=$WORK/mnt
DAEMON_PID=
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
    if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$MNT" "$WORK/tree"

virtio() {
    if ! VHOST_EXT4_BENCH_BIN=$1 VHOST_EXT4_BENCH_MB=$MB timeout 900 \
        cargo test --release --quiet --test vhost_frontend bench_virtio_data_path -- \
        --ignored --nocapture >"$WORK/virtio.log" 2>&1; then
        tail -30 "$WORK/virtio.log" >&2
        fail "the virtio benchmark failed with $1"
    fi
    grep '^bench-virtio' "$WORK/virtio.log"
}

cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

devfuse() {
    if [ "$(id -u)" != 0 ] || [ ! -c /dev/fuse ]; then
        echo "bench-virtio fuse: skipped (needs root and /dev/fuse)"
        return
    fi
    timeout 120 mke2fs -q -F -t ext4 -b 4096 -d "$WORK/tree" "$WORK/img" $((MB * 2 + 256))M
    "$1" mount "$WORK/img" "$MNT" --cache-size 4G 2>"$WORK/daemon.log" &
    DAEMON_PID=$!
    local deadline=$((SECONDS + 30))
    until mountpoint -q "$MNT"; do
        ((SECONDS < deadline)) || fail "the mount did not come up: $(cat "$WORK/daemon.log")"
        sleep 0.05
    done
    local c0 t0 t1 c1 t2 c2 tw
    c0=$(cpu_of "$DAEMON_PID")
    t0=$(date +%s.%N)
    timeout 600 dd if=/dev/zero of="$MNT/f" bs=1M count="$MB" conv=fsync status=none
    t1=$(date +%s.%N)
    tw=$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')
    c1=$(cpu_of "$DAEMON_PID")
    sync
    echo 3 >/proc/sys/vm/drop_caches
    local c1b
    c1b=$(cpu_of "$DAEMON_PID")
    t1=$(date +%s.%N)
    timeout 600 dd if="$MNT/f" of=/dev/null bs=1M status=none
    t2=$(date +%s.%N)
    c2=$(cpu_of "$DAEMON_PID")
    awk -v mb="$MB" -v t1="$t1" -v t2="$t2" -v c0="$c0" -v c1="$c1" -v c1b="$c1b" \
        -v c2="$c2" -v tw="$tw" 'BEGIN {
        printf "bench-virtio fuse: write+fsync %d MiB (dd, 1 MiB) %.0f MB/s (%.2f s daemon CPU); read from our cache %.0f MB/s (%.2f s)\n",
            mb, mb / tw, c1 - c0, mb / (t2 - t1), c2 - c1b }'
    timeout 60 umount "$MNT" || fail "umount failed"
    timeout 60 tail --pid="$DAEMON_PID" -f /dev/null || fail "the daemon did not exit after umount"
    wait "$DAEMON_PID" || fail "the daemon failed: $(cat "$WORK/daemon.log")"
    DAEMON_PID=
    rm -f "$WORK/img"
}

for ((r = 1; r <= ROUNDS; r++)); do
    echo "== round $r: $BIN"
    virtio "$BIN"
    devfuse "$BIN"
    if [ -n "$OTHER" ]; then
        echo "== round $r: $OTHER"
        virtio "$OTHER"
        devfuse "$OTHER"
    fi
done
