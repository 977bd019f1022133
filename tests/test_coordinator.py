"""The coordinator through its library API, on real servers: failure paths of phases 1 and 2."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pymysql
import pytest
from conftest import OPENING, Databases

from twopc.bank import AccountRef, Transfer, run_transfer
from twopc.coordinator import (
    Coordinator,
    CoordinatorBusy,
    CoordinatorConfig,
    CrashPoint,
    InDoubt,
    RetryPolicy,
    TransactionAborted,
    log_directory,
)
from twopc.participants import (
    FORMAT_ID,
    MisconfiguredServer,
    ParticipantUnavailable,
    StatementFailed,
    Xid,
)
from twopc.txlog import read_log

DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s"
CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"


class OnPoint:
    """Protocol hooks that run an action once when the coordinator passes ``point``."""

    def __init__(self, point: CrashPoint, action: object) -> None:
        self.point = point
        self.action = action
        self.fired = False

    def armed(self, point: CrashPoint) -> bool:
        return point is self.point

    def reached(self, point: CrashPoint, gtrid: str) -> None:
        if point is self.point:
            self.fired = True
            self.action()  # type: ignore[operator]


def open_coordinator(db: Databases, **config: object) -> Coordinator:
    settings = CoordinatorConfig(db.home, coordinator_id=config.pop("cid", "lib"), **config)  # type: ignore[arg-type]
    return Coordinator.open([db.pg(), db.mysql()], settings)


def log_records(db: Databases, cid: str = "lib") -> list[tuple[str, str]]:
    return [(r.kind, r.txid) for r in read_log(log_directory(db.home, cid)).records]


def assert_untouched(db: Databases) -> None:
    assert set(db.balances().values()) == {OPENING}
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_library_api_commits_both_branches(db: Databases) -> None:
    with open_coordinator(db) as coordinator:
        with coordinator.transaction() as tx:
            tx["pg"].execute(DEBIT, (Decimal("12.34"), "a1"))
            tx["mysql"].execute(CREDIT, (Decimal("12.34"), "a1"))
        assert tx.outcome is not None and tx.outcome.protocol == "2pc"
    assert log_records(db) == [("COMMIT", tx.gtrid), ("END", tx.gtrid)]  # END is not forced
    assert db.balance("pg", "a1") == Decimal("987.66")
    assert db.balance("mysql", "a1") == Decimal("1012.34")


def test_read_only_branch_is_left_out_of_phase_two(db: Databases) -> None:
    with open_coordinator(db) as coordinator, coordinator.transaction() as tx:
        assert tx["pg"].execute("SELECT balance FROM accounts WHERE id = %s", ("a1",)).fetchone()
        tx["mysql"].execute(CREDIT, (Decimal("1"), "a1"))
    assert tx.outcome is not None and tx.outcome.branches == {
        "pg": "read-only",
        "mysql": "committed",
    }
    assert db.balance("mysql", "a1") == Decimal("1001.00")


def test_failed_pg_statement_becomes_a_no_vote_not_a_commit(db: Databases) -> None:
    """PostgreSQL turns PREPARE of a failed transaction into ROLLBACK, without an error."""
    with open_coordinator(db) as coordinator:
        with (
            pytest.raises(TransactionAborted, match="transaction is INERROR"),
            coordinator.transaction() as tx,
        ):
            tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
            with pytest.raises(StatementFailed):
                tx["pg"].execute("SELECT 1 / 0")  # the application swallows this error
            tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
        assert log_records(db) == []  # no COMMIT record, ever
    assert_untouched(db)


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_branch_connection_dropped_before_prepare_aborts_everything(
    db: Databases, side: str
) -> None:
    with open_coordinator(db) as coordinator:
        with pytest.raises(TransactionAborted), coordinator.transaction() as tx:
            tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
            tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
            kill_branch_session(db, side)
        assert log_records(db) == []
    assert_untouched(db)


def kill_branch_session(db: Databases, side: str) -> None:
    """Kill the server session holding our active branch on ``side`` (a dropped connection)."""
    if side == "pg":
        killed = db.pg_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        assert killed
    else:
        rows = db.mysql_query(
            "SELECT id FROM information_schema.processlist "
            "WHERE db = 'twopc' AND id <> connection_id()"
        )
        assert rows
        for (thread_id,) in rows:
            db.mysql_query("KILL %s", (thread_id,))


def test_prepare_timeout_aborts_and_leaves_nothing_prepared(db: Databases) -> None:
    info = db.state.mysql
    blocker = pymysql.connect(host=info.host, port=info.port, user=info.user, autocommit=True)
    try:
        with (
            open_coordinator(db, prepare_timeout=1.0) as coordinator,
            pytest.raises(TransactionAborted, match="prepare timed out"),
            coordinator.transaction() as tx,
        ):
            tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
            tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
            # A global read lock makes MariaDB's XA PREPARE wait: the prepare hangs.
            blocker.cursor().execute("FLUSH TABLES WITH READ LOCK")
    finally:
        blocker.cursor().execute("UNLOCK TABLES")
        blocker.close()
    assert_untouched(db)


def test_lost_connections_in_phase_two_are_retried_until_committed(db: Databases) -> None:
    def drop_both() -> None:
        kill_branch_session(db, "pg")
        kill_branch_session(db, "mysql")

    hooks = OnPoint(CrashPoint.AFTER_DECISION, drop_both)
    with open_coordinator(db, hooks=hooks) as coordinator, coordinator.transaction() as tx:
        tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
        tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
    assert hooks.fired
    assert tx.outcome is not None and tx.outcome.branches == {
        "pg": "committed",
        "mysql": "committed",
    }
    assert db.balance("pg", "a1") == Decimal("995.00")
    assert db.balance("mysql", "a1") == Decimal("1005.00")
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_phase_two_deadline_leaves_a_logged_commit_in_doubt(db: Databases) -> None:
    hooks = OnPoint(CrashPoint.AFTER_DECISION, lambda: db.servers.stop("mysql"))
    retry = RetryPolicy(initial_interval=0.05, maximum_interval=0.2, deadline=1.0)
    with open_coordinator(db, hooks=hooks, retry=retry) as coordinator:
        with (
            pytest.raises(InDoubt, match="twopc recover") as raised,
            coordinator.transaction() as tx,
        ):
            tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
            tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
        assert raised.value.unfinished == ("mysql",)
        assert log_records(db) == [("COMMIT", tx.gtrid)]  # decision durable, no END
    db.servers.start("mysql")
    # The MariaDB branch survived the server restart, prepared, and can be finished from the log.
    xid = Xid(FORMAT_ID, tx.gtrid, "mysql")
    assert db.mysql_prepared() == [xid]
    db.mysql().finish_prepared(xid, commit=True)
    assert db.balance("pg", "a1") == Decimal("995.00")
    assert db.balance("mysql", "a1") == Decimal("1005.00")


def test_max_prepared_transactions_zero_is_named(db: Databases) -> None:
    db.pg_query("ALTER SYSTEM SET max_prepared_transactions = 0")
    restart_pg(db)
    try:
        result = db.twopc("transfer", "pg:a1", "mysql:a1", "1")
        assert result.returncode == 1
        assert "max_prepared_transactions = 0" in result.stderr
        assert "set max_prepared_transactions to at least 100" in result.stderr
        # Without the up-front check, the refused PREPARE itself aborts with the same advice.
        with open_coordinator(db) as coordinator:
            with pytest.raises(TransactionAborted) as raised, coordinator.transaction() as tx:
                tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
                tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
            assert isinstance(raised.value.__cause__, MisconfiguredServer)
            assert "max_prepared_transactions" in str(raised.value)
        assert_untouched(db)
    finally:
        db.pg_query("ALTER SYSTEM RESET max_prepared_transactions")
        restart_pg(db)


def restart_pg(db: Databases) -> None:
    db.servers.stop("pg")
    db.servers.start("pg")


def test_one_coordinator_id_runs_once(db: Databases) -> None:
    with open_coordinator(db, cid="solo"), pytest.raises(CoordinatorBusy, match="already running"):
        open_coordinator(db, cid="solo")
    result = db.twopc("transfer", "pg:a1", "mysql:a1", "1", "--coordinator-id", "bad id!")
    assert result.returncode == 2
    assert "coordinator id 'bad id!'" in result.stderr


@pytest.fixture()
def secret_users(db: Databases) -> Iterator[tuple[str, str, str]]:
    password = "Sup3r-Secret-pw"
    db.pg_query(f"CREATE ROLE sekrit LOGIN PASSWORD '{password}'")
    db.pg().ensure_outcome_table()  # created by an owner; the app user only writes to it
    db.pg_query("GRANT ALL ON accounts, twopc_outcomes TO sekrit")
    db.mysql_query("CREATE USER 'sekrit'@'127.0.0.1' IDENTIFIED BY %s", (password,))
    db.mysql_query("GRANT ALL ON twopc.* TO 'sekrit'@'127.0.0.1'")
    pg, my = db.state.pg, db.state.mysql
    yield (
        password,
        f"postgresql://sekrit:{password}@127.0.0.1:{pg.port}/twopc",
        f"mysql://sekrit:{password}@127.0.0.1:{my.port}/twopc",
    )
    db.pg_query("DROP OWNED BY sekrit")
    db.pg_query("DROP ROLE sekrit")
    db.mysql_query("DROP USER 'sekrit'@'127.0.0.1'")


def test_passwords_never_appear_in_output(
    db: Databases, secret_users: tuple[str, str, str]
) -> None:
    password, pg_url, mysql_url = secret_users
    ok = db.twopc(
        "transfer", "pg:a1", "mysql:a1", "1", TWOPC_PG_URL=pg_url, TWOPC_MYSQL_URL=mysql_url
    )
    assert ok.returncode == 0, ok.stderr
    wrong_pw = mysql_url.replace(password, password + "x")  # the dev PostgreSQL trusts loopback
    dead_port = mysql_url.replace(f":{db.state.mysql.port}/", ":1/")
    runs = [
        ok,
        db.twopc("balances", TWOPC_PG_URL=pg_url, TWOPC_MYSQL_URL=wrong_pw),
        db.twopc("balances", TWOPC_PG_URL=pg_url, TWOPC_MYSQL_URL=dead_port),
        db.twopc(
            "transfer", "pg:a1", "mysql:zz", "1", TWOPC_PG_URL=pg_url, TWOPC_MYSQL_URL=mysql_url
        ),
        db.twopc(
            "balances",
            TWOPC_PG_URL="postgresql://sekrit:" + password + "@/",
            TWOPC_MYSQL_URL=mysql_url,
        ),
        db.twopc("balances", TWOPC_PG_URL="not a url " + password, TWOPC_MYSQL_URL=mysql_url),
    ]
    assert [r.returncode for r in runs] == [0, 1, 1, 1, 2, 2]
    for run in runs:
        assert password not in run.stdout + run.stderr
    assert "Access denied for user 'sekrit'" in runs[1].stderr


def test_concurrent_opposite_transfers_do_not_deadlock(db: Databases) -> None:
    """Statements run PostgreSQL-first whatever the direction, so no distributed lock cycle."""
    results: list[int] = []

    def run(args: tuple[str, ...]) -> None:
        for _ in range(5):
            results.append(db.twopc("transfer", *args, "--lock-wait", "20").returncode)

    threads = [
        threading.Thread(target=run, args=(a,))
        for a in (("pg:a1", "mysql:a1", "1"), ("mysql:a1", "pg:a1", "1"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0] * 10
    assert db.balance("pg", "a1") == OPENING and db.balance("mysql", "a1") == OPENING


def test_home_holds_no_log_after_one_shot_transfers(db: Databases) -> None:
    assert db.twopc("transfer", "pg:a1", "mysql:a1", "1").returncode == 0
    assert not any(Path(db.home, "txlog").iterdir())


def test_branch_finished_against_the_decision_is_not_taken_as_done(db: Databases) -> None:
    """'Unknown xid' in phase 2 is settled by the outcome marker, never assumed committed."""

    def roll_back_pg_by_hand() -> None:
        (gid,) = db.pg_query("SELECT gid FROM pg_prepared_xacts")[0]
        db.pg_query(f"ROLLBACK PREPARED '{gid}'")  # a heuristic decision taken elsewhere

    hooks = OnPoint(CrashPoint.AFTER_DECISION, roll_back_pg_by_hand)
    with open_coordinator(db, hooks=hooks) as coordinator:
        with pytest.raises(InDoubt) as raised, coordinator.transaction() as tx:
            tx["pg"].execute(DEBIT, (Decimal("5"), "a1"))
            tx["mysql"].execute(CREDIT, (Decimal("5"), "a1"))
        assert raised.value.unfinished == ("pg",)
    assert log_records(db) == [("COMMIT", tx.gtrid)]  # no END: the outcome is not atomic
    audit = db.twopc("audit", "--json", TWOPC_HOME=str(db.home))
    assert audit.returncode == 1
    assert '"verdict": "VIOLATION"' in audit.stdout


def test_a_server_lost_after_the_first_transfer_fails_the_next_cleanly(db: Databases) -> None:
    """check_ready runs once per participant; a server that goes away later still fails the
    next transfer before anything is prepared, and nothing changes on the other server."""
    request = Transfer(AccountRef("pg", "a1"), AccountRef("mysql", "a1"), Decimal("2"))
    with open_coordinator(db) as coordinator:
        run_transfer(coordinator, request)
        db.servers.stop("mysql")
        try:
            with pytest.raises(ParticipantUnavailable, match="connect failed"):
                run_transfer(coordinator, request)
            assert db.balance("pg", "a1") == OPENING - 2
            assert db.pg_prepared() == []
        finally:
            db.servers.start("mysql")
    assert db.mysql_prepared() == []
    assert db.balance("mysql", "a1") == OPENING + 2
