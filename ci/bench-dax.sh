#!/usr/bin/env bash
# DAX window benchmark: 4 KiB random reads and writes of a 256 MiB file through the DAX window
# (the test frontend maps the daemon's page cache into its window and loads/stores there) and
# through FUSE READ/WRITE requests on the same daemon, plus the latency of one SETUPMAPPING and
# of an fsync with the whole file mapped writable. Prints microseconds per operation and the
# ratios FUSE / window. No guest kernel is involved: this measures the daemon's side only.
# Usage: bash ci/bench-dax.sh [OPS]   (random operations per kind, default 20000). Needs
# e2fsprogs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mke2fs >/dev/null || { echo "bench-dax: mke2fs (e2fsprogs) is required" >&2; exit 1; }
cargo build --release --quiet
BENCH_OPS=${1:-20000} cargo bench --quiet --bench dax_window
