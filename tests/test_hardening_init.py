"""``twopc init --reset`` never hangs behind an in-doubt transaction, and never half resets.

A prepared branch keeps its locks on ``accounts``; ``DROP TABLE`` would wait for them
forever, and in PostgreSQL its queued lock would block every later reader as well. So a
reset is refused while either database holds a prepared transaction, and every statement of
``init`` waits for a lock only so long, in case one appears after the check.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pymysql
import pytest
from conftest import ACCOUNTS, OPENING, Databases

from twopc.bank.schema import LOCK_WAIT, init_schema
from twopc.participants import DatabaseURL, ParticipantError

# How long a lock holder in these tests keeps its lock. Longer than any bound asserted, so
# an init that waits for it unbounded fails on time instead of hanging the test run.
PATIENCE = 30.0
REASONS = {  # what each server says when init's lock wait runs out
    "pg": "canceling statement due to lock timeout",
    "mysql": "(1205, 'Lock wait timeout exceeded; try restarting transaction')",
}


def refusal(db: Databases, **held: tuple[int, int]) -> str:
    """The one line ``init --reset`` prints; ``held``: per side, (prepared, of them ours)."""
    servers = {"pg": db.pg().server, "mysql": db.mysql().server}
    counts = [
        f"{servers[side]} holds {n} ({ours} of them twopc's)" for side, (n, ours) in held.items()
    ]
    return (
        "Error: reset refused, nothing dropped: prepared transactions hold locks the reset "
        f"would wait for: {', '.join(counts)}; see them with `twopc in-doubt`, finish twopc's "
        "with `twopc recover` (any others with whatever prepared them), then retry"
    )


def timed_init(db: Databases, *args: str) -> tuple[Any, float]:
    start = time.monotonic()
    result = db.twopc("init", "--accounts", str(ACCOUNTS), *args, timeout=PATIENCE * 2)
    return result, time.monotonic() - start


def test_reset_is_refused_while_a_transfer_is_in_doubt(db: Databases) -> None:
    crashed = db.twopc("transfer", "pg:a1", "mysql:a2", "1", "--crash-at", "after-prepare")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    before = db.balances()
    in_doubt = (db.pg_prepared(), db.mysql_prepared())
    assert len(in_doubt[0]) == len(in_doubt[1]) == 1

    result, seconds = timed_init(db, "--reset")

    assert seconds < 10, seconds  # two look-ups, no lock wait
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [refusal(db, pg=(1, 1), mysql=(1, 1))]
    assert db.balances() == before  # nothing dropped, nothing re-seeded
    assert (db.pg_prepared(), db.mysql_prepared()) == in_doubt
    # Nothing was left queued on the tables: other commands go on as before.
    shown = db.twopc("balances", "pg:a1", "mysql:a2", timeout=15)
    assert shown.returncode == 0, shown.stderr


def test_reset_is_refused_for_a_foreign_prepared_transaction(db: Databases) -> None:
    """Not ours, but its locks block the drop all the same (and it is not ours to end)."""
    with psycopg.connect(db.pg_url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 'a3'")
        conn.execute("PREPARE TRANSACTION 'someone-elses'")
    result, seconds = timed_init(db, "--reset")
    assert seconds < 10, seconds
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [refusal(db, pg=(1, 0))]
    assert db.pg_prepared() == ["someone-elses"]
    assert db.balance("pg", "a3") == OPENING


@contextmanager
def lock_held(lock: Callable[[], Callable[[], None]]) -> Iterator[None]:
    """Run ``lock`` (which returns its release), and release after PATIENCE at the latest."""
    release = lock()
    timer = threading.Timer(PATIENCE, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if not timer.finished.is_set():
            release()


def pg_reader(db: Databases) -> Callable[[], None]:
    """An ordinary open transaction that has read ``accounts``: DROP TABLE must wait."""
    conn = psycopg.connect(db.pg_url)
    conn.execute("SELECT * FROM accounts WHERE id = 'a1' FOR UPDATE")
    return conn.close


def mysql_reader(db: Databases) -> Callable[[], None]:
    """An open transaction that has read ``accounts`` holds its metadata lock."""
    info = db.state.mysql
    conn = pymysql.connect(host=info.host, port=info.port, user=info.user, database=info.database)
    conn.begin()
    conn.cursor().execute("SELECT * FROM accounts WHERE id = 'a1' FOR UPDATE")
    return conn.close


@pytest.mark.parametrize("backend", ["pg", "mysql"])
def test_every_init_statement_waits_for_a_lock_only_so_long(db: Databases, backend: str) -> None:
    """Should a lock appear between the check and the drop, init fails instead of hanging."""
    url = DatabaseURL.parse(db.pg_url if backend == "pg" else db.mysql_url)
    holder = pg_reader if backend == "pg" else mysql_reader
    before = db.balances()
    with lock_held(lambda: holder(db)):
        start = time.monotonic()
        with pytest.raises(ParticipantError) as raised:
            init_schema(url, accounts_count=ACCOUNTS, balance=Decimal(5), reset=True, lock_wait=1)
        seconds = time.monotonic() - start
    assert seconds < 5, seconds
    (line,) = str(raised.value).splitlines()
    assert line == f"{backend} {url.location()}: init failed: {REASONS[backend]}"
    assert db.balances() == before


@pytest.mark.parametrize("backend", ["pg", "mysql"])
def test_the_cli_bounds_the_wait_too(db: Databases, backend: str) -> None:
    before = db.balances()
    holder = pg_reader if backend == "pg" else mysql_reader
    with lock_held(lambda: holder(db)):
        result, seconds = timed_init(db, "--reset")
    assert LOCK_WAIT - 0.5 < seconds < LOCK_WAIT + 5, seconds
    assert result.returncode == 1, result.stderr
    server = db.pg().server if backend == "pg" else db.mysql().server
    assert result.stderr.splitlines() == [f"Error: {server}: init failed: {REASONS[backend]}"]
    assert db.balances() == before
