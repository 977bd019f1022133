"""Outcome markers: a branch's own evidence that it committed.

Every branch inserts its marker just before it prepares, inside the branch: a committed branch
has its marker, a rolled-back one has none. That settles "unknown xid" and lets recovery see
a commit decision the log lost. Markers of ended transactions are deleted once their END
record is durable.

The bookkeeping here knows no server; each server supplies its statements as a
:class:`MarkerSQL` (its ``postgres`` / ``mysql`` module).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from twopc.participants.branch import LocalTransaction
from twopc.participants.errors import StatementFailed
from twopc.participants.xid import Xid

_BATCH = 500  # gtrids per marker query
_LIKE_ESCAPE = "!"  # the escape character every MarkerSQL.select_prefix declares


@dataclass(frozen=True)
class MarkerSQL:
    """One server's statements on its marker table, with ``%s`` placeholders. In the ``*_in``
    statements, ``{placeholders}`` stands for one ``%s`` per gtrid."""

    create_table: str  # idempotent
    probe_table: str  # fails when the table is missing, reads nothing
    insert: str  # (gtrid, branch, created_at)
    select_one: str  # (gtrid, branch) -> a row when present
    select_in: str  # gtrid, branch of every marker of the gtrids
    select_prefix: str  # gtrid, branch where gtrid LIKE %s ESCAPE '!'
    #: Deletes the markers of ended transactions: ``delete_in`` those of all the gtrids at
    #: once, or ``delete_one`` those of one gtrid (its statements then go in one request).
    #: One per gtrid where a set-wise delete may scan the table: InnoDB locks every row a
    #: DELETE reads, and for an IN list MariaDB reads a small table whole, so the delete would
    #: wait on the marker of every branch still prepared (an in-doubt one: for the whole lock
    #: wait) and, meanwhile, hold up every branch inserting its marker.
    delete_in: str | None = None
    delete_one: str | None = None

    def __post_init__(self) -> None:
        if (self.delete_in is None) == (self.delete_one is None):
            raise ValueError("a MarkerSQL deletes either with delete_in or with delete_one")


OpenLocal = Callable[[], AbstractContextManager[LocalTransaction]]


class OutcomeMarkers:
    """A participant's marker role: writes a branch's marker, reads and forgets markers."""

    def __init__(self, sql: MarkerSQL, local_transaction: OpenLocal) -> None:
        self._sql = sql
        self._local = local_transaction  # a committed-on-exit local transaction

    def ensure_table(self) -> None:
        """Create the marker table if it is missing (idempotent, outside any branch).

        Looks first, so an application user without CREATE rights works once the table is
        there (PostgreSQL checks the schema privilege even for ``IF NOT EXISTS``).
        """
        if self._table_exists():
            return
        try:
            with self._local() as local:
                local.execute(self._sql.create_table)
        except StatementFailed:
            # Two first transactions at once: PostgreSQL's IF NOT EXISTS is not atomic and
            # the loser fails in its catalog (a duplicate pg_type row). The table is there.
            if not self._table_exists():
                raise

    def _table_exists(self) -> bool:
        try:
            with self._local() as local:
                local.execute(self._sql.probe_table)
        except StatementFailed:
            return False
        return True

    def write(self, execute: Callable[[str, Sequence[Any]], object], xid: Xid) -> None:
        """Insert the marker of branch ``xid`` with ``execute``, the branch's own statement
        runner (so the marker commits or rolls back with the branch)."""
        execute(self._sql.insert, self.values(xid))

    @property
    def insert_sql(self) -> str:
        """The marker insert, for a branch that sends it together with other statements."""
        return self._sql.insert

    @staticmethod
    def values(xid: Xid) -> tuple[str, str, float]:
        """The values :attr:`insert_sql` binds for branch ``xid``."""
        return (xid.gtrid, xid.bqual, time.time())

    def has(self, xid: Xid) -> bool:
        """Whether the branch ``xid`` committed: its marker is visible to a new transaction."""
        with self._local() as local:
            row = local.execute(self._sql.select_one, (xid.gtrid, xid.bqual)).fetchone()
        return row is not None

    def committed(self, gtrids: Sequence[str]) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every branch of ``gtrids`` that committed here: its marker is
        visible (a prepared or rolled-back branch's marker is not)."""
        found: set[tuple[str, str]] = set()
        for batch in _batches(gtrids):
            with self._local() as local:
                rows = local.execute(_with_placeholders(self._sql.select_in, batch), batch)
                found.update((str(g), str(b)) for g, b in rows.fetchall())
        return found

    def of_coordinator(self, coordinator: str) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every committed marker whose gtrid ``coordinator`` minted
        (``<coordinator>.<random>``), compared case-sensitively whatever the collation."""
        prefix = coordinator + "."
        escaped = "".join(_LIKE_ESCAPE + c if c in "!%_" else c for c in prefix)
        with self._local() as local:
            rows = local.execute(self._sql.select_prefix, (escaped + "%",)).fetchall()
        return {(str(g), str(b)) for g, b in rows if str(g).startswith(prefix)}

    def all(self) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every committed marker here (one scan: the table holds the
        markers of unfinished and recently ended transactions only)."""
        with self._local() as local:
            rows = local.execute(self._sql.select_prefix, ("%",)).fetchall()
        return {(str(g), str(b)) for g, b in rows}

    def forget(self, gtrids: Sequence[str]) -> None:
        """Delete the markers of ended transactions (their END record is durable)."""
        for batch in _batches(gtrids):
            with self._local() as local:
                if self._sql.delete_in is not None:
                    local.execute(_with_placeholders(self._sql.delete_in, batch), batch)
                else:
                    assert self._sql.delete_one is not None  # one of the two (__post_init__)
                    local.execute_each(self._sql.delete_one, [(gtrid,) for gtrid in batch])


def _batches(gtrids: Sequence[str]) -> list[list[str]]:
    """The distinct ``gtrids``, sorted, :data:`_BATCH` to a query."""
    unique = sorted(set(gtrids))
    return [unique[start : start + _BATCH] for start in range(0, len(unique), _BATCH)]


def _with_placeholders(statement: str, values: Sequence[object]) -> str:
    # Only placeholders are spliced in; the values themselves are bound.
    return statement.format(placeholders=", ".join(["%s"] * len(values)))
