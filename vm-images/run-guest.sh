#!/usr/bin/env bash
# Boot the test guest against a vhost-user backend and mount the volume at /mnt.
#
#   vm-images/run-guest.sh [options]
#
#   --mode fs|blk|none   fs: vhost-user-fs-pci, guest runs `mount -t virtiofs TAG /mnt` (default)
#                        blk: vhost-user-blk-pci, guest runs `mount -t ext4 /dev/vda /mnt`
#                        none: no device, no backend (boot test)
#   --image IMG          ext4 image to serve (default: vm-images/.cache/scratch.img, a 256 MiB
#                        image made with mke2fs on first use; --fresh makes it anew)
#   --cmd 'COMMAND'      shell command run in /mnt in the guest; the guest powers off afterwards and
#                        this script exits with the command's status. Without --cmd: an
#                        interactive shell (needs a terminal; Ctrl-A X quits QEMU)
#   --output FILE        the guest's $VHE_OUT (a second serial port) lands in FILE, byte-exact;
#                        without it $VHE_OUT is the console
#   --daemon PATH        vhost-ext4 binary (default: target/release/vhost-ext4, else target/debug)
#   --daemon-args 'ARGS' extra arguments for `vhost-ext4 fs|blk`
#   --daemon-cmd 'CMD'   run another backend instead, through sh -c, with $SOCK, $IMAGE, $TAG,
#                        $QUEUES, $RUN_DIR in its environment; for example
#                          --daemon-cmd 'virtiofsd --socket-path "$SOCK" --shared-dir /some/dir'
#   --socket PATH        connect to a backend that is already listening there (start none)
#   --tag TAG            virtiofs tag (default: vhe)
#   --fs TAG=IMAGE       one more `vhost-ext4 fs` daemon serving IMAGE as virtiofs tag TAG (with
#                        --daemon-args; repeatable). The guest does not mount it: the command does
#                        (`mount -t virtiofs TAG DIR`). Works with every --mode, including none
#   --share TAG=PATH[:ro]  share a host directory with QEMU's 9p (virtio-9p), read-only with :ro;
#                        repeatable. The guest loads the 9p modules; the command mounts it:
#                        `mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR`
#   --queues N           request queues (fs: num-request-queues; blk: num-queues), default 1
#   --mount-opts OPTS    guest mount options (e.g. ro, or dax=never)
#   --mem SIZE           guest memory, shared with the backend through a memfd (default 1G)
#   --smp N              vCPUs (default 1)
#   --accel auto|kvm|tcg (default auto: KVM when /dev/kvm boots a guest, else TCG; env VHE_ACCEL)
#   --timeout SECS       QEMU time limit (default 600 with --cmd, 3600 for a shell)
#   --append 'ARGS'      extra kernel command line
#   --keep               keep the run directory (console.log, daemon.log) and print its path
#   --quiet              do not echo the guest console (it is still logged)
#
# Exit status: the guest command's; 124 when QEMU hit the time limit; 125 when the guest never
# reported a status; 126 when the backend did not start; 2 for bad usage.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${VHE_CACHE:-$HERE/.cache}
GUEST=$CACHE/guest

mode=fs image='' cmd='' have_cmd=0 output='' daemon='' daemon_args='' daemon_cmd='' socket='' tag=vhe queues=1
mount_opts='' mem=1G smp=1 accel=${VHE_ACCEL:-auto} timeout_s='' append='' keep=0 quiet=0 fresh=0
extra_fs=() shares=()
usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run-guest: error: $1" >&2; exit "${2:-2}"; }
while [ $# -gt 0 ]; do
    opt=$1
    case "$opt" in
        --mode|--image|--cmd|--output|--daemon|--daemon-args|--daemon-cmd|--socket|--tag|--queues|\
        --mount-opts|--mem|--smp|--accel|--timeout|--append|--fs|--share)
            [ $# -ge 2 ] || die "$opt needs a value"
            val=$2; shift 2
            case "$opt" in
                --mode) mode=$val ;; --image) image=$val ;; --cmd) cmd=$val; have_cmd=1 ;;
                --output) output=$val ;; --daemon) daemon=$val ;; --daemon-args) daemon_args=$val ;;
                --daemon-cmd) daemon_cmd=$val ;; --socket) socket=$val ;; --tag) tag=$val ;;
                --queues) queues=$val ;; --mount-opts) mount_opts=$val ;; --mem) mem=$val ;;
                --smp) smp=$val ;; --accel) accel=$val ;; --timeout) timeout_s=$val ;;
                --append) append=$val ;;
                --fs) extra_fs+=("$val") ;; --share) shares+=("$val") ;;
            esac
            ;;
        --keep) keep=1; shift ;;
        --quiet) quiet=1; shift ;;
        --fresh) fresh=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $opt (see --help)" ;;
    esac
done
case "$mode" in fs|blk|none) ;; *) die "--mode must be fs, blk or none" ;; esac
case "$queues" in ''|*[!0-9]*|0) die "--queues needs a positive number" ;; esac
case "$tag" in ''|*[!A-Za-z0-9_.-]*) die "--tag: letters, digits, _ . - only" ;; esac
valid_tag() { case "$1" in ''|*[!A-Za-z0-9_.-]*) return 1 ;; esac; }
for spec in ${extra_fs[@]+"${extra_fs[@]}"}; do
    case "$spec" in *=?*) ;; *) die "--fs takes TAG=IMAGE, not '$spec'" ;; esac
    valid_tag "${spec%%=*}" || die "--fs $spec: the tag takes letters, digits, _ . - only"
    [ "${spec%%=*}" != "$tag" ] || [ "$mode" != fs ] || die "--fs $spec: tag ${spec%%=*} is already the main volume's"
    [ -e "${spec#*=}" ] || die "--fs $spec: no such image: ${spec#*=}"
done
for spec in ${shares[@]+"${shares[@]}"}; do
    case "$spec" in *=?*) ;; *) die "--share takes TAG=PATH[:ro], not '$spec'" ;; esac
    valid_tag "${spec%%=*}" || die "--share $spec: the tag takes letters, digits, _ . - only"
    path=${spec#*=}; path=${path%:ro}
    [ -d "$path" ] || die "--share $spec: $path is not a directory"
    case "$path" in *,*) die "--share $spec: QEMU cannot take a path with a comma" ;; esac
done
if [ "$have_cmd" = 0 ] && [ ! -t 0 ]; then
    die "no --cmd and standard input is not a terminal: nothing would drive the guest shell"
fi
[ -n "$timeout_s" ] || { [ "$have_cmd" = 1 ] && timeout_s=600 || timeout_s=3600; }
log() { echo "run-guest: $*" >&2; }

# ---- guest (build-guest.sh also installs the host packages that are missing) --------------------
"$HERE/build-guest.sh" --quiet
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)" 1
kernel=$GUEST/vmlinux
[ -f "$kernel" ] || kernel=$GUEST/vmlinuz

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vhe-run.XXXXXX")
daemon_pid='' qemu_pid='' extra_pids=()
cleanup() {
    local rc=$?
    if [ -n "$qemu_pid" ]; then kill -TERM "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; fi
    stop_daemon
    if [ "$keep" = 1 ]; then log "run directory kept: $RUN_DIR"; else rm -rf "$RUN_DIR"; fi
    return $rc
}
stop_daemon() {
    local p
    for p in "$daemon_pid" ${extra_pids[@]+"${extra_pids[@]}"}; do
        if [ -n "$p" ]; then stop_pid "$p"; fi
    done
    daemon_pid='' extra_pids=()
    return 0
}
stop_pid() {
    local pid=$1
    # A backend may exit by itself when QEMU disconnects; give it a moment, then SIGTERM its
    # process group (we started it with setsid), then SIGKILL.
    for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "backend did not stop within 15 s of SIGTERM; killing it"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- image --------------------------------------------------------------------------------------
if [ "$mode" != none ] && [ -z "$socket" ]; then
    if [ -z "$image" ]; then
        image=$CACHE/scratch.img
        if [ "$fresh" = 1 ] || [ ! -f "$image" ]; then
            command -v mke2fs >/dev/null || die "mke2fs not found (apt-get install e2fsprogs)" 1
            rm -f "$image"
            truncate -s 256M "$image"
            mke2fs -q -F -t ext4 -L vhe-scratch "$image"
            log "created a 256 MiB ext4 image: $image"
        fi
    fi
    [ -e "$image" ] || die "no such image: $image"
    image=$(cd "$(dirname "$image")" && pwd)/$(basename "$image")
fi

# ---- backend ------------------------------------------------------------------------------------
SOCK=${socket:-$RUN_DIR/vhost.sock}
if [ "$mode" != none ] && [ -z "$socket" ]; then
    if [ -z "$daemon_cmd" ]; then
        if [ -z "$daemon" ]; then
            for d in "$REPO/target/release/vhost-ext4" "$REPO/target/debug/vhost-ext4"; do
                [ -x "$d" ] && { daemon=$d; break; }
            done
            [ -n "$daemon" ] || die "no vhost-ext4 binary: run 'cargo build --release' or pass --daemon / --daemon-cmd" 1
        fi
        [ -x "$daemon" ] || die "--daemon $daemon is not executable" 1
        if [ "$mode" = fs ]; then
            daemon_cmd='exec "$DAEMON" fs --socket-path "$SOCK" --image "$IMAGE" --tag "$TAG" --queues "$QUEUES" '"$daemon_args"
        else
            daemon_cmd='exec "$DAEMON" blk --socket-path "$SOCK" --image "$IMAGE" --queues "$QUEUES" '"$daemon_args"
        fi
    fi
    log "backend: $daemon_cmd"
    # setsid: the backend leads its own process group, so stop_daemon can signal all of it.
    DAEMON=$daemon SOCK=$SOCK IMAGE=$image TAG=$tag QUEUES=$queues RUN_DIR=$RUN_DIR \
        setsid timeout -k 10 $((timeout_s + 60)) sh -c "$daemon_cmd" \
        </dev/null >"$RUN_DIR/daemon.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 1 300); do
        [ -S "$SOCK" ] && break
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            sed 's/^/  backend: /' "$RUN_DIR/daemon.log" >&2
            die "the backend exited before it created $SOCK" 126
        fi
        sleep 0.1
    done
    [ -S "$SOCK" ] || { sed 's/^/  backend: /' "$RUN_DIR/daemon.log" >&2; die "no socket $SOCK after 30 s" 126; }
elif [ -n "$socket" ]; then
    [ -S "$socket" ] || die "--socket $socket is not a socket" 126
fi
# Extra virtiofs volumes (--fs TAG=IMAGE): always our daemon.
start_backend() { # log cmd: start it in its own process group, wait for $SOCK; sets $started_pid
    local logf=$1 cmd=$2
    DAEMON=$daemon SOCK=$SOCK IMAGE=$IMAGE TAG=$TAG QUEUES=$queues RUN_DIR=$RUN_DIR \
        setsid timeout -k 10 $((timeout_s + 60)) sh -c "$cmd" </dev/null >"$logf" 2>&1 &
    started_pid=$!
    for _ in $(seq 1 300); do
        [ -S "$SOCK" ] && return 0
        if ! kill -0 "$started_pid" 2>/dev/null; then
            sed 's/^/  backend: /' "$logf" >&2
            die "the backend exited before it created $SOCK" 126
        fi
        sleep 0.1
    done
    sed 's/^/  backend: /' "$logf" >&2
    die "no socket $SOCK after 30 s" 126
}
extra_devs=() n_extra=0
if [ ${#extra_fs[@]} -gt 0 ]; then
    if [ -z "$daemon" ]; then
        for d in "$REPO/target/release/vhost-ext4" "$REPO/target/debug/vhost-ext4"; do
            [ -x "$d" ] && { daemon=$d; break; }
        done
        [ -n "$daemon" ] || die "no vhost-ext4 binary for --fs: run 'cargo build --release' or pass --daemon" 1
    fi
    [ -x "$daemon" ] || die "--daemon $daemon is not executable" 1
    for spec in "${extra_fs[@]}"; do
        n_extra=$((n_extra + 1))
        TAG=${spec%%=*} IMAGE=$(realpath "${spec#*=}") SOCK=$RUN_DIR/vhost-fs$n_extra.sock
        log "backend $n_extra: vhost-ext4 fs, tag $TAG, image $IMAGE"
        start_backend "$RUN_DIR/daemon-fs$n_extra.log" \
            'exec "$DAEMON" fs --socket-path "$SOCK" --image "$IMAGE" --tag "$TAG" --queues "$QUEUES" '"$daemon_args"
        extra_pids+=("$started_pid")
        fsdev="vhost-user-fs-pci,chardev=xfs$n_extra,tag=$TAG,queue-size=1024"
        [ "$queues" -gt 1 ] && fsdev="$fsdev,num-request-queues=$queues"
        extra_devs+=(-chardev "socket,id=xfs$n_extra,path=$SOCK" -device "$fsdev")
    done
    SOCK=${socket:-$RUN_DIR/vhost.sock}
fi
n_share=0
for spec in ${shares[@]+"${shares[@]}"}; do
    n_share=$((n_share + 1))
    path=${spec#*=} ro=off
    case "$path" in *:ro) path=${path%:ro} ro=on ;; esac
    # multidevs=remap: a share that spans several host file systems keeps inode numbers unique.
    extra_devs+=(-fsdev "local,id=share$n_share,path=$path,security_model=none,readonly=$ro,multidevs=remap"
        -device "virtio-9p-pci,fsdev=share$n_share,mount_tag=${spec%%=*}")
done

# ---- accelerator --------------------------------------------------------------------------------
# KVM can be present yet unusable (the guest hangs on some hosts): boot a probe guest once per
# host boot and remember the answer.
kvm_works() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    local cachef=$CACHE/kvm-probe boot_id
    boot_id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
    if [ -f "$cachef" ] && [ "$(head -n 1 "$cachef")" = "$boot_id" ]; then
        [ "$(sed -n 2p "$cachef")" = yes ]
        return
    fi
    local ans=no
    if timeout -k 2 15 qemu-system-x86_64 -machine q35 -accel kvm -cpu host -m 256M -nodefaults \
        -display none -no-reboot -serial stdio -kernel "$kernel" -initrd "$GUEST/initramfs.cpio" \
        -append "console=ttyS0 quiet panic=-1 vhe.mode=none vhe.cmd=$(echo true | base64)" \
        </dev/null 2>/dev/null | tr -d '\r' | grep -q '^VHE-EXIT-STATUS=0'; then
        ans=yes
    fi
    printf '%s\n%s\n' "$boot_id" "$ans" >"$cachef"
    [ "$ans" = yes ]
}
case "$accel" in
    auto) if kvm_works; then accel=kvm; else accel=tcg; fi ;;
    kvm|tcg) ;;
    *) die "--accel must be auto, kvm or tcg" ;;
esac
cpu=max
[ "$accel" = kvm ] && cpu=host

# ---- per-run initramfs: settings and command ----------------------------------------------------
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
mkdir -p "$RUN_DIR/extra/vhe"
{
    echo "mode=$(shq "$mode")"
    echo "tag=$(shq "$tag")"
    echo "opts=$(shq "$mount_opts")"
    # Module lists the guest loads besides modules.common and modules.$mode.
    mods=''
    [ ${#extra_fs[@]} -gt 0 ] && [ "$mode" != fs ] && mods=fs
    [ ${#shares[@]} -gt 0 ] && mods="$mods 9p"
    echo "extra_modules=$(shq "$mods")"
} >"$RUN_DIR/extra/vhe/config"
[ "$have_cmd" = 1 ] && printf '%s\n' "$cmd" >"$RUN_DIR/extra/vhe/cmd"
(cd "$RUN_DIR/extra" && find . | LC_ALL=C sort | /bin/busybox cpio -o -H newc 2>/dev/null) >"$RUN_DIR/extra.cpio"
cat "$GUEST/initramfs.cpio" "$RUN_DIR/extra.cpio" >"$RUN_DIR/initrd"

# ---- QEMU ---------------------------------------------------------------------------------------
cmdline="console=ttyS0 quiet panic=-1 vhe.status=ttyS1"
[ -n "$output" ] && cmdline="$cmdline vhe.out=ttyS1"
[ -n "$append" ] && cmdline="$cmdline $append"
: >"$RUN_DIR/channel"
signal=on
[ "$have_cmd" = 0 ] && signal=off   # Ctrl-C goes to the guest shell; Ctrl-A X quits
qemu=(qemu-system-x86_64 -machine q35 -accel "$accel" -cpu "$cpu" -smp "$smp" -m "$mem"
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" -numa node,memdev=mem
    -nodefaults -display none -no-reboot
    -chardev "stdio,id=con,mux=on,signal=$signal,logfile=$RUN_DIR/console.log"
    -serial chardev:con -mon chardev=con,mode=readline
    -chardev "file,id=chan,path=$RUN_DIR/channel" -serial chardev:chan
    -kernel "$kernel" -initrd "$RUN_DIR/initrd" -append "$cmdline")
case "$mode" in
    fs)
        fsdev="vhost-user-fs-pci,chardev=char0,tag=$tag,queue-size=1024"
        [ "$queues" -gt 1 ] && fsdev="$fsdev,num-request-queues=$queues"
        qemu+=(-chardev "socket,id=char0,path=$SOCK" -device "$fsdev") ;;
    blk)
        qemu+=(-chardev "socket,id=char0,path=$SOCK" -device "vhost-user-blk-pci,chardev=char0,num-queues=$queues") ;;
esac
qemu+=(${extra_devs[@]+"${extra_devs[@]}"})
log "guest: kernel $(cat "$GUEST/kernel-release"), accel $accel, mode $mode, time limit ${timeout_s}s"
backends_alive() {
    local p
    for p in "$daemon_pid" ${extra_pids[@]+"${extra_pids[@]}"}; do
        [ -z "$p" ] || kill -0 "$p" 2>/dev/null || return 1
    done
}
start=$(date +%s.%N)
backend_died=0
set +e
if [ "$have_cmd" = 1 ]; then
    # In the background, so that signals reach our traps and a backend crash can be noticed (the
    # guest would otherwise wait for its requests until the time limit).
    if [ "$quiet" = 1 ]; then
        timeout -k 5 "$timeout_s" "${qemu[@]}" </dev/null >/dev/null 2>"$RUN_DIR/qemu.err" &
    else
        timeout -k 5 "$timeout_s" "${qemu[@]}" </dev/null 2>"$RUN_DIR/qemu.err" &
    fi
    qemu_pid=$!
    dead_since=
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if ! backends_alive; then
            [ -n "$dead_since" ] || dead_since=$SECONDS
            if [ $((SECONDS - dead_since)) -ge 3 ]; then
                log "the backend exited while the guest was running; stopping QEMU"
                backend_died=1
                kill -TERM "$qemu_pid" 2>/dev/null
                break
            fi
        fi
        sleep 0.2
    done
    wait "$qemu_pid"
    qrc=$?
    qemu_pid=
else
    timeout --foreground -k 5 "$timeout_s" "${qemu[@]}" 2>"$RUN_DIR/qemu.err"
    qrc=$?
fi
set -e
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
[ -s "$RUN_DIR/qemu.err" ] && sed 's/^/  qemu: /' "$RUN_DIR/qemu.err" >&2
stop_daemon

# ---- result -------------------------------------------------------------------------------------
status=$(tail -n 1 "$RUN_DIR/channel" | tr -d '\r' | sed -n 's/^VHE-EXIT-STATUS=\([0-9]*\)$/\1/p')
[ -n "$status" ] || status=$(tr -d '\r' <"$RUN_DIR/console.log" 2>/dev/null \
    | sed -n 's/^VHE-EXIT-STATUS=\([0-9]*\)$/\1/p' | tail -n 1)
if [ -n "$output" ]; then
    # Everything but the final status line.
    if [ -n "$(tail -n 1 "$RUN_DIR/channel" | sed -n '/^VHE-EXIT-STATUS=/p')" ]; then
        head -n -1 "$RUN_DIR/channel" >"$output"
    else
        cp "$RUN_DIR/channel" "$output"
    fi
fi
if [ -z "$status" ]; then
    if [ "$backend_died" = 1 ]; then
        log "FAILED: the backend exited while the guest was running (see its log below)"
        final=125
    elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
        log "TIMEOUT: QEMU ran for ${timeout_s}s and the guest never reported an exit status"
        final=124
    else
        log "FAILED: the guest never reported an exit status (QEMU exited with $qrc after ${elapsed}s)"
        final=125
    fi
    [ "$quiet" = 1 ] && { echo "--- last console lines:" >&2; tail -n 30 "$RUN_DIR/console.log" 2>/dev/null | tr -d '\r' >&2; }
    for f in "$RUN_DIR"/daemon*.log; do
        [ -s "$f" ] && { echo "--- backend log $(basename "$f") (last lines):" >&2; tail -n 30 "$f" >&2; }
    done
    exit $final
fi
log "guest exit status $status after ${elapsed}s"
exit "$status"
