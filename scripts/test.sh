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
exec .venv/bin/python -m pytest -q "$@"
