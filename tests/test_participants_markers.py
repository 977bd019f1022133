"""The outcome-marker role on each real server, and the connection pool alone.

Markers: a committed branch leaves its marker, a rolled-back one none; markers are found by
gtrid (in batches) and by the coordinator that minted them, matched exactly even when its id
holds a LIKE wildcard; ended transactions' markers are forgotten, without waiting on the
marker of a branch still prepared.
"""

from __future__ import annotations

import pytest
from conftest import Databases

from twopc.participants import FORMAT_ID, DatabaseURL, Participant, Xid
from twopc.participants.mysql import MySQLParticipant
from twopc.participants.pool import ConnectionPool
from twopc.participants.postgres import PostgresParticipant


def finished_branch(rm: Participant, gtrid: str, *, commit: bool) -> Xid:
    """A branch that updated a1, prepared (writing its marker), then committed or rolled back."""
    xid = Xid(FORMAT_ID, gtrid, rm.name)
    branch = rm.begin(xid)
    branch.execute("UPDATE accounts SET balance = balance + 0 WHERE id = 'a1'")
    branch.prepare()
    branch.commit() if commit else branch.rollback()
    branch.close()
    return xid


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_markers_follow_their_branches_and_their_coordinators(db: Databases, side: str) -> None:
    rm = db.pg() if side == "pg" else db.mysql()
    rm.ensure_outcome_table()
    rm.ensure_outcome_table()  # idempotent
    mine = finished_branch(rm, "c_1.00000000000000000001", commit=True)
    lookalike = finished_branch(rm, "cx1.00000000000000000002", commit=True)  # "_" matches x
    rolled_back = finished_branch(rm, "c_1.00000000000000000003", commit=False)

    assert rm.has_marker(mine) and rm.has_marker(lookalike)
    assert not rm.has_marker(rolled_back)
    absent = [f"c_1.{n:020d}" for n in range(10, 1200)]  # more gtrids than one query takes
    gtrids = [mine.gtrid, lookalike.gtrid, rolled_back.gtrid, *absent]
    both = {(mine.gtrid, side), (lookalike.gtrid, side)}
    assert rm.committed_markers(gtrids) == both
    assert rm.markers_of_coordinator("c_1") == {(mine.gtrid, side)}
    assert rm.markers_of_coordinator("c") == set()  # "c." is no prefix of either

    rm.forget_markers([mine.gtrid])
    rm.forget_markers([])
    assert rm.committed_markers(gtrids) == {(lookalike.gtrid, side)}
    rm.close()


class FakeConnection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.usable = True
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_pool_reuses_what_still_answers_and_closes_the_rest() -> None:
    opened: list[FakeConnection] = []

    def connect() -> FakeConnection:
        opened.append(FakeConnection(len(opened)))
        return opened[-1]

    pool = ConnectionPool(connect, lambda conn, ping=True: conn.usable, max_idle=2)
    first, second, third = pool.checkout(), pool.checkout(), pool.checkout()
    for conn in (first, second, third):
        pool.release(conn)
    assert pool.idle == 2 and third.closed  # one more than max_idle: closed
    second.usable = False  # its session died while idle
    assert pool.checkout() is first  # second was discarded on the way
    assert second.closed and pool.idle == 0
    assert pool.checkout() is opened[3]  # nothing idle: a new one
    pool.release(first)
    pool.close()
    assert first.closed and pool.idle == 0
    assert pool.checkout() is opened[4]  # a closed pool still lends connections


def test_a_connection_given_back_just_now_is_lent_without_a_round_trip() -> None:
    """``take(trust_recent=True)`` checks a recently given back connection locally only and
    says it is unverified (its first statement is the check); an older one, or any with
    ``trust_recent=False``, is pinged."""
    pings: list[int] = []

    def health(conn: FakeConnection, *, ping: bool) -> bool:
        if ping:
            pings.append(conn.number)
        return conn.usable

    pool = ConnectionPool(lambda: FakeConnection(len(pings)), health, trusted_for=60.0)
    conn, verified = pool.take(trust_recent=True)
    assert verified  # a new connection: the server just answered its connect
    pool.release(conn)
    assert pool.take(trust_recent=True) == (conn, False) and pings == []
    pool.release(conn)
    assert pool.take(trust_recent=False) == (conn, True) and pings == [conn.number]
    stale = ConnectionPool(lambda: conn, health, trusted_for=0.0)
    stale.release(conn)
    assert stale.take(trust_recent=True) == (conn, True)  # too old to trust: pinged


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_forgetting_markers_never_waits_on_a_branch_left_prepared(db: Databases, side: str) -> None:
    """A branch left prepared (in doubt) holds its marker's row lock. Deleting other
    transactions' markers must not wait for it: on MariaDB a delete of many gtrids at once
    read the small table whole, locking each row, so it waited on that marker for the whole
    lock wait (and failed), holding up every branch inserting its marker meanwhile."""
    make = PostgresParticipant if side == "pg" else MySQLParticipant
    url = DatabaseURL.parse(db.pg_url if side == "pg" else db.mysql_url)
    rm = make(side, url, lock_wait=1.0)
    rm.ensure_outcome_table()
    ended = [finished_branch(rm, f"e.{n:020d}", commit=True).gtrid for n in range(0, 40, 2)]
    in_doubt = rm.begin(Xid(FORMAT_ID, f"e.{21:020d}", side))  # its marker sorts among them
    in_doubt.execute("UPDATE accounts SET balance = balance + 0 WHERE id = 'a2'")
    in_doubt.prepare()
    try:
        asked = [*ended, *(f"e.{n:020d}" for n in range(1, 300, 2) if n != 21)]
        rm.forget_markers(asked)  # raised LockWaitTimeout after a second on MariaDB
        assert rm.committed_markers(ended) == set()
        later = finished_branch(rm, f"e.{22:020d}", commit=True)  # inserting still works
        assert rm.has_marker(later)
    finally:
        in_doubt.rollback()
        in_doubt.close()
        rm.close()
