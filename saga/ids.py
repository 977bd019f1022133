"""Saga ids, orchestrator ids, and the idempotency keys derived from a saga id.

The caller owns the saga id: a step's key is ``<saga_id>-step-<n>`` and a compensation's is
``<saga_id>-comp-<n>``, so running the same saga id again finds every key already stored and
changes nothing. No other code builds these strings.
"""

from __future__ import annotations

import re
import secrets

from twopc.txlog.home import is_owner_id

_SAGA_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class InvalidSagaId(ValueError):
    """A saga id that cannot be stored in the participants' tables or a log."""


def check_saga_id(saga_id: str) -> str:
    """Return ``saga_id`` when it is 1-64 characters of ``[A-Za-z0-9._:-]``; raise otherwise."""
    if not _SAGA_ID.fullmatch(saga_id):
        raise InvalidSagaId(
            f"saga id {saga_id!r} must be 1-64 letters, digits, '.', '_', ':' or '-'"
        )
    return saga_id


def fresh_saga_id() -> str:
    """A new unique saga id, for a caller that does not bring its own."""
    return f"saga-{secrets.token_hex(10)}"


def fresh_orchestrator_id() -> str:
    """A unique id for a one-shot orchestrator (such as one CLI ``transfer --mode saga``)."""
    return f"o-{secrets.token_hex(8)}"


def check_orchestrator_id(orchestrator_id: str) -> str:
    """Return the id when it can name a log directory (the coordinator id rules: 1-40
    characters of ``[A-Za-z0-9_-]``, starting with a letter or digit); raise otherwise."""
    if not is_owner_id(orchestrator_id):
        raise InvalidSagaId(
            f"orchestrator id {orchestrator_id!r} must be 1-40 letters, digits, _ or -, "
            "starting with a letter or digit"
        )
    return orchestrator_id


def step_key(saga_id: str, n: int) -> str:
    """The idempotency key of forward step ``n``."""
    return f"{saga_id}-step-{n}"


def compensation_key(saga_id: str, n: int) -> str:
    """The idempotency key of the compensation of step ``n``."""
    return f"{saga_id}-comp-{n}"


def release_key(saga_id: str, n: int) -> str:
    """The idempotency key of releasing the semantic lock (the hold) taken by step ``n``."""
    return f"{saga_id}-release-{n}"
