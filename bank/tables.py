"""The tables the transfer saga's steps use, beside the saga engine's ``saga_steps``.

- ``saga_holds``: the semantic lock — funds a debit step took for a saga that is not
  finished yet, so readers can tell committed money from money in flight;
- ``saga_notifications``: the irreversible last step's output (one line per completed saga).

Made by ``twopc init``, and made sure of before the transfer saga's first step on a server.
"""

from __future__ import annotations

from twopc.outbox import ensure_outbox_tables
from twopc.participants import Participant
from twopc.saga import ensure_tables

HOLDS_TABLE = "saga_holds"
NOTIFICATIONS_TABLE = "saga_notifications"
TRANSFER_TABLES = (HOLDS_TABLE, NOTIFICATIONS_TABLE)

_HOLDS = (
    "saga_id VARCHAR(64) NOT NULL, account_id VARCHAR(64) NOT NULL, "
    "amount NUMERIC(20, 2) NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (saga_id, account_id)"
)
_NOTIFICATIONS = (
    "saga_id VARCHAR(64) NOT NULL PRIMARY KEY, message TEXT NOT NULL, "
    "created_at DOUBLE PRECISION NOT NULL"
)
# Takes only the weakest table lock (see twopc.saga.tables): nothing queues behind it.
_PROBE = f"SELECT 1 FROM {', '.join(TRANSFER_TABLES)} WHERE 1 = 0"


def transfer_ddl(backend: str) -> list[str]:
    """The statements creating the transfer saga's tables that are missing."""
    engine = "" if backend == "pg" else " ENGINE=InnoDB"
    return [
        f"CREATE TABLE IF NOT EXISTS {HOLDS_TABLE} ({_HOLDS}){engine}",
        f"CREATE TABLE IF NOT EXISTS {NOTIFICATIONS_TABLE} ({_NOTIFICATIONS}){engine}",
    ]


def transfer_drop_ddl() -> str:
    """One statement dropping them (for ``twopc init --reset``)."""
    return f"DROP TABLE IF EXISTS {', '.join(TRANSFER_TABLES)}"


def ensure_transfer_tables(participant: Participant) -> None:
    """Create the transfer saga's tables on ``participant`` if missing (the outbox its
    credit step announces the transfer in too)."""
    ensure_tables(participant, _PROBE, transfer_ddl(participant.url.backend))
    ensure_outbox_tables(participant)
