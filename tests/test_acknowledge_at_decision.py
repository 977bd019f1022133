"""A coordinator that acknowledges at the decision (``acknowledge_at_decision``): ``commit()``
returns once the COMMIT record is durable, and phase 2 and the END record run on a background
worker. Nothing acknowledged is lost: a coordinator killed before its background phase 2
ended leaves the commit to recovery; one that cannot finish it reports it in doubt and keeps
its log; a full backlog makes ``commit()`` run its own phase 2; ``close()`` waits for it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import Databases
from test_phase_two_servers import QUICK, assert_in_doubt_then_recovered, faulty

from twopc.benchmarks.bench_transfers import run_transfer_benchmark
from twopc.coordinator import Coordinator, CoordinatorConfig, CrashPoint, TxState
from twopc.coordinator.transaction import GlobalTransaction
from twopc.participants import FORMAT_ID, DatabaseURL, MySQLParticipant, PostgresParticipant, Xid
from twopc.txlog import read_log

AMOUNT = Decimal("3.00")
DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s"
CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"


class Gate:
    """Protocol hooks that hold the first transaction's phase 2 after its first branch
    committed (PostgreSQL's: it enlists first), until :meth:`open` (at most 30 s)."""

    def __init__(self) -> None:
        self._opened = threading.Event()
        self.holding = threading.Event()  # set once the first transaction is held
        self.held: list[str] = []

    def armed(self, point: CrashPoint) -> bool:
        return point is CrashPoint.AFTER_FIRST_COMMIT

    def reached(self, point: CrashPoint, gtrid: str) -> None:
        if point is CrashPoint.AFTER_FIRST_COMMIT and not self.held:
            self.held.append(gtrid)
            self.holding.set()
            self._opened.wait(30)

    def open(self) -> None:
        self._opened.set()


def both(pg_url: str, mysql_url: str) -> list[PostgresParticipant | MySQLParticipant]:
    return [
        PostgresParticipant("pg", DatabaseURL.parse(pg_url)),
        MySQLParticipant("mysql", DatabaseURL.parse(mysql_url)),
    ]


def transfer(coordinator: Coordinator, account: str = "a1") -> GlobalTransaction:
    tx = coordinator.begin()
    tx["pg"].execute(DEBIT, (AMOUNT, account))
    tx["mysql"].execute(CREDIT, (AMOUNT, account))
    return tx


def moved(db: Databases, before: dict[str, Decimal], account: str = "a1") -> bool:
    after = db.balances()
    return (after[f"pg:{account}"], after[f"mysql:{account}"]) == (
        before[f"pg:{account}"] - AMOUNT,
        before[f"mysql:{account}"] + AMOUNT,
    )


def test_commit_returns_at_the_decision_and_phase_two_ends_in_the_background(
    db: Databases,
) -> None:
    before = db.balances()
    gate = Gate()
    config = CoordinatorConfig(db.home, "early", hooks=gate, acknowledge_at_decision=True)
    with Coordinator.open(both(db.pg_url, db.mysql_url), config) as coordinator:
        tx = transfer(coordinator)
        acknowledged = tx.commit()
        tx.close()  # the background worker still owns the branches' connections
        assert acknowledged.state is TxState.COMMITTING
        assert acknowledged.branches == {"pg": "prepared", "mysql": "prepared"}
        # Held after PostgreSQL's commit: MariaDB's branch is still prepared, and the
        # transaction is still the coordinator's to finish.
        assert db.mysql_prepared() == [Xid(FORMAT_ID, tx.gtrid, "mysql")]
        assert coordinator.unsettled() == [tx]
        assert not coordinator.wait_for_phase_two(0.2)
        assert not tx.wait_for_phase_two(0.1)
        gate.open()
        assert tx.wait_for_phase_two(10)
        assert tx.outcome is not None and tx.outcome.state is TxState.COMMITTED
        assert coordinator.wait_for_phase_two(10)
        assert tx.outcome.branches == {"pg": "committed", "mysql": "committed"}
        assert "commit" in tx.outcome.phases
        assert coordinator.unsettled() == []
    assert gate.held == [tx.gtrid]
    assert moved(db, before)
    assert db.pg_prepared() == [] and db.mysql_prepared() == []
    assert [r.kind for r in read_log(db.home / "txlog" / "early").records] == ["COMMIT", "END"]


KILLED_AFTER_ACK = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[1])
    from test_acknowledge_at_decision import acknowledge_then_die

    acknowledge_then_die(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    """
)


def acknowledge_then_die(home: Path, pg_url: str, mysql_url: str) -> None:
    """In a process of its own: commit a transfer acknowledged at its decision, print its
    gtrid and SIGKILL this process while its phase 2 is held after the first commit (the
    background worker has reached that point: PostgreSQL's branch is committed)."""
    gate = Gate()
    config = CoordinatorConfig(home, "doomed", hooks=gate, acknowledge_at_decision=True)
    coordinator = Coordinator.open(both(pg_url, mysql_url), config)
    tx = transfer(coordinator)
    outcome = tx.commit()
    held = gate.holding.wait(30)
    print(tx.gtrid, outcome.state.value, held, flush=True)
    import os

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_coordinator_killed_after_acknowledging_leaves_its_commit_to_recovery(
    db: Databases,
) -> None:
    before = db.balances()
    tests = str(Path(__file__).resolve().parent)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_ACK, tests, str(db.home), db.pg_url, db.mysql_url],
        env=db.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    gtrid, state, held = killed.stdout.split()
    assert state == "committing" and held == "True"  # acknowledged before phase 2 ended
    assert db.pg_prepared() == [] and db.mysql_prepared() == [Xid(FORMAT_ID, gtrid, "mysql")]
    recovered = db.twopc("recover", "--json")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    resolved = json.loads(recovered.stdout)["resolutions"]
    actions = [(r["gtrid"], r["server"], r["action"]) for r in resolved]
    assert actions == [(gtrid, "mysql", "committed")]
    assert moved(db, before)
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_a_background_phase_two_that_cannot_finish_is_in_doubt_and_recovered(
    db: Databases, side: str
) -> None:
    before = db.balances()
    kinds = {"pg": PostgresParticipant, "mysql": MySQLParticipant}
    kinds[side] = faulty(kinds[side], "lost link", every_time=True)  # type: ignore[assignment]
    urls = {"pg": db.pg_url, "mysql": db.mysql_url}
    participants = [kinds[name](name, DatabaseURL.parse(url)) for name, url in urls.items()]
    config = CoordinatorConfig(db.home, "early", retry=QUICK, acknowledge_at_decision=True)
    with Coordinator.open(participants, config) as coordinator:
        tx = transfer(coordinator)
        assert tx.commit().state is TxState.COMMITTING
        tx.close()
        assert coordinator.wait_for_phase_two(10)
        assert tx.outcome is not None and tx.outcome.state is TxState.IN_DOUBT
        assert coordinator.unsettled() == [tx]
    assert_in_doubt_then_recovered(db, before, side, tx.gtrid, "early")


def test_a_full_backlog_makes_commit_run_its_own_phase_two(db: Databases) -> None:
    before = db.balances()
    gate = Gate()
    config = CoordinatorConfig(
        db.home, "early", hooks=gate, acknowledge_at_decision=True, phase_two_backlog=1
    )
    with Coordinator.open(both(db.pg_url, db.mysql_url), config) as coordinator:
        held = transfer(coordinator, "a1")
        assert held.commit().state is TxState.COMMITTING
        held.close()
        second = transfer(coordinator, "a2")
        outcome = second.commit()  # no room in the backlog: phase 2 here, to its end
        second.close()
        assert outcome.state is TxState.COMMITTED and second.wait_for_phase_two(0)
        assert outcome.branches == {"pg": "committed", "mysql": "committed"}
        assert moved(db, before, "a2")
        assert db.mysql_prepared() == [Xid(FORMAT_ID, held.gtrid, "mysql")]
        gate.open()
    assert moved(db, before, "a1")
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_close_waits_for_the_phase_twos_in_the_background(db: Databases) -> None:
    before = db.balances()
    gate = Gate()
    config = CoordinatorConfig(db.home, hooks=gate, acknowledge_at_decision=True)  # one-shot
    coordinator = Coordinator.open(both(db.pg_url, db.mysql_url), config)
    tx = transfer(coordinator)
    assert tx.commit().state is TxState.COMMITTING
    tx.close()
    opener = threading.Timer(0.5, gate.open)
    opener.start()
    coordinator.close()
    assert tx.outcome is not None and tx.outcome.state is TxState.COMMITTED
    assert moved(db, before)
    assert db.pg_prepared() == [] and db.mysql_prepared() == []
    assert not list((db.home / "txlog").glob(f"{coordinator.id}*"))  # its log went with it


def test_the_backlog_must_hold_one_transaction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="phase_two_backlog must be at least 1, got 0"):
        CoordinatorConfig(tmp_path, acknowledge_at_decision=True, phase_two_backlog=0)


def test_a_hand_off_that_cannot_start_leaves_the_commit_to_recovery(db: Databases) -> None:
    """Decided, but no background worker takes phase 2 (its pool is closed, as when the
    coordinator closes meanwhile): ``commit()`` raises, the transaction is in doubt and owns
    its branches again (closing it lets their connections go), and recovery commits it."""
    before = db.balances()
    config = CoordinatorConfig(db.home, "early", acknowledge_at_decision=True)
    with Coordinator.open(both(db.pg_url, db.mysql_url), config) as coordinator:
        coordinator._phase_two.close(0)
        tx = transfer(coordinator)
        with pytest.raises(RuntimeError, match="workers are closed"):
            tx.commit()
        assert tx.state is TxState.IN_DOUBT and tx.wait_for_phase_two(0)
        tx.close()
        assert coordinator.unsettled() == [tx]
    assert db.pg_prepared() == [Xid(FORMAT_ID, tx.gtrid, "pg")]
    assert db.mysql_prepared() == [Xid(FORMAT_ID, tx.gtrid, "mysql")]
    recovered = db.twopc("recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert moved(db, before)
    assert db.pg_prepared() == [] and db.mysql_prepared() == []


def test_hot_rows_under_concurrent_transfers_acknowledged_at_the_decision(
    db: Databases,
) -> None:
    """Eight workers on four hot accounts per side: transfers find rows still locked by a
    phase 2 in the background, the backlog fills and commits run their own phase 2. Every
    transfer goes through, money is conserved, and nothing is left prepared or unlogged."""
    before = db.balances()
    result = run_transfer_benchmark(
        both(db.pg_url, db.mysql_url),
        db.home,
        modes=("2pc-early",),
        workers=(8,),
        transfers=200,
        accounts=4,
        seed=3,
    )
    (run,) = result["runs"]
    assert run["completed"] == 200 and run["failures"] == {}, run
    assert run["conserved"] is True
    assert sum(db.balances().values()) == sum(before.values())
    assert db.balances() != before  # the money moved
    assert db.pg_prepared() == [] and db.mysql_prepared() == []
    assert not list((db.home / "txlog").iterdir())  # every one-shot log went with its ENDs
