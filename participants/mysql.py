"""MySQL / MariaDB participant: raw ``XA`` statements over PyMySQL (which has no XA API).

Every xid reaches SQL through :meth:`Xid.mysql_literal` (hex literals, valid on both servers).
``XA RECOVER`` is read in its plain four-column form, which MySQL 8 and MariaDB share.

MariaDB refuses ``XA COMMIT`` from another session (XAER_NOTA, 1397) while the session that
prepared the branch is still connected. So "unknown xid" is only taken to mean "finished" when
``XA RECOVER`` no longer lists the branch; otherwise it is :class:`BranchBusy` ("not yet").
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import partial
from typing import Any

import pymysql

from participants.base import (
    Branch,
    Cursor,
    LocalTransaction,
    Participant,
    PreparedBranch,
    Vote,
    shut_down_socket,
    translated_errors,
)
from participants.errors import (
    BranchBusy,
    LockWaitTimeout,
    ParticipantError,
    ParticipantUnavailable,
    PrepareRefused,
    StatementFailed,
    UnknownXid,
)
from participants.lockwaits import LockWait, mysql_lock_waits, mysql_waits_of
from participants.urls import DatabaseURL
from participants.xid import Xid

_XAER_NOTA = 1397
_LOCK_WAIT_TIMEOUT = 1205
# Client-side "can't connect", "server has gone away", "lost connection" and friends.
_UNAVAILABLE_ERRNOS = {2002, 2003, 2006, 2013, 2014, 2026, 2055, 1053, 1927}


class _Connection(pymysql.connections.Connection):  # type: ignore[misc]  # PyMySQL is untyped
    """PyMySQL's connection without one cost. Given no TLS options, PyMySQL tries TLS
    without verifying the server ("preferred"), yet builds that context with
    ``ssl.create_default_context()``, which loads the system's whole CA store (about 17 ms
    of CPU per connection) that an unverifying context never consults. This builds the same
    unverifying context without the store; explicit TLS options go to PyMySQL unchanged."""

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if isinstance(sslp, dict) and not sslp:
            return unverified_tls_context()
        context: ssl.SSLContext = super()._create_ssl_ctx(sslp)
        return context


def open_connection(url: DatabaseURL, *, autocommit: bool) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection to ``url`` (its TLS options included), utf8mb4, 5 s to connect."""
    return _Connection(
        autocommit=autocommit, connect_timeout=5, charset="utf8mb4", **url.pymysql_kwargs()
    )


def unverified_tls_context() -> ssl.SSLContext:
    """What PyMySQL's "preferred" mode uses: TLS if the server offers it, no verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class MySQLParticipant(Participant):
    """A MySQL or MariaDB database as a 2PC resource manager."""

    outcomes_table_options = " ENGINE=InnoDB"

    @property
    def lock_wait_seconds(self) -> int:
        """The ``innodb_lock_wait_timeout`` set on every connection: whole seconds, at least 1."""
        return max(1, math.ceil(self.lock_wait))

    def connect(self) -> pymysql.connections.Connection[Any]:
        """An autocommit connection with this participant's lock-wait limit."""
        with _translated(self, "connect"):
            conn = open_connection(self.url, autocommit=True)
            seconds = self.lock_wait_seconds
            conn.cursor().execute("SET SESSION innodb_lock_wait_timeout = %s", (seconds,))
        return conn

    def _still_usable(self, conn: pymysql.connections.Connection[Any]) -> bool:
        if not conn.open:
            return False
        try:
            conn.ping(reconnect=False)
        except pymysql.err.Error:
            return False
        return True

    def begin(self, xid: Xid) -> MySQLBranch:
        conn = self.checkout()
        with _translated(self, "xa start"):
            conn.cursor().execute(f"XA START {xid.mysql_literal()}")
        return MySQLBranch(self, conn, xid)

    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        conn = self.connect()
        try:
            self.finish_on(conn, xid, commit=commit)
        finally:
            conn.close()

    def finish_on(
        self, conn: pymysql.connections.Connection[Any], xid: Xid, *, commit: bool
    ) -> None:
        """``XA COMMIT`` / ``XA ROLLBACK`` of a prepared branch."""
        verb = "XA COMMIT" if commit else "XA ROLLBACK"
        try:
            with _translated(self, verb.lower()):
                conn.cursor().execute(f"{verb} {xid.mysql_literal()}")
        except StatementFailed as err:
            if err.code != str(_XAER_NOTA):
                raise
            if any(branch.xid == xid for branch in self.prepared_branches()):
                raise BranchBusy(
                    f"{self.server}: branch {xid} is prepared but held by a live session"
                ) from err
            raise UnknownXid(f"{self.server}: no prepared branch {xid}") from err

    def prepared_branches(self) -> list[PreparedBranch]:
        conn = self.connect()
        try:
            with _translated(self, "xa recover"):
                cursor = conn.cursor()
                cursor.execute("XA RECOVER")
                branches = [self._prepared_branch(*row) for row in cursor.fetchall()]
            times = self._marker_times(conn, [b.xid for b in branches if b.xid is not None])
        finally:
            conn.close()
        return [replace(b, prepared_at=times.get(b.xid)) if b.xid else b for b in branches]

    def _prepared_branch(
        self, format_id: int, gtrid_len: int, bqual_len: int, data: Any
    ) -> PreparedBranch:
        raw = data if isinstance(data, bytes) else str(data).encode()
        xid = Xid.from_mysql_recover(int(format_id), int(gtrid_len), int(bqual_len), raw)
        return PreparedBranch(self.server, f"{format_id}:{raw!r}", xid, None, None)

    def _marker_times(self, conn: Any, xids: list[Xid]) -> dict[Xid | None, float]:
        """When each prepared branch wrote its marker: XA RECOVER has no timestamp, and the
        markers of prepared branches are uncommitted, so only a dirty read sees them."""
        if not xids:
            return {}
        placeholders = ", ".join(["%s"] * len(xids))
        query = (
            f"SELECT gtrid, branch, created_at FROM twopc_outcomes WHERE gtrid IN ({placeholders})"
        )
        try:
            with _translated(self, "read outcome markers"):
                cursor = conn.cursor()
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
                cursor.execute(query, [x.gtrid for x in xids])
                rows = cursor.fetchall()
        except StatementFailed:
            return {}  # no marker table (yet): the time is merely unknown
        wanted = {(x.gtrid, x.bqual): x for x in xids}
        return {wanted.get((g, b)): float(t) for g, b, t in rows}

    def lock_waits(self) -> list[LockWait]:
        conn = self.connect()
        try:
            with _translated(self, "read lock waits"):
                return mysql_lock_waits(conn, self.connect)
        finally:
            conn.close()

    def waits_of(self, session_id: int) -> list[LockWait]:
        conn = self.connect()
        try:
            with _translated(self, "read lock waits"):
                return mysql_waits_of(conn, session_id, self.connect)
        finally:
            conn.close()

    def _check_server(self) -> None:
        self.connect().close()  # MySQL and MariaDB need no setting for XA: it answers, enough

    def _open_local(self) -> MySQLLocal:
        conn = self.checkout()
        with _translated(self, "begin"):
            conn.begin()
        return MySQLLocal(self, conn)


class MySQLBranch(Branch):
    """A branch held open on one MySQL/MariaDB connection."""

    def __init__(
        self, participant: MySQLParticipant, conn: pymysql.connections.Connection[Any], xid: Xid
    ) -> None:
        super().__init__(participant, xid)
        self._participant: MySQLParticipant = participant
        self._conn = conn
        self._ended = False  # XA END sent: the branch is IDLE on the server

    @property
    def _connection(self) -> pymysql.connections.Connection[Any]:
        return self._conn

    @property
    def session_id(self) -> int:
        return int(self._conn.thread_id())

    def _sql_interrupt(self) -> None:
        try:
            killer = self._participant.connect()
        except ParticipantError:
            return  # no answer: the caller escalates to sever()
        try:
            with _translated(self._participant, "kill query"):
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
        with _translated(self._participant, "execute"):
            cursor = self._conn.cursor()
            cursor.execute(query, params)
            return cursor  # type: ignore[no-any-return]

    def _sql_prepare(self) -> Vote:
        try:
            self._write_marker()
            self._xa("end")
            self._xa("prepare")
        except StatementFailed as err:
            self._abandon()
            raise PrepareRefused(str(err)) from err
        return Vote.PREPARED

    def _sql_commit_prepared(self) -> None:
        self._participant.finish_on(self._conn, self.xid, commit=True)

    def _sql_commit_one_phase(self) -> None:
        self._xa("end")
        with _translated(self._participant, "xa commit one phase"):
            self._conn.cursor().execute(f"XA COMMIT {self.xid.mysql_literal()} ONE PHASE")

    def _sql_rollback(self, *, prepared: bool) -> None:
        if prepared:
            self._participant.finish_on(self._conn, self.xid, commit=False)
            return
        self._xa("end")
        self._xa("rollback")

    def _xa(self, verb: str) -> None:
        if verb == "end" and self._ended:
            return
        with _translated(self._participant, f"xa {verb}"):
            self._conn.cursor().execute(f"XA {verb.upper()} {self.xid.mysql_literal()}")
        self._ended = self._ended or verb == "end"

    def _abandon(self) -> None:
        """After a failed marker/XA END/XA PREPARE: drop the connection. The server rolls an
        unprepared branch back when its session ends, and that cannot block the way an
        XA ROLLBACK can (behind a global read lock, say)."""
        self._conn.close()


class MySQLLocal(LocalTransaction):
    """A plain MySQL/MariaDB transaction on its own connection."""

    def __init__(
        self, participant: MySQLParticipant, conn: pymysql.connections.Connection[Any]
    ) -> None:
        super().__init__(participant, conn)
        self._participant: MySQLParticipant = participant
        self._conn: pymysql.connections.Connection[Any] = conn

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor:
        with _translated(self._participant, "execute"):
            cursor = self._conn.cursor()
            cursor.execute(query, params)
            return cursor  # type: ignore[no-any-return]

    def _sql_commit(self) -> None:
        with _translated(self._participant, "commit"):
            self._conn.commit()


def _translated(participant: MySQLParticipant, action: str) -> AbstractContextManager[None]:
    return translated_errors(pymysql.err.Error, partial(_translate, participant, action))


def _translate(participant: MySQLParticipant, action: str, err: Exception) -> ParticipantError:
    errno = err.args[0] if err.args and isinstance(err.args[0], int) else None
    text = str(err.args[1]) if len(err.args) > 1 else str(err)
    message = participant.url.scrub(f"{participant.server}: {action} failed: ({errno}) {text}")
    if errno is None or errno in _UNAVAILABLE_ERRNOS or isinstance(err, pymysql.err.InterfaceError):
        return ParticipantUnavailable(message)
    if errno == _LOCK_WAIT_TIMEOUT:
        return LockWaitTimeout.after(message, participant.lock_wait_seconds, code=str(errno))
    return StatementFailed(message, code=str(errno))
