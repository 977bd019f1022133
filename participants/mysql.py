"""MySQL / MariaDB participant (PyMySQL): its roles put together, its local transactions, and
its outcome-marker SQL.

How it connects and types its errors is in ``mysql_link`` (whose :func:`open_connection` the
schema code uses too), its branch protocol in ``mysql_branch``, its lock-wait inspection in
``mysql_locks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from twopc.participants.base import Roles, ServerParticipant
from twopc.participants.branch import Cursor, LocalTransaction
from twopc.participants.markers import MarkerSQL, OutcomeMarkers
from twopc.participants.mysql_branch import MySQLBranches
from twopc.participants.mysql_link import (
    CONNECT_TIMEOUT,
    MySQLLink,
    Together,
    lock_wait_timeout,
    open_connection,
    unverified_tls_context,
)
from twopc.participants.mysql_locks import MySQLLockWaits
from twopc.participants.pool import ConnectionPool

__all__ = [
    "CONNECT_TIMEOUT",
    "MARKERS",
    "MySQLLocal",
    "MySQLParticipant",
    "open_connection",
    "unverified_tls_context",
]

MARKERS = MarkerSQL(
    create_table=(
        "CREATE TABLE IF NOT EXISTS twopc_outcomes (gtrid VARCHAR(64) NOT NULL, "
        "branch VARCHAR(64) NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
        "PRIMARY KEY (gtrid, branch)) ENGINE=InnoDB"
    ),
    probe_table="SELECT 1 FROM twopc_outcomes WHERE 1 = 0",
    insert="INSERT INTO twopc_outcomes (gtrid, branch, created_at) VALUES (%s, %s, %s)",
    select_one="SELECT 1 FROM twopc_outcomes WHERE gtrid = %s AND branch = %s",
    select_in="SELECT gtrid, branch FROM twopc_outcomes WHERE gtrid IN ({placeholders})",
    select_prefix="SELECT gtrid, branch FROM twopc_outcomes WHERE gtrid LIKE %s ESCAPE '!'",
    # One gtrid per statement (see MarkerSQL): an equality on the key's first column is
    # always read through the key, touching no other transaction's marker.
    delete_one="DELETE FROM twopc_outcomes WHERE gtrid = %s",
)

MySQLConnection = Any  # PyMySQL ships no type information


class MySQLParticipant(ServerParticipant):
    """A MySQL or MariaDB database as a 2PC resource manager."""

    def _compose(self) -> Roles:
        link = MySQLLink(
            self.url, self.server, lock_wait=self.lock_wait, statement_limit=self.statement_limit
        )
        markers = OutcomeMarkers(MARKERS, self.local_transaction)
        return Roles(
            connector=link,
            branches=MySQLBranches(self, link, markers),
            lock_waits=MySQLLockWaits(link),
            markers=markers,
            open_local=partial(MySQLLocal.open, self.pool, link),
        )

    @property
    def lock_wait_seconds(self) -> int:
        """The ``innodb_lock_wait_timeout`` set on every connection: whole seconds, at least 1."""
        return lock_wait_timeout(self.lock_wait)


class MySQLLocal(LocalTransaction):
    """A plain MySQL/MariaDB transaction on a connection of the participant's pool."""

    def __init__(self, pool: ConnectionPool, link: MySQLLink, conn: MySQLConnection) -> None:
        super().__init__(pool, conn)
        self._link = link

    @classmethod
    def open(cls, pool: ConnectionPool, link: MySQLLink) -> MySQLLocal:
        """``BEGIN`` on a connection from ``pool``."""
        conn = pool.checkout()
        with link.translated("begin"):
            conn.begin()
        return cls(pool, link, conn)

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor:
        with self._link.translated("execute"):
            cursor = self._conn.cursor()
            cursor.execute(query, params)
            return cursor  # type: ignore[no-any-return]

    def execute_each(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """``query`` once per row of values, all in one request (multi-statements): the
        first error stops the rest and is raised."""
        if not rows:
            return
        with self._link.translated("execute"):
            cursor = self._conn.cursor()
            Together(cursor.mogrify(query, row) for row in rows).run(cursor)

    def _sql_commit(self) -> None:
        with self._link.translated("commit"):
            self._conn.commit()
