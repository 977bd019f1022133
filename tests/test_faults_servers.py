"""Fault scenario 3: the servers themselves crash, restart and freeze during each phase.

Transfers on account pairs of their own are held at every protocol point at once
(``--pause-at POINT --pause-seconds N``): phase 1 under way, all prepared, the decision
logged, phase 2 under way, and two saga points. While they are held, one server is
SIGKILLed and restarted, or frozen (SIGSTOP of all its processes) for a few seconds and
thawed. Then they carry on: each must end in bounded time with a documented exit code
(before the decision 0 or 1, after it 0 or 3), and once ``twopc recover`` has run every
invariant of :mod:`faultkit` must hold.

Every wait is bounded, also when a server stays frozen: MariaDB frozen in phase 1 (the
prepare timeout ends the transfer) and in phase 2 (the retry deadline does), and
``twopc init --reset`` while a transaction is in doubt refuses instead of hanging.
"""

from __future__ import annotations

import signal
import time
from decimal import Decimal

import pytest
from conftest import Databases
from faultkit import (
    EVERY_POINT,
    EXIT_FAILED,
    EXIT_IN_DOUBT,
    HOLD,
    Move,
    Proc,
    Ran,
    crash_and_restart,
    exit_problem,
    frozen,
    hold_at_every_point,
    ready,
    record,
    report,
    run,
    running,
    settle,
    snapshot,
    wait_sessions_gone,
)

AMOUNT = Decimal("4.50")


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_server_crashes_and_restarts_at_every_point(db: Databases, side: str) -> None:
    problems = hold_at_every_point(db, lambda: crash_and_restart(db, side), f"{side} SIGKILLed")
    record("servers: crash and restart", problems, server_faults=1, transfers=len(EVERY_POINT))
    assert not problems, report(problems)


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_server_frozen_and_thawed_at_every_point(db: Databases, side: str) -> None:
    def freeze() -> None:
        with frozen(db, side):
            time.sleep(HOLD + 1)  # every transfer runs into the frozen server, then waits

    problems = hold_at_every_point(db, freeze, f"{side} frozen {HOLD + 1:g}s")
    record("servers: freeze and thaw", problems, server_faults=1, transfers=len(EVERY_POINT))
    assert not problems, report(problems)


# -- a server that stays frozen: every wait is bounded ---------------------------------------

PREPARE_TIMEOUT = 5  # --prepare-timeout (30 by default)
RETRY_DEADLINE = 10  # --retry-deadline of phase 2 (60 by default)
SLACK = 15


@pytest.mark.timeout(300)
def test_mariadb_frozen_in_phase_1_and_phase_2(db: Databases) -> None:
    """Phase 1 against a frozen MariaDB ends at the prepare timeout (exit 1, nothing
    applied); phase 2 ends at the retry deadline (exit 3, applied once recovered)."""
    ready(db)
    before = snapshot(db)
    phase_1 = Move("pg:a1", "mysql:a1", AMOUNT)  # MariaDB's branch is prepared second
    phase_2 = Move("pg:a2", "mysql:a2", AMOUNT)
    held = [(phase_1, "after-first-prepare"), (phase_2, "after-decision")]
    deadlines = ("--prepare-timeout", str(PREPARE_TIMEOUT), "--retry-deadline", str(RETRY_DEADLINE))
    procs = [
        Proc(db, *m.args("--pause-at", p, "--pause-seconds", "3", *deadlines)) for m, p in held
    ]
    problems = []
    with running(procs):
        for (move, point), proc in zip(held, procs, strict=True):
            if proc.wait_paused(timeout=30) is None:
                problems.append(f"[{move}] never paused at {point}")
        with frozen(db, "mysql"):  # before they carry on, 3 s after their pause
            frozen_at = time.monotonic()
            bounds = [3 + PREPARE_TIMEOUT + SLACK, 3 + RETRY_DEADLINE + SLACK]
            finished = [
                proc.finish(timeout=frozen_at + bound - time.monotonic())
                for proc, bound in zip(procs, bounds, strict=True)
            ]
    runs = [
        Ran(move, done, f"MariaDB frozen from {point} on")
        for (move, point), done in zip(held, finished, strict=True)
    ]
    problems += exit_problem(runs[0], {EXIT_FAILED}) + exit_problem(runs[1], {EXIT_IN_DOUBT})
    problems += settle(db, before, runs)
    after = snapshot(db)
    if after.delta(before, phase_2.destination) != phase_2.amount:
        problems.append(f"[{phase_2}] a logged commit was not applied once recovered")
    record("servers: MariaDB frozen past the deadlines", problems, server_faults=1, transfers=2)
    assert not problems, report(problems)


def test_init_reset_refuses_while_a_transaction_is_in_doubt(db: Databases) -> None:
    before = snapshot(db)
    move = Move("pg:a3", "mysql:a3", AMOUNT)
    crashed = Ran(move, run(db, *move.args("--crash-at", "after-decision")), "crash after-decision")
    problems = exit_problem(crashed, {-signal.SIGKILL})
    in_doubt = snapshot(db).prepared

    reset = run(db, "init", "--reset", "--accounts", "10", timeout=20)
    if reset.code not in (EXIT_FAILED, EXIT_IN_DOUBT):
        problems.append(f"init --reset while in doubt: {reset.describe()} (expected a refusal)")
    lines = reset.stderr.strip().splitlines()
    if len(lines) != 1 or "Traceback" in reset.stderr:
        problems.append(f"init --reset: expected one line on stderr, got {lines[:8]}")
    # A DROP still queued on a server after its client died would block everything after it.
    problems += [f"init --reset: {p}" for p in wait_sessions_gone(db, timeout=5)]
    now = snapshot(db)
    if now.balances != before.balances or now.prepared != in_doubt:
        problems.append(
            f"init --reset changed something: prepared {in_doubt} -> {now.prepared}, balances "
            f"{'same' if now.balances == before.balances else 'changed'}"
        )
    problems += settle(db, before, [crashed])
    record("servers: init --reset while in doubt", problems, kills=1, transfers=1)
    assert not problems, report(problems)
