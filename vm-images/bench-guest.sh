#!/usr/bin/env bash
# Guest benchmark: inside a QEMU guest, read a 256 MiB file and walk a 5,000-file tree over
#   1. vhost-ext4 fs (virtiofs, our engine serving an ext4 image),
#   2. virtiofsd (virtiofs sharing a host directory holding the same tree),
#   3. the guest's own ext4 on our vhost-ext4 blk export of the same image,
# in one run, and print the times and ratios. Times are taken in the guest from /proc/uptime
# (10 ms resolution); under TCG everything is slow, so compare the ratios.
#
#   vm-images/bench-guest.sh [--virtiofsd PATH] [--size-mib N] [--files N]
#
# virtiofsd defaults to the one vm-images/guest-test.sh builds in vm-images/.cache/virtiofsd
# (`cargo install virtiofsd --root vm-images/.cache/virtiofsd`; needs libseccomp-dev and
# libcap-ng-dev). Needs root (mke2fs -d keeps owners) and what run-guest.sh needs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
virtiofsd=$here/.cache/virtiofsd/bin/virtiofsd
size=256 files=5000
while [ $# -gt 0 ]; do
    case $1 in
        --virtiofsd) virtiofsd=$2; shift ;;
        --size-mib) size=$2; shift ;;
        --files) files=$2; shift ;;
        *) echo "bench-guest: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$virtiofsd" ] || { echo "bench-guest: virtiofsd not found at $virtiofsd (see --virtiofsd)" >&2; exit 1; }
(cd "$top" && cargo build --release --quiet)
daemon=$top/target/release/vhost-ext4
work=$(mktemp -d /tmp/vhe-bench-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
tree=$work/tree
mkdir -p "$tree/many"
head -c "$((size << 20))" /dev/urandom > "$tree/big"
python3 - "$tree/many" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range(50):
    os.mkdir(f"{root}/d{d}")
for i in range(n):
    with open(f"{root}/d{i % 50}/f{i}", "wb") as f:
        f.write(os.urandom(i % 3000))
PY
mke2fs -q -F -t ext4 -d "$tree" "$work/img" $((size + 256))M
# The guest times each step with /proc/uptime (centiseconds) and prints "name seconds".
cmd='t() { cut -d" " -f1 /proc/uptime; }
a=$(t); cat big > /dev/null; b=$(t); echo "read $(echo "$b - $a" | bc 2>/dev/null || awk "BEGIN{print $b-$a}")" >> "$VHE_OUT"
a=$(t); find many -type f | wc -l > /dev/null; ls -lR many > /dev/null; b=$(t); echo "walk $(awk "BEGIN{print $b-$a}")" >> "$VHE_OUT"'
run() { # label, run-guest options...
    local label=$1; shift
    "$here/run-guest.sh" --quiet --timeout 1800 --mem 1G --output "$work/$label.out" --cmd "$cmd" "$@" \
        > "$work/$label.log" 2>&1 || { echo "bench-guest: $label failed:"; tail -20 "$work/$label.log"; exit 1; }
    sed "s/^/$label /" "$work/$label.out"
}
{
    run ours --mode fs --image "$work/img" --daemon "$daemon" --daemon-args "--readonly"
    run virtiofsd --mode fs --image "$work/img" \
        --daemon-cmd "exec $virtiofsd --socket-path \"\$SOCK\" --shared-dir $tree --cache auto"
    run blk --mode blk --image "$work/img" --daemon "$daemon" --daemon-args "--readonly" --mount-opts ro
} | tee "$work/results"
python3 - "$work/results" <<'PY'
import sys, collections
t = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 3:
        t[p[0]][p[1]] = float(p[2])
print(f"{'step':6} {'ours fs s':>10} {'virtiofsd s':>12} {'guest ext4 on blk s':>20} {'virtiofsd/ours':>15} {'blk/ours':>9}")
for step in ("read", "walk"):
    o, v, b = t["ours"][step], t["virtiofsd"][step], t["blk"][step]
    print(f"{step:6} {o:10.2f} {v:12.2f} {b:20.2f} {v / o:15.2f} {b / o:9.2f}")
PY
