"""Participants reuse the connections of branches and local transactions that ended normally,
and never one that was interrupted, failed, or lost its server."""

from __future__ import annotations

from decimal import Decimal

import pymysql
import pytest
from conftest import OPENING, Databases

from twopc.coordinator import Coordinator, CoordinatorConfig, TransactionAborted
from twopc.participants import FORMAT_ID, Participant, Xid

SESSION = {"pg": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s"
CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"


def sessions_of_a_transfer(coordinator: Coordinator) -> dict[str, int]:
    """Run one 1.00 transfer pg:a1 -> mysql:a1; return each branch's server session id."""
    with coordinator.transaction() as tx:
        seen = {side: int(tx[side].execute(SESSION[side]).fetchone()[0]) for side in SESSION}
        tx["pg"].execute(DEBIT, (Decimal("1"), "a1"))
        tx["mysql"].execute(CREDIT, (Decimal("1"), "a1"))
    return seen


def coordinator_for(db: Databases, **config: object) -> Coordinator:
    settings = CoordinatorConfig(db.home, coordinator_id="pool", **config)  # type: ignore[arg-type]
    return Coordinator.open([db.pg(), db.mysql()], settings)


def test_a_finished_branch_gives_its_connection_to_the_next(db: Databases) -> None:
    with coordinator_for(db) as coordinator:
        first = sessions_of_a_transfer(coordinator)
        second = sessions_of_a_transfer(coordinator)
    assert second == first
    assert db.balance("pg", "a1") == OPENING - 2 and db.balance("mysql", "a1") == OPENING + 2


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_an_idle_connection_whose_session_died_is_replaced(db: Databases, side: str) -> None:
    with coordinator_for(db) as coordinator:
        first = sessions_of_a_transfer(coordinator)
        if side == "pg":
            db.pg_query("SELECT pg_terminate_backend(%s)", (first["pg"],))
        else:
            db.mysql_query("KILL %s", (first["mysql"],))
        second = sessions_of_a_transfer(coordinator)
    assert second[side] != first[side]
    other = "mysql" if side == "pg" else "pg"
    assert second[other] == first[other]
    assert db.balance("pg", "a1") == OPENING - 2


def test_idle_connections_survive_a_server_restart(db: Databases) -> None:
    with coordinator_for(db) as coordinator:
        first = sessions_of_a_transfer(coordinator)
        db.servers.stop("mysql")
        db.servers.start("mysql")
        second = sessions_of_a_transfer(coordinator)
    assert second["pg"] == first["pg"]
    assert db.balance("mysql", "a1") == OPENING + 2


def test_an_interrupted_branch_never_lends_its_connection(db: Databases) -> None:
    info = db.state.mysql
    blocker = pymysql.connect(host=info.host, port=info.port, user=info.user, autocommit=True)
    with coordinator_for(db, prepare_timeout=1.0) as coordinator:
        try:
            with (
                pytest.raises(TransactionAborted, match="prepare timed out"),
                coordinator.transaction() as tx,
            ):
                hung = int(tx["mysql"].execute(SESSION["mysql"]).fetchone()[0])
                tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
                tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
                blocker.cursor().execute("FLUSH TABLES WITH READ LOCK")  # XA PREPARE hangs
        finally:
            blocker.cursor().execute("UNLOCK TABLES")
            blocker.close()
        after = sessions_of_a_transfer(coordinator)
    assert after["mysql"] != hung
    assert db.balance("pg", "a1") == OPENING - 1 and db.balance("mysql", "a1") == OPENING + 1


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_local_transaction_that_failed_is_not_reused(db: Databases, side: str) -> None:
    participant: Participant = db.pg() if side == "pg" else db.mysql()
    with participant.local_transaction() as local:
        committed = int(local.execute(SESSION[side]).fetchone()[0])
    with pytest.raises(RuntimeError), participant.local_transaction() as local:
        failed = int(local.execute(SESSION[side]).fetchone()[0])
        raise RuntimeError("the caller's own error: the transaction rolls back")
    with participant.local_transaction() as local:
        after = int(local.execute(SESSION[side]).fetchone()[0])
    assert failed == committed  # the committed one's connection served again...
    assert after != failed  # ... but not the one left inside a transaction
    participant.close()


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_branch_is_finished_by_xid_though_its_pooled_connection_died_idle(
    db: Databases, side: str, commit: bool
) -> None:
    """Finishing a prepared branch by xid (recovery, phase-2 retries) takes a recently pooled
    connection without a round trip to check it: one whose session died in the pool fails
    for want of a server, is closed, and the branch is finished on a checked connection."""
    participant: Participant = db.pg() if side == "pg" else db.mysql()
    xid = Xid(FORMAT_ID, "pool.00000000000000000001", participant.name)
    branch = participant.begin(xid)
    branch.execute(CREDIT, (Decimal("3"), "a2"))
    branch.prepare()
    branch.close()  # its session goes: another may finish it (MariaDB: only then)
    pooled = db.kill_idle_pooled(participant, side)
    participant.finish_prepared(xid, commit=commit)
    assert (db.pg_prepared() if side == "pg" else db.mysql_prepared()) == []
    assert db.balance(side, "a2") == OPENING + (3 if commit else 0)
    with participant.local_transaction() as local:
        assert int(local.execute(SESSION[side]).fetchone()[0]) not in (pooled, 0)
    participant.close()
