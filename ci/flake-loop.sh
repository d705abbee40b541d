#!/usr/bin/env bash
# Is the suite flaky? Runs the README's test command RUNS times in a row in this checkout and
# stops at the first red run, keeping its output. From run BUSY_FROM on, another process keeps
# one core busy (`yes > /dev/null`), as a CI neighbour would. Not part of the default test command:
#   ci/flake-loop.sh [RUNS] [BUSY_FROM]      (default 20 runs, busy from run 16)
# Writes target/flake-loop/run-N.log and a line a run to target/flake-loop/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
busy_from=${2:-16}
out=target/flake-loop
mkdir -p "$out"
: >"$out/summary.txt"
busy_pid=
trap '[ -n "$busy_pid" ] && kill "$busy_pid" 2>/dev/null' EXIT
for n in $(seq 1 "$runs"); do
  if [ "$n" -ge "$busy_from" ] && [ -z "$busy_pid" ]; then
    yes >/dev/null &
    busy_pid=$!
  fi
  busy=$([ -n "$busy_pid" ] && echo "core busy" || echo "quiet")
  start=$(date +%s)
  # The README's test command (keep the three in step: README, .ci/run, here):
  (cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings && cargo test --workspace) \
    >"$out/run-$n.log" 2>&1
  rc=$?
  line="run $n/$runs: $([ $rc -eq 0 ] && echo green || echo RED) in $(( $(date +%s) - start )) s ($busy) at $(date -u +%H:%M:%S)"
  echo "$line" | tee -a "$out/summary.txt"
  if [ $rc -ne 0 ]; then
    grep -E "FAILED|panicked|failed|Step failed" "$out/run-$n.log" | head -20
    exit 1
  fi
done
echo "$runs of $runs green" | tee -a "$out/summary.txt"
