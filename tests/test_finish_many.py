"""Finishing many prepared branches by xid at once (recovery), on the real servers: MariaDB
takes them in one request, and a branch the server does not know, or a pooled connection
that died idle, costs none of the others its turn; PostgreSQL finishes them one by one."""

from __future__ import annotations

from decimal import Decimal

import pytest
from conftest import OPENING, Databases

from twopc.participants import FORMAT_ID, Participant, UnknownXid, Xid

ACCOUNTS = ["a1", "a2", "a3", "a4", "a5"]


def prepared(participant: Participant, n: int, account: str) -> Xid:
    """A branch that credited 1 to ``account`` and prepared, its session gone."""
    xid = Xid(FORMAT_ID, f"many.{n:020d}", participant.name)
    branch = participant.begin(xid)
    branch.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (account,))
    branch.prepare()
    branch.close()
    return xid


def still_prepared(db: Databases, side: str) -> list[Xid | str]:
    return db.pg_prepared() if side == "pg" else db.mysql_prepared()


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_many_branches_are_finished_and_an_unknown_one_stops_none_of_the_others(
    db: Databases, side: str, commit: bool
) -> None:
    participant: Participant = db.pg() if side == "pg" else db.mysql()
    participant.ensure_outcome_table()
    xids = [prepared(participant, n, account) for n, account in enumerate(ACCOUNTS)]
    unknown = Xid(FORMAT_ID, f"many.{99:020d}", participant.name)  # never prepared
    asked = [*xids[:2], unknown, *xids[2:]]
    outcomes = participant.finish_prepared_many(asked, commit=commit)
    assert [type(o).__name__ if o else None for o in outcomes] == [
        None,
        None,
        UnknownXid.__name__,
        None,
        None,
        None,
    ]
    assert still_prepared(db, side) == []
    for account in ACCOUNTS:
        assert db.balance(side, account) == OPENING + (1 if commit else 0)
    (again,) = participant.finish_prepared_many(xids[:1], commit=commit)
    assert isinstance(again, UnknownXid)  # finished already: the marker tells recovery how
    assert participant.finish_prepared_many([], commit=commit) == []
    participant.close()


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_many_branches_are_finished_though_their_pooled_connection_died_idle(
    db: Databases, side: str
) -> None:
    participant: Participant = db.pg() if side == "pg" else db.mysql()
    participant.ensure_outcome_table()
    xids = [prepared(participant, n, account) for n, account in enumerate(ACCOUNTS[:3])]
    db.kill_idle_pooled(participant, side)
    assert participant.finish_prepared_many(xids, commit=True) == [None, None, None]
    assert still_prepared(db, side) == []
    assert [db.balance(side, a) for a in ACCOUNTS[:3]] == [OPENING + Decimal(1)] * 3
    participant.close()
