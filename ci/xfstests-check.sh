#!/usr/bin/env bash
# Run fstests' ./check with a per-test watchdog. ci/xfstests.sh runs this on the host (host mode)
# and inside the QEMU guest's chroot (guest mode); it needs nothing but bash, coreutils and procps.
#
# Usage: xfstests-check.sh FSTESTS_DIR RESULTS_DIR OUTPUT_FILE TEST_TIMEOUT TOTAL_TIMEOUT CHECK-ARGS...
#
# ./check runs in FSTESTS_DIR with RESULT_BASE=RESULTS_DIR and its output in OUTPUT_FILE. A test
# running longer than TEST_TIMEOUT seconds has its processes killed (check records it as failed and
# goes on); the whole run is stopped after TOTAL_TIMEOUT seconds. Exits with check's status (124
# when the total time limit hit).
set -euo pipefail
[ $# -ge 6 ] || { sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
src=$1 results=$2 out=$3 test_timeout=$4 total_timeout=$5
shift 5
[ -x "$src/check" ] || { echo "xfstests-check.sh: no fstests check script in $src" >&2; exit 2; }
for tool in setsid timeout ps; do
    command -v "$tool" >/dev/null || { echo "xfstests-check.sh: $tool is missing" >&2; exit 2; }
done

set +e
(
    cd "$src" || exit 1
    export RESULT_BASE="$results"
    exec setsid timeout -k 30 "$total_timeout" ./check -R xunit "$@"
) >"$out" 2>&1 &
check_pid=$!
# Only descendants of our check run are touched.
descendants() {
    local p
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$p"
        descendants "$p"
    done
}
current="" since=$(date +%s)
while kill -0 "$check_pid" 2>/dev/null; do
    sleep 5
    now_test=$(grep -oE '^[a-z0-9]+/[0-9]+' "$out" 2>/dev/null | tail -1 || true)
    if [ "$now_test" != "$current" ]; then
        current=$now_test since=$(date +%s)
    elif [ -n "$current" ] && [ $(($(date +%s) - since)) -gt "$test_timeout" ]; then
        echo "ci/xfstests.sh: $current ran over ${test_timeout}s: killing it" | tee -a "$out" >&2
        for p in $(descendants "$check_pid"); do
            if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "tests/$current"; then
                kill -KILL "$p" $(descendants "$p") 2>/dev/null
            fi
        done
        since=$(date +%s)
    fi
done
wait "$check_pid"
check_rc=$?
[ "$check_rc" = 124 ] && echo "ci/xfstests.sh: check ran over ${total_timeout}s and was stopped" >&2
exit "$check_rc"
