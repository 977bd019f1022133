#!/usr/bin/env bash
# The demo: set-up, throwaway servers, schema, one cross-database transfer each way, balances.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
twopc() { .venv/bin/twopc "$@"; }

echo "==> twopc dev up"
twopc dev up
eval "$(twopc dev env)"
echo "==> twopc init"
twopc init
echo "==> twopc transfer pg:a1 mysql:a2 100.00   (PostgreSQL -> MariaDB, two-phase commit)"
twopc transfer pg:a1 mysql:a2 100.00
echo "==> twopc transfer mysql:a3 pg:a4 42.50    (MariaDB -> PostgreSQL, two-phase commit)"
twopc transfer mysql:a3 pg:a4 42.50
echo "==> twopc balances pg:a1 mysql:a2 mysql:a3 pg:a4"
twopc balances pg:a1 mysql:a2 mysql:a3 pg:a4
echo
echo "The servers keep running; stop them with: .venv/bin/twopc dev down"
