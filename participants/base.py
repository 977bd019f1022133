"""The one small interface every resource manager adapter implements, and how one is composed.

Policy lives in the coordinator; a participant only speaks its server's SQL. A
:class:`Participant` is what the coordinator, the saga and the bank see. A server's adapter is
a :class:`ServerParticipant`: it holds no behaviour of its own, only one object per role —

- the connection pool (:class:`ConnectionPool`, fed by the server's :class:`Connector`),
- the branch protocol (:class:`BranchProtocol`),
- lock-wait inspection (:class:`LockInspector`),
- outcome markers (:class:`OutcomeMarkers`, speaking the server's marker SQL),
- local transactions (the server's :class:`LocalTransaction`),

and delegates to them. Its configuration is given at construction and never changes after.
"""

from __future__ import annotations

import math
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twopc.participants.branch import (
    Branch,
    BranchProtocol,
    BranchState,
    Cursor,
    LocalTransaction,
    PreparedBranch,
    Vote,
    finished_or_error,
)
from twopc.participants.errors import ParticipantError, ParticipantUnavailable
from twopc.participants.lockwaits import LockInspector, LockWait
from twopc.participants.markers import OutcomeMarkers
from twopc.participants.pool import ConnectionPool
from twopc.participants.urls import DatabaseURL
from twopc.participants.watchdog import Watchdog
from twopc.participants.xid import Xid

__all__ = [
    "MAX_SECONDS",
    "Branch",
    "BranchProtocol",
    "BranchState",
    "Connector",
    "Cursor",
    "LocalTransaction",
    "LockWaitNotice",
    "Participant",
    "PreparedBranch",
    "Roles",
    "ServerParticipant",
    "Vote",
    "shut_down_socket",
    "translated_errors",
]

#: The longest lock wait or I/O timeout a participant accepts (PostgreSQL's lock_timeout is
#: an int of milliseconds: about 24.8 days).
MAX_SECONDS = 2_000_000.0
_T = TypeVar("_T")

#: Told, once per branch, when a statement has waited ``notice_after`` seconds for a lock held
#: by a prepared branch (the CLI prints who blocks it and how to resolve it). It runs on the
#: participant's watchdog thread.
LockWaitNotice = Callable[["Participant", list[LockWait]], None]


class Participant(ABC):
    """A resource manager (one database) that can hold branches of global transactions.

    ``name`` is the branch qualifier (bqual) of every branch it holds. ``lock_wait`` bounds a
    statement's wait for a lock, ``io_timeout`` the server's silence beyond it;
    ``on_lock_wait`` is told when a statement has waited ``notice_after`` seconds on a
    prepared branch.
    """

    def __init__(
        self,
        name: str,
        url: DatabaseURL,
        *,
        lock_wait: float = 30.0,
        io_timeout: float = 30.0,
        on_lock_wait: LockWaitNotice | None = None,
        notice_after: float = 1.0,
    ) -> None:
        # PostgreSQL reads a lock_timeout of 0 as "wait forever"; nan and inf bound nothing.
        if not 0 < lock_wait < MAX_SECONDS:
            raise ValueError(f"lock_wait must be a positive number of seconds, got {lock_wait!r}")
        if not 0 < io_timeout < MAX_SECONDS:
            raise ValueError(f"io_timeout must be a positive number of seconds, got {io_timeout!r}")
        if not (math.isfinite(notice_after) and notice_after > 0):
            raise ValueError(
                f"notice_after must be a positive finite number of seconds, got {notice_after!r}"
            )
        self.name = name
        self.url = url
        self.lock_wait = lock_wait
        self.io_timeout = io_timeout
        self._on_lock_wait = on_lock_wait
        self._notice_after = notice_after
        self._ready = False  # check_ready passed once
        self.pool = ConnectionPool(self.connect, self._still_usable)
        self.watchdog = Watchdog(f"twopc-lock-watch {name}")

    @property
    def on_lock_wait(self) -> LockWaitNotice | None:
        """Told once per branch what a statement that waits on a prepared branch waits for."""
        return self._on_lock_wait

    @property
    def notice_after(self) -> float:
        """Seconds a statement runs before :attr:`on_lock_wait` is asked to look."""
        return self._notice_after

    @property
    def statement_limit(self) -> float:
        """Seconds any one call on a connection may wait for the server before the link is
        cut (the call fails as :class:`ParticipantUnavailable`): a statement's own lock wait
        plus ``io_timeout``, so a server that stops answering never holds a caller forever."""
        return self.lock_wait + self.io_timeout

    @property
    def server(self) -> str:
        """``<kind> host:port/db`` — identifies the server in messages; no credentials."""
        return f"{self.url.backend} {self.url.location()}"

    # -- connections: the pool's ----------------------------------------------------------

    @abstractmethod
    def connect(self) -> Any:
        """A new autocommit driver connection (psycopg or PyMySQL) with this participant's
        settings; the caller closes it."""

    @abstractmethod
    def _still_usable(self, conn: Any, *, ping: bool = True) -> bool:
        """Whether an idle connection is open, in no transaction, and (``ping``) answers."""

    def take(self, *, trust_recent: bool) -> tuple[Any, bool]:
        """A connection for a branch, and whether the server was heard on it just now (see
        :meth:`ConnectionPool.take`: an unverified one's first statement is the check)."""
        return self.pool.take(trust_recent=trust_recent)

    def checkout(self) -> Any:
        """A connection for a branch or a local transaction: an idle one that still answers
        (and is in no transaction), else a new one."""
        return self.pool.checkout()

    def release(self, conn: Any) -> None:
        """Keep a connection whose work ended normally for the next :meth:`checkout`."""
        self.pool.release(conn)

    @staticmethod
    def discard(conn: Any) -> None:
        """Close a connection, whatever state it is in."""
        ConnectionPool.discard(conn)

    @contextmanager
    def borrowed(self) -> Iterator[Any]:
        """A pooled connection for one piece of work outside any branch: given back when
        the block ends normally, closed when it raises (a connection that saw an error is
        never reused)."""
        conn = self.checkout()
        try:
            yield conn
        except BaseException:
            self.discard(conn)
            raise
        self.release(conn)

    def redoable(self, work: Callable[[Any], _T]) -> _T:
        """``work(conn)`` on a pooled connection with no round trip to check it first when it
        was given back recently (see :meth:`ConnectionPool.take`): if the server cannot be
        reached on such a one, it had died in the pool, and ``work`` runs again on a checked
        one. Only for work whose second run is right even if the first reached the server
        (finishing a prepared branch by xid: the second finds it unknown, which its caller
        settles by the outcome marker). A connection that saw an error is closed."""
        conn, verified = self.take(trust_recent=True)
        try:
            result = work(conn)
        except ParticipantUnavailable:
            self.discard(conn)
            if verified:
                raise
            with self.borrowed() as checked:
                return work(checked)
        except BaseException:
            self.discard(conn)
            raise
        self.release(conn)
        return result

    def close(self) -> None:
        """Stop the lock-wait watchdog and close the idle connections (a participant stays
        usable: it opens new ones, and the watchdog starts again when needed)."""
        self.watchdog.close()
        self.pool.close()

    # -- the branch protocol --------------------------------------------------------------

    @abstractmethod
    def begin(self, xid: Xid) -> Branch:
        """Start a branch of the global transaction ``xid`` on a connection of its own."""

    @abstractmethod
    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        """Commit or roll back a prepared branch from a fresh connection.

        Raises :class:`UnknownXid` when the server holds no such prepared branch, and
        :class:`BranchBusy` when it holds it but cannot finish it yet.
        """

    def finish_prepared_many(
        self, xids: Sequence[Xid], *, commit: bool
    ) -> list[ParticipantError | None]:
        """:meth:`finish_prepared` of each of ``xids``, with as few requests as the server
        allows; in order, what became of each: None when finished, else the error
        :meth:`finish_prepared` would have raised for it."""
        return [finished_or_error(self.finish_prepared, xid, commit) for xid in xids]

    @abstractmethod
    def prepared_branches(self) -> list[PreparedBranch]:
        """Every prepared branch on the server (ours and foreign) in this database."""

    def prepared_elsewhere(self) -> set[str]:
        """Gtrids of twopc branches prepared on this participant's server by *another*
        participant (another database or bqual of the same server). They are never finished
        through this participant; recovery keeps their coordinators' logs for one that is
        configured with that participant."""
        return set()

    def prepared_xids(self) -> set[Xid]:
        """Our branches among :meth:`prepared_branches`, without the details (quicker)."""
        return {b.xid for b in self.prepared_branches() if b.xid is not None and b.xid.is_ours}

    def stop_requests(self, prefixes: Collection[str]) -> set[str]:
        """End every session still running a request that carries the prepare of one of our
        branches whose gtrid starts with one of ``prefixes`` (a dead coordinator's, still
        waiting for a row lock, say), and wait until those sessions are gone: afterwards no
        such branch can become prepared behind recovery's back. Returns the gtrids those
        requests named. A participant whose server runs nothing for a client that is gone
        has nothing to stop."""
        return set()

    def check_ready(self) -> None:
        """Raise :class:`MisconfiguredServer` when the server cannot run 2PC branches (and
        :class:`ParticipantUnavailable` when it does not answer). Checked once: a server
        lost later fails the next branch's own connect, before anything is prepared."""
        if not self._ready:
            self._check_server()
            self._ready = True

    @abstractmethod
    def _check_server(self) -> None: ...

    # -- lock waits -----------------------------------------------------------------------

    @abstractmethod
    def lock_waits(self) -> list[LockWait]:
        """Every session waiting on a lock held by a prepared branch on this server."""

    @abstractmethod
    def waits_of(self, session_id: int) -> list[LockWait]:
        """The prepared branches the session ``session_id`` is waiting for."""

    # -- local transactions ---------------------------------------------------------------

    @contextmanager
    def local_transaction(self) -> Iterator[LocalTransaction]:
        """One plain local transaction: committed on normal exit, rolled back on error."""
        transaction = self._open_local()
        try:
            yield transaction
            transaction.commit()
        finally:
            transaction.close()

    @abstractmethod
    def _open_local(self) -> LocalTransaction: ...

    # -- outcome markers ------------------------------------------------------------------

    @abstractmethod
    def ensure_outcome_table(self) -> None:
        """Create the outcome-marker table if it is missing (idempotent, outside any branch)."""

    @abstractmethod
    def has_marker(self, xid: Xid) -> bool:
        """Whether the branch ``xid`` committed: its marker is visible to a new transaction."""

    @abstractmethod
    def committed_markers(self, gtrids: Sequence[str]) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every branch of ``gtrids`` that committed here."""

    @abstractmethod
    def markers_of_coordinator(self, coordinator: str) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every committed marker whose gtrid ``coordinator`` minted."""

    @abstractmethod
    def all_markers(self) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every committed marker on this server."""

    @abstractmethod
    def forget_markers(self, gtrids: Sequence[str]) -> None:
        """Delete the markers of ended transactions (their END record is durable)."""


class Connector(Protocol):
    """How a participant reaches its server: connections with its limits, and their health."""

    def connect(self) -> Any:
        """A new autocommit driver connection; the caller closes it."""

    def still_usable(self, conn: Any, *, ping: bool = True) -> bool:
        """Whether an idle connection is open, in no transaction, and (``ping``) answers."""


@dataclass(frozen=True)
class Roles:
    """What one server contributes to a participant: one object per role."""

    connector: Connector
    branches: BranchProtocol
    lock_waits: LockInspector
    markers: OutcomeMarkers
    open_local: Callable[[], LocalTransaction]  # begins one on a connection of the pool


class ServerParticipant(Participant):
    """A participant made of one server's role objects (see :class:`Roles`), which it
    delegates to; the server's subclass only says which objects those are."""

    def __init__(
        self,
        name: str,
        url: DatabaseURL,
        *,
        lock_wait: float = 30.0,
        io_timeout: float = 30.0,
        on_lock_wait: LockWaitNotice | None = None,
        notice_after: float = 1.0,
    ) -> None:
        super().__init__(
            name,
            url,
            lock_wait=lock_wait,
            io_timeout=io_timeout,
            on_lock_wait=on_lock_wait,
            notice_after=notice_after,
        )
        self._roles = self._compose()

    @abstractmethod
    def _compose(self) -> Roles:
        """This server's role objects (called once, by the constructor, with the settings
        checked and the pool and watchdog in place)."""

    def connect(self) -> Any:
        return self._roles.connector.connect()

    def _still_usable(self, conn: Any, *, ping: bool = True) -> bool:
        return self._roles.connector.still_usable(conn, ping=ping)

    def begin(self, xid: Xid) -> Branch:
        return self._roles.branches.begin(xid)

    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        self._roles.branches.finish_prepared(xid, commit=commit)

    def finish_prepared_many(
        self, xids: Sequence[Xid], *, commit: bool
    ) -> list[ParticipantError | None]:
        return self._roles.branches.finish_prepared_many(xids, commit=commit)

    def prepared_branches(self) -> list[PreparedBranch]:
        return self._roles.branches.prepared_branches()

    def prepared_elsewhere(self) -> set[str]:
        return self._roles.branches.prepared_elsewhere()

    def prepared_xids(self) -> set[Xid]:
        return self._roles.branches.prepared_xids()

    def stop_requests(self, prefixes: Collection[str]) -> set[str]:
        return self._roles.branches.stop_requests(prefixes)

    def _check_server(self) -> None:
        self._roles.branches.check_server()

    def lock_waits(self) -> list[LockWait]:
        return self._roles.lock_waits.lock_waits()

    def waits_of(self, session_id: int) -> list[LockWait]:
        return self._roles.lock_waits.waits_of(session_id)

    def _open_local(self) -> LocalTransaction:
        return self._roles.open_local()

    def ensure_outcome_table(self) -> None:
        self._roles.markers.ensure_table()

    def has_marker(self, xid: Xid) -> bool:
        return self._roles.markers.has(xid)

    def committed_markers(self, gtrids: Sequence[str]) -> set[tuple[str, str]]:
        return self._roles.markers.committed(gtrids)

    def markers_of_coordinator(self, coordinator: str) -> set[tuple[str, str]]:
        return self._roles.markers.of_coordinator(coordinator)

    def all_markers(self) -> set[tuple[str, str]]:
        return self._roles.markers.all()

    def forget_markers(self, gtrids: Sequence[str]) -> None:
        self._roles.markers.forget(gtrids)


class translated_errors:
    """Re-raise a driver error as the participant error ``translate`` makes of it, chained.

    A class rather than a generator-based context manager: every statement passes through
    one, and this costs a fraction of a generator's set-up and tear-down.
    """

    __slots__ = ("_driver_error", "_translate")

    def __init__(
        self, driver_error: type[Exception], translate: Callable[[Exception], ParticipantError]
    ) -> None:
        self._driver_error = driver_error
        self._translate = translate

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, err: BaseException | None, trace: object) -> None:
        if isinstance(err, self._driver_error):
            raise self._translate(err) from err


def shut_down_socket(fd: int) -> None:
    """Shut a connected socket down in both directions: a thread blocked reading it wakes."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing is blocked on it
