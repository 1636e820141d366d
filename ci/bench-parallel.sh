#!/usr/bin/env bash
# Parallel writers benchmark: WRITERS processes each write their own file through our FUSE mount
# at once (MIB_EACH MiB in WRITE_KIB-sized writes, 64 by default, fsync every 4 MiB, so
# writeback's allocation and I/O completion of the files overlap), on a fresh image each run. Prints the seconds of the whole
# phase and MiB/s. Give several daemon binaries (e.g. a build of another branch) to compare them
# in one run; e2fsck -fn checks every image afterwards.
# Usage: sudo [WRITE_KIB=N] bash ci/bench-parallel.sh [WRITERS] [MIB_EACH] [BINARY...]
set -euo pipefail
WRITERS=${1:-4}
MIB=${2:-256}
WRITE_KIB=${WRITE_KIB:-64}
shift $(($# > 2 ? 2 : $#))
cd "$(dirname "$0")/.."
for tool in mke2fs e2fsck python3; do
    command -v "$tool" >/dev/null || { echo "bench-parallel: $tool is required" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-parallel: run as root (mounts)" >&2; exit 1; }
if [ $# -eq 0 ]; then
    cargo build --release --quiet
    set -- "${CARGO_TARGET_DIR:-$PWD/target}/release/vhost-ext4"
fi
WORK=$(mktemp -d /tmp/vhe-bench-parallel.XXXXXX)
cleanup() {
    mountpoint -q "$WORK/mnt" && umount "$WORK/mnt" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/writers.py" <<'PY'
import os, sys, time
root, writers, mib, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
chunk = os.urandom(kib << 10)
per_sync = max(1, 4096 // kib)
def writer(k):
    fd = os.open(f"{root}/w{k}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for i in range(mib * 1024 // kib):
        os.write(fd, chunk)
        if i % per_sync == per_sync - 1:
            os.fsync(fd)
    os.fsync(fd)
    os.close(fd)
    os._exit(0)
t = time.monotonic()
pids = []
for k in range(writers):
    pid = os.fork()
    if pid == 0:
        writer(k)
    pids.append(pid)
ok = all(os.waitpid(p, 0)[1] == 0 for p in pids)
s = time.monotonic() - t
print(f"{s:.3f} {writers * mib / s:.1f}" if ok else "failed")
PY

mkdir -p "$WORK/mnt"
for bin in "$@"; do
    img="$WORK/img"
    mke2fs -q -F -t ext4 "$img" 4G 2>/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    ( "$bin" mount "$img" "$WORK/mnt" --cache-size 512M & )
    for _ in $(seq 100); do mountpoint -q "$WORK/mnt" && break; sleep 0.1; done
    mountpoint -q "$WORK/mnt" || { echo "bench-parallel: $bin did not mount" >&2; exit 1; }
    read -r secs rate < <(timeout 1800 python3 "$WORK/writers.py" "$WORK/mnt" "$WRITERS" "$MIB" "$WRITE_KIB")
    for _ in 1 2 3 4 5 6 7 8 9 10; do umount "$WORK/mnt" 2>/dev/null && break; sleep 0.5; done
    sleep 1
    check=clean
    e2fsck -fn "$img" >/dev/null 2>&1 || check="e2fsck -fn found problems"
    echo "$bin: $WRITERS writers x $MIB MiB in $WRITE_KIB KiB writes: $secs s, $rate MiB/s ($check)"
    rm -f "$img"
done
