"""MySQL/MariaDB's branch protocol: raw ``XA`` statements over PyMySQL (which has no XA API).

Every xid reaches SQL through :meth:`Xid.mysql_literal` (hex literals, valid on both servers).
``XA RECOVER`` is read in its plain four-column form, which MySQL 8 and MariaDB share.

A branch overlaps (see :mod:`twopc.participants.branch`): a phase's request is written with
PyMySQL's own command writer and its reply read later with its own result reader. Those two
are PyMySQL internals (it has no API to split a query), the same ones ``Cursor.execute``
calls back to back.

MariaDB refuses ``XA COMMIT`` from another session (XAER_NOTA, 1397) while the session that
prepared the branch is still connected. So "unknown xid" is only taken to mean "finished" when
``XA RECOVER`` no longer lists the branch; otherwise it is :class:`BranchBusy` ("not yet").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import pymysql
from pymysql.constants import COMMAND

from twopc.participants.base import Participant, shut_down_socket
from twopc.participants.branch import (
    Branch,
    BranchProtocol,
    Cursor,
    PreparedBranch,
    Statement,
    Vote,
)
from twopc.participants.errors import (
    BranchBusy,
    BranchStateError,
    ParticipantError,
    PrepareRefused,
    StatementFailed,
    UnknownXid,
)
from twopc.participants.markers import OutcomeMarkers
from twopc.participants.mysql_link import MySQLLink, Together
from twopc.participants.requests import requests_of, wait_until_gone
from twopc.participants.xid import Xid

_XAER_NOTA = 1397
_NO_SUCH_THREAD = 1094
# XA RECOVER has no timestamp, and the markers of prepared branches are uncommitted: only a
# dirty read sees when each was written.
_MARKER_TIMES = "SELECT gtrid, branch, created_at FROM twopc_outcomes WHERE gtrid IN ({})"

MySQLConnection = Any  # PyMySQL ships no type information

# Sessions running something (see participants.requests); of a multi-statement request the
# process list shows only the statement running now.
_RUNNING_SQL = (
    "SELECT ID, INFO FROM information_schema.PROCESSLIST "
    "WHERE ID <> CONNECTION_ID() AND INFO IS NOT NULL"
)


def _still_there(cursor: Any, sessions: list[int]) -> set[int]:
    marks = ", ".join(["%s"] * len(sessions))
    cursor.execute(f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({marks})", sessions)
    return {int(session) for (session,) in cursor.fetchall()}


class MySQLBranches(BranchProtocol):
    """Branches of global transactions in one MySQL/MariaDB database."""

    def __init__(self, participant: Participant, link: MySQLLink, markers: OutcomeMarkers):
        self._participant = participant  # lends the connections; its branches report to it
        self.link = link
        self.markers = markers

    def begin(self, xid: Xid) -> MySQLBranch:
        """A branch on a pooled connection; ``XA START`` goes with its first statement."""
        conn, verified = self._participant.take(trust_recent=True)
        return MySQLBranch(self._participant, self, conn, xid, verified=verified)

    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        self._participant.redoable(lambda conn: self.finish_on(conn, xid, commit=commit))

    def finish_on(self, conn: MySQLConnection, xid: Xid, *, commit: bool) -> None:
        """``XA COMMIT`` / ``XA ROLLBACK`` of a prepared branch."""
        verb = "XA COMMIT" if commit else "XA ROLLBACK"
        try:
            with self.link.translated(verb.lower()):
                conn.cursor().execute(f"{verb} {xid.mysql_literal()}")
        except StatementFailed as err:
            raise self.unknown_or(err, xid) from err

    def finish_prepared_many(
        self, xids: Sequence[Xid], *, commit: bool
    ) -> list[ParticipantError | None]:
        """``XA COMMIT`` / ``XA ROLLBACK`` of each, as many as are left in one request
        (multi-statements). The server stops at a statement that fails: the branches before
        it are finished, its own error is read as :meth:`finish_on` reads it, and the ones
        after go in the next request."""
        outcomes: list[ParticipantError | None] = []
        while len(outcomes) < len(xids):
            rest = xids[len(outcomes) :]
            try:
                self._participant.redoable(partial(self._finish_all_on, xids=rest, commit=commit))
                outcomes += [None] * len(rest)
            except _StoppedAt as stop:
                outcomes += [None] * stop.done
                outcomes.append(self.unknown_or(stop.error, rest[stop.done]))
            except ParticipantError as err:  # no answer at all: none of them is known done
                outcomes += [err] * len(rest)
        return outcomes

    def _finish_all_on(self, conn: MySQLConnection, *, xids: Sequence[Xid], commit: bool) -> None:
        verb = "XA COMMIT" if commit else "XA ROLLBACK"
        together = Together(f"{verb} {xid.mysql_literal()}" for xid in xids)
        try:
            with self.link.translated(verb.lower()):
                together.run(conn.cursor())
        except StatementFailed as err:
            raise _StoppedAt(together.done, err) from err

    def unknown_or(self, err: StatementFailed, xid: Xid) -> ParticipantError:
        """What a failed ``XA COMMIT/ROLLBACK`` of ``xid`` means: held by a live session
        (:class:`BranchBusy`), no such branch (:class:`UnknownXid`), or ``err`` itself."""
        if err.code != str(_XAER_NOTA):
            return err
        if any(branch.xid == xid for branch in self.prepared_branches()):
            return BranchBusy(
                f"{self.link.server}: branch {xid} is prepared but held by a live session"
            )
        return UnknownXid(f"{self.link.server}: no prepared branch {xid}")

    def prepared_branches(self) -> list[PreparedBranch]:
        """This participant's prepared branches (bqual: its name) and foreign ones.

        ``XA RECOVER`` is server-wide and does not say which database a branch wrote to:
        another participant's branch on the same server (another database) is left out
        here, so it is never finished through this participant's connection.
        """
        # A connection of its own, never pooled: reading the markers' times switches its
        # session to READ UNCOMMITTED, which no other work may inherit.
        conn = self.link.connect()
        try:
            listed = self._xa_recover(conn)
            name = self._participant.name
            branches = [
                b for b in listed if b.xid is None or b.xid.bqual == name or not b.xid.is_ours
            ]
            times = self._marker_times(conn, [b.xid for b in branches if b.xid is not None])
        finally:
            conn.close()
        return [replace(b, prepared_at=times.get(b.xid)) if b.xid else b for b in branches]

    def prepared_xids(self) -> set[Xid]:
        return {x for x in self._ours_on_server() if x.bqual == self._participant.name}

    def prepared_elsewhere(self) -> set[str]:
        return {x.gtrid for x in self._ours_on_server() if x.bqual != self._participant.name}

    def _ours_on_server(self) -> list[Xid]:
        """Our prepared branches on the whole server, from a connection of its own."""
        conn = self.link.connect()
        try:
            listed = self._xa_recover(conn)
        finally:
            conn.close()
        return [b.xid for b in listed if b.xid is not None and b.xid.is_ours]

    def _xa_recover(self, conn: Any) -> list[PreparedBranch]:
        """Every prepared branch on the server (``XA RECOVER`` is server-wide)."""
        with self.link.translated("xa recover"):
            cursor = conn.cursor()
            cursor.execute("XA RECOVER")
            return [self._prepared_branch(*row) for row in cursor.fetchall()]

    def stop_requests(self, prefixes: Collection[str]) -> set[str]:
        """Kill the sessions running a request of a branch whose gtrid starts with one of
        ``prefixes`` and wait until they are gone; the gtrids they named."""
        conn = self.link.connect()
        try:
            with self.link.translated("stop requests"):
                cursor = conn.cursor()
                cursor.execute(_RUNNING_SQL)
                found = requests_of(cursor.fetchall(), prefixes)
                for session in sorted(found):
                    try:
                        cursor.execute("KILL %s", (session,))
                    except pymysql.err.OperationalError as err:
                        if err.args[0] != _NO_SUCH_THREAD:  # it ended meanwhile
                            raise
                if found:
                    wait_until_gone(lambda: _still_there(cursor, sorted(found)), self.link.server)
        finally:
            conn.close()
        return set().union(*found.values())

    def check_server(self) -> None:
        self.link.connect().close()  # MySQL and MariaDB need no setting for XA: it answers

    def _prepared_branch(
        self, format_id: int, gtrid_len: int, bqual_len: int, data: Any
    ) -> PreparedBranch:
        raw = data if isinstance(data, bytes) else str(data).encode()
        xid = Xid.from_mysql_recover(int(format_id), int(gtrid_len), int(bqual_len), raw)
        return PreparedBranch(self.link.server, f"{format_id}:{raw!r}", xid, None, None)

    def _marker_times(self, conn: MySQLConnection, xids: list[Xid]) -> dict[Xid, float]:
        """When each prepared branch wrote its marker (see :func:`marker_times`)."""
        try:
            with self.link.translated("read outcome markers"):
                times = marker_times(conn, [x.gtrid for x in xids])
        except StatementFailed:
            return {}  # no marker table (yet): the time is merely unknown
        return {x: times[(x.gtrid, x.bqual)] for x in xids if (x.gtrid, x.bqual) in times}


def marker_times(conn: MySQLConnection, gtrids: Sequence[str]) -> dict[tuple[str, str], float]:
    """``(gtrid, branch) -> when its marker was written`` for the markers of ``gtrids``,
    prepared branches' included: a dirty read (see ``_MARKER_TIMES``), which leaves the
    session of ``conn`` (a connection of the caller's own, never pooled) READ UNCOMMITTED.
    Driver errors reach the caller."""
    if not gtrids:
        return {}
    cursor = conn.cursor()
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
    cursor.execute(_MARKER_TIMES.format(", ".join(["%s"] * len(gtrids))), list(gtrids))
    return {(str(g), str(b)): float(t) for g, b, t in cursor.fetchall()}


class _StoppedAt(Exception):
    """A request of several ``XA COMMIT`` / ``XA ROLLBACK`` stopped at statement ``done``
    (those before it finished) with ``error``."""

    def __init__(self, done: int, error: StatementFailed) -> None:
        super().__init__(done, error)
        self.done = done
        self.error = error


class MySQLBranch(Branch):
    """A branch held open on one MySQL/MariaDB connection."""

    overlaps = True
    prepares_early = True

    def __init__(
        self,
        participant: Participant,
        protocol: MySQLBranches,
        conn: MySQLConnection,
        xid: Xid,
        *,
        verified: bool = True,
    ) -> None:
        super().__init__(participant, xid)
        self._protocol = protocol
        self._link = protocol.link
        self._conn = conn
        self._verified = verified  # the server was heard on this connection when it was lent
        self._started = False  # XA START sent (with the first statement)
        self._ended = False  # XA END sent: the branch is IDLE on the server
        # The last statements' cursors, and the index of the first one's result.
        self._sent_last: tuple[list[Any], int] | None = None

    @property
    def _connection(self) -> MySQLConnection:
        return self._conn

    @property
    def session_id(self) -> int:
        return int(self._conn.thread_id())

    def _sql_interrupt(self) -> None:
        try:
            killer = self._link.connect()
        except ParticipantError:
            return  # no answer: the caller escalates to sever()
        try:
            with self._link.translated("kill query"):
                killer.cursor().execute("KILL QUERY %s", (self._conn.thread_id(),))
        except ParticipantError:
            pass
        finally:
            killer.close()

    def _sql_sever(self) -> None:
        sock = self._conn._sock  # PyMySQL exposes no public handle on its socket
        if sock is not None:
            shut_down_socket(sock.fileno())

    def _sql_execute(self, query: str, params: Sequence[Any] | None) -> Cursor:
        if self._started:
            with self._link.translated("execute"):
                cursor = self._conn.cursor()
                cursor.execute(query, params)
                return cursor  # type: ignore[no-any-return]
        return self._start_with(query, params)

    def _start_with(self, query: str, params: Sequence[Any] | None) -> Cursor:
        """``XA START`` and the first statement in one round trip."""
        start = f"XA START {self.xid.mysql_literal()}"
        cursor = self._first_request(lambda: self._batch(start, (query, params)))
        self._started = True
        return cursor

    def _use(self, conn: MySQLConnection, verified: bool) -> None:
        self._conn, self._verified = conn, verified
        self._started = self._ended = False

    def _batch(self, *statements: str | tuple[str, Sequence[Any] | None]) -> Cursor:
        """Send ``statements`` (text, or a query with its values, bound by the driver) in one
        round trip; the cursor on the last one's result. The server stops at the first error,
        which raises here, while reading that statement's result."""
        with self._link.translated("execute"):
            cursor = self._conn.cursor()
            texts = [s if isinstance(s, str) else cursor.mogrify(*s) for s in statements]
            cursor.execute("; ".join(texts))
            for _ in texts[1:]:
                cursor.nextset()
            return cursor  # type: ignore[no-any-return]

    def _sql_send_last(self, statements: list[Statement], wait_for_locks: bool) -> None:
        """[``XA START``,] the statements, the marker, ``XA END`` and ``XA PREPARE`` as one
        multi-statement request. Each statement is followed by the xid's tag on a line of its
        own (the process list then names the branch while it runs, and a statement ending in
        a ``--`` comment cannot swallow what follows). Never told not to wait:
        ``refuses_lock_waits`` is False, MySQL 8 knows no lock-wait limit under a second."""
        cursors = [self._conn.cursor() for _ in statements]
        texts = [] if self._started else [f"XA START {self.xid.mysql_literal()}"]
        self._sent_last = (cursors, len(texts))
        tag = self.xid.request_tag()
        bound = zip(cursors, statements, strict=True)
        texts += [f"{c.mogrify(q, v)}\n{tag}" for c, (q, v) in bound]
        texts += self._prepare_statements(cursors[0])
        # From here on the server may hold the branch, even prepared: a rollback must ask.
        self._started = True
        self._send("; ".join(texts), "execute")

    def _sql_receive_last(self) -> tuple[list[Cursor], Vote]:
        """Each result in turn (PyMySQL reads them one by one); a statement's goes to its
        cursor, the marker's, ``XA END``'s and ``XA PREPARE``'s are read past."""
        if self._sent_last is None:
            raise BranchStateError(f"branch {self.xid}: no last statement was sent")
        cursors, first = self._sent_last
        self._sent_last = None
        end = first + len(cursors)  # the index of the marker's result
        reading = 0
        try:
            with self._link.translated("execute"):
                for reading in range(end + 3):
                    self._conn.next_result()
                    if first <= reading < end:
                        cursors[reading - first]._do_get_result()
        except StatementFailed as err:
            self._abandon()
            if reading >= end:
                raise PrepareRefused(str(err)) from err
            if reading >= first:
                err.statement = reading - first
            raise  # XA START's or a statement's own error
        self._ended = True
        return list(cursors), Vote.PREPARED

    # -- overlapped phases: a request now, its reply later ---------------------------------

    def _sql_send_prepare(self) -> None:
        if not self._started:
            return  # nothing to send: read-only
        self._send("; ".join(self._prepare_statements(self._conn.cursor())), "prepare")

    def _prepare_statements(self, cursor: Any) -> list[str]:
        """The outcome marker (values bound by ``cursor``), ``XA END`` and ``XA PREPARE``.
        The process list shows a multi-statement request's statements one at a time: each
        of ours names the branch (the marker by the xid's tag), so recovery can find and
        stop a dead coordinator's request at any of them."""
        lit = self.xid.mysql_literal()
        markers = self._protocol.markers
        marker = cursor.mogrify(markers.insert_sql, markers.values(self.xid))
        return [f"{marker}\n{self.xid.request_tag()}", f"XA END {lit}", f"XA PREPARE {lit}"]

    def _sql_receive_prepare(self) -> Vote:
        if not self._started:
            return Vote.READ_ONLY
        try:
            self._receive("prepare", results=3)
        except StatementFailed as err:
            self._abandon()
            raise PrepareRefused(str(err)) from err
        self._ended = True
        return Vote.PREPARED

    def _sql_send_commit(self) -> None:
        self._send(f"XA COMMIT {self.xid.mysql_literal()}", "xa commit")

    def _sql_receive_commit(self) -> None:
        try:
            self._receive("xa commit", results=1)
        except StatementFailed as err:
            raise self._protocol.unknown_or(err, self.xid) from err

    def _send(self, query: str, action: str) -> None:
        with self._link.translated(action):
            self._conn._execute_command(COMMAND.COM_QUERY, query)

    def _receive(self, action: str, *, results: int) -> None:
        """Read the ``results`` replies of the statements sent (the first error raises: the
        server runs nothing after it)."""
        with self._link.translated(action):
            self._conn._read_query_result()
            for _ in range(results - 1):
                self._conn.next_result()

    def _sql_commit_one_phase(self) -> None:
        if not self._started:
            return  # nothing was sent: nothing to commit
        self._xa("end")
        with self._link.translated("xa commit one phase"):
            self._conn.cursor().execute(f"XA COMMIT {self.xid.mysql_literal()} ONE PHASE")

    def _sql_rollback(self, *, prepared: bool) -> None:
        if prepared:
            self._protocol.finish_on(self._conn, self.xid, commit=False)
            return
        if not self._started:
            return  # nothing was sent: nothing to roll back
        self._xa("end")
        self._xa("rollback")

    def _xa(self, verb: str) -> None:
        if verb == "end" and self._ended:
            return
        with self._link.translated(f"xa {verb}"):
            self._conn.cursor().execute(f"XA {verb.upper()} {self.xid.mysql_literal()}")
        self._ended = self._ended or verb == "end"

    def _abandon(self) -> None:
        """After a failed marker/XA END/XA PREPARE: drop the connection. The server rolls an
        unprepared branch back when its session ends, and that cannot block the way an
        XA ROLLBACK can (behind a global read lock, say)."""
        self._conn.close()
