#!/usr/bin/env bash
# Memory-pressure benchmark: `vhost-ext4 mount` with a page cache larger than the memory its
# cgroup may use. The daemon runs in a fresh memory cgroup (v1 or v2) limited to LIMIT, with
# --cache-size CACHE; a 1 GiB file is written (1 MiB writes, fsync), then read twice (the host's
# caches dropped before the first read; what our cache still holds is served from it).
# Our page cache is shared memory the kernel cannot reclaim without swap, so a daemon that does
# not give cache back when its cgroup runs short is killed by the cgroup's OOM killer. Prints
# per binary: seconds per phase, the cgroup's peak usage, OOM kills, and whether the daemon
# survived. Compare a build (OTHER_BINARY) against this one in the same run.
# Usage: sudo bash ci/bench-pressure.sh [LIMIT] [CACHE] [OTHER_BINARY...]
set -euo pipefail
LIMIT=${1:-320M}
CACHE=${2:-1G}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-pressure: run as root (cgroups, mounts)" >&2; exit 1; }
command -v mke2fs >/dev/null || { echo "bench-pressure: mke2fs (e2fsprogs) is required" >&2; exit 1; }
cargo build --release --quiet
BINS=("${CARGO_TARGET_DIR:-$PWD/target}/release/vhost-ext4" "$@")
WORK=$(mktemp -d /tmp/vhe-bench-pressure.XXXXXX)

# Our own memory cgroup, and where a child of it goes.
if v1=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup) && [ -n "$v1" ]; then
    parent=/sys/fs/cgroup/memory${v1%/}
    limit_file=memory.limit_in_bytes peak_file=memory.max_usage_in_bytes
else
    parent=/sys/fs/cgroup$(awk -F: '$1 == 0 {print $3}' /proc/self/cgroup)
    parent=${parent%/}
    limit_file=memory.max peak_file=memory.peak
    grep -qw memory "$parent/cgroup.subtree_control" 2>/dev/null || {
        echo "bench-pressure: the memory controller is not enabled for children of $parent (cgroup v2 subtree_control)" >&2
        exit 1
    }
fi
[ -d "$parent" ] || { echo "bench-pressure: no memory cgroup found (looked at $parent)" >&2; exit 1; }
CG=$parent/vhe-bench-$$

daemon_pid=""
cleanup() {
    mountpoint -q "$WORK/mnt" && umount -l "$WORK/mnt" 2>/dev/null || true
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
    sleep 0.5
    [ -d "$CG" ] && rmdir "$CG" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

to_bytes() { python3 -c 'import sys; s=sys.argv[1].upper(); u={"K":1<<10,"M":1<<20,"G":1<<30}; print(int(s[:-1])*u[s[-1]] if s[-1] in u else int(s))' "$1"; }
oom_kills() {
    if [ -f "$CG/memory.oom_control" ]; then awk '$1 == "oom_kill" {print $2}' "$CG/memory.oom_control"
    else awk '$1 == "oom_kill" {print $2}' "$CG/memory.events"; fi
}

printf '%-40s %9s %9s %9s %9s %5s %s\n' binary write_s read1_s read2_s peak_MiB ooms daemon
for bin in "${BINS[@]}"; do
    rm -f "$WORK/img"
    mke2fs -q -F -t ext4 "$WORK/img" 3G
    mkdir -p "$CG" "$WORK/mnt"
    # One write(2) of the number (a cgroup file parses each write on its own).
    limit_bytes=$(to_bytes "$LIMIT")
    echo "$limit_bytes" > "$CG/$limit_file"
    # The daemon starts inside the cgroup (a shell moves itself in, then execs it).
    sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$CG" \
        "$bin" mount "$WORK/img" "$WORK/mnt" --cache-size "$CACHE" --log-level info 2> "$WORK/daemon.log" &
    daemon_pid=$!
    for _ in $(seq 100); do mountpoint -q "$WORK/mnt" && break; sleep 0.1; done
    mountpoint -q "$WORK/mnt" || { echo "bench-pressure: $bin did not mount"; cat "$WORK/daemon.log"; exit 1; }
    phase() { # command... → seconds, or "failed"
        local t0 t1
        t0=$(date +%s.%N)
        if timeout 300 "$@" >/dev/null 2>&1; then t1=$(date +%s.%N); python3 -c "print(f'{$t1-$t0:.2f}')"
        else echo failed; fi
    }
    w=$(phase dd if=/dev/zero of="$WORK/mnt/big" bs=1M count=1024 conv=fsync)
    sync; echo 3 > /proc/sys/vm/drop_caches
    r1=$(phase cat "$WORK/mnt/big")
    r2=$(phase cat "$WORK/mnt/big")
    peak=$(( $(cat "$CG/$peak_file") >> 20 ))
    ooms=$(oom_kills); ooms=${ooms:-0}
    if kill -0 "$daemon_pid" 2>/dev/null; then state=alive; else state=killed; fi
    umount -l "$WORK/mnt" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
    printf '%-40s %9s %9s %9s %9s %5s %s\n' "$(basename "$(dirname "$(dirname "$bin")")")/$(basename "$bin")" "$w" "$r1" "$r2" "$peak" "$ooms" "$state"
    grep -m1 "memory is short" "$WORK/daemon.log" | sed 's/^/    log: /' || true
    sleep 0.5
    rmdir "$CG"
done
echo "cgroup limit $LIMIT, --cache-size $CACHE"
