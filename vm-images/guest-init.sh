#!/bin/sh
# /init of the vhost-ext4 test guest (busybox). build-guest.sh copies this file into the initramfs.
#
# Settings, later ones win:
#   1. defaults below;
#   2. /vhe/config (shell assignments: mode, tag, opts, extra_modules) and /vhe/cmd (a script),
#      which run-guest.sh appends to the initramfs as a second cpio archive for each run;
#   3. the kernel command line: vhe.mode=fs|blk|none  vhe.tag=TAG  vhe.dev=/dev/vda
#      vhe.opts=MOUNT-OPTIONS  vhe.cmd=BASE64-COMMAND  vhe.shell=1
#      vhe.out=ttyS1     where $VHE_OUT points (default: the console); the command writes data there
#      vhe.status=ttyS1  a second place for the exit status line
# It mounts the volume at /mnt, runs the command in /mnt (or an interactive shell when there is
# none), unmounts, prints "VHE-EXIT-STATUS=N" on the console (and as the last line on the status
# port), and powers off.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root TERM=${TERM:-linux}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run /mnt /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname vhe-guest 2>/dev/null
exec </dev/console >/dev/console 2>&1

say() { echo "VHE: $*"; }

mode=fs
tag=vhe
dev=/dev/vda
opts=
cmd=
out=
status_dev=
shell=0
extra_modules=
[ -f /vhe/config ] && . /vhe/config
[ -f /vhe/cmd ] && cmd="sh /vhe/cmd"

for word in $(cat /proc/cmdline); do
    case "$word" in
        vhe.mode=*) mode=${word#vhe.mode=} ;;
        vhe.tag=*) tag=${word#vhe.tag=} ;;
        vhe.dev=*) dev=${word#vhe.dev=} ;;
        vhe.opts=*) opts=${word#vhe.opts=} ;;
        vhe.out=*) out=${word#vhe.out=} ;;
        vhe.status=*) status_dev=${word#vhe.status=} ;;
        vhe.shell=*) shell=${word#vhe.shell=} ;;
        vhe.cmd=*)
            echo "${word#vhe.cmd=}" | base64 -d >/tmp/vhe-cmd 2>/dev/null \
                && cmd="sh /tmp/vhe-cmd" || say "vhe.cmd is not valid base64; ignored"
            ;;
    esac
done

# Output and status channels: serial ports that the host writes to a file, switched to raw mode so
# that the bytes arrive unchanged (no CR before LF).
raw_port() { # name -> /dev/name if usable
    case "$1" in /*) p=$1 ;; *) p=/dev/$1 ;; esac
    stty -F "$p" raw -echo 2>/dev/null && echo "$p"
}
VHE_OUT=/dev/console
if [ -n "$out" ]; then
    VHE_OUT=$(raw_port "$out") || { VHE_OUT=/dev/console; say "output port $out is not usable; using the console"; }
fi
if [ -n "$status_dev" ]; then
    status_dev=$(raw_port "$status_dev") || { status_dev=; say "status port is not usable"; }
fi
export VHE_OUT VHE_MODE=$mode VHE_TAG=$tag

# Modules (those built into the kernel are not in the lists), dependencies first.
# extra_modules (from /vhe/config): more lists, e.g. "fs 9p" for extra virtiofs volumes and 9p shares.
for list in /etc/vhe/modules.common /etc/vhe/modules.$mode $(for x in $extra_modules; do echo "/etc/vhe/modules.$x"; done); do
    [ -f "$list" ] || continue
    while read -r m; do
        [ -n "$m" ] || continue
        insmod "/lib/modules/$m.ko" 2>/tmp/insmod.err \
            || grep -q 'File exists' /tmp/insmod.err \
            || say "insmod $m failed: $(cat /tmp/insmod.err)"
    done <"$list"
done

status=0
mounted=0
case "$mode" in
    fs)
        i=0
        while :; do
            if mount -t virtiofs ${opts:+-o "$opts"} "$tag" /mnt 2>/tmp/mount.err; then mounted=1; break; fi
            i=$((i + 1))
            [ $i -ge 20 ] && break
            sleep 0.25
        done
        [ $mounted = 1 ] || { say "mount -t virtiofs $tag /mnt failed: $(cat /tmp/mount.err)"; status=121; }
        ;;
    blk)
        i=0
        while [ ! -b "$dev" ] && [ $i -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
        if [ ! -b "$dev" ]; then
            say "no block device $dev"
            status=121
        elif mount -t ext4 ${opts:+-o "$opts"} "$dev" /mnt 2>/tmp/mount.err; then
            mounted=1
        else
            say "mount -t ext4 $dev /mnt failed: $(cat /tmp/mount.err)"
            status=121
        fi
        ;;
    none) ;;
    *) say "unknown vhe.mode=$mode"; status=121 ;;
esac
say "mode=$mode mounted=$mounted uptime=$(cut -d' ' -f1 /proc/uptime)s kernel=$(uname -r)"

cd /mnt 2>/dev/null || cd /
if [ -n "$cmd" ] && [ "$shell" != 1 ]; then
    if [ $status -eq 0 ]; then
        $cmd </dev/null
        status=$?
    fi
else
    [ $status -ne 0 ] && say "dropping to a shell for debugging"
    say "interactive shell; the volume is at /mnt; 'exit' powers off"
    setsid cttyhack sh -l
    rc=$?
    [ $status -eq 0 ] && status=$rc
fi
cd /

sync
if [ $mounted = 1 ]; then
    if ! umount /mnt 2>/tmp/umount.err; then
        say "umount /mnt failed: $(cat /tmp/umount.err)"
        [ $status -eq 0 ] && status=122
    fi
fi
say "done uptime=$(cut -d' ' -f1 /proc/uptime)s"
[ -n "$status_dev" ] && echo "VHE-EXIT-STATUS=$status" >"$status_dev"
echo "VHE-EXIT-STATUS=$status"
sleep 0.2
poweroff -f
