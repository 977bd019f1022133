"""Fault scenario 5: opposite directions on one account pair, 16 processes at once.

Eight ``twopc transfer`` processes move pg:a1 -> mysql:a1 while eight move mysql:a1 ->
pg:a1, in 2PC and as sagas. Transfers lock rows PostgreSQL-first and then by
account, so opposite transfers never wait on each other in a cycle: every one must end
(no deadlock, no hang) and go through, the balances must add up to what each reported,
and every invariant of :mod:`faultkit` must hold once ``twopc recover`` has run.

The same crowd on fresh servers (the coordinator's marker table not yet created) must
not trip over its own first use either.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from conftest import Databases
from faultkit import (
    EXIT_OK,
    Move,
    Proc,
    Ran,
    exit_problem,
    ledger_problems,
    query,
    ready,
    record,
    report,
    running,
    settle,
    snapshot,
)

WORKERS = 16
BOUND = 90  # seconds for all of them: well past one lock wait (20 s), far below a hang


def crowd(modes: tuple[str, ...]) -> list[Move]:
    """Half one way (1.00 each), half the other (2.00 each), modes taken in turn."""
    there = [Move("pg:a1", "mysql:a1", Decimal("1.00"), modes[i % len(modes)]) for i in range(8)]
    back = [Move("mysql:a1", "pg:a1", Decimal("2.00"), modes[i % len(modes)]) for i in range(8)]
    return [move for pair in zip(there, back, strict=True) for move in pair]


def run_crowd(db: Databases, moves: list[Move]) -> list[str]:
    before = snapshot(db)
    started = time.monotonic()
    with running([Proc(db, *move.args("--lock-wait", "20")) for move in moves]) as procs:
        finished = [proc.finish(timeout=started + BOUND - time.monotonic()) for proc in procs]
    runs = [Ran(move, done, "one of a crowd") for move, done in zip(moves, finished, strict=True)]
    problems = [problem for ran in runs for problem in exit_problem(ran, {EXIT_OK})]
    problems += settle(db, before, audit_first=False)
    problems += ledger_problems(runs, before, snapshot(db))
    return problems


@pytest.mark.parametrize("modes", [("2pc",), ("saga",)], ids=["2pc", "saga"])
def test_opposite_directions_on_one_pair(db: Databases, modes: tuple[str, ...]) -> None:
    ready(db)
    problems = run_crowd(db, crowd(modes))
    record("contention: 16 opposite transfers", problems, transfers=WORKERS)
    assert not problems, report(problems)


def test_first_transfers_on_fresh_servers_at_once(db: Databases) -> None:
    for side in ("pg", "mysql"):
        query(db, side, "DROP TABLE IF EXISTS twopc_outcomes")
    problems = run_crowd(db, crowd(("2pc",)))
    record("contention: first use, 16 at once", problems, transfers=WORKERS)
    assert not problems, report(problems)
