"""The reliability issue's own reproductions, each followed by the global invariants.

1. a replayed saga id with a different request is refused and moves nothing;
3. a stable ``--coordinator-id`` that crashes again right after resolving its own in-doubt
   transaction: recovery reports no heuristic outcome and audit calls it committed;
4. a forced rollback of a half-committed transaction stays an audit violation (exit 1);
5. the log segment lost after the first commit: the committed branch's marker proves the
   decision, so recovery commits the other branch;
6. a coordinator killed right after its END record (while it collects its markers): no
   marker outlives recovery;
12. ``twopc sagas`` exits 3 while a saga is dead-lettered, and 0 once it is retried;
14. log directories are 0700 and log files 0600.
(2 and 7-13 are covered by the crash matrix, the server faults and the bad-input battery;
every test checks 6.)
"""

from __future__ import annotations

import signal
import stat
import time
from decimal import Decimal

import pytest
from conftest import Databases
from faultkit import (
    EXIT_FAILED,
    EXIT_IN_DOUBT,
    EXIT_OK,
    EXIT_USAGE,
    Move,
    Proc,
    Ran,
    exit_problem,
    pg_query,
    ready,
    record,
    report,
    run,
    running,
    settle,
    snapshot,
)

AMOUNT = Decimal("5.00")


def crash(db: Databases, move: Move, point: str, *extra: str) -> tuple[Ran, list[str]]:
    """Kill ``move`` at ``point``; also returns the gtrids it left prepared."""
    known = {branch.split()[1].split("/")[0] for branch in snapshot(db).prepared}
    ran = Ran(move, run(db, *move.args("--crash-at", point, *extra)), f"--crash-at {point}")
    left = {branch.split()[1].split("/")[0] for branch in snapshot(db).prepared} - known
    return ran, sorted(left)


# -- 1. a saga id is bound to its request ----------------------------------------------------------

REPLAYS = [
    ("pg:a1", "pg:a2", "5"),  # another destination: it would credit pg:a2 from nowhere
    ("mysql:a1", "pg:a1", "5"),  # swapped
    ("pg:a1", "mysql:a1", "6"),  # another amount
]


def test_replayed_saga_id_with_another_request_is_refused(db: Databases) -> None:
    before = snapshot(db)
    first = Move("pg:a1", "mysql:a1", AMOUNT, "saga")
    done = run(db, *first.args("--saga-id", "rep-2"))
    problems = exit_problem(Ran(first, done, "first use of rep-2"), {EXIT_OK})
    after_first = snapshot(db)

    for replay in REPLAYS:
        again = run(db, "transfer", *replay, "--mode", "saga", "--saga-id", "rep-2")
        if again.code not in (EXIT_FAILED, EXIT_USAGE):
            problems.append(f"replay with another request: {again.describe()} (expected refusal)")
        if len(again.stderr.splitlines()) != 1 or "Traceback" in again.stderr:
            problems.append(f"replay {replay}: expected one line on stderr: {again.stderr!r}")
        if snapshot(db).balances != after_first.balances:
            problems.append(f"the refused replay {replay} moved money")
    problems += settle(db, before, [Ran(first, done, "first use of rep-2")])
    record(
        "issue: saga id replayed with another request",
        problems,
        bad_inputs=len(REPLAYS),
        transfers=1,
    )
    assert not problems, report(problems)


# -- 3. a stable coordinator id crashing right after it resolved its own transaction ---------------


def test_stable_coordinator_crashing_again_keeps_the_evidence(db: Databases) -> None:
    before = snapshot(db)
    first, second = Move("pg:a1", "mysql:a1", AMOUNT), Move("pg:a2", "mysql:a2", AMOUNT)
    decided, (gtrid,) = crash(db, first, "after-decision", "--coordinator-id", "stable-1")
    # At start-up it commits `first`, then dies in the middle of `second`.
    again, _ = crash(db, second, "after-first-prepare", "--coordinator-id", "stable-1")
    problems = exit_problem(decided, {-signal.SIGKILL}) + exit_problem(again, {-signal.SIGKILL})

    audit = run(db, "audit", "--json")
    document = audit.document() or {}
    verdicts = [t["verdict"] for t in document.get("transactions", []) if t["gtrid"] == gtrid]
    if audit.code not in (EXIT_OK, EXIT_IN_DOUBT) or any(v != "committed" for v in verdicts):
        problems.append(f"audit must call {gtrid} committed: {audit.describe()}; {document}")
    problems += settle(db, before, [decided, again])  # recover: no heuristic outcome
    after = snapshot(db)
    if after.delta(before, first.source) != -AMOUNT:
        problems.append(f"[{first}] decided before the second crash, but not applied")
    record("issue: stable coordinator id crashing twice", problems, kills=2, transfers=2)
    assert not problems, report(problems)


# -- 4. a forced rollback against a committed branch stays a violation -----------------------------


def test_forced_rollback_after_first_commit_is_an_audit_violation(db: Databases) -> None:
    move = Move("pg:a3", "mysql:a3", AMOUNT)
    crashed, (gtrid,) = crash(db, move, "after-first-commit", "--coordinator-id", "forced-1")
    problems = exit_problem(crashed, {-signal.SIGKILL})
    forced = run(db, "resolve", gtrid, "--rollback", "--force", "--json")
    if forced.code != EXIT_OK:
        problems.append(f"resolve --rollback --force: {forced.describe()}")

    for when in ("after the forced rollback", "after recover"):
        audit = run(db, "audit", "--json")
        document = audit.document() or {}
        verdicts = [t["verdict"] for t in document.get("transactions", []) if t["gtrid"] == gtrid]
        if audit.code != EXIT_FAILED or not document.get("violations") or verdicts != ["VIOLATION"]:
            problems.append(f"audit {when} must report the violation: {audit.describe()}")
        run(db, "recover", "--json")
    if snapshot(db).prepared:
        problems.append(f"still prepared: {snapshot(db).prepared}")
    record("issue: forced rollback after the first commit", problems, kills=1, transfers=1)
    assert not problems, report(problems)


# -- 5. the log lost after the first commit --------------------------------------------------------


@pytest.mark.parametrize("keep", [24, 0], ids=["segment-header-only", "segment-empty"])
def test_log_lost_after_first_commit_recovers_by_evidence(db: Databases, keep: int) -> None:
    before = snapshot(db)
    move = Move("mysql:a4", "pg:a4", AMOUNT)
    crashed, _ = crash(db, move, "after-first-commit", "--coordinator-id", "lost-1")
    problems = exit_problem(crashed, {-signal.SIGKILL})
    segments = sorted((db.home / "txlog" / "lost-1").glob("segment-*.log"))
    if not segments:
        problems.append("no log segment to truncate")
    for segment in segments:
        with segment.open("r+b") as data:
            data.truncate(keep)  # the disk lost everything after the header (or all of it)
    problems += settle(db, before, [crashed])
    if snapshot(db).delta(before, move.destination) != AMOUNT:
        problems.append(f"[{move}] committed on {move.source} but not finished on the other side")
    record("issue: log segment lost after the first commit", problems, kills=1, transfers=1)
    assert not problems, report(problems)


# -- 6. killed while collecting its markers -------------------------------------------------------

PAUSE_BEFORE_END = 0.3
STAGGER = 0.0015  # kills 0-13.5 ms after the pause ends: where the END record and GC happen


def test_markers_do_not_outlive_a_kill_right_after_the_end_record(db: Databases) -> None:
    """Ten transfers held at before-end are killed 0-14 ms after they carry on: between their
    END record, the collection of their markers and the removal of their log. Whatever
    moment it was, recovery must leave no marker behind (and every transfer applied)."""
    ready(db)
    before = snapshot(db)
    moves = [Move(f"pg:a{n}", f"mysql:a{n}", Decimal("0.01")) for n in range(1, 11)]
    hold = ("--pause-at", "before-end", "--pause-seconds", str(PAUSE_BEFORE_END))
    problems = []
    with running([Proc(db, *move.args(*hold)) for move in moves]) as procs:
        for move, proc in zip(moves, procs, strict=True):
            if proc.wait_paused(timeout=30) is None:
                problems.append(f"[{move}] never paused at before-end")
        kills = sorted(
            ((proc.paused_at or 0) + PAUSE_BEFORE_END + STAGGER * n, proc)
            for n, proc in enumerate(procs)
        )
        for at, proc in kills:
            time.sleep(max(0.0, at - time.monotonic()))
            proc.send(signal.SIGKILL)
        runs = [
            Ran(move, proc.finish(timeout=30), f"{proc.paused_id} SIGKILLed +{STAGGER * n:.4f}s")
            for n, (move, proc) in enumerate(zip(moves, procs, strict=True))
        ]
    problems += settle(db, before, runs)
    after = snapshot(db)
    leaked = {marker.split("/")[0] for markers in after.markers.values() for marker in markers}
    leaked -= {m.split("/")[0] for markers in before.markers.values() for m in markers}
    problems += [f"markers left by: {ran.note}" for ran in runs if ran.note.split()[0] in leaked]
    problems += [
        f"[{ran.move}; {ran.note}] committed on both servers before the kill, but not applied"
        for ran in runs
        if after.delta(before, ran.move.source) != -ran.move.amount
    ]
    record("issue: killed while collecting markers", problems, kills=len(runs), transfers=10)
    assert not problems, report(problems)


# -- 12. a dead-lettered saga is visible, with exit 3 ----------------------------------------------

CEILING = Decimal("999999999999999999.00")  # a refund on top of this overflows NUMERIC(20,2)


def test_dead_lettered_saga_makes_sagas_exit_3(db: Databases) -> None:
    before = snapshot(db)
    move = Move("pg:a5", "mysql:nosuch", AMOUNT, "saga")  # the credit is refused: refund
    args = move.args("--saga-id", "dl-1", "--retry-deadline", "1", "--pause-at", "after-debit")
    with running([Proc(db, *args, "--pause-seconds", "2")]) as (proc,):
        paused = proc.wait_paused(timeout=30)
        debited = snapshot(db).balances["pg:a5"]
        pg_query(db, "UPDATE accounts SET balance = %s WHERE id = 'a5'", (CEILING,))
        done = proc.finish(timeout=60)
    problems = [] if paused else ["the saga never paused after its debit"]
    problems += exit_problem(Ran(move, done, "refund made to fail"), {EXIT_IN_DOUBT})

    listed = run(db, "sagas", "--json")
    if listed.code != EXIT_IN_DOUBT or "dl-1" not in listed.stdout:
        problems.append(f"sagas while dl-1 is dead-lettered: {listed.describe()} {listed.stdout}")
    pg_query(db, "UPDATE accounts SET balance = %s WHERE id = 'a5'", (debited,))
    retried = run(db, "sagas", "retry", "dl-1")
    if retried.code != EXIT_OK:
        problems.append(f"sagas retry dl-1 once the refund can go through: {retried.describe()}")
    listed = run(db, "sagas", "--json")
    if listed.code != EXIT_OK:
        problems.append(f"sagas once nothing is dead-lettered: {listed.describe()}")
    problems += settle(db, before, [Ran(move, done, "refund made to fail, then retried")])
    record("issue: dead-lettered saga", problems, transfers=1)
    assert not problems, report(problems)


# -- 14. what the logs are made of is private ------------------------------------------------------


def test_log_directories_are_0700_and_files_0600(db: Databases) -> None:
    before = snapshot(db)
    runs = [
        crash(db, Move("pg:a6", "mysql:a6", AMOUNT), "after-decision")[0],
        crash(db, Move("mysql:a7", "pg:a7", AMOUNT, "saga"), "after-debit")[0],
    ]
    problems = [p for ran in runs for p in exit_problem(ran, {-signal.SIGKILL})]
    found = 0
    for root in (db.home / "txlog", db.home / "sagas"):
        for path in [root, *root.rglob("*")] if root.exists() else []:
            found += 1
            mode, want = stat.S_IMODE(path.stat().st_mode), 0o700 if path.is_dir() else 0o600
            if mode != want:
                problems.append(f"{path.relative_to(db.home)}: mode {mode:o}, expected {want:o}")
    if not found:
        problems.append("the crashes left no log to look at")
    problems += settle(db, before, runs)
    record("issue: log permissions", problems, kills=2, transfers=2)
    assert not problems, report(problems)
