"""PostgreSQL participant (psycopg 3): its roles put together, its local transactions, and its
outcome-marker SQL.

How it connects and types its errors is in ``postgres_link``, its branch protocol in
``postgres_branch``, its lock-wait inspection in ``postgres_locks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import psycopg

from twopc.participants.base import Roles, ServerParticipant
from twopc.participants.branch import Cursor, LocalTransaction
from twopc.participants.errors import StatementFailed
from twopc.participants.markers import MarkerSQL, OutcomeMarkers
from twopc.participants.pool import ConnectionPool
from twopc.participants.postgres_branch import PostgresBranches
from twopc.participants.postgres_link import PostgresLink, lock_timeout_ms
from twopc.participants.postgres_locks import PostgresLockWaits

MARKERS = MarkerSQL(
    create_table=(
        "CREATE TABLE IF NOT EXISTS twopc_outcomes (gtrid VARCHAR(64) NOT NULL, "
        "branch VARCHAR(64) NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
        "PRIMARY KEY (gtrid, branch))"
    ),
    probe_table="SELECT 1 FROM twopc_outcomes WHERE 1 = 0",
    insert="INSERT INTO twopc_outcomes (gtrid, branch, created_at) VALUES (%s, %s, %s)",
    select_one="SELECT 1 FROM twopc_outcomes WHERE gtrid = %s AND branch = %s",
    select_in="SELECT gtrid, branch FROM twopc_outcomes WHERE gtrid IN ({placeholders})",
    select_prefix="SELECT gtrid, branch FROM twopc_outcomes WHERE gtrid LIKE %s ESCAPE '!'",
    delete_in="DELETE FROM twopc_outcomes WHERE gtrid IN ({placeholders})",
)


class PostgresParticipant(ServerParticipant):
    """A PostgreSQL database as a 2PC resource manager."""

    def _compose(self) -> Roles:
        link = PostgresLink(
            self.url, self.server, lock_wait=self.lock_wait, statement_limit=self.statement_limit
        )
        markers = OutcomeMarkers(MARKERS, self.local_transaction)
        return Roles(
            connector=link,
            branches=PostgresBranches(self, link, markers),
            lock_waits=PostgresLockWaits(link),
            markers=markers,
            open_local=partial(PostgresLocal.open, self.pool, link),
        )

    @property
    def lock_wait_ms(self) -> int:
        """The ``lock_timeout`` set on every connection (at least 1 ms: 0 would disable it)."""
        return lock_timeout_ms(self.lock_wait)


class PostgresLocal(LocalTransaction):
    """A plain PostgreSQL transaction on a connection of the participant's pool."""

    def __init__(self, pool: ConnectionPool, link: PostgresLink, conn: psycopg.Connection[Any]):
        super().__init__(pool, conn)
        self._link = link
        self._conn: psycopg.Connection[Any] = conn

    @classmethod
    def open(cls, pool: ConnectionPool, link: PostgresLink) -> PostgresLocal:
        """``BEGIN`` on a connection from ``pool``."""
        conn = pool.checkout()
        with link.translated("begin"):
            conn.execute("BEGIN")
        return cls(pool, link, conn)

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor:
        with self._link.translated("execute"):
            return self._conn.execute(query, params)

    def _sql_commit(self) -> None:
        with self._link.translated("commit"):
            reply = self._conn.execute("COMMIT").statusmessage
        if reply != "COMMIT":
            raise StatementFailed(f"{self._link.server}: commit became {reply!r}")
