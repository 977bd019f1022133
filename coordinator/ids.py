"""Coordinator ids and global transaction ids (gtrids).

Every gtrid embeds the id of the coordinator that minted it — ``<coordinator-id>.<random>`` —
so any prepared branch on any server leads back to the log holding its decision, and two
coordinators never mint the same gtrid.
"""

from __future__ import annotations

import re
import secrets

from twopc.txlog.home import OWNER_ID, is_owner_id

# A coordinator id names its log (names beginning with "_" are reserved: the operator's log).
_GTRID = re.compile(rf"({OWNER_ID})\.([0-9a-f]{{20}})")


class InvalidCoordinatorId(ValueError):
    """A coordinator id that cannot name a log directory and fit in a gtrid."""


def check_coordinator_id(coordinator_id: str) -> str:
    """Return the id when it is 1-40 characters of ``[A-Za-z0-9_-]``; raise otherwise."""
    if not is_owner_id(coordinator_id):
        raise InvalidCoordinatorId(
            f"coordinator id {coordinator_id!r} must be 1-40 letters, digits, _ or -, "
            "starting with a letter or digit"
        )
    return coordinator_id


def fresh_coordinator_id() -> str:
    """A unique id for a one-shot coordinator (such as one CLI ``transfer``)."""
    return f"t-{secrets.token_hex(8)}"


def mint_gtrid(coordinator_id: str) -> str:
    """A new global transaction id owned by ``coordinator_id`` (at most 61 bytes)."""
    return f"{coordinator_id}.{secrets.token_hex(10)}"


def coordinator_of(gtrid: str) -> str | None:
    """The coordinator id embedded in a gtrid of ours; None for any other shape."""
    match = _GTRID.fullmatch(gtrid)
    return match.group(1) if match else None
