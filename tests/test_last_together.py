"""Last statements sent together: ``GlobalTransaction.execute_last`` on the real servers.

Each branch's last statement (with its prepare) goes out before any reply is read, the
PostgreSQL one told not to wait for row locks, so that no transaction waits for a lock on
one server while it holds one on another except in the given order. A locked row rolls
both back and runs them again one after the other; errors still end all-or-nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest import OPENING, Databases
from test_participants_watchdog import Notices

from twopc.bank import AccountRef, Transfer, TransferRejected, run_transfer
from twopc.coordinator import Coordinator, CoordinatorConfig
from twopc.coordinator.contention import LockContention
from twopc.participants import (
    FORMAT_ID,
    BranchState,
    DatabaseURL,
    MySQLParticipant,
    Participant,
    PostgresParticipant,
    UndefinedTable,
    Xid,
)
from twopc.participants.mysql_branch import MySQLBranch
from twopc.participants.postgres_branch import PostgresBranch

DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s"
CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
AMOUNT = Decimal("3.00")


def coordinator(db: Databases, *participants: Participant) -> Coordinator:
    rms = participants or (db.pg(), db.mysql())
    return Coordinator.open(list(rms), CoordinatorConfig(db.home, coordinator_id="together"))


def moved(db: Databases, pg: Decimal, mysql: Decimal) -> bool:
    balances = (db.balance("pg", "a1"), db.balance("mysql", "a1"))
    nothing_prepared = db.pg_prepared() == [] and db.mysql_prepared() == []
    return balances == (OPENING + pg, OPENING + mysql) and nothing_prepared


def spy(tx: Any, order: list[str]) -> None:
    """Record, in order, each branch's sending of its last statement and reading of the reply."""
    for side in ("pg", "mysql"):
        branch = tx[side]
        for name in ("_sql_send_last", "_sql_receive_last"):
            real: Callable[..., Any] = getattr(branch, name)

            def recorded(*args: Any, real: Callable[..., Any] = real, tag: str = name) -> Any:
                order.append(tag.replace("_sql_", f"{real.__self__.xid.bqual} "))
                return real(*args)

            setattr(branch, name, recorded)


def test_both_go_out_before_either_reply_is_read_and_commit(db: Databases) -> None:
    order: list[str] = []
    with coordinator(db) as c, c.transaction() as tx:
        spy(tx, order)
        done = tx.execute_last([("pg", DEBIT, (AMOUNT, "a1")), ("mysql", CREDIT, (AMOUNT, "a1"))])
        assert [cursor.rowcount for cursor in done] == [1, 1]
        assert tx["pg"].state is BranchState.PREPARED and tx["mysql"].state is BranchState.PREPARED
        assert db.pg_prepared() == [Xid(FORMAT_ID, tx.gtrid, "pg")]
        assert db.mysql_prepared() == [Xid(FORMAT_ID, tx.gtrid, "mysql")]
    assert order == ["pg send_last", "mysql send_last", "pg receive_last", "mysql receive_last"]
    assert tx.outcome is not None and tx.outcome.protocol == "2pc"
    assert moved(db, -AMOUNT, AMOUNT)


def test_a_coordinator_that_met_many_locked_rows_sends_in_order(db: Databases) -> None:
    with coordinator(db) as c:
        for _ in range(100):
            c.contention.tried(locked=True)
        with c.transaction() as tx:
            order: list[str] = []
            spy(tx, order)
            tx.execute_last([("pg", DEBIT, (AMOUNT, "a1")), ("mysql", CREDIT, (AMOUNT, "a1"))])
    assert order == ["pg send_last", "pg receive_last", "mysql send_last", "mysql receive_last"]
    assert moved(db, -AMOUNT, AMOUNT)


@pytest.mark.parametrize("failing", ["pg", "mysql"])
def test_a_failed_statement_rolls_back_the_branch_prepared_beside_it(
    db: Databases, failing: str
) -> None:
    statements = [("pg", DEBIT, (AMOUNT, "a1")), ("mysql", CREDIT, (AMOUNT, "a1"))]
    broken = 0 if failing == "pg" else 1
    statements[broken] = (failing, "UPDATE no_such_table SET x = 1", ())
    with coordinator(db) as c:
        with pytest.raises(UndefinedTable), c.transaction() as tx:
            branches = [tx["pg"], tx["mysql"]]
            tx.execute_last(statements)
        assert [b.state for b in branches] == [BranchState.ROLLED_BACK] * 2
        assert c.unsettled() == []
    assert moved(db, Decimal(0), Decimal(0))


def test_a_locked_row_rolls_both_back_and_waits_holding_nothing_elsewhere(db: Databases) -> None:
    """PostgreSQL's row is locked: its statement does not wait, the MySQL branch prepared
    beside it is rolled back, and the statements run again in order. While the transaction
    waits for PostgreSQL it holds nothing on MariaDB (the row is free, nothing prepared)."""
    holder = psycopg.connect(db.pg_url)  # a plain transaction holding pg:a1
    holder.execute("UPDATE accounts SET balance = balance WHERE id = 'a1'")
    outcome: list[object] = []
    with coordinator(db) as c:

        def transfer() -> None:
            try:
                with c.transaction() as tx:
                    tx.execute_last(
                        [("pg", DEBIT, (AMOUNT, "a1")), ("mysql", CREDIT, (AMOUNT, "a1"))]
                    )
                outcome.append(tx.outcome)
            except BaseException as err:  # reported below
                outcome.append(err)

        mover = threading.Thread(target=transfer)
        mover.start()
        try:
            assert _waits_for_a_lock(db, holder.info.backend_pid), "the transfer never waited"
            assert db.mysql_prepared() == []
            locked = db.mysql_query("SELECT id FROM accounts WHERE id = 'a1' FOR UPDATE NOWAIT")
            assert locked == [("a1",)]  # free: the transaction holds nothing on MariaDB
        finally:
            holder.rollback()
            holder.close()
            mover.join(30)
        assert c.contention.rate > 0  # the locked row was counted
    assert not mover.is_alive()
    assert [type(o).__name__ for o in outcome] == ["Outcome"], outcome
    assert moved(db, -AMOUNT, AMOUNT)


def test_another_error_beside_a_locked_row_is_raised_without_running_again(
    db: Databases,
) -> None:
    """PostgreSQL's row is locked and MariaDB's statement fails: that error is the answer.
    Run again in order, the transaction would first wait for the lock (here until the 3 s
    limit: LockWaitTimeout) only to meet the same error."""
    pg = PostgresParticipant("pg", DatabaseURL.parse(db.pg_url), lock_wait=3)
    holder = psycopg.connect(db.pg_url)
    holder.execute("UPDATE accounts SET balance = balance WHERE id = 'a1'")
    try:
        with coordinator(db, pg, db.mysql()) as c:
            with pytest.raises(UndefinedTable), c.transaction() as tx:
                tx.execute_last(
                    [("pg", DEBIT, (AMOUNT, "a1")), ("mysql", "UPDATE no_such_table SET x = 1", ())]
                )
            assert c.unsettled() == []
    finally:
        holder.rollback()
        holder.close()
    assert moved(db, Decimal(0), Decimal(0))


def _waits_for_a_lock(db: Databases, holder: int) -> bool:
    """Whether a session other than ``holder`` waits for a lock on the PostgreSQL server."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s"
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if db.pg_query(waiting, (holder,))[0][0] > 0:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(120)
def test_opposite_transfers_never_wait_for_each_other_across_the_servers(db: Databases) -> None:
    """Two threads move money between the same two accounts, opposite ways, as fast as they
    can. Sent together with both statements waiting for locks, each transaction could hold
    one server's row and wait for the other's: a cycle neither server sees, ended only by
    the lock-wait limit (3 s here: LockWaitTimeout)."""
    pg = PostgresParticipant("pg", DatabaseURL.parse(db.pg_url), lock_wait=3)
    mysql = MySQLParticipant("mysql", DatabaseURL.parse(db.mysql_url), lock_wait=3)
    there = Transfer(AccountRef("pg", "a1"), AccountRef("mysql", "a1"), AMOUNT)
    back = Transfer(AccountRef("mysql", "a1"), AccountRef("pg", "a1"), AMOUNT)
    errors: list[BaseException] = []
    with coordinator(db, pg, mysql) as c:
        c.contention = LockContention(probe=1)  # always together, however often rows are locked

        def shuttle(transfer: Transfer) -> None:
            for _ in range(40):
                try:
                    run_transfer(c, transfer, announce=False)
                except Exception as err:  # LockWaitTimeout above all: every one fails it
                    errors.append(err)

        threads = [threading.Thread(target=shuttle, args=(t,)) for t in (there, back)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
    assert errors == []
    assert moved(db, Decimal(0), Decimal(0))


def test_a_statement_waiting_together_is_noticed_on_a_prepared_branch(db: Databases) -> None:
    """The MySQL statement sent together waits for a branch prepared by a live coordinator:
    its participant's ``on_lock_wait`` hears of it, as for a statement run alone."""
    holder = db.mysql()
    holder.ensure_outcome_table()
    blocker = holder.begin(Xid(FORMAT_ID, "watch.0000000000000000000e", "mysql"))
    blocker.execute(CREDIT, (Decimal(1), "a1"))
    blocker.prepare()
    notices = Notices()
    url = DatabaseURL.parse(db.mysql_url)
    watched = MySQLParticipant("mysql", url, on_lock_wait=notices, notice_after=0.3, lock_wait=20)
    with coordinator(db, db.pg(), watched) as c:
        tx = c.begin()
        statements = [("pg", DEBIT, (AMOUNT, "a1")), ("mysql", CREDIT, (AMOUNT, "a1"))]
        mover = threading.Thread(target=tx.execute_last, args=(statements,))
        mover.start()
        try:
            assert notices.first.wait(15), "no notice"
            ((name, waits, _),) = notices.calls
            assert name == "mysql"
            assert [w.blocker for w in waits] == [blocker.xid]
        finally:
            blocker.rollback()
            blocker.close()
            mover.join(30)
        tx.commit()
        tx.close()
    assert moved(db, -AMOUNT, AMOUNT)


def test_a_branch_s_last_statements_come_together(db: Databases) -> None:
    statements = [
        ("pg", DEBIT, (AMOUNT, "a1")),
        ("mysql", CREDIT, (AMOUNT, "a1")),
        ("pg", CREDIT, (AMOUNT, "a2")),
    ]
    with coordinator(db) as c, c.transaction() as tx, pytest.raises(ValueError):
        tx.execute_last(statements)
    assert moved(db, Decimal(0), Decimal(0))


def test_several_last_statements_per_branch_go_out_in_one_request_each(db: Databases) -> None:
    order: list[str] = []
    with coordinator(db) as c, c.transaction() as tx:
        spy(tx, order)
        done = tx.execute_last(
            [
                ("pg", DEBIT, (AMOUNT, "a1")),
                ("pg", "SELECT balance FROM accounts WHERE id = %s", ("a1",)),
                ("mysql", CREDIT, (AMOUNT, "a1")),
                ("mysql", CREDIT, (AMOUNT, "a2")),
            ]
        )
        assert [cursor.rowcount for cursor in (done[0], done[2], done[3])] == [1, 1, 1]
        assert Decimal(done[1].fetchone()[0]) == OPENING - AMOUNT  # read inside the branch
    assert order == ["pg send_last", "mysql send_last", "pg receive_last", "mysql receive_last"]
    assert moved(db, -AMOUNT, AMOUNT)
    assert db.balance("mysql", "a2") == OPENING + AMOUNT


@pytest.mark.parametrize("together", [True, False], ids=["together", "in-order"])
def test_a_statement_ending_in_a_line_comment_does_not_swallow_the_prepare(
    db: Databases, together: bool
) -> None:
    """The statements, the marker and the prepare share one request: a ``--`` comment at the
    end of a statement must not turn the rest of that request into a comment."""
    with coordinator(db) as c:
        if not together:
            c.contention = LockContention(threshold=0.01)
            c.contention.tried(locked=True)
        with c.transaction() as tx:
            done = tx.execute_last(
                [
                    ("pg", DEBIT + " -- the debit", (AMOUNT, "a1")),
                    ("mysql", CREDIT + " -- the credit", (AMOUNT, "a1")),
                ]
            )
            assert [cursor.rowcount for cursor in done] == [1, 1]
            assert tx["pg"].state is BranchState.PREPARED
            assert tx["mysql"].state is BranchState.PREPARED
    assert moved(db, -AMOUNT, AMOUNT)


@pytest.mark.parametrize("together", [True, False], ids=["together", "in-order"])
@pytest.mark.parametrize("failing", [1, 3])
def test_a_failed_statement_says_which_of_them_it_is(
    db: Databases, failing: int, together: bool
) -> None:
    statements = [
        ("pg", DEBIT, (AMOUNT, "a1")),
        ("pg", CREDIT, (AMOUNT, "a2")),
        ("mysql", CREDIT, (AMOUNT, "a1")),
        ("mysql", CREDIT, (AMOUNT, "a2")),
    ]
    side = statements[failing][0]
    statements[failing] = (side, "UPDATE no_such_table SET x = 1", ())
    with coordinator(db) as c:
        if not together:
            c.contention = LockContention(threshold=0.01)
            c.contention.tried(locked=True)  # sends in order from now on (probes aside)
        with pytest.raises(UndefinedTable) as failed, c.transaction() as tx:
            tx.execute_last(statements)
        assert c.unsettled() == []
    assert failed.value.statement == failing
    assert moved(db, Decimal(0), Decimal(0))


@pytest.mark.parametrize("destination", ["pg", "mysql"])
def test_a_transfer_and_its_event_go_out_together(
    db: Databases, destination: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = "mysql" if destination == "pg" else "pg"
    move = Transfer(AccountRef(source, "a1"), AccountRef(destination, "a1"), AMOUNT)
    order: list[str] = []
    for kind in (PostgresBranch, MySQLBranch):
        for name in ("_sql_send_last", "_sql_receive_last"):
            real: Callable[..., Any] = getattr(kind, name)

            def recorded(*args: Any, real: Callable[..., Any] = real, tag: str = name) -> Any:
                order.append(tag.replace("_sql_", f"{args[0].xid.bqual} "))
                return real(*args)

            monkeypatch.setattr(kind, name, recorded)
    with coordinator(db) as c:
        run_transfer(c, move)
    assert order == ["pg send_last", "mysql send_last", "pg receive_last", "mysql receive_last"]
    query = {"pg": db.pg_query, "mysql": db.mysql_query}[destination]
    events = query("SELECT aggregate, event_type FROM outbox")
    assert events == [(f"{destination}:a1", "transfer.committed")]
    pg, mysql = (AMOUNT, -AMOUNT) if destination == "pg" else (-AMOUNT, AMOUNT)
    assert moved(db, pg, mysql)


@pytest.mark.parametrize("destination", ["pg", "mysql"])
def test_a_missing_outbox_table_refuses_the_transfer_and_changes_nothing(
    db: Databases, destination: str
) -> None:
    source = "mysql" if destination == "pg" else "pg"
    {"pg": db.pg_query, "mysql": db.mysql_query}[destination]("DROP TABLE outbox")
    move = Transfer(AccountRef(source, "a1"), AccountRef(destination, "a1"), AMOUNT)
    with coordinator(db) as c, pytest.raises(TransferRejected) as refused:
        run_transfer(c, move)
    assert str(refused.value) == (
        f"{destination} has no outbox table: run `twopc init` (it adds the missing tables and "
        "keeps the data)"
    )
    assert moved(db, Decimal(0), Decimal(0))

