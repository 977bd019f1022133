"""A fake resource manager for the coordinator's protocol tests: no server, programmable faults.

It implements the participant interface over in-memory state (branches prepared, committed,
rolled back; outcome markers) and fails, hangs or misbehaves exactly where a test says. The
protocol's own code (phases, retries, deadlines, the log) is the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from twopc.participants import DatabaseURL, ParticipantUnavailable, PreparedBranch, UnknownXid, Xid
from twopc.participants.base import Branch, Cursor, LocalTransaction, Participant, Vote
from twopc.participants.lockwaits import LockWait

Fault = Callable[[], None]  # raises the error to inject (or blocks)


class FakeCursor:
    rowcount = 1

    def fetchone(self) -> Any:
        return None

    def fetchall(self) -> Any:
        return []


class FakeParticipant(Participant):
    """An in-memory participant. ``faults[point]`` runs at ``point`` ("prepare", "commit",
    "rollback", "finish") and may raise or block; ``calls`` counts what was asked."""

    def __init__(self, name: str) -> None:
        super().__init__(name, DatabaseURL.parse(f"postgresql://fake@{name}.invalid/fake"))
        self.faults: dict[str, Fault] = {}
        self.prepared: set[Xid] = set()
        self.committed: set[Xid] = set()
        self.rolled_back: set[Xid] = set()
        self.calls: dict[str, int] = {}
        self.severed = threading.Event()
        self._state = threading.Lock()

    def fault(self, point: str) -> None:
        with self._state:
            self.calls[point] = self.calls.get(point, 0) + 1
        if point in self.faults:
            self.faults[point]()

    def connect(self) -> object:
        return object()

    def _still_usable(self, conn: Any, *, ping: bool = True) -> bool:
        return True

    def begin(self, xid: Xid) -> FakeBranch:
        return FakeBranch(self, xid)

    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        self.fault("finish")
        self.settle(xid, commit=commit)

    def settle(self, xid: Xid, *, commit: bool) -> None:
        with self._state:
            if xid not in self.prepared:
                raise UnknownXid(f"{self.name}: no prepared branch {xid}")
            self.prepared.discard(xid)
            (self.committed if commit else self.rolled_back).add(xid)

    def prepared_branches(self) -> list[PreparedBranch]:
        with self._state:
            return [PreparedBranch(self.server, str(x), x, None) for x in self.prepared]

    def lock_waits(self) -> list[LockWait]:
        return []

    def waits_of(self, session_id: int) -> list[LockWait]:
        return []

    def _check_server(self) -> None:
        pass

    def _open_local(self) -> LocalTransaction:
        raise AssertionError("the protocol tests use no local transactions")

    def ensure_outcome_table(self) -> None:
        pass

    def has_marker(self, xid: Xid) -> bool:
        return xid in self.committed

    def committed_markers(self, gtrids: Sequence[str]) -> set[tuple[str, str]]:
        return {(x.gtrid, x.bqual) for x in self.committed if x.gtrid in gtrids}

    def markers_of_coordinator(self, coordinator: str) -> set[tuple[str, str]]:
        return {(x.gtrid, x.bqual) for x in self.committed if x.gtrid.startswith(coordinator)}

    def all_markers(self) -> set[tuple[str, str]]:
        return {(x.gtrid, x.bqual) for x in self.committed}

    def forget_markers(self, gtrids: Sequence[str]) -> None:
        pass


class FakeBranch(Branch):
    def __init__(self, participant: FakeParticipant, xid: Xid) -> None:
        super().__init__(participant, xid)
        self._fake = participant

    @property
    def session_id(self) -> int:
        return 1

    @property
    def _connection(self) -> object:
        return object()

    def _sql_interrupt(self) -> None:
        self._fake.severed.set()

    def _sql_sever(self) -> None:
        self._fake.severed.set()

    def _sql_execute(self, query: str, params: Sequence[Any] | None) -> Cursor:
        return FakeCursor()

    def _sql_prepare(self) -> Vote:
        self._fake.fault("prepare")
        with self._fake._state:
            self._fake.prepared.add(self.xid)
        return Vote.PREPARED

    def _sql_commit_prepared(self) -> None:
        self._fake.fault("commit")
        self._fake.settle(self.xid, commit=True)

    def _sql_commit_one_phase(self) -> None:
        self._fake.fault("commit")
        with self._fake._state:
            self._fake.committed.add(self.xid)

    def _sql_rollback(self, *, prepared: bool) -> None:
        self._fake.fault("rollback")
        if prepared:
            self._fake.settle(self.xid, commit=False)


def raising(error: BaseException, times: int | None = None) -> Fault:
    """A fault that raises ``error`` (only the first ``times`` times, if given)."""
    left = [times]

    def fault() -> None:
        if left[0] is None or left[0] > 0:
            if left[0] is not None:
                left[0] -= 1
            raise error

    return fault


def hanging(release: threading.Event, then: BaseException | None = None) -> Fault:
    """A fault that blocks until ``release`` is set (as a call to a frozen server does),
    then raises ``then`` if given (the severed link)."""

    def fault() -> None:
        release.wait(timeout=120)
        if then is not None:
            raise then

    return fault


def unavailable(name: str) -> ParticipantUnavailable:
    return ParticipantUnavailable(f"{name}: connection lost")
