"""``twopc demo blocking``: the blocking of two-phase commit, shown with real processes.

A transfer's coordinator, in a process of its own, stops once both branches are prepared and
is killed there with SIGKILL; a second transfer on the same account, run here through the
library, blocks on the in-doubt branch's row lock and is told why (the participants'
lock-wait notice); recovery resolves the branch (presumed abort: no COMMIT record was
logged); the second transfer then completes, and the balances prove that neither transfer
was half-applied.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path

from twopc.bank.accounts import AccountRef
from twopc.bank.transfer import Balances, Transfer, read_balances, run_transfer
from twopc.coordinator import CallAt, Coordinator, CoordinatorConfig, CrashPoint
from twopc.coordinator.listing import find_in_doubt, lock_wait_lines
from twopc.coordinator.recovery import recover
from twopc.participants import DatabaseURL, LockWait, Participant, participant_for

_START_PATIENCE = 60.0  # for the doomed coordinator's process to start and prepare
_NOTICE_PATIENCE = 30.0  # for the second transfer to report its wait
_FINISH_PATIENCE = 60.0  # for the second transfer to finish once recovery ran
_BLOCKED_LOCK_WAIT = 120.0  # how long the second transfer may wait for its lock


class DemoError(Exception):
    """The demonstration could not run (a step did not happen as expected)."""


@dataclass(frozen=True)
class DemoFigures:
    """What the demonstration measured."""

    killed_gtrid: str
    seconds_until_notice: float
    seconds_blocked: float
    seconds_recovering: float
    total_before: Decimal
    total_after: Decimal


def blocking_demo(
    participants: Sequence[Participant],
    home: Path,
    say: Callable[[str], None],
    *,
    hold: float = 3.0,
) -> DemoFigures:
    """Run the whole story on the configured servers, narrating through ``say``."""
    if find_in_doubt(participants, home, with_blocking=False).branches:
        raise DemoError("transactions are already in doubt: run `twopc recover` first")
    before = read_balances(list(participants))
    gtrid = _kill_when_prepared(participants, home, say)
    _show_in_doubt(participants, home, say)
    second = _BlockedTransfer(participants, home)
    say("3. A second transfer pg:a1 -> mysql:a2 5.00 needs pg:a1's row lock...")
    seconds_until_notice, notice = second.start()
    say(f"   after {seconds_until_notice:.1f}s it reports: {notice}")
    say(f"4. Holding the in-doubt branch {hold:g}s more, so the wait is plain to see...")
    time.sleep(hold)
    seconds_recovering = _recover(participants, home, say)
    seconds_blocked = second.finish()
    say(f"6. The second transfer went through after {seconds_blocked:.1f}s in all.")
    total_after = _show_balances(participants, say, before)
    return DemoFigures(
        gtrid,
        seconds_until_notice,
        seconds_blocked,
        seconds_recovering,
        before.overall,
        total_after,
    )


def _doomed_transfer(pairs: list[tuple[str, str]], home: str, report: Connection) -> None:
    """In a process of its own: transfer pg:a1 -> mysql:a1 10.00, and once both branches are
    prepared tell the parent (pid, gtrid) and wait to be killed."""

    def prepared(gtrid: str) -> None:
        report.send((os.getpid(), gtrid))
        time.sleep(600)

    participants = [participant_for(name, DatabaseURL.parse(url)) for name, url in pairs]
    hooks = CallAt(CrashPoint.AFTER_PREPARE, prepared)
    with Coordinator.open(participants, CoordinatorConfig(Path(home), hooks=hooks)) as coordinator:
        transfer = Transfer(AccountRef("pg", "a1"), AccountRef("mysql", "a1"), Decimal("10.00"))
        run_transfer(coordinator, transfer)


def _kill_when_prepared(
    participants: Sequence[Participant], home: Path, say: Callable[[str], None]
) -> str:
    say("1. Transfer pg:a1 -> mysql:a1 10.00 starts and stops once both branches are prepared.")
    context = multiprocessing.get_context("spawn")  # no copy of this process's connections
    ours, theirs = context.Pipe(duplex=False)
    pairs = [(p.name, p.url.with_password()) for p in participants]
    process = context.Process(target=_doomed_transfer, args=(pairs, str(home), theirs))
    process.start()
    theirs.close()  # so that a child that dies early is seen as the pipe's end
    try:
        if not ours.poll(_START_PATIENCE):
            raise DemoError(f"the first transfer did not prepare within {_START_PATIENCE:g}s")
        try:
            pid, gtrid = ours.recv()
        except EOFError:
            process.join(10)
            raise DemoError(
                f"the first transfer's coordinator exited ({process.exitcode}) before preparing"
            ) from None
        os.kill(pid, signal.SIGKILL)
        process.join(10)
    finally:
        if process.is_alive():
            process.kill()
            process.join(10)
        ours.close()
    say(f"2. kill -9 {pid}: the coordinator of {gtrid} is dead. No COMMIT record was logged,")
    say("   but its branches stay prepared, holding their row locks on pg:a1 and mysql:a1.")
    return str(gtrid)


class _BlockedTransfer:
    """The second transfer, run on a thread of this process with participants of its own
    whose lock-wait notice reports what it waits on."""

    def __init__(self, participants: Sequence[Participant], home: Path) -> None:
        self.home = home
        self.participants = [
            participant_for(
                p.name,
                p.url,
                lock_wait=_BLOCKED_LOCK_WAIT,
                on_lock_wait=self._notice,
                notice_after=1.0,
            )
            for p in participants
        ]
        self.noticed: list[str] = []
        self.failure: BaseException | None = None
        self._heard = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twopc-demo", daemon=True)
        self._started = 0.0

    def start(self) -> tuple[float, str]:
        self._started = time.monotonic()
        self._thread.start()
        if not self._heard.wait(_NOTICE_PATIENCE):
            raise DemoError(f"the second transfer reported no lock wait in {_NOTICE_PATIENCE:g}s")
        if self.failure is not None:
            raise DemoError(f"the second transfer failed: {self.failure}")
        if not self.noticed:
            raise DemoError("the second transfer went through without waiting for the lock")
        return time.monotonic() - self._started, self.noticed[0]

    def finish(self) -> float:
        self._thread.join(_FINISH_PATIENCE)
        if self._thread.is_alive():
            raise DemoError("the blocked transfer did not finish after recovery")
        if self.failure is not None:
            raise DemoError(f"the blocked transfer failed: {self.failure}")
        return time.monotonic() - self._started

    def _notice(self, participant: Participant, waits: list[LockWait]) -> None:
        self.noticed += lock_wait_lines(self.home, participant, waits)
        self._heard.set()

    def _run(self) -> None:
        transfer = Transfer(AccountRef("pg", "a1"), AccountRef("mysql", "a2"), Decimal("5.00"))
        try:
            with Coordinator.open(self.participants, CoordinatorConfig(self.home)) as coordinator:
                run_transfer(coordinator, transfer)
        except Exception as err:  # reported by start() or finish()
            self.failure = err
        finally:
            self._heard.set()
            for participant in self.participants:
                participant.close()


def _show_in_doubt(
    participants: Sequence[Participant], home: Path, say: Callable[[str], None]
) -> None:
    for branch in find_in_doubt(participants, home, with_blocking=False).branches:
        alive = "alive" if branch.coordinator_alive else "dead"
        say(
            f"   in doubt: {branch.gtrid} on {branch.participant}, coordinator {alive}, "
            f"decision: {branch.decision}"
        )


def _recover(participants: Sequence[Participant], home: Path, say: Callable[[str], None]) -> float:
    say("5. twopc recover")
    started = time.monotonic()
    report = recover(participants, home)
    elapsed = time.monotonic() - started
    for resolution in report.resolutions:
        say(
            f"   {resolution.gtrid} {resolution.participant}: {resolution.action} "
            f"({resolution.reason})"
        )
    say(f"   recovery took {elapsed * 1000:.0f} ms")
    return elapsed


def _show_balances(
    participants: Sequence[Participant], say: Callable[[str], None], before: Balances
) -> Decimal:
    after = read_balances(list(participants))
    old, new = _accounts(before), _accounts(after)
    say("7. Balances: " + ", ".join(f"{k} {old[k]} -> {new[k]}" for k in _SHOWN))
    expected = {"pg:a1": Decimal("-5.00"), "mysql:a1": Decimal("0"), "mysql:a2": Decimal("5.00")}
    atomic = all(new[k] - old[k] == delta for k, delta in expected.items())
    say(
        "   The killed transfer left no trace (rolled back on both sides); the second one moved"
        " 5.00."
        if atomic
        else "   UNEXPECTED balances: atomicity was violated!"
    )
    same = "unchanged" if after.overall == before.overall else "CHANGED"
    say(f"   Total over all accounts: {before.overall} -> {after.overall} ({same}).")
    if not atomic or after.overall != before.overall:
        raise DemoError("balances do not add up")
    return after.overall


_SHOWN = ("pg:a1", "mysql:a1", "mysql:a2")


def _accounts(balances: Balances) -> dict[str, Decimal]:
    return {f"{side}:{i}": b for side, rows in balances.sides.items() for i, b in rows}
