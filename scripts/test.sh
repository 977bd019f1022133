#!/usr/bin/env bash
# The whole test suite: set-up (idempotent), lint, type check, then the tests against real,
# throwaway PostgreSQL and MariaDB servers that the tests start and stop themselves.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
# Three workers, a test file each at a time (its module fixtures made once): most tests wait on
# servers, processes and timeouts rather than compute, so they overlap well on two CPUs. Each
# worker starts servers of its own. The scenarios that freeze or crash a server while many
# processes hold locks are timed against the servers' own lock waits: they run afterwards,
# alone on the machine.
ALONE=(tests/test_faults_servers.py tests/test_faults_contention.py)
.venv/bin/python -m pytest -q -n 3 --dist loadfile "${ALONE[@]/#/--ignore=}" "$@"
exec .venv/bin/python -m pytest -q "${ALONE[@]}" "$@"
