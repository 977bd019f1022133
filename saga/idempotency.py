"""Run a participant-side change at most once, keyed by an idempotency key.

The key, the request it serves and the change's result are written to ``saga_steps`` in the
same local transaction as the business change. The key is inserted first: a second run of
the same key (a replay, a retry after a lost acknowledgement, a racing orchestrator) either
waits on the first run's uncommitted row and then hits the duplicate key, or finds it
committed — either way it returns the stored result and changes nothing.

A key is bound to its request: a second run with a *different* request (other accounts,
another amount) raises :class:`KeyReused`, naming what the key was first used for; it is
never answered with the stored result of another request. The pattern uses only plain
``INSERT``/``SELECT``/``UPDATE``, so it reads the same on PostgreSQL and MySQL/MariaDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from twopc.participants import (
    PERMANENT,
    DuplicateKey,
    LocalTransaction,
    Participant,
    ParticipantError,
)

APPLIED = "applied"  # the business change was made
REJECTED = "rejected"  # a business rule refused it; nothing changed, and it never will
CANCELLED = "cancelled"  # the orchestrator fenced the key before the step ran: it never will

_CLAIM = (
    "INSERT INTO saga_steps (idempotency_key, saga_id, request, result, created_at) "
    "VALUES (%s, %s, %s, %s, %s)"
)
_RECORD = "UPDATE saga_steps SET result = %s WHERE idempotency_key = %s"
_STORED = "SELECT request, result FROM saga_steps WHERE idempotency_key = %s"
_CLAIMED = json.dumps({"status": "claimed"})  # never visible: replaced before the commit


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


class KeyReused(Exception):
    """An idempotency key came back with a request other than the one it was first used for:
    refused, nothing changed (no retry can fix it, so it is not a ParticipantError)."""

    def __init__(self, key: str, request: str, first: str) -> None:
        super().__init__(
            f"idempotency key {key} was first used for {first}; refusing to reuse it for {request}"
        )
        self.key = key
        self.first_use = first


class CommitUncertain(ParticipantError):
    """The local transaction failed while committing: it may or may not have committed.

    Retrying under the same key settles it (the stored result comes back if it did).
    """


Change = Callable[[LocalTransaction], StepResult]


@dataclass(frozen=True)
class Keyed:
    """One use of an idempotency key: the key, its saga, and the request it serves (a
    canonical description, compared as text)."""

    key: str
    saga_id: str
    request: str


def run_once(
    participant: Participant, keyed: Keyed, change: Change, *, refusals: bool = True
) -> StepResult:
    """Apply ``change`` under ``keyed.key`` unless the key is already stored; return the result.

    With ``refusals`` (forward steps), a permanent statement error (a constraint, an
    out-of-range value) becomes a stored REJECTED result, so a replay gets the same answer.
    Without (compensations, which must not be refused: an operator fixes the cause and
    retries), it propagates like any other participant error: nothing was applied, except
    for :class:`CommitUncertain`. A key stored for another request raises :class:`KeyReused`.
    """
    try:
        return _apply(participant, keyed, change)
    except DuplicateKey:
        return stored_result(participant, keyed)
    except PERMANENT as err:
        if not refusals:
            raise
        rejected = StepResult(REJECTED, {"reason": _first_line(err)})
        return claim(participant, keyed, rejected)


def _apply(participant: Participant, keyed: Keyed, change: Change) -> StepResult:
    committing = False
    try:
        with participant.local_transaction() as local:
            local.execute(_CLAIM, (keyed.key, keyed.saga_id, keyed.request, _CLAIMED, time.time()))
            result = change(local)
            local.execute(_RECORD, (result.stored(), keyed.key))
            committing = True  # the context manager commits on leaving the block
    except ParticipantError as err:
        if committing:
            raise CommitUncertain(f"{err} (while committing {keyed.key}: outcome unknown)") from err
        raise
    return result


def claim(participant: Participant, keyed: Keyed, result: StepResult) -> StepResult:
    """Store ``result`` under the key with no business change (a rejection or a fence);
    if the key is already stored, return what is stored instead (:class:`KeyReused` if it
    was stored for another request)."""
    try:
        with participant.local_transaction() as local:
            stored = result.stored()
            local.execute(_CLAIM, (keyed.key, keyed.saga_id, keyed.request, stored, time.time()))
    except DuplicateKey:
        return stored_result(participant, keyed)
    return result


def stored_result(participant: Participant, keyed: Keyed) -> StepResult:
    """The result stored under the key, marked replayed; ``ParticipantError`` if none."""
    found = lookup(participant, keyed)
    if found is None:
        raise ParticipantError(f"{participant.server}: key {keyed.key} vanished after a duplicate")
    return found


def lookup(participant: Participant, keyed: Keyed) -> StepResult | None:
    """The result stored under the key (marked replayed), or None when the key is unused;
    :class:`KeyReused` when it was stored for another request."""
    with participant.local_transaction() as local:
        row = local.execute(_STORED, (keyed.key,)).fetchone()
    if row is None:
        return None
    if row[0] != keyed.request:
        raise KeyReused(keyed.key, keyed.request, first_use(row[0]))
    try:
        return replace(StepResult.from_json(json.loads(row[1])), replayed=True)
    except ValueError as err:
        raise ParticipantError(
            f"{participant.server}: stored result of {keyed.key} is bad: {err}"
        ) from err


def first_use(stored_request: str | None) -> str:
    """What a stored request was, for a message: its saga's request and its step."""
    if stored_request is None:
        return "a request recorded before keys were bound to requests"
    described = _parsed(stored_request)
    if described is None:
        return stored_request
    return f"{described['saga']} ({described.get('step', '?')})"


def saga_of(stored_request: str | None) -> str | None:
    """The saga request a stored request belongs to (None when it does not say)."""
    described = None if stored_request is None else _parsed(stored_request)
    return None if described is None else str(described["saga"])


def _parsed(stored_request: str) -> dict[str, Any] | None:
    try:
        described = json.loads(stored_request)
    except ValueError:
        return None
    return described if isinstance(described, dict) and "saga" in described else None


_SAGA_ROWS = "SELECT idempotency_key, request FROM saga_steps WHERE idempotency_key IN ({})"


def stored_requests(participant: Participant, keys: Sequence[str]) -> dict[str, str | None]:
    """The request stored under each of ``keys`` that is in use here."""
    if not keys:
        return {}
    placeholders = ", ".join(["%s"] * len(keys))  # placeholders only; values are bound
    with participant.local_transaction() as local:
        rows = local.execute(_SAGA_ROWS.format(placeholders), list(keys)).fetchall()
    return {str(key): (None if request is None else str(request)) for key, request in rows}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
