"""MySQL / MariaDB participant: raw ``XA`` statements over PyMySQL (which has no XA API).

Every xid reaches SQL through :meth:`Xid.mysql_literal` (hex literals, valid on both servers).
``XA RECOVER`` is read in its plain four-column form, which MySQL 8 and MariaDB share.

MariaDB refuses ``XA COMMIT`` from another session (XAER_NOTA, 1397) while the session that
prepared the branch is still connected. So "unknown xid" is only taken to mean "finished" when
``XA RECOVER`` no longer lists the branch; otherwise it is :class:`BranchBusy` ("not yet").
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import partial
from typing import Any

import pymysql
from pymysql.constants import CR

from twopc.participants.base import (
    Branch,
    Cursor,
    LocalTransaction,
    Participant,
    PreparedBranch,
    Vote,
    shut_down_socket,
    translated_errors,
)
from twopc.participants.errors import (
    BranchBusy,
    ConstraintViolation,
    DuplicateKey,
    DuplicateObject,
    InvalidValue,
    LockWaitTimeout,
    ParticipantError,
    ParticipantUnavailable,
    PermissionDenied,
    PrepareRefused,
    StatementFailed,
    UndefinedColumn,
    UndefinedTable,
    UnknownXid,
)
from twopc.participants.lockwaits import LockWait, mysql_lock_waits, mysql_waits_of
from twopc.participants.urls import DatabaseURL, InvalidURL
from twopc.participants.xid import Xid

_XAER_NOTA = 1397
_LOCK_WAIT_TIMEOUT = 1205
# Client-side "can't connect", "server has gone away", "lost connection" and friends.
_UNAVAILABLE_ERRNOS = {2002, 2003, 2006, 2013, 2014, 2026, 2055, 1053, 1927}


#: Seconds a whole connect may take: TCP, the server's greeting, the TLS handshake,
#: authentication and the session set-up statements (PostgreSQL's libpq bounds its own
#: connect the same way with ``connect_timeout``).
CONNECT_TIMEOUT = 5


class _Connection(pymysql.connections.Connection):  # type: ignore[misc]  # PyMySQL is untyped
    """PyMySQL's connection with its connect bounded as a whole, and without one cost.

    PyMySQL's ``connect_timeout`` covers the TCP connect only: a server that accepts and
    then never greets (or stalls the TLS handshake, or dribbles its bytes) holds the client
    forever. A read timeout would bound each read, not their sum, and would stay on the
    socket for statements that may rightly wait ``lock_wait`` seconds for a lock. So a
    watchdog shuts the connection down when the deadline passes, waking the blocked read.

    Given no TLS options, PyMySQL tries TLS without verifying the server ("preferred"), yet
    builds that context with ``ssl.create_default_context()``, which loads the system's whole
    CA store (about 17 ms of CPU per connection) that an unverifying context never consults.
    This builds the same unverifying context without the store; explicit TLS options go to
    PyMySQL unchanged.
    """

    _watchdog: _ConnectWatchdog | None = None

    def connect(self, sock: Any = None) -> None:
        self._watchdog = watchdog = _ConnectWatchdog(self.connect_timeout)
        try:
            super().connect(sock)
        except Exception as err:
            if watchdog.stop():  # whatever PyMySQL made of the shut socket, say what it was
                raise self._not_connected_in_time() from err
            raise
        finally:
            self._watchdog = None
            expired = watchdog.stop()  # idempotent; also on KeyboardInterrupt and the like
        if expired:  # it connected, but only as the deadline shut the socket
            self._force_close()
            raise self._not_connected_in_time()

    def _get_server_information(self) -> None:
        # PyMySQL's first read of a connect: from here on there is a socket to watch.
        if self._watchdog is not None:
            self._watchdog.watch(self._sock)
        super()._get_server_information()

    def _not_connected_in_time(self) -> pymysql.err.OperationalError:
        return pymysql.err.OperationalError(
            CR.CR_CONN_HOST_ERROR,
            f"Can't connect to MySQL server on {self.host!r} "
            f"(not connected within {self.connect_timeout:g} s)",
        )

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if isinstance(sslp, dict) and not sslp:
            return unverified_tls_context()
        try:
            context: ssl.SSLContext = super()._create_ssl_ctx(sslp)
        except (OSError, ValueError) as err:  # e.g. a CA file that holds no certificate
            raise pymysql.err.OperationalError(
                CR.CR_SSL_CONNECTION_ERROR, f"unusable TLS options: {err}"
            ) from err
        return context


class _ConnectWatchdog:
    """Shuts a connecting socket down once ``seconds`` have passed, unless :meth:`stop`
    comes first. One short-lived thread per connect.

    It shuts down a duplicate of the socket it is given: the duplicate stays valid while
    PyMySQL swaps its socket for a TLS one (same connection, new object) or closes it, so
    the deadline can never hit a descriptor number that was closed and reused meanwhile.
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()  # orders "deadline passed" against "connect finished"
        self._stopped = threading.Event()
        self._expired = False
        self._socket: socket.socket | None = None
        threading.Thread(target=self._watch, args=(seconds,), daemon=True).start()

    def watch(self, sock: socket.socket) -> None:
        """The connection to shut down at the deadline (at once if it has passed)."""
        with self._lock:
            self._socket = sock.dup()
            if self._expired:
                self._shut_down()

    def stop(self) -> bool:
        """End the watch; whether the deadline passed first (the socket may be shut)."""
        with self._lock:
            self._stopped.set()
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            return self._expired

    def _watch(self, seconds: float) -> None:
        if self._stopped.wait(seconds):
            return
        with self._lock:
            if not self._stopped.is_set():
                self._expired = True
                # No socket yet while the TCP connect (bounded by itself) runs: watch() shuts it.
                self._shut_down()

    def _shut_down(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)


def open_connection(
    url: DatabaseURL, *, autocommit: bool, init_command: str | None = None
) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection to ``url`` (its TLS options included), utf8mb4, connected (and
    ``init_command`` run) within :data:`CONNECT_TIMEOUT` seconds."""
    try:
        options = url.pymysql_kwargs()
    except InvalidURL as err:  # a TLS file option naming no file: ours to say, in one line
        raise ParticipantError(f"mysql {url.location()}: URL: {err}") from None
    return _Connection(
        autocommit=autocommit,
        connect_timeout=CONNECT_TIMEOUT,
        charset="utf8mb4",
        init_command=init_command,
        **options,
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
        # Set during the connect, so the connect bound covers it too.
        setting = f"SET SESSION innodb_lock_wait_timeout = {self.lock_wait_seconds:d}"
        with _translated(self, "connect"):
            conn = open_connection(self.url, autocommit=True, init_command=setting)
        # Every read and write from now on gives up after statement_limit (PyMySQL closes
        # the connection and raises 2013): a server that stops answering holds nobody.
        conn._read_timeout = conn._write_timeout = self.statement_limit
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
    # The server's texts never hold the password ("Access denied … (using password: YES)"),
    # and the server part is built from the URL's parts without it: nothing to search for.
    message = f"{participant.server}: {action} failed: ({errno}) {text}"
    if errno is None or errno in _UNAVAILABLE_ERRNOS or isinstance(err, pymysql.err.InterfaceError):
        return ParticipantUnavailable(message)
    if errno == _LOCK_WAIT_TIMEOUT:
        return LockWaitTimeout.after(message, participant.lock_wait_seconds, code=str(errno))
    return _TYPED.get(errno, StatementFailed)(message, code=str(errno))


# Error numbers the layers above need told apart, each as its own type (read only here).
_TYPED: dict[int, type[StatementFailed]] = {
    1062: DuplicateKey,  # ER_DUP_ENTRY
    1146: UndefinedTable,  # ER_NO_SUCH_TABLE
    1054: UndefinedColumn,  # ER_BAD_FIELD_ERROR
    1050: DuplicateObject,  # ER_TABLE_EXISTS_ERROR
    1060: DuplicateObject,  # ER_DUP_FIELDNAME
    1061: DuplicateObject,  # ER_DUP_KEYNAME
    1142: PermissionDenied,  # ER_TABLEACCESS_DENIED_ERROR
    1143: PermissionDenied,  # ER_COLUMNACCESS_DENIED_ERROR
    1044: PermissionDenied,  # ER_DBACCESS_DENIED_ERROR
    1227: PermissionDenied,  # ER_SPECIFIC_ACCESS_DENIED_ERROR
    1048: ConstraintViolation,  # ER_BAD_NULL_ERROR
    1451: ConstraintViolation,  # ER_ROW_IS_REFERENCED_2
    1452: ConstraintViolation,  # ER_NO_REFERENCED_ROW_2
    3819: ConstraintViolation,  # ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
    4025: ConstraintViolation,  # ER_CONSTRAINT_FAILED (MariaDB)
    1264: InvalidValue,  # ER_WARN_DATA_OUT_OF_RANGE
    1265: InvalidValue,  # WARN_DATA_TRUNCATED
    1366: InvalidValue,  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
    1406: InvalidValue,  # ER_DATA_TOO_LONG
    1690: InvalidValue,  # ER_DATA_OUT_OF_RANGE
}
