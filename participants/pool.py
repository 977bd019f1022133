"""A participant's connection pool: idle connections kept for reuse, checked alive on checkout.

The pool knows no server: it is given how to open a connection and how to tell whether an
idle one still answers. A connection comes back only from work that ended normally; any other is
discarded (the server rolls back what its session left unfinished).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

#: Idle connections a participant keeps for reuse (more are closed when given back).
MAX_IDLE_CONNECTIONS = 16
#: A connection given back less than this many seconds ago is handed out without a round
#: trip to the server (see :meth:`ConnectionPool.take`).
TRUSTED_FOR = 2.0


class Health(Protocol):
    def __call__(self, conn: Any, *, ping: bool) -> bool:
        """Whether ``conn`` is open and in no transaction, and (with ``ping``) answers."""


class ConnectionPool:
    """Idle connections of one participant, shared by its branches and local transactions."""

    def __init__(
        self,
        connect: Callable[[], Any],
        still_usable: Health,
        *,
        max_idle: int = MAX_IDLE_CONNECTIONS,
        trusted_for: float = TRUSTED_FOR,
    ) -> None:
        self._connect = connect
        self._still_usable = still_usable
        self._max_idle = max_idle
        self._trusted_for = trusted_for
        # Connections a finished branch or transaction gave back, with when.
        self._idle: list[tuple[Any, float]] = []
        self._lock = threading.Lock()

    @property
    def idle(self) -> int:
        """How many connections wait for reuse."""
        with self._lock:
            return len(self._idle)

    def checkout(self) -> Any:
        """An idle connection that still answers (and is in no transaction), else a new one."""
        return self.take(trust_recent=False)[0]

    def take(self, *, trust_recent: bool) -> tuple[Any, bool]:
        """A connection, and whether the server was heard on it just now.

        With ``trust_recent``, one given back less than ``trusted_for`` seconds ago is
        checked without a round trip (open, in no transaction) and handed out unverified: its
        first statement is then the check, and the caller must redo that statement on a
        verified connection if it fails for want of a server (nothing was done on it yet).
        """
        while True:
            with self._lock:
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
            if conn is None:
                return self._connect(), True
            recent = trust_recent and time.monotonic() - since < self._trusted_for
            if self._still_usable(conn, ping=not recent):
                return conn, not recent
            self.discard(conn)

    def release(self, conn: Any) -> None:
        """Keep a connection whose work ended normally for the next :meth:`checkout`."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append((conn, time.monotonic()))
                return
        self.discard(conn)

    @staticmethod
    def discard(conn: Any) -> None:
        """Close a connection, whatever state it is in."""
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close the idle connections (the pool stays usable: it opens new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            self.discard(conn)
