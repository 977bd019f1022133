"""The one small interface every resource manager adapter implements.

Policy lives in the coordinator; a participant only speaks its server's SQL. The lifecycle
of a branch is an explicit state machine held in one field, and every illegal call raises a
:class:`BranchStateError` that names the current state.

::

    ACTIVE ──prepare()──▶ PREPARED ──commit()──▶ COMMITTED
      │  ╲                    └──────rollback()──▶ ROLLED_BACK
      │   ╲──prepare() with no writes──▶ READ_ONLY (finished, left out of phase 2)
      ├──commit_one_phase()──▶ COMMITTED
      └──rollback() / a refused prepare──▶ ROLLED_BACK
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from twopc.participants.errors import (
    BranchStateError,
    MisconfiguredServer,
    ParticipantError,
    PrepareRefused,
    StatementFailed,
)
from twopc.participants.lockwaits import LockWait
from twopc.participants.urls import DatabaseURL
from twopc.participants.xid import Xid

OUTCOMES_TABLE = "twopc_outcomes"
#: The longest lock wait or I/O timeout a participant accepts (PostgreSQL's lock_timeout is
#: an int of milliseconds: about 24.8 days).
MAX_SECONDS = 2_000_000.0
#: Idle connections a participant keeps for reuse (more are closed when given back).
MAX_IDLE_CONNECTIONS = 16
# Every branch inserts its outcome marker just before it prepares, inside the branch: a
# committed branch has its marker, a rolled-back one has none. That settles "unknown xid".
MARKER_INSERT = "INSERT INTO twopc_outcomes (gtrid, branch, created_at) VALUES (%s, %s, %s)"
_MARKER_BATCH = 500  # gtrids per marker query
_MARKER_SELECT = "SELECT 1 FROM twopc_outcomes WHERE gtrid = %s AND branch = %s"
_OUTCOMES_COLUMNS = (
    "gtrid VARCHAR(64) NOT NULL, branch VARCHAR(64) NOT NULL, "
    "created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (gtrid, branch)"
)


class Cursor(Protocol):
    """The part of a DB-API cursor that callers of :meth:`Branch.execute` may use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


class BranchState(enum.Enum):
    ACTIVE = "active"
    PREPARED = "prepared"
    READ_ONLY = "read-only"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"


class Vote(enum.Enum):
    """A branch's answer in phase 1 (a NO vote is the :class:`PrepareRefused` error)."""

    PREPARED = "prepared"
    READ_ONLY = "read-only"


@dataclass(frozen=True)
class PreparedBranch:
    """One prepared branch a server reports. ``xid`` is None when the name is not xid-shaped."""

    server: str
    name: str
    xid: Xid | None
    prepared_at: float | None
    database: str | None = None


class Branch(ABC):
    """One participant's branch of a global transaction, bound to one open connection.

    Public methods check and advance the state; subclasses implement the ``_sql_*`` hooks in
    their server's dialect.
    """

    def __init__(self, participant: Participant, xid: Xid) -> None:
        self.xid = xid
        self.state = BranchState.ACTIVE
        self._participant = participant
        self._noticed = False
        # The connection may serve again only when this branch finished on it normally and
        # nothing ever cancelled a statement on it or cut its socket.
        self._finished_cleanly = False
        self._disturbed = False

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor:
        """Run one statement inside the branch (``%s`` placeholders, values bound).

        A statement that waits for a lock longer than the participant's ``notice_after``
        reports, once, what it waits for to the participant's ``on_lock_wait`` callback.
        """
        self._require("execute", BranchState.ACTIVE)
        if self._participant.on_lock_wait is None or self._noticed:
            return self._sql_execute(query, params)
        timer = threading.Timer(self._participant.notice_after, self._notice_lock_wait)
        timer.daemon = True
        timer.start()
        try:
            return self._sql_execute(query, params)
        finally:
            timer.cancel()

    @property
    @abstractmethod
    def session_id(self) -> int:
        """The server's id of this branch's session (PostgreSQL pid, MySQL thread id)."""

    def _notice_lock_wait(self) -> None:
        """Runs on a timer thread while a statement waits: ask the server what blocks it."""
        try:
            waits = self._participant.waits_of(self.session_id)
        except ParticipantError:
            return
        callback = self._participant.on_lock_wait
        if waits and callback is not None and not self._noticed:
            self._noticed = True
            callback(self._participant, waits)

    def prepare(self) -> Vote:
        """Phase 1. Returns the vote; raises :class:`PrepareRefused` for a NO vote."""
        self._require("prepare", BranchState.ACTIVE)
        try:
            vote = self._sql_prepare()
        except (PrepareRefused, MisconfiguredServer):
            self.state = BranchState.ROLLED_BACK  # a NO vote leaves nothing behind
            raise
        self.state = BranchState.PREPARED if vote is Vote.PREPARED else BranchState.READ_ONLY
        return vote

    def commit(self) -> None:
        """Phase 2 commit on this branch's own connection."""
        self._require("commit", BranchState.PREPARED)
        self._sql_commit_prepared()
        self.state = BranchState.COMMITTED
        self._finished_cleanly = True

    def commit_one_phase(self) -> None:
        """Commit without phase 1: only for a transaction with this single branch."""
        self._require("commit in one phase", BranchState.ACTIVE)
        self._sql_commit_one_phase()
        self.state = BranchState.COMMITTED
        self._finished_cleanly = True

    def rollback(self) -> None:
        """Roll back an active or prepared branch; harmless when already finished."""
        if self.state in (BranchState.ACTIVE, BranchState.PREPARED):
            self._sql_rollback(prepared=self.state is BranchState.PREPARED)
            self.state = BranchState.ROLLED_BACK
            self._finished_cleanly = True

    def _write_marker(self) -> None:
        """Insert this branch's outcome marker (called by ``_sql_prepare`` before preparing)."""
        self._sql_execute(MARKER_INSERT, (self.xid.gtrid, self.xid.bqual, time.time()))

    def mark_finished(self, state: BranchState) -> None:
        """Record an outcome reached from another connection (recovery of this branch)."""
        self.state = state

    def close(self) -> None:
        """Let the connection go: back to the participant's idle connections when this
        branch finished on it normally, else closed (the server rolls back an unprepared
        branch when its session ends)."""
        if self._finished_cleanly and not self._disturbed:
            self._participant.release(self._connection)
        else:
            self._participant.discard(self._connection)

    def interrupt(self) -> None:
        """Ask the server, from another thread, to cancel the statement running on this
        branch's connection (which is then never reused)."""
        self._disturbed = True
        self._sql_interrupt()

    def sever(self) -> None:
        """Shut this branch's socket down from another thread: a statement blocked on it
        fails even when the server does not answer."""
        self._disturbed = True
        self._sql_sever()

    @property
    @abstractmethod
    def _connection(self) -> Any: ...

    @abstractmethod
    def _sql_interrupt(self) -> None: ...

    @abstractmethod
    def _sql_sever(self) -> None: ...

    def _require(self, action: str, *allowed: BranchState) -> None:
        if self.state not in allowed:
            raise BranchStateError(f"can't {action} branch {self.xid}: it is {self.state.value}")

    @abstractmethod
    def _sql_execute(self, query: str, params: Sequence[Any] | None) -> Cursor: ...

    @abstractmethod
    def _sql_prepare(self) -> Vote: ...

    @abstractmethod
    def _sql_commit_prepared(self) -> None: ...

    @abstractmethod
    def _sql_commit_one_phase(self) -> None: ...

    @abstractmethod
    def _sql_rollback(self, *, prepared: bool) -> None: ...


class Participant(ABC):
    """A resource manager (one database) that can hold branches of global transactions.

    ``name`` is the branch qualifier (bqual) of every branch it holds.
    """

    def __init__(
        self, name: str, url: DatabaseURL, *, lock_wait: float = 30.0, io_timeout: float = 30.0
    ) -> None:
        # PostgreSQL reads a lock_timeout of 0 as "wait forever"; nan and inf bound nothing.
        if not 0 < lock_wait < MAX_SECONDS:
            raise ValueError(f"lock_wait must be a positive number of seconds, got {lock_wait!r}")
        if not 0 < io_timeout < MAX_SECONDS:
            raise ValueError(f"io_timeout must be a positive number of seconds, got {io_timeout!r}")
        self.name = name
        self.url = url
        self.lock_wait = lock_wait
        self.io_timeout = io_timeout
        self._ready = False  # check_ready passed once
        self._idle: list[Any] = []  # connections a finished branch or transaction gave back
        self._idle_lock = threading.Lock()
        # Told, once per branch, when a statement has waited ``notice_after`` seconds for a
        # lock held by a prepared branch (the CLI prints who blocks it and how to resolve it).
        self.on_lock_wait: Callable[[Participant, list[LockWait]], None] | None = None
        self.notice_after = 1.0

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

    @abstractmethod
    def connect(self) -> Any:
        """A new autocommit driver connection (psycopg or PyMySQL) with this participant's
        settings; the caller closes it."""

    def checkout(self) -> Any:
        """A connection for a branch or a local transaction: an idle one that still answers
        (and is in no transaction), else a new one."""
        while True:
            with self._idle_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect()
            if self._still_usable(conn):
                return conn
            self.discard(conn)

    def release(self, conn: Any) -> None:
        """Keep a connection whose work ended normally for the next :meth:`checkout`."""
        with self._idle_lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        self.discard(conn)

    @staticmethod
    def discard(conn: Any) -> None:
        """Close a connection, whatever state it is in."""
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close the idle connections (a participant stays usable: it opens new ones)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self.discard(conn)

    @abstractmethod
    def _still_usable(self, conn: Any) -> bool:
        """Whether an idle connection is open, in no transaction, and answers a ping."""

    @abstractmethod
    def begin(self, xid: Xid) -> Branch:
        """Start a branch of the global transaction ``xid`` on a connection of its own."""

    @abstractmethod
    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        """Commit or roll back a prepared branch from a fresh connection.

        Raises :class:`UnknownXid` when the server holds no such prepared branch, and
        :class:`BranchBusy` when it holds it but cannot finish it yet.
        """

    @abstractmethod
    def prepared_branches(self) -> list[PreparedBranch]:
        """Every prepared branch on the server (ours and foreign) in this database."""

    @abstractmethod
    def lock_waits(self) -> list[LockWait]:
        """Every session waiting on a lock held by a prepared branch on this server."""

    @abstractmethod
    def waits_of(self, session_id: int) -> list[LockWait]:
        """The prepared branches the session ``session_id`` is waiting for."""

    def check_ready(self) -> None:
        """Raise :class:`MisconfiguredServer` when the server cannot run 2PC branches (and
        :class:`ParticipantUnavailable` when it does not answer). Checked once: a server
        lost later fails the next branch's own connect, before anything is prepared."""
        if not self._ready:
            self._check_server()
            self._ready = True

    @abstractmethod
    def _check_server(self) -> None: ...

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

    outcomes_table_options = ""

    def ensure_outcome_table(self) -> None:
        """Create the outcome-marker table if it is missing (idempotent, outside any branch).

        Looks first, so an application user without CREATE rights works once the table is
        there (PostgreSQL checks the schema privilege even for ``IF NOT EXISTS``).
        """
        if self._outcome_table_exists():
            return
        ddl = f"CREATE TABLE IF NOT EXISTS {OUTCOMES_TABLE} ({_OUTCOMES_COLUMNS})"
        try:
            with self.local_transaction() as local:
                local.execute(ddl + self.outcomes_table_options)
        except StatementFailed:
            # Two first transactions at once: PostgreSQL's IF NOT EXISTS is not atomic and
            # the loser fails in its catalog (a duplicate pg_type row). The table is there.
            if not self._outcome_table_exists():
                raise

    def _outcome_table_exists(self) -> bool:
        try:
            with self.local_transaction() as local:
                local.execute(f"SELECT 1 FROM {OUTCOMES_TABLE} WHERE 1 = 0")
        except StatementFailed:
            return False
        return True

    def has_marker(self, xid: Xid) -> bool:
        """Whether the branch ``xid`` committed: its marker is visible to a new transaction."""
        with self.local_transaction() as local:
            return local.execute(_MARKER_SELECT, (xid.gtrid, xid.bqual)).fetchone() is not None

    def committed_markers(self, gtrids: Sequence[str]) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every branch of ``gtrids`` that committed here: its marker is
        visible (a prepared or rolled-back branch's marker is not)."""
        found: set[tuple[str, str]] = set()
        unique = sorted(set(gtrids))
        for start in range(0, len(unique), _MARKER_BATCH):
            batch = unique[start : start + _MARKER_BATCH]
            placeholders = ", ".join(["%s"] * len(batch))  # placeholders only; values are bound
            query = f"SELECT gtrid, branch FROM {OUTCOMES_TABLE} WHERE gtrid IN ({placeholders})"
            with self.local_transaction() as local:
                found.update((str(g), str(b)) for g, b in local.execute(query, batch).fetchall())
        return found

    def markers_of_coordinator(self, coordinator: str) -> set[tuple[str, str]]:
        """``(gtrid, bqual)`` of every committed marker whose gtrid ``coordinator`` minted
        (``<coordinator>.<random>``), compared case-sensitively whatever the collation."""
        prefix = coordinator + "."
        pattern = "".join("!" + c if c in "!%_" else c for c in prefix) + "%"
        query = f"SELECT gtrid, branch FROM {OUTCOMES_TABLE} WHERE gtrid LIKE %s ESCAPE '!'"
        with self.local_transaction() as local:
            rows = local.execute(query, (pattern,)).fetchall()
        return {(str(g), str(b)) for g, b in rows if str(g).startswith(prefix)}

    def forget_markers(self, gtrids: Sequence[str]) -> None:
        """Delete the markers of ended transactions (their END record is durable)."""
        if not gtrids:
            return
        placeholders = ", ".join(["%s"] * len(gtrids))  # placeholders only; values are bound
        with self.local_transaction() as local:
            local.execute(f"DELETE FROM {OUTCOMES_TABLE} WHERE gtrid IN ({placeholders})", gtrids)


class LocalTransaction(ABC):
    """A plain (one-phase) transaction on one participant's connection."""

    def __init__(self, participant: Participant, conn: Any) -> None:
        self._participant = participant
        self._conn = conn
        self._committed = False

    @abstractmethod
    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor: ...

    def commit(self) -> None:
        self._sql_commit()
        self._committed = True

    def close(self) -> None:
        """Give a committed transaction's connection back for reuse; close any other (the
        server rolls back what was not committed)."""
        if self._committed:
            self._participant.release(self._conn)
        else:
            self._participant.discard(self._conn)

    @abstractmethod
    def _sql_commit(self) -> None: ...


@contextmanager
def translated_errors(
    driver_error: type[Exception], translate: Callable[[Exception], ParticipantError]
) -> Iterator[None]:
    """Re-raise a driver error as the participant error ``translate`` makes of it, chained."""
    try:
        yield
    except driver_error as err:
        raise translate(err) from err


def shut_down_socket(fd: int) -> None:
    """Shut a connected socket down in both directions: a thread blocked reading it wakes."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing is blocked on it
