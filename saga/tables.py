"""The saga engine's table in each participant's own database, created idempotently.

``saga_steps`` holds one row per idempotency key with the request it serves and the step's
stored result, written in the same local transaction as the business change it records.
Tables a saga definition's own steps use are the definition's business (its ``setup``);
:func:`ensure_tables` creates them the same careful way.

The same statements run on PostgreSQL and MySQL/MariaDB; only the index on ``created_at``
(used by retention pruning) is spelt per server, since MySQL has no ``CREATE INDEX IF NOT
EXISTS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from twopc.participants import (
    DuplicateObject,
    Participant,
    StatementFailed,
    UndefinedColumn,
    UndefinedTable,
)

STEPS_TABLE = "saga_steps"
SAGA_TABLES = (STEPS_TABLE,)

_STEPS = (
    "idempotency_key VARCHAR(150) NOT NULL PRIMARY KEY, saga_id VARCHAR(64) NOT NULL, "
    "result TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, request TEXT"
)
_INDEX = "saga_steps_created_at"


def saga_ddl(backend: str) -> list[str]:
    """The statements creating the saga table if it is missing, for ``pg`` or ``mysql``."""
    if backend == "pg":
        return [
            f"CREATE TABLE IF NOT EXISTS {STEPS_TABLE} ({_STEPS})",
            f"CREATE INDEX IF NOT EXISTS {_INDEX} ON {STEPS_TABLE} (created_at)",
        ]
    return [
        f"CREATE TABLE IF NOT EXISTS {STEPS_TABLE} ({_STEPS}, INDEX {_INDEX} (created_at))"
        " ENGINE=InnoDB"
    ]


def saga_drop_ddl() -> str:
    """One statement dropping the saga table (for ``twopc init --reset``)."""
    return f"DROP TABLE IF EXISTS {', '.join(SAGA_TABLES)}"


# Takes only the weakest table lock: the DDL below (CREATE INDEX in particular) would queue
# behind, and then block, every transaction writing these tables, even when nothing is missing.
# Names saga_steps.request, so a table from before that column is found out by the same probe.
_PROBE = f"SELECT request FROM {STEPS_TABLE} WHERE 1 = 0"
# Tables made before keys were bound to requests lack the column; their rows keep NULL there
# (a replay of such a key is refused: the request it served cannot be checked).
_ADD_REQUEST = f"ALTER TABLE {STEPS_TABLE} ADD COLUMN request TEXT"


def ensure_saga_tables(participant: Participant) -> None:
    """Create the saga table on ``participant`` if missing (before a saga runs there), and
    bring one made by an older version up to date."""
    try:
        ensure_tables(participant, _PROBE, saga_ddl(participant.url.backend))
    except UndefinedColumn:
        _add_request_column(participant)


def ensure_tables(participant: Participant, probe: str, ddl: Sequence[str]) -> None:
    """Run ``ddl`` on ``participant`` unless ``probe`` (a query naming the tables) finds
    them all. Looks first, so a user without CREATE rights works once the tables exist.

    Two processes creating the same table at once can collide in PostgreSQL's catalog; the
    loser tries once more, by which time the table exists.
    """
    try:
        with participant.local_transaction() as local:
            local.execute(probe).fetchall()
        return
    except UndefinedTable:
        pass  # create what is missing
    for attempt in (1, 2):
        try:
            with participant.local_transaction() as local:
                for statement in ddl:
                    local.execute(statement)
            return
        except StatementFailed:
            if attempt == 2:
                raise


def _add_request_column(participant: Participant) -> None:
    # DuplicateObject: another process added it meanwhile.
    with contextlib.suppress(DuplicateObject), participant.local_transaction() as local:
        local.execute(_ADD_REQUEST)
