"""Who waits on a prepared branch, on real servers: waiters, their queries, their blockers.

Each test leaves prepared branches behind on purpose (a coordinator that died after phase 1),
starts sessions that block on them in background threads, and checks what the lock-wait
functions report; then it finishes the branches and checks the waiters get through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import OPENING, Databases
from psycopg import sql

from twopc.participants import FORMAT_ID, DatabaseURL, MySQLParticipant, PostgresParticipant, Xid
from twopc.participants.lockwaits import LockWait
from twopc.participants.markers import OutcomeMarkers
from twopc.participants.mysql import MARKERS
from twopc.participants.mysql_locks import mysql_lock_waits, mysql_waits_of
from twopc.participants.postgres_locks import pg_lock_waits, pg_waits_of

PG_X = Xid(FORMAT_ID, "c1.0123456789abcdef0123", "pg")
MY_X = Xid(FORMAT_ID, "c1.0123456789abcdef0123", "mysql")
MY_Y = Xid(FORMAT_ID, "c1.fedcba9876543210fedc", "mysql")
WAIT_LIMIT = 10  # seconds a waiter waits before its server gives up (lock_timeout)


class Waiter:
    """One statement running in a background thread on its own connection."""

    def __init__(self, session: int, run: Callable[[], object], close: Callable[[], object]):
        self.session = session  # backend pid / MySQL thread id
        self.error: BaseException | None = None
        self._run, self._close, self._closed = run, close, False
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as err:  # reported by finish()
            self.error = err

    def finish(self, timeout: float = WAIT_LIMIT + 5) -> None:
        """Wait for the statement to end and close the connection."""
        self._thread.join(timeout)
        if not self._thread.is_alive() and not self._closed:
            self._closed = True
            self._close()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


class Sessions:
    """Starts waiters and blocking transactions; cleans all of them up after the test."""

    def __init__(self, db: Databases) -> None:
        self.db = db
        self.waiters: list[Waiter] = []
        self.open: list[Any] = []  # connections holding a plain (unprepared) transaction

    def pg(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.db.pg_url, autocommit=True)
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{WAIT_LIMIT}s",))
        return conn

    def mysql(self) -> Any:
        return self.db.mysql_connect()

    def pg_waiter(self, statement: str) -> Waiter:
        conn = self.pg()
        waiter = Waiter(conn.info.backend_pid, lambda: conn.execute(statement), conn.close)
        self.waiters.append(waiter)
        return waiter

    def mysql_waiter(self, statement: str, params: tuple[Any, ...] = ()) -> Waiter:
        conn = self.mysql()
        cursor = conn.cursor()
        cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", (WAIT_LIMIT,))
        waiter = Waiter(conn.thread_id(), lambda: cursor.execute(statement, params), conn.close)
        self.waiters.append(waiter)
        return waiter

    def cleanup(self) -> None:
        for conn in self.open:
            conn.close()  # rolls back the plain transactions that block
        self.db.clear_prepared()  # releases every waiter on a prepared branch
        for waiter in self.waiters:
            waiter.finish()


@pytest.fixture()
def sessions(db: Databases) -> Iterator[Sessions]:
    started = Sessions(db)
    try:
        yield started
    finally:
        started.cleanup()


def poll(
    read: Callable[[], list[LockWait]], ready: Callable[[list[LockWait]], bool]
) -> list[LockWait]:
    """Read until ``ready`` holds; the last reading either way (asserted by the caller)."""
    deadline = time.monotonic() + 8
    waits = read()
    while not ready(waits) and time.monotonic() < deadline:
        time.sleep(0.2)  # MariaDB refreshes its lock tables only after 0.1 s without a read
        waits = read()
    return waits


def waiters_of(waits: list[LockWait]) -> set[int]:
    return {w.waiter for w in waits}


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def pg_prepare(db: Databases, gid: str, account: str) -> None:
    """Leave a prepared transaction that updated ``account``, its session gone."""
    with psycopg.connect(db.pg_url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = %s", (account,))
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))


@pytest.fixture()
def pg_conn(db: Databases) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db.pg_url, autocommit=True) as conn:
        yield conn


def test_pg_row_waiters_are_attributed_to_our_prepared_branch(
    db: Databases, sessions: Sessions, pg_conn: psycopg.Connection[Any]
) -> None:
    pg_prepare(db, PG_X.pg_gid(), "a1")
    first = sessions.pg_waiter("UPDATE accounts SET balance = balance + 1 WHERE id = 'a1'")
    waits = poll(lambda: pg_lock_waits(pg_conn), lambda ws: any(w.waited_seconds > 0 for w in ws))

    assert len(waits) == 1
    (wait,) = waits
    assert wait.waiter == first.session
    assert wait.query is not None and "UPDATE accounts" in wait.query
    assert 0 < wait.waited_seconds < WAIT_LIMIT
    assert (wait.blocker, wait.blocker_name) == (PG_X, PG_X.pg_gid())
    (same,) = pg_waits_of(pg_conn, first.session)
    assert (same.waiter, same.query, same.blocker) == (first.session, wait.query, PG_X)
    assert same.waited_seconds >= wait.waited_seconds

    # A second writer of the row queues on the first one's tuple lock, not on the branch:
    # it is reported with the branch at the head of its queue.
    second = sessions.pg_waiter("UPDATE accounts SET balance = balance + 2 WHERE id = 'a1'")
    waits = poll(lambda: pg_lock_waits(pg_conn), lambda ws: len(ws) == 2)
    assert {(w.waiter, w.blocker) for w in waits} == {(first.session, PG_X), (second.session, PG_X)}
    assert [w.blocker for w in pg_waits_of(pg_conn, second.session)] == [PG_X]

    pg_conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(PG_X.pg_gid())))
    for waiter in (first, second):
        waiter.finish()
        assert waiter.done and waiter.error is None
    assert pg_lock_waits(pg_conn) == []
    assert db.balance("pg", "a1") == OPENING + 3  # +1 and +2 after the rollback


def test_pg_foreign_gid_is_named_not_parsed(
    db: Databases, sessions: Sessions, pg_conn: psycopg.Connection[Any]
) -> None:
    pg_prepare(db, "not-an-xid", "a2")
    waiter = sessions.pg_waiter("UPDATE accounts SET balance = 0 WHERE id = 'a2'")
    waits = poll(lambda: pg_lock_waits(pg_conn), lambda ws: len(ws) == 1)

    assert [(w.waiter, w.blocker, w.blocker_name) for w in waits] == [
        (waiter.session, None, "not-an-xid")
    ]


def test_pg_relation_level_wait_is_found(
    db: Databases, sessions: Sessions, pg_conn: psycopg.Connection[Any]
) -> None:
    pg_prepare(db, PG_X.pg_gid(), "a3")
    alter = sessions.pg_waiter("ALTER TABLE accounts ADD COLUMN note text")
    waits = poll(lambda: pg_lock_waits(pg_conn), lambda ws: len(ws) == 1)

    assert [(w.waiter, w.blocker) for w in waits] == [(alter.session, PG_X)]
    assert waits[0].query == "ALTER TABLE accounts ADD COLUMN note text"


def test_pg_waits_on_plain_transactions_are_not_reported(
    sessions: Sessions, pg_conn: psycopg.Connection[Any]
) -> None:
    holder = sessions.pg()
    sessions.open.append(holder)
    holder.execute("BEGIN")
    holder.execute("UPDATE accounts SET balance = 1 WHERE id = 'a4'")
    waiter = sessions.pg_waiter("UPDATE accounts SET balance = 2 WHERE id = 'a4'")
    waiting = "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted"
    poll(lambda: [], lambda _: pg_conn.execute(waiting, (waiter.session,)).fetchone() == (1,))

    assert pg_lock_waits(pg_conn) == []
    assert pg_waits_of(pg_conn, waiter.session) == []


# ---------------------------------------------------------------------------------------------
# MariaDB


def mysql_prepare(db: Databases, xid: Xid, account: str) -> None:
    """Leave a prepared branch of ours (marker row written by the product's own prepare) that
    updated ``account``, and close its session: a coordinator that died after phase 1."""
    branch = db.mysql().begin(xid)
    branch.execute("UPDATE accounts SET balance = balance - 1 WHERE id = %s", (account,))
    branch.prepare()
    branch.close()


def mysql_prepare_foreign(sessions: Sessions, account: str) -> None:
    """A prepared XA branch of another tool: foreign format id, no marker row."""
    conn = sessions.mysql()
    cursor = conn.cursor()
    cursor.execute("XA START 'other', 'tool', 7")
    cursor.execute("UPDATE accounts SET balance = 5 WHERE id = %s", (account,))
    cursor.execute("XA END 'other', 'tool', 7")
    cursor.execute("XA PREPARE 'other', 'tool', 7")
    conn.close()


@pytest.fixture()
def my_conn(db: Databases, sessions: Sessions) -> Iterator[Any]:
    db.mysql().ensure_outcome_table()
    conn = sessions.mysql()
    try:
        yield conn
    finally:
        conn.close()


def wait_detached(db: Databases, count: int) -> None:
    """Wait until ``count`` prepared branches have lost their session (InnoDB thread id 0).
    Transactions rolling back with no session are not counted: after a server was killed
    (by a test before), InnoDB rolls back what was running then in the background."""
    query = (
        "SELECT count(*) FROM information_schema.INNODB_TRX "
        "WHERE trx_mysql_thread_id = 0 AND trx_state <> 'ROLLING BACK'"
    )
    deadline = time.monotonic() + 5
    while db.mysql_query(query)[0][0] < count and time.monotonic() < deadline:
        time.sleep(0.1)
    every = "SELECT trx_id, trx_state, trx_mysql_thread_id FROM information_schema.INNODB_TRX"
    assert db.mysql_query(query)[0][0] == count, db.mysql_query(every)  # what is there


def test_mysql_waiters_are_attributed_to_the_right_branch(
    db: Databases, sessions: Sessions, my_conn: Any
) -> None:
    mysql_prepare(db, MY_X, "a1")
    mysql_prepare(db, MY_Y, "a2")
    wait_detached(db, 2)
    on_a1 = sessions.mysql_waiter("UPDATE accounts SET balance = balance + 1 WHERE id = 'a1'")
    on_a2 = sessions.mysql_waiter("UPDATE accounts SET balance = balance + 1 WHERE id = 'a2'")

    def read() -> list[LockWait]:
        return mysql_lock_waits(my_conn, sessions.mysql)

    waits = poll(
        read, lambda ws: {w.waiter for w in ws if w.blocker} == {on_a1.session, on_a2.session}
    )
    assert {w.waiter: w.blocker for w in waits} == {on_a1.session: MY_X, on_a2.session: MY_Y}
    by_waiter = {w.waiter: w for w in waits}
    assert by_waiter[on_a1.session].blocker_name == repr(b"c1.0123456789abcdef0123mysql")
    assert (
        by_waiter[on_a2.session].query
        == "UPDATE accounts SET balance = balance + 1 WHERE id = 'a2'"
    )
    assert all(0 <= w.waited_seconds < WAIT_LIMIT for w in waits)

    started = time.monotonic()
    (only,) = mysql_waits_of(my_conn, on_a2.session, sessions.mysql)
    assert time.monotonic() - started < 2.5  # the probes are bounded
    assert (only.waiter, only.blocker) == (on_a2.session, MY_Y)

    # Without a way to probe, the waits are still found; only the branch stays unnamed.
    unnamed = mysql_lock_waits(my_conn)
    assert waiters_of(unnamed) == {on_a1.session, on_a2.session}
    assert all(
        w.blocker is None and (w.blocker_name or "").startswith("innodb trx ") for w in unnamed
    )

    db.mysql().finish_prepared(MY_X, commit=False)
    db.mysql().finish_prepared(MY_Y, commit=False)
    for waiter in (on_a1, on_a2):
        waiter.finish()
        assert waiter.done and waiter.error is None
    assert poll(lambda: mysql_lock_waits(my_conn, sessions.mysql), lambda ws: ws == []) == []
    assert (db.balance("mysql", "a1"), db.balance("mysql", "a2")) == (OPENING + 1, OPENING + 1)


def test_mysql_names_the_holder_among_more_branches_than_it_may_probe(
    db: Databases, sessions: Sessions, my_conn: Any
) -> None:
    """With 200 branches prepared (in-doubt transactions of a dead coordinator fleet) it may
    probe 32: those written about when the waited-on branch was. The first 32 that XA RECOVER
    lists (what it probed before) held the one waited on about one time in six."""
    db.mysql_query("CREATE TABLE IF NOT EXISTS probe_rows (id INTEGER PRIMARY KEY, n INTEGER)")
    db.mysql_query("DELETE FROM probe_rows")
    db.mysql_query("INSERT INTO probe_rows SELECT seq, 0 FROM seq_0_to_199")  # MariaDB's
    xids = [Xid(FORMAT_ID, f"c2.{n:020d}", "mysql") for n in range(200)]
    holder = xids[150]
    for n, xid in enumerate(xids):  # as a branch does, on plain connections (quicker)
        conn = sessions.mysql()
        cursor = conn.cursor()
        cursor.execute(f"XA START {xid.mysql_literal()}")
        cursor.execute("UPDATE probe_rows SET n = n + 1 WHERE id = %s", (n,))
        if xid == holder:
            cursor.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 'a1'")
        cursor.execute(MARKERS.insert, OutcomeMarkers.values(xid))
        cursor.execute(f"XA END {xid.mysql_literal()}")
        cursor.execute(f"XA PREPARE {xid.mysql_literal()}")
        conn.close()
    wait_detached(db, 200)
    waiter = sessions.mysql_waiter("UPDATE accounts SET balance = balance + 1 WHERE id = 'a1'")

    def read() -> list[LockWait]:
        return mysql_lock_waits(my_conn, sessions.mysql)

    waits = poll(read, lambda ws: [w.waiter for w in ws] == [waiter.session])
    assert [(w.waiter, w.blocker) for w in waits] == [(waiter.session, holder)]


def test_mysql_queued_waiters_and_foreign_branches(
    db: Databases, sessions: Sessions, my_conn: Any
) -> None:
    mysql_prepare(db, MY_X, "a1")
    mysql_prepare_foreign(sessions, "a3")
    wait_detached(db, 2)
    first = sessions.mysql_waiter("UPDATE accounts SET balance = 1 WHERE id = 'a1'")
    second = sessions.mysql_waiter("UPDATE accounts SET balance = 2 WHERE id = 'a1'")
    foreign = sessions.mysql_waiter("UPDATE accounts SET balance = 3 WHERE id = 'a3'")

    def read() -> list[LockWait]:
        return mysql_lock_waits(my_conn, sessions.mysql)

    waits = poll(read, lambda ws: len(ws) == 3 and sum(w.blocker is not None for w in ws) == 2)
    assert {w.waiter: w.blocker for w in waits} == {
        first.session: MY_X,
        second.session: MY_X,
        foreign.session: None,
    }
    (unnamed,) = mysql_waits_of(my_conn, foreign.session, sessions.mysql)
    assert (unnamed.blocker_name or "").startswith("innodb trx ")


def test_mysql_branch_of_a_live_session_is_found_only_by_probing(
    db: Databases, sessions: Sessions, my_conn: Any
) -> None:
    branch = db.mysql().begin(MY_X)  # its coordinator is alive: the session stays connected
    sessions.open.append(branch)
    branch.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 'a1'")
    branch.prepare()
    waiter = sessions.mysql_waiter("UPDATE accounts SET balance = 7 WHERE id = 'a1'")

    waits = poll(lambda: mysql_lock_waits(my_conn, sessions.mysql), lambda ws: len(ws) == 1)
    assert [(w.waiter, w.blocker) for w in waits] == [(waiter.session, MY_X)]
    # Without probes its lock looks like any live transaction's, so it is not reported.
    assert mysql_lock_waits(my_conn) == []


def test_mysql_waits_on_plain_transactions_are_not_reported(
    db: Databases, sessions: Sessions, my_conn: Any
) -> None:
    mysql_prepare(db, MY_X, "a1")  # a branch to probe, which must not be blamed
    holder = sessions.mysql()
    sessions.open.append(holder)
    holder.begin()
    holder.cursor().execute("UPDATE accounts SET balance = 1 WHERE id = 'a4'")
    waiter = sessions.mysql_waiter("UPDATE accounts SET balance = 2 WHERE id = 'a4'")
    query = (
        "SELECT count(*) FROM information_schema.INNODB_TRX"
        " WHERE trx_mysql_thread_id = %s AND trx_state = 'LOCK WAIT'"
    )
    poll(lambda: [], lambda _: db.mysql_query(query, (waiter.session,)) == [(1,)])

    assert mysql_lock_waits(my_conn, sessions.mysql) == []
    assert mysql_waits_of(my_conn, waiter.session, sessions.mysql) == []


# ---------------------------------------------------------------------------------------------
# Both


def test_no_waiters_means_empty_answers_quickly(
    db: Databases, sessions: Sessions, pg_conn: psycopg.Connection[Any], my_conn: Any
) -> None:
    pg_prepare(db, PG_X.pg_gid(), "a1")
    mysql_prepare(db, MY_X, "a1")
    started = time.monotonic()

    assert pg_lock_waits(pg_conn) == []
    assert pg_waits_of(pg_conn, 12345) == []
    assert mysql_lock_waits(my_conn, sessions.mysql) == []
    assert mysql_waits_of(my_conn, 12345, sessions.mysql) == []
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_lock_wait_must_be_positive(seconds: float) -> None:
    # PostgreSQL reads lock_timeout = 0 as "wait forever": never let 0 reach it.
    url = DatabaseURL.parse("postgresql://u@127.0.0.1:1/d", expect="pg")
    with pytest.raises(ValueError, match="lock_wait must be a positive number of seconds"):
        PostgresParticipant("pg", url, lock_wait=seconds)


def test_server_lock_wait_limits_round_to_what_each_server_takes() -> None:
    pg_url = DatabaseURL.parse("postgresql://u@127.0.0.1:1/d", expect="pg")
    mysql_url = DatabaseURL.parse("mysql://u@127.0.0.1:1/d", expect="mysql")
    assert PostgresParticipant("pg", pg_url, lock_wait=0.0001).lock_wait_ms == 1
    assert PostgresParticipant("pg", pg_url, lock_wait=2.5).lock_wait_ms == 2500
    assert MySQLParticipant("mysql", mysql_url, lock_wait=0.2).lock_wait_seconds == 1
    assert MySQLParticipant("mysql", mysql_url, lock_wait=2.5).lock_wait_seconds == 3
