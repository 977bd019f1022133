"""``twopc demo blocking``: the blocking of two-phase commit, shown with real processes.

A transfer's coordinator is paused after both branches prepared, then killed with SIGKILL;
a second transfer on the same account blocks on the in-doubt branch's row lock; recovery
resolves the branch (presumed abort: no COMMIT record was logged); the second transfer then
completes, and the balances prove that neither transfer was half-applied.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

from twopc.bank.transfer import Balances, read_balances
from twopc.coordinator.recovery import find_in_doubt, recover
from twopc.participants import Participant

_PAUSED = re.compile(r"paused at after-prepare: pid (\d+) gtrid (\S+)")
_WAITING = "waiting for a row lock"


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


class _Lines:
    """Reads a child's stderr on a thread, so the demo can wait for a line with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise DemoError(f"expected output matching {pattern!r}; got: {' | '.join(self.seen)}")


def blocking_demo(
    participants: Sequence[Participant],
    home: Path,
    env: dict[str, str],
    say: Callable[[str], None],
    *,
    hold: float = 3.0,
) -> DemoFigures:
    """Run the whole story on the configured servers, narrating through ``say``."""
    if find_in_doubt(participants, home, with_blocking=False).branches:
        raise DemoError("transactions are already in doubt: run `twopc recover` first")
    before = read_balances(list(participants))
    total_before = before.overall
    first = _start(
        env, "pg:a1", "mysql:a1", "10.00", "--pause-at", "after-prepare", "--pause-seconds", "600"
    )
    try:
        gtrid = _kill_when_prepared(first, say)
    finally:
        _reap(first)
    _show_in_doubt(participants, home, say)
    second, seconds_until_notice, started = _blocked_transfer(env, say)
    try:
        say(f"4. Holding the in-doubt branch {hold:g}s more, so the wait is plain to see...")
        time.sleep(hold)
        seconds_recovering = _recover(participants, home, say)
        seconds_blocked = _finish(second, started, say)
    finally:
        _reap(second)
    total_after = _show_balances(participants, say, before)
    return DemoFigures(
        gtrid, seconds_until_notice, seconds_blocked, seconds_recovering, total_before, total_after
    )


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "twopc", "transfer", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _kill_when_prepared(process: subprocess.Popen[str], say: Callable[[str], None]) -> str:
    say("1. Transfer pg:a1 -> mysql:a1 10.00 starts and pauses once both branches are prepared.")
    assert process.stderr is not None
    line = _Lines(process.stderr).wait_for(_PAUSED.pattern, timeout=30)
    match = _PAUSED.search(line)
    assert match is not None
    pid, gtrid = int(match.group(1)), match.group(2)
    os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    say(f"2. kill -9 {pid}: the coordinator of {gtrid} is dead. No COMMIT record was logged,")
    say("   but its branches stay prepared, holding their row locks on pg:a1 and mysql:a1.")
    return gtrid


def _show_in_doubt(
    participants: Sequence[Participant], home: Path, say: Callable[[str], None]
) -> None:
    for branch in find_in_doubt(participants, home, with_blocking=False).branches:
        alive = "alive" if branch.coordinator_alive else "dead"
        say(
            f"   in doubt: {branch.gtrid} on {branch.participant}, coordinator {alive}, "
            f"decision: {branch.decision}"
        )


def _blocked_transfer(
    env: dict[str, str], say: Callable[[str], None]
) -> tuple[subprocess.Popen[str], float, float]:
    say("3. A second transfer pg:a1 -> mysql:a2 5.00 needs pg:a1's row lock...")
    started = time.monotonic()
    process = _start(env, "pg:a1", "mysql:a2", "5.00", "--lock-wait", "120")
    assert process.stderr is not None
    line = _Lines(process.stderr).wait_for(_WAITING, timeout=30)
    waited = time.monotonic() - started
    say(f"   after {waited:.1f}s it reports: {line}")
    return process, waited, started


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


def _finish(process: subprocess.Popen[str], started: float, say: Callable[[str], None]) -> float:
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        raise DemoError("the blocked transfer did not finish after recovery") from None
    blocked = time.monotonic() - started
    if process.returncode != 0:
        raise DemoError(f"the blocked transfer failed: {err.strip()}")
    say(f"6. The second transfer went through after {blocked:.1f}s in all: {out.splitlines()[0]}")
    return blocked


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


def _reap(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
