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

echo "==> tests"
.venv/bin/pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: that is a failure of the test run, not a pass" >&2
  rc=1
fi

if [ $started_here -eq 1 ]; then
  echo "==> native stack down"
  $IOT stack down
fi
exit $rc
