"""Phase 2 against the real servers: an error in one server's commit never ends as a plain
failure. A branch whose commit fails once is committed from a fresh connection; one whose
every attempt fails is reported in doubt, stays prepared on its server with the decision in
the log, and `twopc recover` commits it. Each case is run against each server's branch.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from conftest import Databases

from twopc.coordinator import Coordinator, CoordinatorConfig, InDoubt, RetryPolicy, TxState
from twopc.participants import (
    FORMAT_ID,
    DatabaseURL,
    MySQLParticipant,
    ParticipantUnavailable,
    PostgresParticipant,
    StatementFailed,
    Xid,
)
from twopc.participants.base import Branch, Participant
from twopc.txlog import read_log

AMOUNT = Decimal("3.00")
QUICK = RetryPolicy(initial_interval=0.02, maximum_interval=0.1, deadline=0.5)
ERRORS = {
    "statement error": lambda: StatementFailed("commit prepared failed (injected)", code="XX"),
    "lost link": lambda: ParticipantUnavailable("connection lost (injected)"),
    "a bug": lambda: RuntimeError("a bug (injected)"),
}


def faulty(kind: type[Participant], error: str, *, every_time: bool) -> type[Participant]:
    """``kind`` whose branches' own commit raises ``error`` (and, with ``every_time``, whose
    commits from fresh connections do too): the server is real, the failure injected."""

    class Faulty(kind):  # type: ignore[valid-type,misc]
        def begin(self, xid: Xid) -> Branch:
            branch = super().begin(xid)

            def failing_commit() -> None:
                raise ERRORS[error]()

            # The commit's request fails to go out (nothing reaches the server); the
            # failure is raised where its reply is read.
            branch._sql_send_commit = failing_commit  # type: ignore[method-assign]
            return branch

        def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
            if every_time and commit:
                raise ERRORS[error]() if error != "a bug" else ParticipantUnavailable("down")
            super().finish_prepared(xid, commit=commit)

    return Faulty


def participants(db: Databases, side: str, error: str, every_time: bool) -> list[Any]:
    pg_kind: type[Participant] = PostgresParticipant
    mysql_kind: type[Participant] = MySQLParticipant
    if side == "pg":
        pg_kind = faulty(pg_kind, error, every_time=every_time)
    else:
        mysql_kind = faulty(mysql_kind, error, every_time=every_time)
    return [
        pg_kind("pg", DatabaseURL.parse(db.pg_url)),
        mysql_kind("mysql", DatabaseURL.parse(db.mysql_url)),
    ]


def transfer(coordinator: Coordinator) -> Any:
    tx = coordinator.begin()
    tx["pg"].execute("UPDATE accounts SET balance = balance - %s WHERE id = 'a1'", (AMOUNT,))
    tx["mysql"].execute("UPDATE accounts SET balance = balance + %s WHERE id = 'a1'", (AMOUNT,))
    return tx


def moved(db: Databases, before: dict[str, Decimal]) -> bool:
    after = db.balances()
    return after["pg:a1"] == before["pg:a1"] - AMOUNT and after["mysql:a1"] == (
        before["mysql:a1"] + AMOUNT
    )


@pytest.mark.parametrize("error", list(ERRORS))
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_commit_failing_once_is_finished_from_a_fresh_connection(
    db: Databases, side: str, error: str
) -> None:
    before = db.balances()
    config = CoordinatorConfig(db.home, coordinator_id="p2", retry=QUICK)
    with Coordinator.open(participants(db, side, error, every_time=False), config) as coordinator:
        tx = transfer(coordinator)
        outcome = tx.commit()
        tx.close()
    assert outcome.state is TxState.COMMITTED
    assert outcome.branches == {"pg": "committed", "mysql": "committed"}
    assert moved(db, before)
    assert db.pg_prepared() == [] and db.mysql_prepared() == []
    assert [r.kind for r in read_log(db.home / "txlog" / "p2").records] == ["COMMIT", "END"]


@pytest.mark.parametrize("error", list(ERRORS))
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_commit_failing_every_time_is_in_doubt_and_recovered(
    db: Databases, side: str, error: str
) -> None:
    before = db.balances()
    config = CoordinatorConfig(db.home, coordinator_id="p2", retry=QUICK)
    with Coordinator.open(participants(db, side, error, every_time=True), config) as coordinator:
        tx = transfer(coordinator)
        with pytest.raises(InDoubt) as in_doubt:
            tx.commit()
        tx.close()
    assert in_doubt.value.unfinished == (side,)
    assert_in_doubt_then_recovered(db, before, side, tx.gtrid, "p2")


def assert_in_doubt_then_recovered(
    db: Databases, before: dict[str, Decimal], side: str, gtrid: str, coordinator_id: str
) -> None:
    """The other server committed and ``side`` still holds its branch prepared, with only
    the COMMIT record in the log; then `twopc recover` commits it and the money has moved."""
    prepared = db.pg_prepared() if side == "pg" else db.mysql_prepared()
    assert prepared == [Xid(FORMAT_ID, gtrid, side)]
    records = read_log(db.home / "txlog" / coordinator_id).records
    assert [r.kind for r in records] == ["COMMIT"]
    recovered = db.twopc("recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert moved(db, before)
    assert db.pg_prepared() == [] and db.mysql_prepared() == []
