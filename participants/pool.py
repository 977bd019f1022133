"""A participant's connection pool: idle connections kept for reuse, checked alive on checkout.

The pool knows no server: it is given how to open a connection and how to tell whether an
idle one still answers. A connection comes back only from work that ended normally; any other is
discarded (the server rolls back what its session left unfinished).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

#: Idle connections a participant keeps for reuse (more are closed when given back).
MAX_IDLE_CONNECTIONS = 16


class ConnectionPool:
    """Idle connections of one participant, shared by its branches and local transactions."""

    def __init__(
        self,
        connect: Callable[[], Any],
        still_usable: Callable[[Any], bool],
        *,
        max_idle: int = MAX_IDLE_CONNECTIONS,
    ) -> None:
        self._connect = connect
        self._still_usable = still_usable  # open, in no transaction, and answers a ping
        self._max_idle = max_idle
        self._idle: list[Any] = []  # connections a finished branch or transaction gave back
        self._lock = threading.Lock()

    @property
    def idle(self) -> int:
        """How many connections wait for reuse."""
        with self._lock:
            return len(self._idle)

    def checkout(self) -> Any:
        """An idle connection that still answers (and is in no transaction), else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if self._still_usable(conn):
                return conn
            self.discard(conn)

    def release(self, conn: Any) -> None:
        """Keep a connection whose work ended normally for the next :meth:`checkout`."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
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
        for conn in idle:
            self.discard(conn)
