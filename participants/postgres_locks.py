"""PostgreSQL's lock-wait role: who waits on a prepared transaction, read from ``pg_locks``.

A prepared transaction's locks are the ``pg_locks`` rows with ``pid IS NULL``; the
``transactionid`` lock it holds on its own xid gives its ``virtualtransaction``, which ties all
its locks to its gid. ``pg_blocking_pids`` cannot name it: it reports a prepared holder as
``0``. The functions only read, on an open autocommit connection the caller owns; driver
errors reach their caller as is. :class:`PostgresLockWaits` runs them on a connection of its
own and types their errors.
"""

from __future__ import annotations

from typing import Any

import psycopg

from twopc.participants.lockwaits import LockInspector, LockWait
from twopc.participants.postgres_link import PostgresLink
from twopc.participants.xid import Xid

# Waiting locks are matched against *every* lock a prepared transaction holds (not only its
# xid), so a relation-level wait such as an ALTER TABLE is found too. A session queued behind
# such a waiter (a second writer of the same row waits on the first one's tuple lock, not on
# the prepared transaction) is found through pg_blocking_pids and reported with the branch at
# the head of its queue — the one whose end lets the queue move. InnoDB reports the prepared
# holder for every queued waiter by itself, so both servers answer alike.
# The waiters drive the query, one materialized step at a time (the planner cannot estimate
# pg_locks, so it is not left to choose): their locks, the prepared holders of those, the
# holders' xids, their gids. With a thousand prepared transactions holding ~4,000 locks, a
# query that first tied every prepared transaction to all its locks took 1.1-1.7 s (nested
# loops), which recovery paid before freeing any row; this one takes ~10 ms.
_WAITS_SQL = """
WITH RECURSIVE locks AS MATERIALIZED (
    SELECT l.*,
           ROW(l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid,
               l.transactionid, l.classid, l.objid, l.objsubid)::text AS tag
      FROM pg_locks l  -- one snapshot of the lock manager for the whole query
), waiting AS MATERIALIZED (
    SELECT * FROM locks WHERE NOT granted AND pid IS NOT NULL
), holding AS MATERIALIZED (  -- locks someone waits for, held by a prepared transaction
    SELECT DISTINCT w.pid, l.virtualtransaction
      FROM waiting w
      JOIN locks l ON l.tag = w.tag AND l.pid IS NULL AND l.granted
), holders AS MATERIALIZED (  -- and the xid of that transaction
    SELECT h.pid, own.transactionid
      FROM holding h
      JOIN locks own ON own.virtualtransaction = h.virtualtransaction
                    AND own.locktype = 'transactionid' AND own.pid IS NULL
), blocked (pid, gid) AS (
    SELECT o.pid, p.gid
      FROM holders o
      JOIN pg_prepared_xacts p ON p.transaction = o.transactionid
     WHERE p.database = current_database()
    UNION
    SELECT w.pid, b.gid
      FROM waiting w
      JOIN blocked b ON b.pid = ANY (pg_blocking_pids(w.pid))
)
SELECT DISTINCT b.pid, a.query,
       COALESCE(extract(epoch FROM clock_timestamp() - w.waitstart), 0)::float8, b.gid
  FROM blocked b
  JOIN waiting w ON w.pid = b.pid
  LEFT JOIN pg_stat_activity a ON a.pid = b.pid
 ORDER BY b.pid, b.gid
"""


def pg_lock_waits(conn: psycopg.Connection[Any]) -> list[LockWait]:
    """Every session in the cluster waiting on a lock held by a prepared transaction of the
    connection's database, one entry per (waiter, prepared transaction), ordered by waiter."""
    rows = conn.execute(_WAITS_SQL).fetchall()
    return [_pg_lock_wait(*row) for row in rows]


def pg_waits_of(conn: psycopg.Connection[Any], pid: int) -> list[LockWait]:
    """The prepared transactions the backend ``pid`` waits on (empty when it waits on none)."""
    return [wait for wait in pg_lock_waits(conn) if wait.waiter == pid]


def _pg_lock_wait(pid: int, query: str | None, waited: float, gid: str) -> LockWait:
    # waitstart is briefly NULL just after a wait begins (COALESCE made that 0).
    return LockWait(int(pid), query, max(float(waited), 0.0), Xid.from_pg_gid(gid), gid)


class PostgresLockWaits(LockInspector):
    """Lock waits on one PostgreSQL database's prepared transactions."""

    def __init__(self, link: PostgresLink) -> None:
        self._link = link

    def lock_waits(self) -> list[LockWait]:
        with self._link.connect() as conn, self._link.translated("read lock waits"):
            return pg_lock_waits(conn)

    def waits_of(self, session_id: int) -> list[LockWait]:
        with self._link.connect() as conn, self._link.translated("read lock waits"):
            return pg_waits_of(conn, session_id)
