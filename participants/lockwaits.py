"""Who waits on a prepared branch: the server-neutral answer and the interface that gives it.

When a coordinator dies after phase 1, its prepared branches keep their locks and other
sessions queue behind them. A :class:`LockInspector` shows which sessions wait, what they run,
for how long, and on which prepared branch; it only reads the server's lock tables and never
finishes a branch. Each server answers in its own module (``postgres_locks``, ``mysql_locks``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from twopc.participants.xid import Xid


@dataclass(frozen=True)
class LockWait:
    """One session waiting on a lock held by a prepared branch."""

    waiter: int  # PostgreSQL backend pid / MySQL connection (thread) id of the waiting session
    query: str | None  # what the waiter is running
    waited_seconds: float  # how long it has waited for the lock (MariaDB: whole-second start)
    blocker: Xid | None  # the prepared branch it waits on, when xid-shaped (any format id)
    blocker_name: str | None  # PG gid / MySQL XA data repr, or a description when unidentified


class LockInspector(ABC):
    """A participant's lock-wait role: reads, from connections of its own, who waits on a
    prepared branch of its server."""

    @abstractmethod
    def lock_waits(self) -> list[LockWait]:
        """Every session waiting on a lock held by a prepared branch on this server."""

    @abstractmethod
    def waits_of(self, session_id: int) -> list[LockWait]:
        """The prepared branches the session ``session_id`` is waiting for."""
