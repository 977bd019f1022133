"""Run a participant-side change at most once, keyed by an idempotency key.

The key and the change's result are written to ``saga_steps`` in the same local
transaction as the business change. The key is inserted first: a second run of the same key
(a replay, a retry after a lost acknowledgement, a racing orchestrator) either waits on the
first run's uncommitted row and then hits the duplicate key, or finds it committed — either
way it returns the stored result and changes nothing. The pattern uses only plain
``INSERT``/``SELECT``/``UPDATE``, so it reads the same on PostgreSQL and MySQL/MariaDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from participants import LocalTransaction, Participant, ParticipantError, StatementFailed

APPLIED = "applied"  # the business change was made
REJECTED = "rejected"  # a business rule refused it; nothing changed, and it never will
CANCELLED = "cancelled"  # the orchestrator fenced the key before the step ran: it never will

_CLAIM = (
    "INSERT INTO saga_steps (idempotency_key, saga_id, result, created_at) VALUES (%s, %s, %s, %s)"
)
_RECORD = "UPDATE saga_steps SET result = %s WHERE idempotency_key = %s"
_STORED = "SELECT result FROM saga_steps WHERE idempotency_key = %s"
_CLAIMED = json.dumps({"status": "claimed"})  # never visible: replaced before the commit

_DUPLICATE_KEY = {"23505", "1062"}  # PostgreSQL unique_violation, MySQL ER_DUP_ENTRY
# Errors no retry can fix: PostgreSQL data exceptions (22…) and integrity violations (23…);
# MySQL out-of-range, truncated or bad values, NULLs, foreign keys, CHECK constraints.
_PERMANENT_MYSQL = {"1048", "1264", "1265", "1366", "1406", "1451", "1452", "1690", "3819", "4025"}


@dataclass(frozen=True)
class StepResult:
    """What a step or compensation did, as stored beside its key.

    ``replayed`` is not stored: it says this run found the result already there.
    """

    status: str
    detail: Mapping[str, str] = field(default_factory=dict)
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "detail": dict(self.detail), "replayed": self.replayed}

    @classmethod
    def from_json(cls, document: Any) -> StepResult:
        """Rebuild a result from :meth:`to_json` (or the stored form); ``ValueError`` if bad."""
        if not isinstance(document, dict) or not isinstance(document.get("status"), str):
            raise ValueError(f"not a step result: {document!r}")
        detail = document.get("detail", {})
        if not isinstance(detail, dict):
            raise ValueError(f"step result detail is not an object: {detail!r}")
        replayed = bool(document.get("replayed", False))
        return cls(document["status"], {str(k): str(v) for k, v in detail.items()}, replayed)

    def stored(self) -> str:
        return json.dumps({"status": self.status, "detail": dict(self.detail)}, sort_keys=True)

    @property
    def reason(self) -> str:
        return self.detail.get("reason", "")


class CommitUncertain(ParticipantError):
    """The local transaction failed while committing: it may or may not have committed.

    Retrying under the same key settles it (the stored result comes back if it did).
    """


Change = Callable[[LocalTransaction], StepResult]


def run_once(participant: Participant, saga_id: str, key: str, change: Change) -> StepResult:
    """Apply ``change`` under ``key`` unless the key is already stored; return the result.

    A permanent statement error (a constraint, an out-of-range value) becomes a stored
    REJECTED result, so a replay gets the same answer. Other participant errors propagate:
    nothing was applied, except for :class:`CommitUncertain`.
    """
    try:
        return _apply(participant, saga_id, key, change)
    except StatementFailed as err:
        if err.code in _DUPLICATE_KEY:
            return stored_result(participant, key)
        if not is_permanent(err):
            raise
        rejected = StepResult(REJECTED, {"reason": _first_line(err)})
        return claim(participant, saga_id, key, rejected)


def _apply(participant: Participant, saga_id: str, key: str, change: Change) -> StepResult:
    committing = False
    try:
        with participant.local_transaction() as local:
            local.execute(_CLAIM, (key, saga_id, _CLAIMED, time.time()))
            result = change(local)
            local.execute(_RECORD, (result.stored(), key))
            committing = True  # the context manager commits on leaving the block
    except ParticipantError as err:
        if committing:
            raise CommitUncertain(f"{err} (while committing {key}: outcome unknown)") from err
        raise
    return result


def claim(participant: Participant, saga_id: str, key: str, result: StepResult) -> StepResult:
    """Store ``result`` under ``key`` with no business change (a rejection or a fence);
    if the key is already stored, return what is stored instead."""
    try:
        with participant.local_transaction() as local:
            local.execute(_CLAIM, (key, saga_id, result.stored(), time.time()))
    except StatementFailed as err:
        if err.code in _DUPLICATE_KEY:
            return stored_result(participant, key)
        raise
    return result


def stored_result(participant: Participant, key: str) -> StepResult:
    """The result stored under ``key``, marked replayed; ``ParticipantError`` if none."""
    found = lookup(participant, key)
    if found is None:
        raise ParticipantError(f"{participant.server}: key {key} vanished after a duplicate")
    return found


def lookup(participant: Participant, key: str) -> StepResult | None:
    """The result stored under ``key`` (marked replayed), or None when the key is unused."""
    with participant.local_transaction() as local:
        row = local.execute(_STORED, (key,)).fetchone()
    if row is None:
        return None
    try:
        return replace(StepResult.from_json(json.loads(row[0])), replayed=True)
    except ValueError as err:
        raise ParticipantError(
            f"{participant.server}: stored result of {key} is bad: {err}"
        ) from err


def is_permanent(err: StatementFailed) -> bool:
    """Whether no retry can make the statement succeed (a data or constraint error)."""
    code = err.code or ""
    return code.startswith(("22", "23")) or code in _PERMANENT_MYSQL


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
