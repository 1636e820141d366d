#!/usr/bin/env bash
# End-to-end guest test: a QEMU guest reads (and with --write, writes) an ext4 image served by
# vhost-ext4 over vhost-user-fs (virtiofs) and over vhost-user-blk (the guest's own ext4).
#
#   vm-images/guest-test.sh [DAEMON] [options]
#
#   DAEMON / --daemon PATH   the vhost-ext4 binary (default target/release/vhost-ext4)
#   --modes fs,blk           which front doors to test (default both)
#   --write                  also run a write workload in the guest, then check the result in the
#                            guest, `e2fsck -fn` the image, and read it back on the host (debugfs rdump)
#   --daemon-args-fs ARGS    extra arguments for `vhost-ext4 fs`
#   --daemon-args-blk ARGS   extra arguments for `vhost-ext4 blk`
#   --fs-daemon-cmd CMD      another fs backend (sh -c; env SOCK IMAGE SHARE TAG QUEUES)
#   --fs-shares-dir          ...which serves the directory $SHARE (a copy of the tree), not $IMAGE
#   --blk-daemon-cmd CMD     another blk backend (sh -c; env SOCK IMAGE QUEUES)
#   --reference              virtiofsd (sharing $SHARE) and qemu-storage-daemon: checks this
#                            script and the guest, not vhost-ext4
#   --queues N               request queues (default 1)
#   --timeout SECS           bound on the whole run (default 480)
#   --keep                   keep the work directory
#
# How: builds a tree on the host (files of many sizes, sparse and empty files, deep and large
# directories, fast/slow/dangling symlinks, hard links, odd names, a fifo, modes, mtimes), makes an
# image with `mke2fs -t ext4 -d TREE`, takes a manifest of the tree (type, mode, owner, size, mtime,
# symlink target, sha256 of every file; vm-images/lib/walk.sh run by busybox on both sides), boots
# the guest with vm-images/run-guest.sh, takes the same manifest of /mnt in the guest and diffs.
# Exit status 0 when every check passed; 1 with a diff otherwise; 2 for bad usage.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${VHE_CACHE:-$HERE/.cache}

daemon='' modes=fs,blk write=0 args_fs='' args_blk='' fs_cmd='' fs_shares_dir=0 blk_cmd='' reference=0
queues=1 total=480 keep=0
die() { echo "guest-test: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --daemon) daemon=$2; shift ;;
        --modes) modes=$2; shift ;;
        --write) write=1 ;;
        --daemon-args-fs) args_fs=$2; shift ;;
        --daemon-args-blk) args_blk=$2; shift ;;
        --fs-daemon-cmd) fs_cmd=$2; shift ;;
        --fs-shares-dir) fs_shares_dir=1 ;;
        --blk-daemon-cmd) blk_cmd=$2; shift ;;
        --reference) reference=1 ;;
        --queues) queues=$2; shift ;;
        --timeout) total=$2; shift ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) daemon=$1 ;;
    esac
    shift
done
START=$(date +%s)
log() { echo "guest-test: $*" >&2; }

if [ "$reference" = 1 ]; then
    vfsd=$(command -v virtiofsd || true)
    [ -n "$vfsd" ] || vfsd=$CACHE/virtiofsd/bin/virtiofsd
    [ -x "$vfsd" ] || die "--reference needs virtiofsd: cargo install virtiofsd --root $CACHE/virtiofsd (apt-get install libseccomp-dev libcap-ng-dev first)"
    command -v qemu-storage-daemon >/dev/null || die "--reference needs qemu-storage-daemon (apt-get install qemu-system-common)"
    fs_cmd="exec '$vfsd' --socket-path \"\$SOCK\" --shared-dir \"\$SHARE\" --sandbox none"
    fs_shares_dir=1
    blk_cmd='exec qemu-storage-daemon --blockdev driver=file,node-name=file,filename="$IMAGE" --blockdev driver=raw,node-name=raw,file=file --export type=vhost-user-blk,id=exp,node-name=raw,addr.type=unix,addr.path="$SOCK",writable=on,num-queues="$QUEUES"'
fi
if [ -z "$fs_cmd" ] || [ -z "$blk_cmd" ]; then
    if [ -z "$daemon" ]; then
        for d in "$REPO/target/release/vhost-ext4" "$REPO/target/debug/vhost-ext4"; do
            [ -x "$d" ] && { daemon=$d; break; }
        done
    fi
    [ -n "$daemon" ] && [ -x "$daemon" ] || die "no vhost-ext4 binary (build it, or pass DAEMON / --reference)"
    daemon=$(cd "$(dirname "$daemon")" && pwd)/$(basename "$daemon")
fi
for t in mke2fs e2fsck debugfs; do command -v $t >/dev/null || die "$t not found (apt-get install e2fsprogs)"; done

"$HERE/build-guest.sh" --quiet

W=$(mktemp -d "${TMPDIR:-/tmp}/vhe-guest-test.XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then log "work directory kept: $W"; else rm -rf "$W"; fi; }
trap cleanup EXIT

# Host side of the manifest: the same busybox as the guest's, through applet links.
mkdir -p "$W/bb"
for a in $(/bin/busybox --list); do ln -s /bin/busybox "$W/bb/$a"; done
bbsh() { PATH=$W/bb /bin/busybox sh -c "$1"; }

# ---- the tree ---------------------------------------------------------------------------------
make_tree() {
    local t=$1 i
    mkdir -p "$t"/{data,bigdir,emptydir,links,special} "$t/names/with space" "$t/dir1/dir2/dir3/dir4/dir5"
    : >"$t/data/empty"
    printf x >"$t/data/one"
    echo "small text" >"$t/data/small.txt"
    head -c 4095 /dev/urandom >"$t/data/4095"
    head -c 4096 /dev/urandom >"$t/data/4096"
    head -c 4097 /dev/urandom >"$t/data/4097"
    head -c 1048576 /dev/urandom >"$t/data/rand-1m"
    head -c $((3 * 1048576 + 123)) /dev/urandom >"$t/data/rand-3m"
    # sparse: 8 MiB with data at 1 MiB and in the last block
    truncate -s 8M "$t/data/sparse"
    head -c 4096 /dev/urandom | dd of="$t/data/sparse" bs=4096 seek=256 conv=notrunc status=none
    head -c 100 /dev/urandom | dd of="$t/data/sparse" bs=1 seek=$((8 * 1048576 - 100)) conv=notrunc status=none
    echo "linked" >"$t/data/hard1"
    ln "$t/data/hard1" "$t/data/hard2"
    printf '#!/bin/sh\necho hi\n' >"$t/data/exec"; chmod 755 "$t/data/exec"
    echo secret >"$t/data/private"; chmod 600 "$t/data/private"
    echo deep >"$t/dir1/dir2/dir3/dir4/dir5/deep.txt"
    mkdir -p "$t/dir1/priv"; chmod 700 "$t/dir1/priv"
    for i in $(seq 0 299); do echo "entry $i" >"$t/bigdir/f$i"; done
    ln -s ../data/small.txt "$t/links/short"
    ln -s "../dir1/dir2/dir3/dir4/dir5/../../../../../data/$(printf 'x%.0s' $(seq 1 10))/../small.txt" "$t/links/long"
    ln -s does-not-exist "$t/links/dangling"
    ln -s ../dir1 "$t/links/dir"
    echo space >"$t/names/with space/file"
    echo unicode >"$t/names/ünïcødé.txt"
    echo hidden >"$t/names/.hidden"
    echo long >"$t/names/$(printf 'n%.0s' $(seq 1 255))"
    mkfifo "$t/special/fifo"
    touch -d @1600000000 "$t/data/small.txt" "$t/data/one"
    touch -h -d @1600000001 "$t/links/short"
}
make_tree "$W/tree"
bbsh ". '$HERE/lib/walk.sh'; vhe_walk '$W/tree' 2" >"$W/expect-read"
bbsh ". '$HERE/lib/walk.sh'; vhe_walk '$W/tree' 0" >"$W/expect-read-content"
if [ "$write" = 1 ]; then
    cp -a "$W/tree" "$W/expect-tree"
    bbsh ". '$HERE/lib/write-workload.sh'; cd '$W/expect-tree' && vhe_write_workload" 2>"$W/host-write-trace" \
        || { tail -n 5 "$W/host-write-trace" >&2; die "the write workload fails on the host"; }
    bbsh ". '$HERE/lib/walk.sh'; vhe_walk '$W/expect-tree' 1" >"$W/expect-write"
    bbsh ". '$HERE/lib/walk.sh'; vhe_walk '$W/expect-tree' 0" >"$W/expect-write-content"
fi
log "tree: $(grep -c '^meta' "$W/expect-read") entries, $(du -sh --apparent-size "$W/tree" | cut -f1)"

# The guest's command: manifest, then optionally the workload and a second manifest.
{
    cat "$HERE/lib/walk.sh"
    cat "$HERE/lib/write-workload.sh"
    echo '{'
    echo '  echo "=== read"; vhe_walk /mnt 2'
    if [ "$write" = 1 ]; then
        echo '  cd /mnt && vhe_write_workload 2>/tmp/write-errors; echo "=== write-status $?"'
        echo '  echo "=== write-errors"; cat /tmp/write-errors'
        echo '  echo "=== after-write"; vhe_walk /mnt 1'
    fi
    echo '} >"$VHE_OUT"'
} >"$W/guest-cmd.sh"

section() { # file name -> lines of section "=== name"
    awk -v s="=== $2" '/^=== / { on = ($0 == s); next } on' "$1"
}

failed=0
fail() { log "FAIL: $*"; failed=1; }
compare() { # expected actual what
    if ! diff -u --label "expected ($3)" --label "actual ($3)" "$1" "$2" >"$W/diff"; then
        fail "$3 differs:"
        head -n 60 "$W/diff" >&2
        [ "$(wc -l <"$W/diff")" -gt 60 ] && echo "  ... ($(wc -l <"$W/diff") diff lines)" >&2
        return 1
    fi
    log "ok: $3 ($(wc -l <"$1") lines)"
}

run_mode() { # fs|blk
    local mode=$1 img=$W/$1.img share=$W/share-$1 cmd args opts='' left rc t0
    truncate -s 128M "$img"
    mke2fs -q -F -t ext4 -b 4096 -d "$W/tree" "$img"
    e2fsck -fn "$img" >"$W/e2fsck-$mode-before.log" 2>&1 || { fail "e2fsck of the fresh image"; return; }
    cp -a "$W/tree" "$share"
    if [ "$mode" = fs ]; then cmd=$fs_cmd args=$args_fs; else cmd=$blk_cmd args=$args_blk; fi
    [ "$mode" = blk ] && [ "$write" = 0 ] && opts=ro
    left=$((total - ($(date +%s) - START)))
    [ "$left" -gt 20 ] || { fail "$mode: no time left (--timeout $total)"; return; }
    [ "$left" -gt 240 ] && left=240
    local run=(--mode "$mode" --image "$img" --queues "$queues" --timeout "$left" --quiet
        --output "$W/out-$mode" --cmd "$(cat "$W/guest-cmd.sh")")
    [ -n "$opts" ] && run+=(--mount-opts "$opts")
    if [ -n "$cmd" ]; then run+=(--daemon-cmd "$cmd"); else run+=(--daemon "$daemon" --daemon-args "$args"); fi
    log "$mode: booting the guest"
    t0=$(date +%s)
    set +e
    SHARE=$share "$HERE/run-guest.sh" "${run[@]}" 2>"$W/run-$mode.log"
    rc=$?
    set -e
    sed 's/^/  /' "$W/run-$mode.log" >&2
    [ "$rc" = 0 ] || { fail "$mode: the guest command failed (status $rc)"; return; }
    log "$mode: guest done in $(( $(date +%s) - t0 ))s"

    section "$W/out-$mode" read >"$W/got-read-$mode"
    compare "$W/expect-read" "$W/got-read-$mode" "$mode: guest's view of the image" || true
    [ "$write" = 1 ] || return 0

    if ! grep -qx '=== write-status 0' "$W/out-$mode"; then
        fail "$mode: the write workload failed in the guest ($(grep '^=== write-status' "$W/out-$mode")):"
        section "$W/out-$mode" write-errors | tail -n 5 | sed 's/^/  /' >&2
    fi
    section "$W/out-$mode" after-write >"$W/got-write-$mode"
    compare "$W/expect-write" "$W/got-write-$mode" "$mode: guest's view after the write workload" || true
    if [ "$mode" = fs ] && [ "$fs_shares_dir" = 1 ]; then
        bbsh ". '$HERE/lib/walk.sh'; vhe_walk '$share' 1" >"$W/host-write-$mode"
        compare "$W/expect-write" "$W/host-write-$mode" "$mode: shared directory after the guest's writes" || true
        return 0
    fi
    if e2fsck -fn "$img" >"$W/e2fsck-$mode.log" 2>&1; then
        log "ok: $mode: e2fsck -fn is clean after the guest's writes"
    else
        fail "$mode: e2fsck -fn after the guest's writes:"
        sed 's/^/  /' "$W/e2fsck-$mode.log" | head -n 40 >&2
    fi
    mkdir -p "$W/rdump-$mode"
    debugfs -R "rdump / $W/rdump-$mode" "$img" >/dev/null 2>&1 || fail "$mode: debugfs rdump"
    bbsh ". '$HERE/lib/walk.sh'; vhe_walk '$W/rdump-$mode' 0" >"$W/host-write-$mode"
    compare "$W/expect-write-content" "$W/host-write-$mode" "$mode: image content read back by debugfs" || true
}

for mode in ${modes//,/ }; do
    case "$mode" in fs|blk) run_mode "$mode" ;; *) die "unknown mode $mode" ;; esac
done

elapsed=$(( $(date +%s) - START ))
if [ "$failed" = 0 ]; then
    log "PASS ($modes$([ "$write" = 1 ] && echo ', write'), ${elapsed}s)"
else
    log "FAILED (${elapsed}s)"
    keep=1
fi
exit "$failed"
