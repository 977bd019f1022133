"""One watchdog thread per participant tells a caller when a statement waits on a prepared branch.

The watchdog itself is checked without servers (deadlines, order, cancelling, a failing alarm,
close and restart); then, on each real server, that a hundred statements start no thread and
that a statement blocked on a prepared branch is reported once, naming that branch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import OPENING, Databases

from twopc.participants import (
    FORMAT_ID,
    Branch,
    DatabaseURL,
    LockWait,
    MySQLParticipant,
    Participant,
    PostgresParticipant,
    Xid,
)
from twopc.participants.watchdog import Watchdog

# -- the watchdog alone -----------------------------------------------------------------------


@pytest.fixture()
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog("test-watchdog")
    yield dog
    dog.close()


def test_an_alarm_rings_once_its_block_outlives_the_deadline(watchdog: Watchdog) -> None:
    rang = threading.Event()
    with watchdog.watching(0.05, rang.set):
        assert rang.wait(5)
    assert watchdog.running


def test_a_block_that_ends_in_time_rings_nothing(watchdog: Watchdog) -> None:
    rang: list[str] = []
    for _ in range(50):
        with watchdog.watching(0.2, lambda: rang.append("late")):
            pass
    time.sleep(0.4)
    assert rang == []


def test_alarms_ring_in_deadline_order_on_the_watchdogs_thread(watchdog: Watchdog) -> None:
    rang: list[tuple[str, str]] = []
    done = threading.Event()

    def alarm(name: str) -> Callable[[], None]:
        def ring() -> None:
            rang.append((name, threading.current_thread().name))
            if len(rang) == 3:
                done.set()

        return ring

    with (
        watchdog.watching(0.3, alarm("third")),
        watchdog.watching(0.1, alarm("first")),
        watchdog.watching(0.2, alarm("second")),
    ):
        assert done.wait(5)
    assert rang == [(name, "test-watchdog") for name in ("first", "second", "third")]


def test_a_failing_alarm_is_logged_and_the_next_still_rings(
    watchdog: Watchdog, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise RuntimeError("alarm bug")

    rang = threading.Event()
    with watchdog.watching(0.05, fail), watchdog.watching(0.1, rang.set):
        assert rang.wait(5)
    assert any(
        r.levelno == logging.ERROR and "alarm failed" in r.getMessage() for r in caplog.records
    )


def test_close_stops_the_thread_and_drops_pending_alarms(watchdog: Watchdog) -> None:
    rang: list[str] = []
    before = threading.active_count()
    with watchdog.watching(0.2, lambda: rang.append("dropped")):
        assert threading.active_count() == before + 1
        watchdog.close()
        assert not watchdog.running
        assert threading.active_count() == before
        time.sleep(0.3)
    assert rang == []
    again = threading.Event()  # a closed watchdog starts a new thread when needed
    with watchdog.watching(0.05, again.set):
        assert again.wait(5)


@pytest.mark.parametrize("after", [0, -1.0, float("nan"), float("inf")])
def test_notice_after_must_be_positive_and_finite(after: float) -> None:
    url = DatabaseURL.parse("postgresql://u@127.0.0.1:1/d", expect="pg")
    with pytest.raises(ValueError, match="notice_after must be a positive finite number"):
        PostgresParticipant("pg", url, notice_after=after)


def test_lock_wait_settings_are_given_at_construction_and_stay() -> None:
    url = DatabaseURL.parse("mysql://u@127.0.0.1:1/d", expect="mysql")

    def notice(participant: Participant, waits: list[LockWait]) -> None:
        pass

    rm = MySQLParticipant("mysql", url, on_lock_wait=notice, notice_after=0.5)
    assert (rm.on_lock_wait, rm.notice_after) == (notice, 0.5)
    with pytest.raises(AttributeError):
        rm.on_lock_wait = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rm.notice_after = 2.0  # type: ignore[misc]
    assert not rm.watchdog.running  # nothing ran: no thread


# -- on the real servers ----------------------------------------------------------------------


class Notices:
    """Records what a participant's ``on_lock_wait`` is told, and on which thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[LockWait], str]] = []
        self.first = threading.Event()

    def __call__(self, participant: Participant, waits: list[LockWait]) -> None:
        self.calls.append((participant.name, waits, threading.current_thread().name))
        self.first.set()


def watched(db: Databases, side: str, notices: Notices, **settings: Any) -> Participant:
    url = DatabaseURL.parse(db.pg_url if side == "pg" else db.mysql_url)
    kind = PostgresParticipant if side == "pg" else MySQLParticipant
    return kind(side, url, on_lock_wait=notices, **settings)


def xid(name: str, side: str) -> Xid:
    return Xid(FORMAT_ID, f"watch.{name}", side)


class Statement:
    """One branch statement running in a background thread."""

    def __init__(self, branch: Branch, query: str) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(branch, query), daemon=True)
        self._thread.start()

    def _run(self, branch: Branch, query: str) -> None:
        try:
            branch.execute(query)
        except BaseException as err:  # reported by the test
            self.error = err

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive()
        assert self.error is None, self.error


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_hundred_statements_start_no_thread(
    db: Databases, side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    notices = Notices()
    rm = watched(db, side, notices, notice_after=5.0)
    branch = rm.begin(xid("0000000000000000000a", side))
    branch.execute("SELECT balance FROM accounts WHERE id = 'a1'")  # the watchdog starts
    assert rm.watchdog.running
    before = set(threading.enumerate())  # a thread of an earlier test may end meanwhile
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    try:
        for n in range(100):
            branch.execute("UPDATE accounts SET balance = balance + %s WHERE id = 'a2'", (n % 2,))
        assert started == []
        assert set(threading.enumerate()) <= before
    finally:  # never leave a2's row locked for the tests after this one
        monkeypatch.undo()
        branch.rollback()
        branch.close()
        rm.close()  # stops the watchdog's thread
    assert not rm.watchdog.running
    assert set(threading.enumerate()) < before  # its thread is gone, and no other came
    assert notices.calls == []


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_statement_blocked_on_a_prepared_branch_is_noticed_once(db: Databases, side: str) -> None:
    holder = db.pg() if side == "pg" else db.mysql()
    holder.ensure_outcome_table()
    blockers = []
    for account, name in (("a1", "0000000000000000000b"), ("a2", "0000000000000000000c")):
        blocker = holder.begin(xid(name, side))  # prepared by a coordinator still alive
        blocker.execute("UPDATE accounts SET balance = balance - 1 WHERE id = %s", (account,))
        blocker.prepare()
        blockers.append(blocker)
    notices = Notices()
    rm = watched(db, side, notices, notice_after=0.3, lock_wait=20)
    branch = rm.begin(xid("0000000000000000000d", side))
    try:
        blocked = Statement(branch, "UPDATE accounts SET balance = balance + 1 WHERE id = 'a1'")
        assert notices.first.wait(15), "no notice"
        ((name, waits, thread),) = notices.calls
        assert (name, thread) == (side, f"twopc-lock-watch {side}")
        assert [(w.waiter, w.blocker) for w in waits] == [(branch.session_id, blockers[0].xid)]
        blockers[0].rollback()  # the statement gets through
        blocked.join()

        # Once per branch: a second wait of the same branch is not reported again.
        again = Statement(branch, "UPDATE accounts SET balance = balance + 1 WHERE id = 'a2'")
        time.sleep(1.5)  # five times notice_after: a notice would have come by now
        blockers[1].rollback()
        again.join()
        assert len(notices.calls) == 1
    finally:
        branch.rollback()
        branch.close()
        for blocker in blockers:
            blocker.rollback()
            blocker.close()
        rm.close()
        holder.close()
    assert db.balance(side, "a1") == db.balance(side, "a2") == OPENING  # all rolled back
