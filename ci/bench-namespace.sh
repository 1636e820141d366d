#!/usr/bin/env bash
# Namespace benchmark: 20,000 creates, a rename storm (every file renamed across directories) and
# 20,000 unlinks, through vhost-ext4's FUSE mount, fuse2fs and the kernel's ext4 on a loop device,
# in one run, on identical fresh images, each from a cold page cache. Prints seconds per phase and
# the ratios ours/fuse2fs and ours/kernel (below 1: we are faster).
#
# The images are made without a journal (`-O ^has_journal`) for all three, so every contender does
# the same metadata work; vhost-ext4 serves journal-less images writable. A second round runs ours
# and the kernel on images with the default jbd2 journal (fuse2fs does not write a journal), so
# the cost of journaling shows next to the kernel's.
# Usage: sudo bash ci/bench-namespace.sh [N]   (N files, default 20000). Needs root, /dev/fuse,
# loop devices, e2fsprogs, fuse2fs.
set -euo pipefail
N=${1:-20000}
cd "$(dirname "$0")/.."
for tool in mke2fs e2fsck fuse2fs python3; do
    command -v "$tool" >/dev/null || { echo "bench-namespace: $tool is required" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-namespace: run as root (mounts)" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/vhost-ext4
WORK=$(mktemp -d /tmp/vhe-bench-ns.XXXXXX)
cleanup() {
    for m in "$WORK"/mnt-*; do mountpoint -q "$m" && umount "$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/workload.py" <<'PY'
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
dirs = 20
for d in range(dirs):
    os.mkdir(f"{root}/d{d}")
def phase(name, fn):
    t = time.monotonic(); fn(); os.sync(); print(f"{name} {time.monotonic() - t:.3f}")
def creates():
    for i in range(n):
        os.close(os.open(f"{root}/d{i % dirs}/file-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
def renames():
    for i in range(n):
        os.rename(f"{root}/d{i % dirs}/file-{i:06d}", f"{root}/d{(i + 7) % dirs}/renamed-{i:06d}")
def unlinks():
    for i in range(n):
        os.unlink(f"{root}/d{(i + 7) % dirs}/renamed-{i:06d}")
phase("create", creates)
phase("rename", renames)
phase("unlink", unlinks)
PY

run() { # name, mount command..., prints "phase seconds" lines
    local name=$1; shift
    local img="$WORK/$name.img" mnt="$WORK/mnt-$name"
    mkdir -p "$mnt"
    case $name in
        *-jbd2) mke2fs -q -F -t ext4 "$img" 1G ;;
        *) mke2fs -q -F -t ext4 -O ^has_journal "$img" 1G ;;
    esac
    # Every contender starts from a cold page cache (the image and the workload script alike).
    sync
    echo 3 > /proc/sys/vm/drop_caches
    case $name in
        ours*) ( "$BIN" mount "$img" "$mnt" & ) ;;
        fuse2fs) fuse2fs -o fakeroot "$img" "$mnt" ;;
        kernel*) mount -o loop "$img" "$mnt" ;;
    esac
    for _ in $(seq 50); do mountpoint -q "$mnt" && break; sleep 0.1; done
    mountpoint -q "$mnt" || { echo "bench-namespace: $name did not mount" >&2; exit 1; }
    timeout 1800 python3 "$WORK/workload.py" "$mnt" "$N" | sed "s/^/$name /"
    umount "$mnt"
    sleep 1
    e2fsck -fn "$img" >/dev/null 2>&1 || echo "$name check: e2fsck -fn found problems"
}

{
    run ours
    run fuse2fs
    run kernel
    run ours-jbd2
    run kernel-jbd2
} | tee "$WORK/results"
echo
python3 - "$WORK/results" <<'PY'
import sys, collections
t = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3:
        t[p[0]][p[1]] = float(p[2])
# Ratios are ours / theirs: below 1 we are faster.
print(f"{'phase':8} {'ours s':>8} {'fuse2fs s':>10} {'kernel s':>9} {'ours/fuse2fs':>13} {'ours/kernel':>12}")
for ph in ("create", "rename", "unlink"):
    o, f, k = t["ours"].get(ph), t["fuse2fs"].get(ph), t["kernel"].get(ph)
    print(f"{ph:8} {o:8.2f} {f:10.2f} {k:9.2f} {o / f:13.2f} {o / k:12.2f}")
print()
print("with a jbd2 journal")
print(f"{'phase':8} {'ours s':>8} {'kernel s':>9} {'ours/kernel':>12} {'ours jbd2/none':>15}")
for ph in ("create", "rename", "unlink"):
    o, k, o0 = t["ours-jbd2"].get(ph), t["kernel-jbd2"].get(ph), t["ours"].get(ph)
    print(f"{ph:8} {o:8.2f} {k:9.2f} {o / k:12.2f} {o / o0:15.2f}")
PY
