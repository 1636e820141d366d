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
