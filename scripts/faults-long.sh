#!/usr/bin/env bash
# The fault harness's long form: every tests/test_faults_*.py test, with the random-kill soak
# at 50 rounds instead of 10, and the outbox's kill soak (tests/test_outbox_soak.py) at 24
# kills of the relay and the consumer instead of 6, then the run's figures summed into the
# table RELIABILITY.md shows.
# Extra arguments go to pytest (e.g. -x, or -k soak). TWOPC_FAULTS_SEED=N replays a soak.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

figures="$(mktemp)"
trap 'rm -f "$figures"' EXIT
status=0
TWOPC_FAULTS_LONG=1 TWOPC_FAULTS_FIGURES="$figures" \
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_faults_*.py tests/test_outbox_soak.py "$@" || status=$?

.venv/bin/python - "$figures" <<'PY'
import json
import sys
from collections import defaultdict

COLUMNS = [
    ("cases", "cases"), ("transfers", "transfers"), ("kills", "coordinators killed"),
    ("signals", "Ctrl-C/SIGTERM"), ("server_faults", "server faults"),
    ("connection_kills", "sessions killed"), ("bad_inputs", "bad inputs"),
    ("failed", "cases failing"), ("problems", "violations found"),
]
rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
with open(sys.argv[1]) as lines:
    for line in lines:
        figure = json.loads(line)
        for key, _ in COLUMNS:
            rows[figure["scenario"]][key] += int(figure.get(key, 0))
print("| scenario | " + " | ".join(title for _, title in COLUMNS) + " |")
print("|---" * (len(COLUMNS) + 1) + "|")
total: dict[str, int] = defaultdict(int)
for scenario, counts in rows.items():
    print(f"| {scenario} | " + " | ".join(str(counts[key]) for key, _ in COLUMNS) + " |")
    for key, _ in COLUMNS:
        total[key] += counts[key]
print("| **total** | " + " | ".join(f"**{total[key]}**" for key, _ in COLUMNS) + " |")
PY
exit "$status"
