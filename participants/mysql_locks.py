"""MySQL/MariaDB's lock-wait role: who waits on a prepared XA branch.

InnoDB lists waits by InnoDB transaction id and nothing maps that id to an XA xid. Every
branch of ours holds a lock on its outcome marker row in ``twopc_outcomes``, so a *probe* (a
locking read of that row from a fresh connection) queues behind the branch, and the probe's
own lock wait names the branch's trx id.

A probe costs a connection, so at most :data:`_MAX_PROBES` run. With more branches prepared
than that, the ones probed are those likeliest to hold the locks waited on: InnoDB numbers
transactions in the order they first write, and a branch writes its marker, stamped with the
time, in its first request; so a holder's rank among the transactions with no session (the
prepared branches whose clients are gone) is about its branch's rank among the markers by
time, and the branches probed are those around it.

The functions only read, on an open autocommit connection the caller owns; driver errors reach
their caller as is. :class:`MySQLLockWaits` runs them on a connection of its own and types
their errors.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from twopc.participants.errors import ParticipantError
from twopc.participants.lockwaits import LockInspector, LockWait
from twopc.participants.mysql_branch import marker_times
from twopc.participants.mysql_link import MySQLLink
from twopc.participants.xid import Xid

# PyMySQL ships no type information: its connections are Any to mypy.
MySQLConnection = Any
MySQLConnect = Callable[[], MySQLConnection]

_UNKNOWN_TABLE = 1109
_PROBE_TAG = "twopc lock probe"  # marks probe statements, so a concurrent caller skips them
_PROBE_SQL = (
    f"SELECT /* {_PROBE_TAG} */ 1 FROM twopc_outcomes WHERE gtrid = %s AND branch = %s FOR UPDATE"
)
_PROBE_BUDGET = 2.0  # seconds for all probes together, connections included
_PROBE_LOCK_WAIT = 1  # innodb_lock_wait_timeout of a probe: it never outlives the budget
_MAX_PROBES = 32  # connections opened at once; branches beyond stay unidentified
# Transactions with no session: on a server of ours, the prepared XA branches whose client is
# gone (a detached or recovered branch keeps the trx id it got at its first write).
_DETACHED_SQL = "SELECT trx_id FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = 0"
# The InnoDB tables are a cache that MariaDB refreshes only when nobody has read it for 0.1 s
# (trx0i_s.cc measures from the last *read*): polling faster would see the same data forever.
_POLL_INTERVAL = 0.15


@dataclass(frozen=True)
class _WaitSource:
    """Where the server lists InnoDB lock waits: a table and its two trx-id columns."""

    table: str
    requesting: str
    blocking: str


_MARIADB_WAITS = _WaitSource(
    "information_schema.INNODB_LOCK_WAITS", "requesting_trx_id", "blocking_trx_id"
)
# MySQL 8 dropped INNODB_LOCK_WAITS for performance_schema.data_lock_waits; only the table and
# column names differ. This path is NOT tested here: only MariaDB runs on the test machine.
_MYSQL8_WAITS = _WaitSource(
    "performance_schema.data_lock_waits",
    "REQUESTING_ENGINE_TRANSACTION_ID",
    "BLOCKING_ENGINE_TRANSACTION_ID",
)

# Blockers that are themselves waiting are other queued requests, never a prepared branch (a
# prepared branch runs nothing), so they are left out: what remains is the lock's holder.
# trx_wait_started has whole-second resolution, and comes from the cache (see _POLL_INTERVAL).
_EDGES_SQL = """
SELECT r.trx_mysql_thread_id, r.trx_query,
       COALESCE(GREATEST(TIMESTAMPDIFF(MICROSECOND, r.trx_wait_started, NOW(6)), 0), 0) / 1e6,
       b.trx_id, b.trx_mysql_thread_id
  FROM {table} w
  JOIN information_schema.INNODB_TRX r ON r.trx_id = w.{requesting}
  JOIN information_schema.INNODB_TRX b ON b.trx_id = w.{blocking}
 WHERE b.trx_state <> 'LOCK WAIT'
"""


@dataclass(frozen=True)
class _Edge:
    """One InnoDB lock wait: a waiting session and the transaction holding the lock."""

    waiter: int
    query: str | None
    waited_seconds: float
    holder_trx: str
    holder_thread: int  # 0: no session, i.e. a prepared XA branch whose client is gone


@dataclass(frozen=True)
class _PreparedXA:
    """One row of ``XA RECOVER``."""

    xid: Xid | None
    name: str  # repr of the raw XA data (gtrid followed by bqual)


def mysql_lock_waits(conn: MySQLConnection, connect: MySQLConnect | None = None) -> list[LockWait]:
    """Every session waiting on a lock held by a prepared XA branch, ordered by waiter.

    ``connect`` opens a new autocommit connection to the same server; it is needed to name the
    branch (see the module docstring). Without it, or for a branch with no marker row, a wait
    on a prepared branch whose client is gone is still reported, with ``blocker`` None and
    ``blocker_name`` ``"innodb trx <id>"``; a prepared branch whose client is still connected
    is then indistinguishable from an ordinary transaction and its waiters are left out.
    """
    return _mysql_waits(conn, connect, None)


def mysql_waits_of(
    conn: MySQLConnection, thread_id: int, connect: MySQLConnect | None = None
) -> list[LockWait]:
    """The prepared XA branches the session ``thread_id`` waits on (empty when none)."""
    return _mysql_waits(conn, connect, thread_id)


def _mysql_waits(
    conn: MySQLConnection, connect: MySQLConnect | None, waiter: int | None
) -> list[LockWait]:
    source, edges = _read_edges_anywhere(conn)
    edges = [e for e in edges if waiter in (None, e.waiter) and not _is_probe(e)]
    if not edges:
        return []  # nobody waits: no XA RECOVER, no probe
    holders = _probe_holders(conn, source, connect, edges) if connect is not None else {}
    return _attribute(edges, holders)


def _read_edges_anywhere(conn: MySQLConnection) -> tuple[_WaitSource, list[_Edge]]:
    """The current lock waits, from whichever table this server keeps them in."""
    try:
        return _MARIADB_WAITS, _read_edges(conn, _MARIADB_WAITS)
    except pymysql.err.MySQLError as err:
        if not err.args or err.args[0] != _UNKNOWN_TABLE:
            raise
    return _MYSQL8_WAITS, _read_edges(conn, _MYSQL8_WAITS)


def _read_edges(conn: MySQLConnection, source: _WaitSource) -> list[_Edge]:
    query = _EDGES_SQL.format(
        table=source.table, requesting=source.requesting, blocking=source.blocking
    )
    return [
        _Edge(int(thread), q, float(waited), str(trx), int(holder_thread))
        for thread, q, waited, trx, holder_thread in _fetch(conn, query)
    ]


def _is_probe(edge: _Edge) -> bool:
    return edge.query is not None and _PROBE_TAG in edge.query


def _attribute(edges: Iterable[_Edge], holders: dict[str, _PreparedXA]) -> list[LockWait]:
    """Keep the waits whose holder is a prepared branch: identified, or session-less."""
    found: dict[tuple[int, str], LockWait] = {}
    for edge in edges:
        branch = holders.get(edge.holder_trx)
        if branch is not None:
            blocker, name = branch.xid, branch.name
        elif edge.holder_thread == 0:
            blocker, name = None, f"innodb trx {edge.holder_trx}"
        else:
            continue  # an ordinary transaction of a live session
        wait = LockWait(edge.waiter, edge.query, edge.waited_seconds, blocker, name)
        found.setdefault((edge.waiter, name), wait)
    return [found[key] for key in sorted(found)]


def _our_prepared(conn: MySQLConnection) -> list[_PreparedXA]:
    """Our prepared branches (``XA RECOVER``): only they have a marker row to probe."""
    branches = [_prepared_xa(*row) for row in _fetch(conn, "XA RECOVER")]
    return [b for b in branches if b.xid is not None and b.xid.is_ours]


def _prepared_xa(format_id: Any, gtrid_length: Any, bqual_length: Any, data: Any) -> _PreparedXA:
    raw = data if isinstance(data, bytes) else str(data).encode()
    xid = Xid.from_mysql_recover(int(format_id), int(gtrid_length), int(bqual_length), raw)
    return _PreparedXA(xid, repr(raw))


def _probe_holders(
    conn: MySQLConnection, source: _WaitSource, connect: MySQLConnect, edges: Sequence[_Edge]
) -> dict[str, _PreparedXA]:
    """InnoDB trx id -> prepared branch, learned by probing the branches' marker rows."""
    deadline = time.monotonic() + _PROBE_BUDGET
    branches = _our_prepared(conn)
    if len(branches) > _MAX_PROBES:
        detached = [e.holder_trx for e in edges if e.holder_thread == 0]
        branches = _likeliest(conn, connect, branches, detached)
    probes: list[_Probe] = []
    try:
        _start_probes(connect, branches, probes, deadline)
        return _await_probes(conn, source, [p for p in probes if p.connected], deadline)
    finally:
        for probe in probes:
            probe.stop(conn)


def _likeliest(
    conn: MySQLConnection,
    connect: MySQLConnect,
    branches: Sequence[_PreparedXA],
    holders: Collection[str],
) -> list[_PreparedXA]:
    """At most :data:`_MAX_PROBES` of ``branches``: those prepared about when ``holders``
    (trx ids of transactions with no session) were (see the module docstring)."""
    trx_ids = [trx for (trx,) in _fetch(conn, _DETACHED_SQL)]
    times = _marker_times(connect, branches) if holders and trx_ids else {}
    return nearest_in_time(branches, times, trx_ids, holders, _MAX_PROBES)


def nearest_in_time(
    branches: Sequence[_PreparedXA],
    times: dict[tuple[str, str], float],
    trx_ids: Iterable[object],
    holders: Collection[str],
    limit: int,
) -> list[_PreparedXA]:
    """Up to ``limit`` of ``branches``, an equal share per holder: for each, the branches
    whose marker time ranks about where the holder's trx id ranks among ``trx_ids`` (those
    of the transactions with no session); then the first others, to fill ``limit``."""
    numbers = sorted(n for n in map(_number, trx_ids) if n is not None)
    dated = sorted(
        (b for b in branches if _key(b) in times), key=lambda b: (times[_key(b)], b.name)
    )
    chosen: dict[str, _PreparedXA] = {}
    share = max(1, limit // max(1, len(holders)))
    for holder in (n for n in map(_number, holders) if n is not None):
        if not numbers or not dated:
            break
        rank = bisect.bisect_left(numbers, holder) / max(1, len(numbers) - 1)
        center = round(min(1.0, rank) * (len(dated) - 1))
        start = max(0, min(center - share // 2, len(dated) - share))
        for branch in dated[start : start + share]:
            chosen.setdefault(branch.name, branch)
    for branch in branches:
        if len(chosen) >= limit:
            break
        chosen.setdefault(branch.name, branch)
    return list(chosen.values())[:limit]


def _key(branch: _PreparedXA) -> tuple[str, str]:
    assert branch.xid is not None  # only xid-shaped branches of ours are probed
    return (branch.xid.gtrid, branch.xid.bqual)


def _number(trx_id: object) -> int | None:
    try:
        return int(str(trx_id))
    except ValueError:
        return None  # not a number: no rank (older servers name some transactions otherwise)


def _marker_times(
    connect: MySQLConnect, branches: Sequence[_PreparedXA]
) -> dict[tuple[str, str], float]:
    """When each of ``branches`` wrote its marker (:func:`marker_times`, on a connection of
    its own); empty when that cannot be read (the probes go on without)."""
    try:
        conn = connect()
    except (pymysql.err.MySQLError, ParticipantError):
        return {}
    try:
        return marker_times(conn, sorted({_key(branch)[0] for branch in branches}))
    except pymysql.err.MySQLError:
        return {}  # no marker table (yet), say
    finally:
        conn.close()


def _start_probes(
    connect: MySQLConnect, branches: Iterable[_PreparedXA], probes: list[_Probe], deadline: float
) -> None:
    """Start one probe per branch into ``probes`` (the caller stops them, whatever happens),
    their connections opened side by side; keeps those connected by ``deadline`` (a branch
    whose probe got no connection stays unidentified)."""
    started = [_Probe(connect, branch) for branch in branches]
    probes.extend(started)  # all of them: the caller stops every one, connected or not
    for probe in started:
        probe.wait_connected(deadline - time.monotonic())


def _await_probes(
    conn: MySQLConnection, source: _WaitSource, probes: list[_Probe], deadline: float
) -> dict[str, _PreparedXA]:
    """Poll until every probe is seen waiting (naming its holder) or has ended without."""
    holders: dict[str, _PreparedXA] = {}
    pending = {probe.thread_id: probe for probe in probes}
    while pending and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)  # also lets the cache age past the caller's own read
        for edge in _read_edges(conn, source):
            probe = pending.pop(edge.waiter, None)
            if probe is not None:
                holders[edge.holder_trx] = probe.branch
        # A probe that ended unseen got its row at once (the branch holds no marker) or failed.
        pending = {thread: probe for thread, probe in pending.items() if not probe.finished}
    return holders


class _Probe:
    """A locking read of one branch's marker row, on its own connection and thread.

    The thread opens the connection, runs the read and closes the connection; the caller only
    reads ``thread_id`` (once :meth:`wait_connected`) and stops the read with ``KILL QUERY``
    once it has seen (or given up on) the wait.
    """

    def __init__(self, connect: MySQLConnect, branch: _PreparedXA) -> None:
        self.branch = branch
        self.thread_id: int | None = None  # the probe's session, once connected
        self._connect = connect
        self._connected = threading.Event()  # set once connected, or once that failed
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="twopc-lock-probe", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self.thread_id is not None

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the connection; whether it is there."""
        self._connected.wait(max(0.0, timeout))
        return self.connected

    def stop(self, killer: MySQLConnection) -> None:
        """End the read if it still waits, and wait for the thread (bounded by the lock wait)."""
        self._stopping = True  # a probe still connecting will not start its read
        if not self.finished and self.thread_id is not None:
            # An error means it ended meanwhile (unknown thread); the lock wait bounds it anyway.
            with contextlib.suppress(pymysql.err.MySQLError):
                killer.cursor().execute("KILL QUERY %s", (self.thread_id,))
        self._thread.join(timeout=_PROBE_LOCK_WAIT + 1)

    def _run(self) -> None:
        assert self.branch.xid is not None  # only xid-shaped branches of ours are probed
        try:
            conn = self._connect()
        except (pymysql.err.MySQLError, ParticipantError):
            self._connected.set()  # no connection to be had: the branch stays unidentified
            return
        try:
            self.thread_id = int(conn.thread_id())
            self._connected.set()
            cursor = conn.cursor()
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", (_PROBE_LOCK_WAIT,))
            # READ COMMITTED: a missing marker row must not leave a gap lock behind.
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            if not self._stopping:
                cursor.execute(_PROBE_SQL, (self.branch.xid.gtrid, self.branch.xid.bqual))
        except pymysql.err.MySQLError:
            pass  # killed, timed out, or no marker table: the branch stays unidentified
        finally:
            self._connected.set()
            conn.close()  # autocommit: the read's lock, if any, is gone already


def _fetch(conn: MySQLConnection, query: str) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()
    try:
        cursor.execute(query)
        return list(cursor.fetchall())
    finally:
        cursor.close()


class MySQLLockWaits(LockInspector):
    """Lock waits on one MySQL/MariaDB server's prepared XA branches (probing them)."""

    def __init__(self, link: MySQLLink) -> None:
        self._link = link

    def lock_waits(self) -> list[LockWait]:
        conn = self._link.connect()
        try:
            with self._link.translated("read lock waits"):
                return mysql_lock_waits(conn, self._link.connect)
        finally:
            conn.close()

    def waits_of(self, session_id: int) -> list[LockWait]:
        conn = self._link.connect()
        try:
            with self._link.translated("read lock waits"):
                return mysql_waits_of(conn, session_id, self._link.connect)
        finally:
            conn.close()
