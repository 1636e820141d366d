#!/usr/bin/env bash
# Build the test guest: a Debian kernel and a busybox initramfs that mounts a virtiofs or virtio-blk
# volume, runs a command and powers off. Idempotent: everything lands in vm-images/.cache/ and is
# rebuilt only when this script, guest-init.sh or the chosen kernel package changes.
#
#   vm-images/build-guest.sh [--rebuild] [--update] [--kernel-pkg NAME] [--kernel-deb FILE] [--quiet]
#
#   --rebuild          rebuild the initramfs and kernel files even if they are up to date
#   --update           ask apt again for the newest kernel (otherwise the first choice is kept)
#   --kernel-pkg NAME  use this package (e.g. linux-image-6.1.0-28-amd64) instead of the newest
#   --kernel-deb FILE  use a kernel .deb already on disk
#
# Output (paths printed at the end):
#   .cache/guest/vmlinux         uncompressed ELF kernel, boots fast through PVH (absent if the
#                                extraction failed; then use vmlinuz)
#   .cache/guest/vmlinuz         the package's bzImage
#   .cache/guest/initramfs.cpio  busybox + /init (guest-init.sh) + modules
#   .cache/guest/kernel-release  e.g. 6.12.117+deb12-amd64
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VHE_CACHE:-$HERE/.cache}
OUT=$CACHE/guest

rebuild=0 update=0 quiet=0 kernel_pkg=${VHE_KERNEL_PKG:-} kernel_deb=${VHE_KERNEL_DEB:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild) rebuild=1 ;;
        --update) update=1 ;;
        --quiet) quiet=1 ;;
        --kernel-pkg) kernel_pkg=$2; shift ;;
        --kernel-deb) kernel_deb=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-guest.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

log() { [ "$quiet" = 1 ] || echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

mkdir -p "$CACHE/kernel" "$OUT"
# One build at a time (parallel test runs share the cache).
exec 9>"$CACHE/.build.lock"
flock 9

# ---- host tools (installed when missing and we are root) -------------------------------------------------------------------------------
need_pkgs=()
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx cpio || need_pkgs+=(busybox-static)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v dpkg-deb >/dev/null || need_pkgs+=(dpkg)
# Not needed for the build, but by run-guest.sh and guest-test.sh, which call this script first.
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v mke2fs >/dev/null && command -v debugfs >/dev/null || need_pkgs+=(e2fsprogs)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing ${need_pkgs[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null; } \
            || die "could not install ${need_pkgs[*]}"
    else
        die "missing host packages: ${need_pkgs[*]} (apt-get install them)"
    fi
fi
file /bin/busybox 2>/dev/null | grep -q 'dynamically linked' && die "/bin/busybox is not static (install busybox-static)"
BUSYBOX=/bin/busybox

# ---- choose and fetch the kernel package -----------------------------------------------------
newest_kernel_pkg() {
    # Real kernel packages only (not the linux-image-amd64 meta package), no cloud/rt/debug flavours.
    apt-cache search --names-only '^linux-image-[0-9].*-amd64$' 2>/dev/null | awk '{print $1}' \
        | grep -E '^linux-image-[0-9]+\.[0-9]+(\.[0-9]+)?[-+.][^ ]*-amd64$' \
        | grep -Ev -- '-(cloud|rt)-amd64$|-dbg|unsigned' | sort -V | tail -n 1
}

if [ -n "$kernel_deb" ]; then
    [ -f "$kernel_deb" ] || die "no such file: $kernel_deb"
    deb=$(cd "$(dirname "$kernel_deb")" && pwd)/$(basename "$kernel_deb")
    kernel_pkg=$(dpkg-deb -f "$deb" Package)
else
    if [ -n "$kernel_pkg" ]; then
        echo "$kernel_pkg" >"$CACHE/kernel/chosen"   # later runs keep this choice
    else
        if [ "$update" = 0 ] && [ -s "$CACHE/kernel/chosen" ]; then
            kernel_pkg=$(cat "$CACHE/kernel/chosen")
        else
            kernel_pkg=$(newest_kernel_pkg)
            if [ -z "$kernel_pkg" ] && [ "$(id -u)" = 0 ]; then
                log "apt knows no kernel package; running apt-get update"
                apt-get update -q >/dev/null || true
                kernel_pkg=$(newest_kernel_pkg)
            fi
            [ -n "$kernel_pkg" ] || die "apt offers no linux-image-*-amd64 package (run apt-get update)"
            echo "$kernel_pkg" >"$CACHE/kernel/chosen"
        fi
    fi
    deb=$(ls "$CACHE/kernel/${kernel_pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$deb" ]; then
        log "downloading $kernel_pkg"
        (cd "$CACHE/kernel" && apt-get download -q "$kernel_pkg" >download.log 2>&1) || true
        deb=$(ls "$CACHE/kernel/${kernel_pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
        [ -n "$deb" ] || { cat "$CACHE/kernel/download.log" >&2; die "apt-get download $kernel_pkg failed"; }
    fi
fi

stamp=$( { sha256sum "$HERE/build-guest.sh" "$HERE/guest-init.sh" | cut -d' ' -f1; basename "$deb"; } | sha256sum | cut -d' ' -f1)
if [ "$rebuild" = 0 ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ] \
    && [ -f "$OUT/initramfs.cpio" ] && [ -f "$OUT/vmlinuz" ]; then
    log "guest is up to date: $(cat "$OUT/kernel-release") ($OUT)"
    exit 0
fi

log "building the guest from $(basename "$deb")"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$deb" "$WORK/pkg"

release=$(ls "$WORK/pkg/lib/modules" 2>/dev/null | head -n 1)
[ -n "$release" ] || die "$(basename "$deb") has no /lib/modules"
moddir=$WORK/pkg/lib/modules/$release
vmlinuz=$(ls "$WORK/pkg/boot/vmlinuz-$release" 2>/dev/null || true)
[ -n "$vmlinuz" ] || die "$(basename "$deb") has no /boot/vmlinuz-$release"

# ---- modules ----------------------------------------------------------------------------------
# modules.dep is written by depmod at install time, so the package does not ship it: the
# dependencies come from each module's own .modinfo (depends= and softdep=pre:), which is what
# depmod records as well. Modules in modules.builtin are part of the kernel image.
declare -A builtin=() modpath=() done_mod=()
while read -r p; do
    b=${p##*/}; b=${b%.ko}; builtin[${b//-/_}]=1
done <"$moddir/modules.builtin"
while read -r p; do
    b=${p##*/}; b=${b%.ko*}; modpath[${b//-/_}]=$p
done < <(cd "$moddir" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

ROOT=$WORK/root
mkdir -p "$ROOT/lib/modules" "$ROOT/etc/vhe"

unpack_module() { # name -> $ROOT/lib/modules/name.ko
    local src=$moddir/${modpath[$1]} dst=$ROOT/lib/modules/$1.ko
    case "$src" in
        *.ko.xz) xz -dc "$src" >"$dst" ;;
        *.ko.zst) zstd -q -dc "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *) cp "$src" "$dst" ;;
    esac
}

modinfo_field() { # file field -> values (one line)
    { tr '\0' '\n' <"$1" | grep -a "^$2=" || true; } | head -n 1 | cut -d= -f2-
}

ORDER=()
resolve() { # name [optional]: append the module and its dependencies to ORDER, dependencies first
    local name=${1//-/_} optional=${2:-} dep
    [ -n "${done_mod[$name]:-}" ] && return 0
    done_mod[$name]=1
    if [ -n "${builtin[$name]:-}" ]; then return 0; fi
    if [ -z "${modpath[$name]:-}" ]; then
        # A soft dependency may name a crypto algorithm alias (crypto-crc32c): take its _generic driver.
        case "$name" in crypto_*)
            name=${name#crypto_}
            [ -n "${builtin[$name]:-}${builtin[${name}_generic]:-}" ] && return 0
            [ -n "${modpath[${name}_generic]:-}" ] && { resolve "${name}_generic" "$optional"; return 0; }
            ;;
        esac
        [ -n "$optional" ] && { log "note: no module $1 in $release (skipped)"; return 0; }
        die "kernel $release has neither built in nor as a module: $1"
    fi
    unpack_module "$name"
    local deps soft
    deps=$(modinfo_field "$ROOT/lib/modules/$name.ko" depends)
    soft=$(modinfo_field "$ROOT/lib/modules/$name.ko" softdep)
    for dep in ${deps//,/ }; do resolve "$dep"; done
    # softdep=pre: a b post: c  -> load a and b first
    local in_pre=0
    for dep in $soft; do
        case "$dep" in pre:) in_pre=1 ;; post:) in_pre=0 ;; *) if [ $in_pre = 1 ]; then resolve "$dep" optional; fi ;; esac
    done
    ORDER+=("$name")
}

modules_for() { # listfile names...
    local list=$1; shift
    ORDER=()
    for m in "$@"; do resolve "$m"; done
    printf '%s\n' "${ORDER[@]}" | sed '/^$/d' >"$ROOT/etc/vhe/$list"
}
modules_for modules.common virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
modules_for modules.fs fuse virtiofs
# crc32c for metadata_csum (ext4 and jbd2 ask for it only as a soft dependency).
modules_for modules.blk virtio_blk crc32c_generic ext4
# 9p over virtio, for host directories shared with run-guest.sh --share.
modules_for modules.9p 9p 9pnet_virtio
for f in common fs blk 9p; do
    log "modules.$f: $(tr '\n' ' ' <"$ROOT/etc/vhe/modules.$f")"
done

# ---- initramfs ----------------------------------------------------------------------------------
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,mnt,root,vhe}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
install -m 0755 "$HERE/guest-init.sh" "$ROOT/init"
echo "$release" >"$ROOT/etc/vhe/kernel-release"
# The kernel's built-in initramfs normally provides /dev/console; add it too when we can.
[ "$(id -u)" = 0 ] && mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true
(cd "$ROOT" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$WORK/initramfs.cpio"

# ---- kernel -------------------------------------------------------------------------------------
# Under TCG the bzImage spends seconds decompressing itself; the ELF vmlinux inside it boots
# directly through PVH (the kernel has CONFIG_PVH). Find the compressed payload and unpack it.
extract_vmlinux() { # bzImage out
    local img=$1 out=$2 magic tool off
    for spec in '\x28\xb5\x2f\xfd:zstd -q -dc' '\xfd\x37\x7a\x58\x5a\x00:xz -q -dc --single-stream' \
                '\x1f\x8b\x08:gzip -q -dc'; do
        magic=${spec%%:*} tool=${spec#*:}
        for off in $(LC_ALL=C grep -obUaP "$magic" "$img" 2>/dev/null | cut -d: -f1 | head -n 8); do
            tail -c +$((off + 1)) "$img" | $tool >"$out" 2>/dev/null || true
            if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
                return 0
            fi
        done
    done
    rm -f "$out"
    return 1
}
cp "$vmlinuz" "$WORK/vmlinuz"
if extract_vmlinux "$vmlinuz" "$WORK/vmlinux"; then
    # PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18): without it QEMU cannot boot the ELF.
    if command -v readelf >/dev/null && ! readelf -n "$WORK/vmlinux" 2>/dev/null | grep -q 'note type: (0x00000012)\|PHYS32_ENTRY'; then
        log "vmlinux has no PVH entry note; the guest will boot the bzImage"
        rm -f "$WORK/vmlinux"
    fi
else
    log "could not extract vmlinux from the bzImage; the guest will boot the bzImage (slower under TCG)"
fi

rm -f "$OUT/vmlinux"
for f in vmlinuz vmlinux initramfs.cpio; do
    [ -f "$WORK/$f" ] && mv -f "$WORK/$f" "$OUT/$f"
done
echo "$release" >"$OUT/kernel-release"
basename "$deb" >"$OUT/kernel-package"
cp "$ROOT/etc/vhe/modules."* "$OUT/"
echo "$stamp" >"$OUT/stamp"
log "built: kernel $release, $(du -h "$OUT/initramfs.cpio" | cut -f1) initramfs, in $OUT"
