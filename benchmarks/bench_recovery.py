"""Benchmark of recovery at scale: ``twopc recover`` after a busy coordinator fleet died.

It makes ``in_doubt`` transactions quickly, in this one process, the way dead coordinators
leave them: each with a branch prepared on each server (outcome markers written inside, as
the coordinator does), spread over ``coordinators`` logs, half of them with a forced COMMIT
record (recovery commits them), half without (recovery presumes abort). The logs are then
released as a dead coordinator's are. The branches change rows of a table of their own
(``bench_in_doubt``), except the last decided transaction, which also holds the row of account
``a1`` on the server ``blocked_on`` names: a transfer ``pg:a1`` -> ``mysql:a1`` is started,
and blocks there. That transaction's coordinator comes last in recovery's order unless
recovery learns who the transfer waits for (on MariaDB it probes a few branches only, see
``participants.mysql_locks``).

Then it runs recovery (the library's, as ``twopc recover`` does) and reports: how long it
took, branches finished per second, when the first and the last branch were finished, and
how long after recovery started the blocked transfer got its lock and finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from twopc.bank import AccountRef, Transfer, run_transfer
from twopc.coordinator import Coordinator, CoordinatorConfig, mint_gtrid
from twopc.coordinator.facts import coordinator_home
from twopc.coordinator.ids import coordinator_of
from twopc.coordinator.records import BranchEntry, CommitDecision
from twopc.coordinator.recovery import recover
from twopc.participants import FORMAT_ID, Participant, Xid

TABLE = "bench_in_doubt"
_TABLE_DDL = f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"
_COUNT = f"SELECT count(*) FROM {TABLE}"
_ROW = f"INSERT INTO {TABLE} (id, n) VALUES (%s, 0)"
_TOUCH = f"UPDATE {TABLE} SET n = n + 1 WHERE id = %s"
_HOLD_A1 = "UPDATE accounts SET balance = balance + 0 WHERE id = 'a1'"
PROBE = Transfer(AccountRef("pg", "a1"), AccountRef("mysql", "a1"), Decimal("0.01"))
#: The servers the blocked transfer can be made to wait on.
BLOCKED_ON = ("pg", "mysql")


def run_recovery_benchmark(
    participants: Sequence[Participant],
    home: Path,
    *,
    in_doubt: int,
    coordinators: int = 10,
    blocked_on: str = "pg",
) -> dict[str, Any]:
    """Make ``in_doubt`` transactions of dead coordinators, block a transfer on one of them
    (on the server ``blocked_on`` names), recover, and time it all; returns a JSON-ready
    dict."""
    if in_doubt < 1 or coordinators < 1:
        raise ValueError("in_doubt and coordinators must be at least 1")
    if blocked_on not in BLOCKED_ON:
        raise ValueError(f"blocked_on must be one of {', '.join(BLOCKED_ON)}, got {blocked_on!r}")
    by_name = {p.name: p for p in participants}
    _ensure_rows(participants, in_doubt)
    made_in = time.perf_counter()
    _make_in_doubt(by_name, home, in_doubt, coordinators, blocked_on)
    made = time.perf_counter() - made_in
    blocked = _BlockedTransfer(participants, home)
    blocked.start()
    started = time.perf_counter()
    report = recover(participants, home)
    seconds = time.perf_counter() - started
    unblocked = blocked.finish(started)
    # Waiting on MariaDB, the blocked transfer has its PostgreSQL branch prepared already: a
    # live coordinator's, which recovery leaves alone. Only the dead ones' branches count.
    dead = {_coordinator(n) for n in range(coordinators)}
    resolutions = [r for r in report.resolutions if coordinator_of(r.gtrid) in dead]
    finished = [r.at for r in resolutions if r.finished and r.at is not None]
    return {
        "in_doubt": in_doubt,
        "branches": len(resolutions),
        "coordinators": coordinators,
        "blocked_on": blocked_on,
        "make_seconds": round(made, 2),
        "recover_seconds": round(seconds, 3),
        "branches_per_s": round(len(finished) / seconds, 1) if seconds else None,
        "first_release_s": round(min(finished), 3) if finished else None,
        "last_release_s": round(max(finished), 3) if finished else None,
        "blocked_transfer_done_s": unblocked,
        "left_in_doubt": sum(1 for r in resolutions if not r.finished),
        "problems": report.problems,
    }


def format_recovery_benchmark(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`run_recovery_benchmark`'s result."""
    return [
        f"{result['in_doubt']} in-doubt transactions ({result['branches']} branches) of "
        f"{result['coordinators']} dead coordinators, made in {result['make_seconds']} s",
        f"recover:            {result['recover_seconds']} s "
        f"({result['branches_per_s']} branches/s)",
        f"first lock freed:   {result['first_release_s']} s after recover started",
        f"last lock freed:    {result['last_release_s']} s",
        f"blocked transfer:   done {result['blocked_transfer_done_s']} s after recover started "
        f"(it waited on {result['blocked_on']})",
        f"left in doubt:      {result['left_in_doubt']}",
    ]


def _ensure_rows(participants: Sequence[Participant], count: int) -> None:
    for participant in participants:
        with participant.local_transaction() as local:
            local.execute(_TABLE_DDL)
        with participant.local_transaction() as local:
            have = int(local.execute(_COUNT).fetchone()[0])
            for row in range(have, count):
                local.execute(_ROW, (row,))


def _make_in_doubt(
    by_name: dict[str, Participant], home: Path, count: int, coordinators: int, blocked_on: str
) -> None:
    logs = [coordinator_home(home).open(_coordinator(n)) for n in range(coordinators)]
    try:
        for row in range(count):
            log = logs[row % coordinators]
            gtrid = mint_gtrid(log.path.name)
            holder = (
                row == (count - 1) // 2 * 2
            )  # the last decided one: recovered last, if in order
            entries = [
                _prepare(p, gtrid, row, hold_a1=holder and p.name == blocked_on)
                for p in by_name.values()
            ]
            if row % 2 == 0:  # decided: a COMMIT record, as a coordinator forces it
                log.append(CommitDecision(gtrid, tuple(entries)).record(), force=False)
    finally:
        for log in logs:
            log.close()  # synced and released: the coordinators are dead now


def _coordinator(number: int) -> str:
    return f"bench-{number}"


def _prepare(participant: Participant, gtrid: str, row: int, *, hold_a1: bool) -> BranchEntry:
    branch = participant.begin(Xid(FORMAT_ID, gtrid, participant.name))
    try:
        branch.execute(_TOUCH, (row,))
        if hold_a1:
            branch.execute(_HOLD_A1)
        branch.prepare()
    finally:
        branch.close()  # a prepared branch outlives its connection on both servers
    return BranchEntry(participant.name, participant.server, participant.name)


class _BlockedTransfer:
    """A transfer that waits on an ``a1`` row held by an in-doubt transaction."""

    def __init__(self, participants: Sequence[Participant], home: Path) -> None:
        self._participants = participants
        self._home = home
        self._done: float | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._waiting = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._waiting.wait(5)
        time.sleep(0.5)  # well into its lock wait by the time recovery starts

    def _run(self) -> None:
        config = CoordinatorConfig(self._home / "probe")
        try:
            with Coordinator.open(self._participants, config) as coordinator:
                self._waiting.set()
                run_transfer(coordinator, PROBE, announce=False)  # a probe: nothing to announce
            self._done = time.perf_counter()
        except Exception as err:  # reported: the benchmark says what happened to it
            self._error = f"{type(err).__name__}: {err}"
        finally:
            self._waiting.set()

    def finish(self, started: float) -> float | str | None:
        self._thread.join(120)
        if self._error is not None:
            return self._error
        return None if self._done is None else round(self._done - started, 3)
