"""How a MySQL/MariaDB participant reaches its server: bounded connections, and its errors typed.

Every PyMySQL error becomes a :class:`ParticipantError` here, once; the error numbers the
layers above need told apart become their own types, and nothing outside MySQL's modules
reads an error number.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import pymysql
from pymysql.constants import CLIENT, CR

from twopc.participants.base import translated_errors
from twopc.participants.errors import (
    ConstraintViolation,
    DuplicateKey,
    DuplicateObject,
    InvalidValue,
    LockWaitTimeout,
    ParticipantError,
    ParticipantUnavailable,
    PermissionDenied,
    StatementFailed,
    UndefinedColumn,
    UndefinedTable,
)
from twopc.participants.urls import DatabaseURL, InvalidURL

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
    url: DatabaseURL,
    *,
    autocommit: bool,
    init_command: str | None = None,
    multi_statements: bool = False,
) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection to ``url`` (its TLS options included), utf8mb4, connected (and
    ``init_command`` run) within :data:`CONNECT_TIMEOUT` seconds. With ``multi_statements``,
    one round trip may carry several statements (the branch protocol's own: values are
    always bound, never spliced)."""
    try:
        options = url.pymysql_kwargs()
    except InvalidURL as err:  # a TLS file option naming no file: ours to say, in one line
        raise ParticipantError(f"mysql {url.location()}: URL: {err}") from None
    return _Connection(
        autocommit=autocommit,
        connect_timeout=CONNECT_TIMEOUT,
        charset="utf8mb4",
        init_command=init_command,
        client_flag=CLIENT.MULTI_STATEMENTS if multi_statements else 0,
        **options,
    )


class Together:
    """Statements sent in one request (the connections allow multi-statements), each ended
    by a newline: one ending in a ``--`` comment cannot swallow the next. The server stops at
    the first that fails; :meth:`run` raises its (driver) error, and ``done`` says how many
    ran before it."""

    def __init__(self, statements: Iterable[str]) -> None:
        self.text = "".join(f"{statement};\n" for statement in statements)
        self.done = 0

    def run(self, cursor: Any) -> None:
        """Send the request and read every statement's result."""
        cursor.execute(self.text)
        self.done = 1
        while cursor.nextset():
            self.done += 1


def unverified_tls_context() -> ssl.SSLContext:
    """What PyMySQL's "preferred" mode uses: TLS if the server offers it, no verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def lock_wait_timeout(seconds: float) -> int:
    """The ``innodb_lock_wait_timeout`` for a wait of ``seconds``: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))


class MySQLLink:
    """Connections to one MySQL/MariaDB database with one participant's limits, and the
    translation of their errors (the participant's :class:`Connector`)."""

    def __init__(
        self, url: DatabaseURL, server: str, *, lock_wait: float, statement_limit: float
    ) -> None:
        self.url = url
        self.server = server  # names the server in messages; no credentials
        self.lock_wait_seconds = lock_wait_timeout(lock_wait)
        self.statement_limit = statement_limit

    def connect(self) -> pymysql.connections.Connection[Any]:
        """An autocommit connection with the participant's lock-wait limit."""
        # Set during the connect, so the connect bound covers it too.
        setting = f"SET SESSION innodb_lock_wait_timeout = {self.lock_wait_seconds:d}"
        with self.translated("connect"):
            conn = open_connection(
                self.url, autocommit=True, init_command=setting, multi_statements=True
            )
        # Every read and write from now on gives up after statement_limit (PyMySQL closes
        # the connection and raises 2013): a server that stops answering holds nobody.
        conn._read_timeout = conn._write_timeout = self.statement_limit
        return conn

    def still_usable(self, conn: pymysql.connections.Connection[Any], *, ping: bool = True) -> bool:
        """Whether an idle connection is open and (``ping``) answers a ping."""
        if not conn.open:
            return False
        if not ping:
            return True
        try:
            conn.ping(reconnect=False)
        except pymysql.err.Error:
            return False
        return True

    def translated(self, action: str) -> AbstractContextManager[None]:
        """Within it, a PyMySQL error is re-raised as the participant error it means."""
        return translated_errors(pymysql.err.Error, partial(_translate, self, action))


def _translate(link: MySQLLink, action: str, err: Exception) -> ParticipantError:
    errno = err.args[0] if err.args and isinstance(err.args[0], int) else None
    text = str(err.args[1]) if len(err.args) > 1 else str(err)
    # The server's texts never hold the password ("Access denied … (using password: YES)"),
    # and the server part is built from the URL's parts without it: nothing to search for.
    message = f"{link.server}: {action} failed: ({errno}) {text}"
    if errno is None or errno in _UNAVAILABLE_ERRNOS or isinstance(err, pymysql.err.InterfaceError):
        return ParticipantUnavailable(message)
    if errno == _LOCK_WAIT_TIMEOUT:
        return LockWaitTimeout.after(message, link.lock_wait_seconds, code=str(errno))
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
