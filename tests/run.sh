#!/usr/bin/env bash
# `make test`: lint, bring the native stack up (if it is not already), run every test, and stop the
# stack again only if this run started it.
set -uo pipefail
cd "$(dirname "$0")/.."
IOT=.venv/bin/iot

echo "==> lint: ruff and mypy"
.venv/bin/ruff check . || exit 1
.venv/bin/mypy || exit 1

started_here=0
if ! $IOT stack status >/dev/null 2>&1; then
  # Stopped again at the end only if nothing of it ran before: `up` also completes a running stack
  # (a service that died, a broker started before its TLS listener existed), which stays up.
  if ! $IOT stack status --json 2>/dev/null | grep -q '"pid": [0-9]'; then
    started_here=1
  fi
  echo "==> native stack up"
  $IOT stack up || exit 1
fi

no_tests() {
  echo "pytest collected no tests: that is a failure of the test run, not a pass" >&2
}

# The rig's end-to-end runs (about 5 minutes) and the short soak (about 3) spend their time mostly
# waiting out scripted faults and the restarts after them, each on a broker, Kafka, gateway and
# backend of its own, so nothing of the rest's stack is touched: with no arguments they run in a
# second pytest beside the rest, and their output follows the rest's. The rest leaves most of a core
# idle (measured 2026-12-08 at load ~15: ~650 CPU-s in 43 min, its stack included), the rig takes about a fifth of
# a core and the soak about 0.8 of one for its ~3 minutes (196 CPU-s in 240 s at load 15).
# With arguments, one pytest runs exactly what was asked.
BESIDE=(tests/hil/rig/test_run_virtual.py tests/hil/rig/test_pytest_plugin.py tests/soak/test_short_soak.py)
if [ $# -eq 0 ]; then
  # Each session a basetemp of its own: pytest prunes old ones at start, and a run of five minutes
  # must not lose its folders to a session that starts beside it.
  tmp=$(mktemp -d /tmp/iot-make-test.XXXXXX)
  echo "==> tests (${BESIDE[*]} beside the rest; their output after it)"
  .venv/bin/pytest --basetemp "$tmp/beside" -p no:cacheprovider "${BESIDE[@]}" >"$tmp/beside.log" 2>&1 &
  beside=$!
  # A background job of a script ignores Ctrl-C: stop it with the run.
  trap 'kill -TERM $beside 2>/dev/null' EXIT
  ignore=()
  for path in "${BESIDE[@]}"; do ignore+=(--ignore "$path"); done
  .venv/bin/pytest --basetemp "$tmp/main" "${ignore[@]}"
  rc=$?
  [ $rc -eq 5 ] && { no_tests; rc=1; }
  wait $beside
  rc_beside=$?
  trap - EXIT
  echo "==> tests beside the rest: ${BESIDE[*]}"
  cat "$tmp/beside.log"
  [ $rc_beside -eq 5 ] && { no_tests; rc_beside=1; }
  [ $rc -eq 0 ] && rc=$rc_beside
  rm -rf "$tmp"
else
  echo "==> tests"
  .venv/bin/pytest "$@"
  rc=$?
  [ $rc -eq 5 ] && { no_tests; rc=1; }
fi

if [ $started_here -eq 1 ]; then
  echo "==> native stack down"
  $IOT stack down
fi
exit $rc
