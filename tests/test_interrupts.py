"""Interrupting a transfer (Ctrl-C, SIGTERM, an exception) never strands prepared branches.

Before the decision, whatever was prepared is rolled back (or, if that cannot be confirmed,
the log stays so recovery can presume abort); from the decision on, the transfer reports in
doubt (exit 3) and recovery finishes it from the log. Each test reads the truth from the
servers, the log directory and the balances.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import pytest
from conftest import AMOUNT, Databases, Direction, twopc_executable
from test_crash_points import DIRECTIONS, both_prepared, prepared

from twopc.coordinator import Coordinator, CoordinatorConfig, CrashPoint, TxState
from twopc.txlog import read_log

NOTHING = {"pg": [], "mysql": []}


class Lines:
    """Reads a stream on a thread: wait for a line, then take everything that followed."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put("")  # end of stream

    def wait_for(self, prefix: str, timeout: float) -> str:
        seen: list[str] = []
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no {prefix!r} line within {timeout}s; so far: {seen}")
            if line == "":
                pytest.fail(f"the stream ended before {prefix!r}; it said: {seen}")
            if line.startswith(prefix):
                return line
            seen.append(line)

    def rest(self, timeout: float) -> str:
        """Everything after the last line taken, up to the end of the stream."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        lines = []
        while (line := self._queue.get_nowait()) != "":
            lines.append(line)
        return "".join(lines)


@dataclass
class Paused:
    process: subprocess.Popen[str]
    gtrid: str
    stderr: Lines

    def finish(self) -> tuple[int, str, str]:
        """Wait (bounded) for the process: exit code, stdout, and the rest of stderr."""
        assert self.process.stdout is not None
        out = self.process.stdout.read()
        code = self.process.wait(timeout=60)
        return code, out, self.stderr.rest(timeout=10)


@contextmanager
def paused_transfer(
    db: Databases, direction: Direction, point: str, *extra: str
) -> Iterator[Paused]:
    """A ``twopc transfer`` holding at ``point``."""
    process = subprocess.Popen(
        [twopc_executable(), "transfer", *direction.args, "--pause-at", point, *extra],
        env=db.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        stderr = Lines(process.stderr)
        line = stderr.wait_for(f"paused at {point}: ", timeout=30)
        match = re.match(rf"paused at {point}: pid (\d+) gtrid (\S+) \(", line)
        assert match, line
        yield Paused(process, match.group(2), stderr)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


BEFORE_DECISION = [
    pytest.param(point, sig, d, id=f"{point}-{sig.name}-{d}")
    for point in ("after-first-prepare", "after-prepare")
    for sig in (signal.SIGINT, signal.SIGTERM)
    for d in DIRECTIONS
]


@pytest.mark.parametrize(("point", "sig", "direction"), BEFORE_DECISION)
def test_interrupt_before_decision_rolls_back_everything(
    db: Databases, point: str, sig: signal.Signals, direction: Direction
) -> None:
    before = db.balances()
    with paused_transfer(db, direction, point) as paused:
        assert prepared(db) != NOTHING  # something is prepared while it holds
        os.kill(paused.process.pid, sig)
        code, out, err = paused.finish()
        gtrid = paused.gtrid
    assert code == 1, err
    assert out == ""
    assert err.strip().splitlines() == [
        "Error: interrupted: the transfer was rolled back; nothing changed"
    ]
    assert prepared(db) == NOTHING
    assert db.balances() == before
    # Nothing prepared and nothing decided: the one-shot coordinator's log may go.
    assert not (db.home / "txlog" / gtrid.rpartition(".")[0]).exists()


AFTER_DECISION = [
    pytest.param(point, d, id=f"{point}-{d}")
    for point in ("after-decision", "after-first-commit")
    for d in DIRECTIONS
]


@pytest.mark.parametrize(("point", "direction"), AFTER_DECISION)
def test_interrupt_after_decision_reports_in_doubt_and_recovery_commits(
    db: Databases, point: str, direction: Direction
) -> None:
    before = db.balances()
    with paused_transfer(db, direction, point) as paused:
        os.kill(paused.process.pid, signal.SIGINT)
        code, out, err = paused.finish()
        gtrid = paused.gtrid
    assert code == 3, err
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"Error: interrupted: transaction {gtrid} is in doubt ("), line
    assert line.endswith("run `twopc recover` to finish it from its coordinator's log"), line
    # The decision stays in the kept log, so recovery commits whatever is still prepared.
    contents = read_log(db.home / "txlog" / gtrid.rpartition(".")[0])
    assert [r.kind for r in contents.records] == ["COMMIT"]
    recovered = db.twopc("recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert prepared(db) == NOTHING
    assert db.balances() == direction.moved(before)
    assert db.twopc("audit").returncode == 0


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf", "1e308", "-1", ""])
def test_pause_seconds_must_be_a_finite_number(db: Databases, seconds: str) -> None:
    before = db.balances()
    args = ("transfer", *DIRECTIONS[0].args, "--pause-at", "after-prepare")
    result = db.twopc(*args, "--pause-seconds", seconds)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--pause-seconds" in result.stderr.strip().splitlines()[-1]
    assert prepared(db) == NOTHING
    assert db.balances() == before


# -- the library: exceptions from anywhere in commit() ------------------------------------------


class RaiseAt:
    """Hooks that raise ``error`` when the protocol reaches ``point``."""

    def __init__(self, point: CrashPoint, error: BaseException) -> None:
        self.point = point
        self.error = error

    def armed(self, point: CrashPoint) -> bool:
        return point is self.point

    def reached(self, point: CrashPoint, gtrid: str) -> None:
        if point is self.point:
            raise self.error


def transfer_in(coordinator: Coordinator) -> Any:
    """pg:a1 -> mysql:a2 AMOUNT through the library; returns the transaction."""
    tx = coordinator.begin()
    tx["pg"].execute("UPDATE accounts SET balance = balance - %s WHERE id = 'a1'", (AMOUNT,))
    tx["mysql"].execute("UPDATE accounts SET balance = balance + %s WHERE id = 'a2'", (AMOUNT,))
    return tx


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyboardInterrupt()], ids=repr)
@pytest.mark.parametrize("point", [CrashPoint.AFTER_FIRST_PREPARE, CrashPoint.AFTER_PREPARE])
def test_exception_in_phase_one_rolls_back_and_propagates(
    db: Databases, point: CrashPoint, error: BaseException
) -> None:
    before = db.balances()
    config = CoordinatorConfig(db.home, hooks=RaiseAt(point, error))
    with Coordinator.open([db.pg(), db.mysql()], config) as coordinator:
        tx = transfer_in(coordinator)
        with pytest.raises(type(error)):
            tx.commit()
        tx.close()
        assert tx.state is TxState.ABORTED
        assert coordinator.unsettled() == []
        log_path = coordinator.log.path
    assert prepared(db) == NOTHING
    assert db.balances() == before
    assert not log_path.exists()  # one-shot and settled: the log went


@pytest.mark.parametrize("point", [CrashPoint.AFTER_DECISION, CrashPoint.AFTER_FIRST_COMMIT])
def test_exception_after_decision_leaves_in_doubt_and_keeps_the_log(
    db: Databases, point: CrashPoint
) -> None:
    before = db.balances()
    config = CoordinatorConfig(db.home, hooks=RaiseAt(point, RuntimeError("a bug")))
    with Coordinator.open([db.pg(), db.mysql()], config) as coordinator:
        tx = transfer_in(coordinator)
        with pytest.raises(RuntimeError):
            tx.commit()
        tx.close()
        assert tx.state is TxState.IN_DOUBT
        assert coordinator.unsettled() == [tx]
        log_path = coordinator.log.path
    assert [r.kind for r in read_log(log_path).records] == ["COMMIT"]
    assert db.twopc("recover").returncode == 0
    assert prepared(db) == NOTHING
    assert db.balance("pg", "a1") == before["pg:a1"] - AMOUNT
    assert db.balance("mysql", "a2") == before["mysql:a2"] + AMOUNT


def test_interrupt_while_the_decision_is_forced_never_rolls_back(db: Databases) -> None:
    """Interrupted inside the forced append, the COMMIT record may be durable: the branches
    are left prepared for recovery (which finds the record here and commits both)."""
    before = db.balances()
    with Coordinator.open([db.pg(), db.mysql()], CoordinatorConfig(db.home)) as coordinator:
        real_append = coordinator.log.append

        def append_then_interrupt(record: Any, *, force: bool) -> Any:
            stamped = real_append(record, force=force)
            if record.kind == "COMMIT":
                raise KeyboardInterrupt  # the signal arrived as the fsync returned
            return stamped

        coordinator.log.append = append_then_interrupt  # type: ignore[method-assign]
        tx = transfer_in(coordinator)
        with pytest.raises(KeyboardInterrupt):
            tx.commit()
        tx.close()
        assert tx.state is TxState.IN_DOUBT
        gtrid = tx.gtrid
    assert prepared(db) == both_prepared(gtrid)
    assert db.twopc("recover").returncode == 0
    assert prepared(db) == NOTHING
    assert db.balance("pg", "a1") == before["pg:a1"] - AMOUNT
    assert db.balance("mysql", "a2") == before["mysql:a2"] + AMOUNT
    assert db.balance("pg", "a1") + db.balance("mysql", "a2") == (
        before["pg:a1"] + before["mysql:a2"]
    )
