#!/usr/bin/env bash
# Data benchmark: our FUSE mount vs fuse2fs vs the kernel's ext4 on a loop device, in one run, each
# on a fresh image of the same layout (4 GiB by default, ext4 with a jbd2 journal; fuse2fs writes
# it without journaling its data path). Phases, each from a cold page cache:
#   seqwrite   1 GiB written in 1 MiB writes, then fsync
#   bigwrite   4 GiB written, then sync (dirty throttling; our peak RSS is sampled here)
#   randwrite  20,000 random 4 KiB overwrites of a 1 GiB file, then fsync
#   smallfiles 20,000 files of 4 KiB created, written, closed, then sync
#   coldread   the 1 GiB file read after dropping caches;  reread: read again (cached)
# Our mount runs twice: with the image opened O_DIRECT (`--image-io direct`, the default) and with
# buffered image I/O (`--image-io buffered`). Prints seconds per phase, ours/fuse2fs and
# ours/kernel for both modes (below 1: we are faster), our daemon's peak RSS (anon + shmem) during
# bigwrite with --cache-size (default 512M), and the peak of the image file's pages in the host's
# page cache (fincore) and of the host's Dirty memory during bigwrite. e2fsck -fn checks every
# image afterwards.
# Usage: sudo bash ci/bench-write.sh [IMAGE_SIZE_GIB] [CACHE_SIZE] [BIG_GIB]
set -euo pipefail
SIZE_G=${1:-6}
CACHE=${2:-512M}
BIG_G=${3:-4}
cd "$(dirname "$0")/.."
for tool in mke2fs e2fsck fuse2fs python3 fincore; do
    command -v "$tool" >/dev/null || { echo "bench-write: $tool is required" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-write: run as root (mounts)" >&2; exit 1; }
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/vhost-ext4
WORK=$(mktemp -d /tmp/vhe-bench-write.XXXXXX)
cleanup() {
    for m in "$WORK"/mnt-*; do mountpoint -q "$m" && umount "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/workload.py" <<'PY'
import os, sys, time, random
root, big_g, phase_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
MiB = 1 << 20
buf = os.urandom(MiB)
def timed(fn):
    t = time.monotonic(); fn(); print(f"{phase_name} {time.monotonic() - t:.3f}", flush=True)
def write_file(path, mib, sync):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for _ in range(mib):
        os.write(fd, buf)
    if sync == "fsync":
        os.fsync(fd)
    os.close(fd)
    if sync == "sync":
        os.sync()
def seqwrite(): write_file(f"{root}/seq", 1024, "fsync")
def bigwrite(): write_file(f"{root}/big", big_g * 1024, "sync")
def randwrite():
    rnd = random.Random(7)
    fd = os.open(f"{root}/seq", os.O_WRONLY)
    page = buf[:4096]
    for _ in range(20000):
        os.pwrite(fd, page, rnd.randrange(0, 1024 * 256) * 4096)
    os.fsync(fd)
    os.close(fd)
def smallfiles():
    os.mkdir(f"{root}/small")
    page = buf[:4096]
    for i in range(20000):
        fd = os.open(f"{root}/small/f{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, page)
        os.close(fd)
    os.sync()
def read_all():
    fd = os.open(f"{root}/seq", os.O_RDONLY)
    while os.read(fd, MiB):
        pass
    os.close(fd)
timed({"seqwrite": seqwrite, "bigwrite": bigwrite, "randwrite": randwrite,
       "smallfiles": smallfiles, "coldread": read_all, "reread": read_all}[phase_name])
PY

# Peak RssAnon + RssShmem of a process, sampled every 0.1 s until the file $2 appears.
sample_rss() {
    local pid=$1 stop=$2 peak=0 v
    while [ ! -e "$stop" ]; do
        v=$(awk '/^RssAnon|^RssShmem/ {s += $2} END {print s + 0}' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.1
    done
    echo "$peak"
}

# Peak of the image file's pages in the host's page cache (fincore) and of the host's Dirty
# memory, in KiB, sampled every 0.1 s until the file $2 appears.
sample_host_cache() {
    local img=$1 stop=$2 peak=0 dpeak=0 c d
    while [ ! -e "$stop" ]; do
        c=$(fincore --bytes --noheadings --output RES "$img" 2>/dev/null || echo 0)
        c=$((c / 1024))
        d=$(awk '/^Dirty:/ {print $2}' /proc/meminfo)
        [ "$c" -gt "$peak" ] && peak=$c
        [ "$d" -gt "$dpeak" ] && dpeak=$d
        sleep 0.1
    done
    echo "$peak $dpeak"
}

# Unmount, retrying while the last closes still hold it busy.
unmount() {
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        umount "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    umount "$1"
}

mount_it() { # name img mnt
    case $1 in
        ours) ( "$BIN" mount "$2" "$3" --cache-size "$CACHE" --image-io direct & ) ;;
        ours-buffered) ( "$BIN" mount "$2" "$3" --cache-size "$CACHE" --image-io buffered & ) ;;
        fuse2fs) fuse2fs -o fakeroot "$2" "$3" ;;
        kernel) mount -o loop "$2" "$3" ;;
    esac
    for _ in $(seq 100); do mountpoint -q "$3" && return 0; sleep 0.1; done
    echo "bench-write: $1 did not mount" >&2; exit 1
}

run() { # name
    local name=$1 img="$WORK/$1.img" mnt="$WORK/mnt-$1"
    mkdir -p "$mnt"
    mke2fs -q -F -t ext4 "$img" "${SIZE_G}G"
    for phase in seqwrite bigwrite randwrite smallfiles coldread reread; do
        if [ "$phase" != reread ]; then
            mountpoint -q "$mnt" && { unmount "$mnt"; sleep 1; }
            sync; echo 3 > /proc/sys/vm/drop_caches
            mount_it "$name" "$img" "$mnt"
        fi
        if [ "$phase" = bigwrite ]; then
            local pid=''
            case $name in ours*) pid=$(pgrep -n -f "$BIN mount $img") || pid='' ;; esac
            rm -f "$WORK/stop" "$WORK/rss"
            [ -n "$pid" ] && sample_rss "$pid" "$WORK/stop" >"$WORK/rss" &
            sample_host_cache "$img" "$WORK/stop" >"$WORK/hostcache" &
            timeout 3600 python3 "$WORK/workload.py" "$mnt" "$BIG_G" "$phase" | sed "s/^/$name /"
            touch "$WORK/stop"; wait
            [ -n "$pid" ] && echo "$name peak-rss-kib $(cat "$WORK/rss" 2>/dev/null || echo 0)"
            read -r hc hd <"$WORK/hostcache"
            echo "$name host-cache-kib $hc"
            echo "$name host-dirty-kib $hd"
            rm -f "$mnt/big"
        else
            timeout 3600 python3 "$WORK/workload.py" "$mnt" "$BIG_G" "$phase" | sed "s/^/$name /"
            [ "$phase" = bigwrite ] && rm -f "$mnt/big"
        fi
    done
    unmount "$mnt"; sleep 1
    e2fsck -fn "$img" >/dev/null 2>&1 || echo "$name check: e2fsck -fn found problems"
    rm -f "$img"
}

{
    run ours
    run ours-buffered
    run fuse2fs
    run kernel
} | tee "$WORK/results"
echo
python3 - "$WORK/results" "$CACHE" <<'PY'
import sys, collections
t = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3:
        t[p[0]][p[1]] = float(p[2])
print(f"{'phase':11} {'direct s':>9} {'buffered s':>11} {'fuse2fs s':>10} {'kernel s':>9}"
      f" {'direct/fuse2fs':>15} {'direct/kernel':>14} {'buffered/kernel':>16}")
for ph in ("seqwrite", "bigwrite", "randwrite", "smallfiles", "coldread", "reread"):
    o, b, f, k = (t[n].get(ph, float("nan")) for n in ("ours", "ours-buffered", "fuse2fs", "kernel"))
    print(f"{ph:11} {o:9.2f} {b:11.2f} {f:10.2f} {k:9.2f} {o / f:15.2f} {o / k:14.2f} {b / k:16.2f}")
for n, label in (("ours", "direct"), ("ours-buffered", "buffered")):
    rss = t[n].get("peak-rss-kib")
    if rss is not None:
        print(f"our peak RSS (anon + shmem) during bigwrite, {label} image I/O: {rss / 1024:.0f} MiB"
              f" with --cache-size {sys.argv[2]}")
for n in ("ours", "ours-buffered", "fuse2fs", "kernel"):
    hc, hd = t[n].get("host-cache-kib"), t[n].get("host-dirty-kib")
    if hc is not None:
        print(f"image pages in the host's page cache during bigwrite, {n}: peak {hc / 1024:.0f} MiB"
              f" (host Dirty peak {hd / 1024:.0f} MiB)")
PY
