#!/usr/bin/env bash
# The harness's Docker path leaves nothing behind, however a test process ends: for each way of
# ending (normal exit, failed scenarios, Ctrl-C, SIGTERM, SIGKILL of the test process) it runs
# test binaries on a MariaDB container, ends them, and checks that `docker ps -a` shows no
# container of the harness, and that no oma-api process or harness temporary directory is left.
#
# Needs a running Docker engine and an image tagged mariadb:11.4 (pulled, or built here with
# ci/build-mariadb-image.sh). Not part of the default test command:
#   ci/docker-path-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

docker info >/dev/null 2>&1 || { echo "no Docker engine answers" >&2; exit 2; }
docker image inspect mariadb:11.4 >/dev/null 2>&1 || { echo "no image mariadb:11.4 (ci/build-mariadb-image.sh)" >&2; exit 2; }
unset OMA_TEST_DATABASE_URL
# Grace after the last user (test-support's IDLE_GRACE) plus the watchdog's half-second steps.
settle=12

echo "[check] building the test binaries"
cargo test -p oma --test database --no-run --quiet
cargo test -p oma-acceptance --test acceptance --no-run --quiet

leftovers() {
  local containers processes dirs
  containers=$(docker ps -aq --filter label=oma-test-support)
  processes=$(pgrep -f 'target/debug/oma-api' || true)
  dirs=$(ls -d "${TMPDIR:-/tmp}"/oma-test-mariadb-* "${TMPDIR:-/tmp}"/oma-test-children-* 2>/dev/null || true)
  echo "containers=[${containers//$'\n'/ }] oma-api=[${processes//$'\n'/ }] dirs=[${dirs//$'\n'/ }]"
  [ -z "$containers" ] && [ -z "$processes" ] && [ -z "$dirs" ]
}

expect_clean() {
  local way=$1 waited=0
  until leftovers >/dev/null; do
    if [ $waited -ge $settle ]; then
      echo "[check] FAIL after $way: $(leftovers)" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "[check] ok after $way ($waited s): nothing left"
}

# Wait until a container of the harness runs and an OMA process exists (the run is under way).
wait_under_way() {
  for _ in $(seq 1 600); do
    if [ -n "$(docker ps -q --filter label=oma-test-support)" ] && pgrep -f 'target/debug/oma-api' >/dev/null; then
      sleep 2
      return 0
    fi
    sleep 0.2
  done
  echo "[check] the run never got under way" >&2
  exit 1
}

leftovers >/dev/null || { echo "[check] not clean before the check: $(leftovers)" >&2; exit 1; }

# Runs "$@" and fails unless a container of the harness ran meanwhile (so the Docker path is what
# was checked); returns the command's exit status.
on_docker() {
  local seen status=0
  seen=$(mktemp)
  ( for _ in $(seq 1 1500); do
      if [ -n "$(docker ps -q --filter label=oma-test-support)" ]; then echo yes >"$seen"; break; fi
      sleep 0.2
    done ) &
  local watcher=$!
  "$@" >/dev/null 2>&1 || status=$?
  kill $watcher 2>/dev/null || true
  if [ "$(cat "$seen")" != yes ]; then echo "[check] no container of the harness ran: not the Docker path" >&2; exit 1; fi
  rm -f "$seen"
  return $status
}

echo "[check] 1. normal exit"
on_docker cargo test -p oma --test database --quiet
expect_clean "a normal exit"

echo "[check] 2. failed scenarios (an OMA under test that exits at once)"
if OMA_UNDER_TEST=false on_docker cargo test -p oma-acceptance --test acceptance --quiet -- --name "Normal startup with no active jobs"; then
  echo "[check] the failing run passed" >&2
  exit 1
fi
expect_clean "failed scenarios"

for signal in INT TERM KILL; do
  if [ "$signal" = INT ]; then
    echo "[check] 3. Ctrl-C: SIGINT to the process group of cargo test, as a terminal sends it"
  else
    echo "[check] 3. SIG$signal to the test process alone"
  fi
  setsid cargo test -p oma-acceptance --test acceptance --quiet >/dev/null 2>&1 &
  cargo_pid=$!
  wait_under_way
  test_pid=$(pgrep -f 'target/debug/deps/acceptance-' | head -1)
  if [ "$signal" = INT ]; then
    kill -INT -- "-$(ps -o pgid= "$cargo_pid" | tr -d ' ')"
  else
    kill "-$signal" "$test_pid"
  fi
  wait "$cargo_pid" 2>/dev/null || true
  expect_clean "SIG$signal"
done
echo "[check] the Docker path left nothing behind in every way of ending"
