"""The saga's tables in each participant's own database, created idempotently.

- ``saga_steps``: one row per idempotency key with the request it serves and the step's
  stored result, written in the same local transaction as the business change it records;
- ``saga_holds``: the semantic lock — funds a debit step took for a saga that is not
  finished yet, so readers can tell committed money from money in flight;
- ``saga_notifications``: the irreversible last step's output (one line per completed saga).

The same statements run on PostgreSQL and MySQL/MariaDB; only the index on ``created_at``
(used by retention pruning) is spelt per server, since MySQL has no ``CREATE INDEX IF NOT
EXISTS``.
"""

from __future__ import annotations

import contextlib

from twopc.participants import (
    DuplicateObject,
    Participant,
    StatementFailed,
    UndefinedColumn,
    UndefinedTable,
)

STEPS_TABLE = "saga_steps"
HOLDS_TABLE = "saga_holds"
NOTIFICATIONS_TABLE = "saga_notifications"
SAGA_TABLES = (STEPS_TABLE, HOLDS_TABLE, NOTIFICATIONS_TABLE)

_STEPS = (
    "idempotency_key VARCHAR(150) NOT NULL PRIMARY KEY, saga_id VARCHAR(64) NOT NULL, "
    "result TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, request TEXT"
)
_HOLDS = (
    "saga_id VARCHAR(64) NOT NULL, account_id VARCHAR(64) NOT NULL, "
    "amount NUMERIC(20, 2) NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (saga_id, account_id)"
)
_NOTIFICATIONS = (
    "saga_id VARCHAR(64) NOT NULL PRIMARY KEY, message TEXT NOT NULL, "
    "created_at DOUBLE PRECISION NOT NULL"
)
_INDEX = "saga_steps_created_at"


def saga_ddl(backend: str) -> list[str]:
    """The statements creating every saga table that is missing, for ``pg`` or ``mysql``."""
    if backend == "pg":
        return [
            f"CREATE TABLE IF NOT EXISTS {STEPS_TABLE} ({_STEPS})",
            f"CREATE INDEX IF NOT EXISTS {_INDEX} ON {STEPS_TABLE} (created_at)",
            f"CREATE TABLE IF NOT EXISTS {HOLDS_TABLE} ({_HOLDS})",
            f"CREATE TABLE IF NOT EXISTS {NOTIFICATIONS_TABLE} ({_NOTIFICATIONS})",
        ]
    engine = " ENGINE=InnoDB"
    return [
        f"CREATE TABLE IF NOT EXISTS {STEPS_TABLE} ({_STEPS}, INDEX {_INDEX} (created_at))"
        + engine,
        f"CREATE TABLE IF NOT EXISTS {HOLDS_TABLE} ({_HOLDS})" + engine,
        f"CREATE TABLE IF NOT EXISTS {NOTIFICATIONS_TABLE} ({_NOTIFICATIONS})" + engine,
    ]


def saga_drop_ddl() -> str:
    """One statement dropping every saga table (for ``twopc init --reset``)."""
    return f"DROP TABLE IF EXISTS {', '.join(SAGA_TABLES)}"


# Takes only the weakest table lock: the DDL below (CREATE INDEX in particular) would queue
# behind, and then block, every transaction writing these tables, even when nothing is missing.
# Names saga_steps.request, so a table from before that column is found out by the same probe.
_PROBE = f"SELECT {STEPS_TABLE}.request FROM {', '.join(SAGA_TABLES)} WHERE 1 = 0"
# Tables made before keys were bound to requests lack the column; their rows keep NULL there
# (a replay of such a key is refused: the request it served cannot be checked).
_ADD_REQUEST = f"ALTER TABLE {STEPS_TABLE} ADD COLUMN request TEXT"


def ensure_saga_tables(participant: Participant) -> None:
    """Create the saga tables on ``participant`` if missing (before a saga runs there), and
    bring one made by an older version up to date.

    Two processes creating the same table at once can collide in PostgreSQL's catalog; the
    loser tries once more, by which time the table exists.
    """
    try:
        with participant.local_transaction() as local:
            local.execute(_PROBE).fetchall()
        return
    except UndefinedColumn:
        _add_request_column(participant)
        return
    except UndefinedTable:
        pass  # create what is missing
    for attempt in (1, 2):
        try:
            with participant.local_transaction() as local:
                for statement in saga_ddl(participant.url.backend):
                    local.execute(statement)
            return
        except StatementFailed:
            if attempt == 2:
                raise


def _add_request_column(participant: Participant) -> None:
    # DuplicateObject: another process added it meanwhile.
    with contextlib.suppress(DuplicateObject), participant.local_transaction() as local:
        local.execute(_ADD_REQUEST)
