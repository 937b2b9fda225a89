#!/usr/bin/env bash
# Runs the given pytest selection RUNS times in a row while HOGS processes keep CPUs busy, and prints
# how many runs passed. For tests that must hold on a busy machine (the group-membership tests):
#   scripts/repeat-under-load.sh 10 2 tests/ingest/test_group_membership.py
# Each run is a fresh pytest session (its own Kafka and Neo4j); logs go to build/under-load/.
set -uo pipefail
if [[ $# -lt 3 ]]; then
    echo "usage: $0 RUNS HOGS PYTEST_ARGS..." >&2
    exit 2
fi
runs=$1 hogs=$2
shift 2
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
logs="$root/build/under-load"
mkdir -p "$logs"
hog_pids=()
stop_hogs() { ((${#hog_pids[@]})) && kill "${hog_pids[@]}" 2>/dev/null; }
trap stop_hogs EXIT
for _ in $(seq "$hogs"); do
    (while :; do :; done) &
    hog_pids+=($!)
done
passed=0
for run in $(seq "$runs"); do
    if (cd "$root" && "$python" -m pytest -q -p no:cacheprovider "$@") >"$logs/run-$run.log" 2>&1; then
        passed=$((passed + 1))
        echo "run $run: passed"
    else
        echo "run $run: FAILED (log: $logs/run-$run.log)"
    fi
done
echo "{\"runs\": $runs, \"passed\": $passed, \"busy_processes\": $hogs}"
[[ $passed -eq $runs ]]
