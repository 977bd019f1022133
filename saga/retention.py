"""Retention of idempotency records: kept for a window, then pruned.

A stored key is what makes a replay of its saga id harmless, so pruning bounds how late a
replay can come: a saga id replayed after its records were pruned runs as a new saga. Keys
of sagas still unfinished in any orchestrator's log under the home are never pruned, however
old, and nothing is pruned while a log there cannot be read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from twopc.participants import Participant
from twopc.saga.errors import SagaError
from twopc.saga.logs import all_orchestrators

DEFAULT_RETENTION = 7 * 24 * 3600.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``12h`` or ``7d``; ``ValueError`` otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"duration {text!r} must look like 90s, 15m, 12h or 7d")
    return float(match.group(1)) * _UNIT[match.group(2)]


def prune(
    participants: Sequence[Participant], home: Path, retention: float, *, now: float | None = None
) -> dict[str, int]:
    """Delete idempotency records older than ``retention`` seconds; returns rows per side."""
    keep = _unfinished_saga_ids(home)
    cutoff = (time.time() if now is None else now) - retention
    query = "DELETE FROM saga_steps WHERE created_at < %s"
    params: list[object] = [cutoff]
    if keep:
        # Placeholders only are formatted in; the saga ids themselves are bound.
        query += f" AND saga_id NOT IN ({', '.join(['%s'] * len(keep))})"
        params += sorted(keep)
    pruned = {}
    for participant in participants:
        with participant.local_transaction() as local:
            pruned[participant.name] = local.execute(query, params).rowcount
    return pruned


def _unfinished_saga_ids(home: Path) -> set[str]:
    keep = set()
    for entry in all_orchestrators(home):
        if entry.error:
            raise SagaError(
                f"not pruning: the log of orchestrator {entry.orchestrator} is unreadable "
                f"({entry.error}), so its unfinished sagas are unknown"
            )
        keep |= {state.saga_id for state in entry.sagas}
    return keep
