"""Fault scenario 2: the random-kill soak.

Each round runs, at once, a ``twopc bench transfers`` process (2PC and saga in turn: four
threads moving 0.01 between three hot accounts a side) and single ``twopc transfer``
processes in both modes and both directions, each on an account pair of its own (some
paused for a moment at a random protocol point, to widen the window a kill lands in).
Everything is SIGKILLed at random moments (a few singles are left to finish), then
``twopc recover`` runs and every invariant of :mod:`faultkit` is checked: money conserved,
each single transfer all or nothing and as it reported, nothing prepared, no marker
left, ``twopc audit`` clean.

Short form (the normal suite): 5 rounds. ``TWOPC_FAULTS_LONG=1``: 50 rounds. The seed is
printed on failure; ``TWOPC_FAULTS_SEED=N`` replays a run's schedule.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import Databases
from faultkit import (
    LONG,
    POINTS_2PC,
    Move,
    Proc,
    Ran,
    Schedule,
    ready,
    record,
    repair,
    report,
    running,
    seed,
    settle,
    snapshot,
)

ROUNDS = 50 if LONG else 5
HOT = 3  # bench transfers moves among a1..a3 of each side
PAIRS = range(HOT + 1, 11)  # a4..a10: one single transfer per pair per round
SINGLES = 4
SAGA_PAUSES = ("after-debit", "after-credit", "after-step-commit")


def single(schedule: Schedule, pair: int) -> tuple[Move, tuple[str, ...]]:
    mode = schedule.pick(("2pc", "saga"))
    ends = [f"pg:a{pair}", f"mysql:a{pair}"]
    if schedule.chance(0.5):
        ends.reverse()
    move = Move(ends[0], ends[1], schedule.cents(), mode)
    if not schedule.chance(0.5):
        return move, ()
    point = schedule.pick(POINTS_2PC if mode == "2pc" else SAGA_PAUSES)
    return move, ("--pause-at", point, "--pause-seconds", "0.3")


def soak_round(db: Databases, schedule: Schedule, number: int) -> tuple[list[str], int]:
    """One round; returns its problems and how many processes it SIGKILLed."""
    before = snapshot(db)
    mode = ("2pc", "saga")[number % 2]
    pairs = schedule.rng.sample(list(PAIRS), SINGLES)
    planned = [single(schedule, pair) for pair in pairs]
    bench = Proc(
        db, "bench", "transfers", "--modes", mode, "--workers", "4", "--transfers", "100000",
        "--accounts", str(HOT), "--quiet", "--json",
    )  # fmt: skip
    singles = [Proc(db, *move.args(*extra)) for move, extra in planned]
    started = time.monotonic()
    kills = sorted(
        [(schedule.between(0.4, 1.2), bench)]
        + [(schedule.between(0.1, 1.2), p) for p in singles if schedule.chance(0.75)],
        key=lambda kill: kill[0],
    )
    killed: dict[int, float] = {}  # the processes still running when their moment came
    with running([bench, *singles]):
        for at, proc in kills:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if proc.running():
                proc.send(signal.SIGKILL)
                killed[id(proc)] = at
        runs = [
            Ran(move, proc.finish(timeout=60), _note(extra, killed.get(id(proc))))
            for (move, extra), proc in zip(planned, singles, strict=True)
        ]
        bench.finish(timeout=30)
    problems = settle(db, before, runs, audit_first=number % 2 == 0)
    found = [f"round {number + 1}/{ROUNDS}, bench {mode}: {problem}" for problem in problems]
    return found, len(killed)


def _note(extra: tuple[str, ...], killed_at: float | None) -> str:
    paused = f"paused {extra[1]} 0.3s, " if extra else ""
    return paused + ("not killed" if killed_at is None else f"SIGKILL at {killed_at:.2f}s")


@pytest.mark.timeout(120 + ROUNDS * 20)
def test_random_kill_soak(db: Databases) -> None:
    ready(db)
    schedule = Schedule(seed())
    problems: list[str] = []
    for number in range(ROUNDS):
        found, kills = soak_round(db, schedule, number)
        if found:
            # Each round is judged against its own start; clear what it left so the next
            # one is not blamed for it.
            repair(db)
        problems += found
        record("random-kill soak (rounds)", found, kills=kills, transfers=SINGLES)
    assert not problems, f"TWOPC_FAULTS_SEED={schedule.seed}\n" + report(problems)
