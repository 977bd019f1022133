"""What runs on one connection: a branch of a global transaction, or a plain local transaction.

The lifecycle of a branch is an explicit state machine held in one field, and every illegal
call raises a :class:`BranchStateError` that names the current state.

::

    ACTIVE ──prepare()──▶ PREPARED ──commit()──▶ COMMITTED
      │  ╲                    └──────rollback()──▶ ROLLED_BACK
      │   ╲──prepare() with no writes──▶ READ_ONLY (finished, left out of phase 2)
      ├──commit_one_phase()──▶ COMMITTED
      └──rollback() / a refused prepare──▶ ROLLED_BACK

A branch that ``overlaps`` can split a phase in two: :meth:`Branch.request_prepare` /
:meth:`Branch.request_commit` send the request and return at once, and the next
:meth:`Branch.prepare` / :meth:`Branch.commit` reads the reply (bounded, like every call, by
the participant's statement limit; a caller with a tighter deadline interrupts it, then severs
it, from another thread). The coordinator sends every branch's request before it waits for
any reply, so the servers work on one phase at the same time without a thread per branch.
While a reply is awaited the connection carries nothing else: a rollback then closes it
instead (the server rolls back an unprepared branch when its session ends; a prepared one is
finished by xid).

A :class:`BranchProtocol` is a participant's branch role: it opens branches and finishes
prepared ones from fresh connections. Each server implements it in its own module.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from twopc.participants.errors import (
    BranchStateError,
    LockBusy,
    MisconfiguredServer,
    ParticipantError,
    ParticipantUnavailable,
    PrepareRefused,
    StatementFailed,
)
from twopc.participants.pool import ConnectionPool
from twopc.participants.xid import Xid

_R = TypeVar("_R")
#: A statement and its values.
Statement = tuple[str, "Sequence[Any] | None"]
#: Errors after which a last statement's branch is rolled back by its subclass.
_SETTLED_LAST = (PrepareRefused, MisconfiguredServer, StatementFailed)
_UNWATCHED = nullcontext()  # no lock-wait notice wanted (reusable)

if TYPE_CHECKING:  # a branch reports to its participant, which opens branches
    from twopc.participants.base import Participant


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
    their server's dialect: for the phases, ``_sql_prepare`` / ``_sql_commit_prepared``,
    or, when they ``overlaps``, the ``_sql_send_*`` / ``_sql_receive_*`` pairs instead.
    """

    #: Whether ``execute(..., last=True)`` sends the branch's prepare with its statement.
    #: A coordinator turns it off for a transaction whose hooks watch phase 1 (so the
    #: branches are prepared there, one after the other, as the hooks expect).
    prepares_early: bool = False

    #: Whether a phase's request can be sent alone and its reply read later (see the
    #: module's docstring). The coordinator runs a branch that cannot on a
    #: protocol worker of its own.
    overlaps: ClassVar[bool] = False

    #: Whether :meth:`request_execute` can send a statement that does not wait for locks.
    refuses_lock_waits: ClassVar[bool] = False

    def __init__(self, participant: Participant, xid: Xid) -> None:
        self.xid = xid
        self.state = BranchState.ACTIVE
        self._participant = participant
        self._noticed = False
        # The connection may serve again only when this branch finished on it normally and
        # nothing ever cancelled a statement on it or cut its socket.
        self._finished_cleanly = False
        self._disturbed = False
        self._verified = True  # the server was heard on the connection when it was lent
        self._awaiting: str | None = None  # the phase whose request is sent, reply unread
        self._unsent: Exception | None = None  # why that request could not be sent
        self._touched = False  # a statement was sent in the branch
        # The last statements sent, wait_for_locks, and whether they began the branch.
        self._last: tuple[list[Statement], bool, bool] | None = None

    def execute(
        self, query: str, params: Sequence[Any] | None = None, *, last: bool = False
    ) -> Cursor:
        """Run one statement inside the branch (``%s`` placeholders, values bound).

        With ``last``, no statement follows this one in the branch, so its prepare (phase 1:
        outcome marker, ``PREPARE TRANSACTION`` / ``XA END`` + ``XA PREPARE``) travels with it
        in the same round trip, and the branch leaves it PREPARED (or READ_ONLY): the
        transaction's commit finds its vote already cast. If the statement fails, its error
        is raised and the branch is rolled back; if the prepare fails, :class:`PrepareRefused`.
        A branch that cannot (``prepares_early`` False) runs the statement alone.

        A statement that waits for a lock longer than the participant's ``notice_after``
        reports, once, what it waits for to the participant's ``on_lock_wait`` callback.
        """
        self._require("execute", BranchState.ACTIVE)
        if last and self.prepares_early:
            self.request_execute([(query, params)])
            return self.execute_reply()[0]
        self._touched = True
        with self._watching_lock_waits():
            return self._sql_execute(query, params)

    def request_execute(
        self, statements: Sequence[Statement], *, wait_for_locks: bool = True
    ) -> None:
        """Send ``statements`` (each a query and its values) as the branch's last ones, the
        prepare with them, all in one request, and return without the reply, which
        :meth:`execute_reply` reads: several branches' servers then run their last statements
        at the same time (branches that overlap and prepare early only).

        With ``wait_for_locks`` False (``refuses_lock_waits`` branches only) the statements
        do not wait for a row lock another transaction holds: the reply is then
        :class:`LockBusy`, with the branch rolled back.
        """
        self._require("execute", BranchState.ACTIVE)
        if not (self.overlaps and self.prepares_early):
            raise BranchStateError(f"can't send the last statements of branch {self.xid} alone")
        if not wait_for_locks and not self.refuses_lock_waits:
            raise BranchStateError(f"branch {self.xid} cannot refuse to wait for locks")
        if not statements:
            raise ValueError(f"no last statement for branch {self.xid}")
        sent = list(statements)
        self._last = (sent, wait_for_locks, not self._touched)
        self._touched = True
        self._request("execute", lambda: self._sql_send_last(sent, wait_for_locks))

    def execute_reply(self) -> list[Cursor]:
        """The reply to :meth:`request_execute`: a cursor per statement, with the branch
        PREPARED (or READ_ONLY); or a statement's own error (:class:`LockBusy` included; its
        ``statement`` says which one) or :class:`PrepareRefused`, with the branch rolled back.
        Any other error closes the connection: the server may have prepared the branch, so a
        rollback looks it up."""
        if self._awaiting != "execute" or self._last is None:
            raise BranchStateError(f"branch {self.xid} has no last statement to read")
        sent, wait_for_locks, first = self._last
        self._last = None
        try:
            with self._watching_lock_waits():
                try:
                    cursors, vote = self._reply(self._sql_receive_last, _SETTLED_LAST)
                except ParticipantUnavailable:
                    if not first or self._verified:
                        raise
                    # Dead in the pool (see _first_request): nothing was done on it. Again,
                    # on a connection the server was just heard on.
                    self._use(*self._participant.take(trust_recent=False))
                    self._disturbed = False
                    self._request("execute", lambda: self._sql_send_last(sent, wait_for_locks))
                    cursors, vote = self._reply(self._sql_receive_last, _SETTLED_LAST)
        except (PrepareRefused, MisconfiguredServer, StatementFailed):
            self.state = BranchState.ROLLED_BACK  # the subclass rolled it back
            raise
        self._voted(vote)
        return cursors

    def _watching_lock_waits(self) -> AbstractContextManager[object]:
        participant = self._participant
        if participant.on_lock_wait is None or self._noticed:
            return _UNWATCHED
        return participant.watchdog.watching(participant.notice_after, self._notice_lock_wait)

    @property
    def untouched(self) -> bool:
        """Whether no statement was sent in this branch yet (it is not begun on its server)."""
        return not self._touched

    @property
    @abstractmethod
    def session_id(self) -> int:
        """The server's id of this branch's session (PostgreSQL pid, MySQL thread id)."""

    def _notice_lock_wait(self) -> None:
        """Runs on the participant's watchdog thread while a statement still runs: ask the
        server what blocks it."""
        try:
            waits = self._participant.waits_of(self.session_id)
        except ParticipantError:
            return
        callback = self._participant.on_lock_wait
        if waits and callback is not None and not self._noticed:
            self._noticed = True
            callback(self._participant, waits)

    def request_prepare(self) -> None:
        """Send phase 1's request and return without its reply (``overlaps`` branches
        only); :meth:`prepare` reads it. A failure to send is raised by that :meth:`prepare`."""
        self._require("prepare", BranchState.ACTIVE)
        self._request("prepare", self._sql_send_prepare)

    def prepare(self) -> Vote:
        """Phase 1. Returns the vote; raises :class:`PrepareRefused` for a NO vote. It reads
        the reply to :meth:`request_prepare` (a branch that overlaps sends that request
        first if it was not sent yet)."""
        self._require("prepare", BranchState.ACTIVE)
        try:
            if not self.overlaps:
                vote = self._sql_prepare()
            else:
                if self._awaiting is None:
                    self._request("prepare", self._sql_send_prepare)
                vote = self._reply(self._sql_receive_prepare)
        except (PrepareRefused, MisconfiguredServer):
            self.state = BranchState.ROLLED_BACK  # a NO vote leaves nothing behind
            raise
        self._voted(vote)
        return vote

    def _voted(self, vote: Vote) -> None:
        self.state = BranchState.PREPARED if vote is Vote.PREPARED else BranchState.READ_ONLY

    def request_commit(self) -> None:
        """Send phase 2's commit and return without its reply (``overlaps`` branches only);
        :meth:`commit` reads it. A failure to send is raised by that :meth:`commit`."""
        self._require("commit", BranchState.PREPARED)
        self._request("commit", self._sql_send_commit)

    def commit(self) -> None:
        """Phase 2 commit on this branch's own connection: it reads the reply to
        :meth:`request_commit` (a branch that overlaps sends that request first if it was
        not sent yet)."""
        self._require("commit", BranchState.PREPARED)
        if not self.overlaps:
            self._sql_commit_prepared()
        else:
            if self._awaiting is None:
                self._request("commit", self._sql_send_commit)
            self._reply(self._sql_receive_commit)
        self.state = BranchState.COMMITTED
        self._finished_cleanly = True

    def _request(self, phase: str, send: Callable[[], None]) -> None:
        if not self.overlaps or self._awaiting is not None:
            why = "it cannot overlap" if not self.overlaps else f"{self._awaiting} is awaited"
            raise BranchStateError(f"can't send {phase} of branch {self.xid}: {why}")
        self._awaiting = phase
        try:
            send()
        except Exception as err:  # kept for the reply's reader: one place sees every error
            self._unsent = err
            self._disturbed = True

    @property
    def awaiting(self) -> bool:
        """Whether a request was sent whose reply is not read yet."""
        return self._awaiting is not None

    def _reply(
        self,
        receive: Callable[[], _R],
        settled: tuple[type[Exception], ...] = (PrepareRefused, MisconfiguredServer),
    ) -> _R:
        try:
            if self._unsent is not None:
                raise self._unsent
            return receive()
        except settled as err:
            # A NO vote or a failed statement: the subclass rolled back. Never lend the
            # connection again, unless the statement only found its row locked.
            self._disturbed = self._disturbed or not isinstance(err, LockBusy)
            raise
        except BaseException:
            # Unread, or not understood: what the server did is unknown, so the link goes,
            # and rolling back (or finishing) the branch must look it up by xid.
            self._lose_connection()
            raise
        finally:
            self._awaiting, self._unsent = None, None

    def _first_request(self, send: Callable[[], _R]) -> _R:
        """``send`` as the branch's first request. On a connection lent without a check (see
        :meth:`ConnectionPool.take`), a lost link there means it was dead in the pool, nothing
        done on it: it is replaced by a verified one and ``send`` called again (a prepare the
        first attempt did get to the server would make the second fail: one xid, one branch)."""
        try:
            return send()
        except ParticipantUnavailable:
            if self._verified:
                self._disturbed = True  # never lent again
                raise
        self._participant.discard(self._connection)
        self._use(*self._participant.take(trust_recent=False))
        try:
            return send()
        except ParticipantUnavailable:
            self._disturbed = True
            raise

    def _lose_connection(self) -> None:
        self._disturbed = True
        self._participant.discard(self._connection)

    def commit_one_phase(self) -> None:
        """Commit without phase 1: only for a transaction with this single branch."""
        self._require("commit in one phase", BranchState.ACTIVE)
        self._sql_commit_one_phase()
        self.state = BranchState.COMMITTED
        self._finished_cleanly = True

    def rollback(self) -> None:
        """Roll back an active or prepared branch; harmless when already finished.

        While a reply is awaited (the reader was interrupted) nothing more may be sent on the
        connection: it is closed, and :class:`ParticipantUnavailable` says the branch must be
        looked for (and finished by xid) from another connection.
        """
        if self._awaiting is not None:
            self._lose_connection()
            raise ParticipantUnavailable(
                f"branch {self.xid}: its {self._awaiting} reply was never read; connection closed"
            )
        if self.state in (BranchState.ACTIVE, BranchState.PREPARED):
            self._sql_rollback(prepared=self.state is BranchState.PREPARED)
            self.state = BranchState.ROLLED_BACK
            self._finished_cleanly = True

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

    def _use(self, conn: Any, verified: bool) -> None:
        """Carry on on ``conn`` (see :meth:`_first_request`)."""
        raise NotImplementedError

    @abstractmethod
    def _sql_interrupt(self) -> None: ...

    @abstractmethod
    def _sql_sever(self) -> None: ...

    def _require(self, action: str, *allowed: BranchState) -> None:
        if self.state not in allowed:
            raise BranchStateError(f"can't {action} branch {self.xid}: it is {self.state.value}")

    @abstractmethod
    def _sql_execute(self, query: str, params: Sequence[Any] | None) -> Cursor: ...

    # Only for branches that do not overlap: a phase in one call.

    def _sql_prepare(self) -> Vote:
        raise NotImplementedError

    def _sql_commit_prepared(self) -> None:
        raise NotImplementedError

    def _sql_send_last(self, statements: list[Statement], wait_for_locks: bool) -> None:
        """Send [the begin,] the statements, the marker and the prepare in one request (for
        ``wait_for_locks`` False, with the statements told not to wait for row locks)."""
        raise NotImplementedError

    def _sql_receive_last(self) -> tuple[list[Cursor], Vote]:
        """Its reply: a cursor per statement, and the vote. A failed statement raises its
        (typed) error, with ``statement`` set to its index, and a failed prepare
        :class:`PrepareRefused`, each after rolling the branch back; a lost link raises
        :class:`ParticipantUnavailable` (what the server did is then looked up)."""
        raise NotImplementedError

    # Only for branches that overlap: a phase's request, and the reading of its reply.

    def _sql_send_prepare(self) -> None:
        raise NotImplementedError

    def _sql_receive_prepare(self) -> Vote:
        raise NotImplementedError

    def _sql_send_commit(self) -> None:
        raise NotImplementedError

    def _sql_receive_commit(self) -> None:
        raise NotImplementedError

    @abstractmethod
    def _sql_commit_one_phase(self) -> None: ...

    @abstractmethod
    def _sql_rollback(self, *, prepared: bool) -> None: ...


def finished_or_error(
    finish: Callable[..., None], xid: Xid, commit: bool
) -> ParticipantError | None:
    """``finish(xid, commit=commit)``: None when it returned, else the participant error it
    raised (any other exception propagates)."""
    try:
        finish(xid, commit=commit)
    except ParticipantError as err:
        return err
    return None


class BranchProtocol(ABC):
    """A participant's branch role: opens branches, lists and finishes prepared ones."""

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
        """:meth:`finish_prepared` of each of ``xids``, in as few requests as the server
        allows; in order, None for each finished, else the error it raised for it."""
        return [finished_or_error(self.finish_prepared, xid, commit) for xid in xids]

    @abstractmethod
    def prepared_branches(self) -> list[PreparedBranch]:
        """Every prepared branch on the server (ours and foreign) in this database."""

    @abstractmethod
    def prepared_elsewhere(self) -> set[str]:
        """Gtrids of our branches prepared on this server by other participants (other
        databases, other bquals): seen, never acted on."""

    def prepared_xids(self) -> set[Xid]:
        """Our branches prepared in this database under this participant: a quick look
        (what :meth:`prepared_branches` lists, without the details)."""
        return {b.xid for b in self.prepared_branches() if b.xid is not None and b.xid.is_ours}

    @abstractmethod
    def stop_requests(self, prefixes: Collection[str]) -> set[str]:
        """End the sessions still running a request that carries the prepare of a branch
        whose gtrid starts with one of ``prefixes``, and wait until they are gone; the gtrids
        those requests named (see :mod:`twopc.participants.requests`)."""

    @abstractmethod
    def check_server(self) -> None:
        """Raise :class:`MisconfiguredServer` when the server cannot run 2PC branches (and
        :class:`ParticipantUnavailable` when it does not answer)."""


class LocalTransaction(ABC):
    """A plain (one-phase) transaction on a connection of a participant's pool."""

    def __init__(self, pool: ConnectionPool, conn: Any) -> None:
        self._pool = pool
        self._conn = conn
        self._committed = False

    @abstractmethod
    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor: ...

    def execute_each(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """``query`` once per row of values, in order (a server may send them together)."""
        for row in rows:
            self.execute(query, row)

    def commit(self) -> None:
        self._sql_commit()
        self._committed = True

    def close(self) -> None:
        """Give a committed transaction's connection back for reuse; close any other (the
        server rolls back what was not committed)."""
        if self._committed:
            self._pool.release(self._conn)
        else:
            self._pool.discard(self._conn)

    @abstractmethod
    def _sql_commit(self) -> None: ...
