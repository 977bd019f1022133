"""Fault scenario 1: the crash matrix, and interrupts at the same points.

Every 2PC point and every saga point, in both directions at once (two transfers on
separate accounts): the installed ``twopc transfer`` kills itself there (``--crash-at``),
or is paused there and gets SIGINT (Ctrl-C) or SIGTERM. Then ``twopc recover``, and the
global invariants of :mod:`faultkit`: money conserved, each transfer all or nothing and
as reported, nothing of ours prepared, no marker left, ``twopc audit`` clean.
"""

from __future__ import annotations

import signal
from decimal import Decimal

import pytest
from conftest import Databases
from faultkit import (
    BEFORE_DECISION,
    EXIT_FAILED,
    EXIT_IN_DOUBT,
    EXIT_OK,
    POINTS_2PC,
    Move,
    Proc,
    Ran,
    Snapshot,
    exit_problem,
    record,
    report,
    run,
    running,
    settle,
    snapshot,
)

AMOUNT = Decimal("7.25")
BOTH_WAYS = (
    Move("pg:a1", "mysql:a2", AMOUNT),
    Move("mysql:a3", "pg:a4", AMOUNT),
)


def applied(move: Move, before: Snapshot, after: Snapshot) -> bool:
    return after.delta(before, move.source) == -move.amount


def outcome_problems(
    runs: list[Ran], before: Snapshot, after: Snapshot, *, expect_applied: bool
) -> list[str]:
    """What recovery must make of each transfer at this point (beyond all-or-nothing)."""
    return [
        f"[{ran.move}; {ran.note}] expected {'applied' if expect_applied else 'not applied'}"
        " once recovered"
        for ran in runs
        if applied(ran.move, before, after) is not expect_applied
    ]


# -- kill -9 at every point, both directions -----------------------------------------------------


@pytest.mark.parametrize("point", POINTS_2PC)
def test_2pc_killed_at_point_then_recovered(db: Databases, point: str) -> None:
    before = snapshot(db)
    runs = [
        Ran(move, run(db, *move.args("--crash-at", point), timeout=60), f"--crash-at {point}")
        for move in BOTH_WAYS
    ]
    problems = [p for ran in runs for p in exit_problem(ran, {-signal.SIGKILL})]
    problems += settle(db, before, runs)
    problems += outcome_problems(
        runs, before, snapshot(db), expect_applied=point not in BEFORE_DECISION
    )
    record("crash matrix: 2PC kill -9", problems, kills=len(runs), transfers=len(runs))
    assert not problems, report(problems)


SAGA_CASES = [
    # id, crash args, the two transfers' destinations, applied once recovered
    ("after-debit", ("--crash-at", "after-debit"), ("mysql:a2", "pg:a4"), True),
    ("after-credit", ("--crash-at", "after-credit"), ("mysql:a2", "pg:a4"), True),
    ("after-compensation", ("--crash-at", "after-compensation"), ("mysql:nosuch", "pg:nosuch"),
     False),
    ("after-step-commit-1", ("--crash-at", "after-step-commit", "--at-step", "1"),
     ("mysql:a2", "pg:a4"), True),
    ("after-step-commit-2", ("--crash-at", "after-step-commit", "--at-step", "2"),
     ("mysql:a2", "pg:a4"), True),
    ("after-step-commit-3", ("--crash-at", "after-step-commit", "--at-step", "3"),
     ("mysql:a2", "pg:a4"), True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("crash", "destinations", "expect_applied"),
    [pytest.param(c[1], c[2], c[3], id=c[0]) for c in SAGA_CASES],
)
def test_saga_killed_at_point_then_recovered(
    db: Databases, crash: tuple[str, ...], destinations: tuple[str, str], expect_applied: bool
) -> None:
    before = snapshot(db)
    moves = [
        Move(way.source, destination, AMOUNT, "saga")
        for way, destination in zip(BOTH_WAYS, destinations, strict=True)
    ]
    runs = [Ran(move, run(db, *move.args(*crash), timeout=60), " ".join(crash)) for move in moves]
    problems = [p for ran in runs for p in exit_problem(ran, {-signal.SIGKILL})]
    problems += settle(db, before, runs)
    problems += outcome_problems(runs, before, snapshot(db), expect_applied=expect_applied)
    record("crash matrix: saga kill -9", problems, kills=len(runs), transfers=len(runs))
    assert not problems, report(problems)


# -- Ctrl-C at every point ------------------------------------------------------------------------

# Before the decision an interrupt aborts (exit 1) and rolls back what was prepared (or
# leaves the log so recovery presumes abort); from the decision on it is in doubt (exit 3).
SIGINT_EXIT = {
    "after-first-prepare": {EXIT_FAILED},
    "after-prepare": {EXIT_FAILED},
    "after-decision": {EXIT_IN_DOUBT},
    "after-first-commit": {EXIT_IN_DOUBT},
    "before-end": {EXIT_OK, EXIT_IN_DOUBT},  # both committed already; only END is missing
}


def interrupt_at(db: Databases, move: Move, point: str, signum: int) -> Ran:
    """Pause ``move`` at ``point``, send ``signum``, and give it 20 s to end."""
    with running([Proc(db, *move.args("--pause-at", point, "--pause-seconds", "60"))]) as procs:
        (proc,) = procs
        paused = proc.wait_paused(timeout=30)
        if paused is not None:
            proc.send(signum)
        done = proc.finish(timeout=20)
    note = f"{signal.Signals(signum).name} at {point}" + ("" if paused else " (never paused)")
    return Ran(move, done, note)


def one_line_error(ran: Ran) -> list[str]:
    """A failed or in-doubt transfer says so in one line on stderr, without a traceback."""
    lines = ran.done.error_lines
    if ran.done.code in (None, EXIT_OK) or len(lines) == 1:
        return []
    return [f"[{ran.move}; {ran.note}] expected one line on stderr, got {len(lines)}: {lines[:6]}"]


@pytest.mark.parametrize("point", POINTS_2PC)
def test_2pc_ctrl_c_at_point(db: Databases, point: str) -> None:
    before = snapshot(db)
    ran = interrupt_at(db, BOTH_WAYS[0], point, signal.SIGINT)
    problems = exit_problem(ran, SIGINT_EXIT[point]) + one_line_error(ran)
    problems += settle(db, before, [ran])
    problems += outcome_problems(
        [ran], before, snapshot(db), expect_applied=point not in BEFORE_DECISION
    )
    record("crash matrix: 2PC Ctrl-C", problems, signals=1, transfers=1)
    assert not problems, report(problems)


@pytest.mark.parametrize("point", ["after-debit", "after-credit"])
def test_saga_ctrl_c_while_paused(db: Databases, point: str) -> None:
    """Ctrl-C works while a saga is paused: the process ends (unfinished: exit 3, or
    compensated: exit 1) and recovery finishes the saga one way or the other."""
    before = snapshot(db)
    ran = interrupt_at(db, Move("pg:a1", "mysql:a2", AMOUNT, "saga"), point, signal.SIGINT)
    problems = exit_problem(ran, {EXIT_FAILED, EXIT_IN_DOUBT}) + one_line_error(ran)
    problems += settle(db, before, [ran])
    record("crash matrix: saga Ctrl-C", problems, signals=1, transfers=1)
    assert not problems, report(problems)


def test_sigterm_before_and_after_the_decision(db: Databases) -> None:
    """SIGTERM is an interruption like Ctrl-C: before the decision nothing is applied,
    after it everything is, once recovered (dying of the signal is allowed too)."""
    before = snapshot(db)
    early = interrupt_at(db, BOTH_WAYS[0], "after-prepare", signal.SIGTERM)
    late = interrupt_at(db, BOTH_WAYS[1], "after-decision", signal.SIGTERM)
    problems = exit_problem(early, {EXIT_FAILED, -signal.SIGTERM})
    problems += exit_problem(late, {EXIT_IN_DOUBT, -signal.SIGTERM})
    problems += settle(db, before, [early, late])
    after = snapshot(db)
    problems += outcome_problems([early], before, after, expect_applied=False)
    problems += outcome_problems([late], before, after, expect_applied=True)
    record("crash matrix: SIGTERM", problems, signals=2, transfers=2)
    assert not problems, report(problems)
