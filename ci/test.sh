#!/usr/bin/env bash
# The project's test command: formatting, lints, the release build, and every test (unit tests and
# the integration tests that mount real ext4 images through FUSE and loop devices).
# Usage: sudo bash ci/test.sh   (or `sudo bash .ci/run`, which first installs missing packages)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

fail() { echo "ci/test.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root: the integration tests mount FUSE file systems and loop devices (sudo bash ci/test.sh)"
[ -c /dev/fuse ] || fail "/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container /dev/fuse"
[ -e /dev/loop-control ] || fail "/dev/loop-control is missing: load the loop module (modprobe loop)"
for tool in mke2fs e2fsck debugfs setfacl setfattr; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install e2fsprogs acl attr), or run bash .ci/run"
done
command -v cargo >/dev/null || fail "cargo is not installed (https://rustup.rs)"

# rustfmt and clippy come with rustup's default profile; add them when a minimal one lacks them.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || fail "cargo fmt/clippy are missing and rustup is not there to add them"
    rustup component add rustfmt clippy
fi

step() { echo; echo "==> $*"; }

step "cargo fmt --check"
cargo fmt --check

step "cargo build --release"
cargo build --release

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --release --no-fail-fast"
cargo test --release --no-fail-fast

# A fast slice of fstests through the host mount (FSTYP=fuse): fsx and fsstress, sparse and
# mmap data tests, ACLs and file handles, atime options, and setuid/setgid drops.
# ci/xfstests.sh installs fstests' build dependencies, builds the unmodified snapshot from
# ../shared/fstests (or --fstests DIR|TARBALL) outside the repository, and fails on any failure
# or on an image e2fsck finds unclean.
step "fstests: a fast slice through the host mount"
bash ci/xfstests.sh --tests "generic/001 generic/003 generic/013 generic/070 generic/075 generic/091 generic/112 generic/124 generic/247 generic/263 generic/319 generic/375 generic/426 generic/469 generic/683 generic/756" \
    --workdir /tmp/vhe-ci-xfstests --test-timeout 300 --timeout 1800

# The guest test: a QEMU guest (TCG where KVM is missing) mounts the image over virtiofs (our fs
# backend) and over virtio-blk (our blk backend, the guest's own ext4, with writes and e2fsck),
# and compares every file's checksum with the host's; both also run a write workload (files from
# empty to ~20 MiB, overwrites with fsync, truncates, renames) whose result the host checks with
# e2fsck -fn and a read-back of every file.
step "guest test: vhost-ext4 fs (virtiofs, 2 request queues, guest writes, e2fsck)"
bash vm-images/guest-test.sh target/release/vhost-ext4 --modes fs --queues 2 --write --timeout 600
step "guest test: vhost-ext4 blk (guest ext4, writes, e2fsck)"
bash vm-images/guest-test.sh target/release/vhost-ext4 --modes blk --write --timeout 600
step "guest test: namespace changes over virtiofs, then e2fsck -fn on the host"
work=$(mktemp -d /tmp/vhe-ci-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
mke2fs -q -F -t ext4 "$work/img" 64M
bash vm-images/run-guest.sh --quiet --mode fs --image "$work/img" --daemon target/release/vhost-ext4 --timeout 300 \
    --cmd 'set -e; mkdir -p a/b/c; for i in $(seq 1 300); do touch a/b/f$i; done; mv a/b/f1 a/c_moved;
           ln -s a/c_moved link; ln a/b/f2 a/hard; rm a/b/f3 a/b/f4; rmdir a/b/c; setfattr -n user.k -v v a 2>/dev/null || true;
           chmod 700 a; ls a/b | wc -l; sync'
e2fsck -fn "$work/img"
debugfs -R "ls -l /a" "$work/img" 2>/dev/null | grep -q c_moved || fail "the guest's rename is not in the image"
echo "guest namespace test: e2fsck clean"
