"""How a PostgreSQL participant reaches its server: bounded connections, and its errors typed.

Every psycopg error becomes a :class:`ParticipantError` here, once; the SQLSTATEs the layers
above need told apart become their own types, and nothing outside PostgreSQL's modules reads
a SQLSTATE.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import psycopg
from psycopg.abc import RV, PQGen
from psycopg.connection import _WAIT_INTERVAL
from psycopg.pq import TransactionStatus

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
from twopc.participants.urls import DatabaseURL

_LOCK_NOT_AVAILABLE = "55P03"
# Connection exceptions (08), operator intervention / shutdown (57P0x): the link is gone.
_UNAVAILABLE_PREFIXES = ("08", "57P")
#: Seconds libpq may take to connect, unless the URL says otherwise.
CONNECT_TIMEOUT = 5


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection on which no wait for the server lasts longer than ``limit``
    seconds: past it the wait fails (``_WaitTimeout``, an OperationalError: the participant
    translates it to ParticipantUnavailable) and the connection is closed, since a statement
    was left in flight on it."""

    limit: float | None = None

    def wait(
        self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: float | None = None
    ) -> RV:
        try:
            return super().wait(gen, interval, self.limit if timeout is None else timeout)
        except psycopg.errors._WaitTimeout:
            self.close()
            raise


def lock_timeout_ms(seconds: float) -> int:
    """The ``lock_timeout`` for a lock wait of ``seconds`` (at least 1 ms: 0 would disable it)."""
    return max(1, round(seconds * 1000))


class PostgresLink:
    """Connections to one PostgreSQL database with one participant's limits, and the
    translation of their errors (the participant's :class:`Connector`)."""

    def __init__(
        self, url: DatabaseURL, server: str, *, lock_wait: float, statement_limit: float
    ) -> None:
        self.url = url
        self.server = server  # names the server in messages; no credentials
        self.lock_wait_ms = lock_timeout_ms(lock_wait)
        self.statement_limit = statement_limit

    def connect(self) -> psycopg.Connection[Any]:
        """An autocommit connection with the participant's lock-wait limit, every wait on it
        bounded by ``statement_limit``.

        The lock wait is a startup option, so it is set inside ``connect_timeout`` (a server
        that completes the handshake and then stops answering cannot hold a ``SET``) and
        costs no round trip.
        """
        kwargs = self.url.psycopg_kwargs()
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
        setting = f"-c lock_timeout={self.lock_wait_ms}"
        options = kwargs.get("options")
        kwargs["options"] = f"{options} {setting}" if options else setting
        with self.translated("connect"):
            conn = BoundedConnection.connect(autocommit=True, **kwargs)  # type: ignore[arg-type]
        conn.limit = self.statement_limit
        return conn

    def still_usable(self, conn: psycopg.Connection[Any], *, ping: bool = True) -> bool:
        """Whether an idle connection is open, in no transaction, and (``ping``) answers."""
        if conn.closed or conn.info.transaction_status is not TransactionStatus.IDLE:
            return False
        if not ping:
            return True
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def translated(self, action: str) -> AbstractContextManager[None]:
        """Within it, a psycopg error is re-raised as the participant error it means."""
        return translated_errors(psycopg.Error, partial(_translate, self, action))


def _translate(link: PostgresLink, action: str, err: Exception) -> ParticipantError:
    sqlstate = err.sqlstate if isinstance(err, psycopg.Error) else None
    # libpq's texts never hold the password (psycopg quotes every parameter into the
    # conninfo it hands libpq, so no password makes that fail to parse and be echoed), and
    # the server part is built from the URL's parts without it: nothing is searched for.
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    message = f"{link.server}: {action} failed: {first_line}"
    if sqlstate is None or sqlstate.startswith(_UNAVAILABLE_PREFIXES):
        return ParticipantUnavailable(message)
    if sqlstate == _LOCK_NOT_AVAILABLE:
        return LockWaitTimeout.after(message, link.lock_wait_ms / 1000, code=sqlstate)
    return statement_error(sqlstate)(message, code=sqlstate)


# SQLSTATEs the layers above need told apart, each as its own type (read only here).
_TYPED: dict[str, type[StatementFailed]] = {
    "23505": DuplicateKey,
    "42P01": UndefinedTable,
    "42703": UndefinedColumn,
    "42P07": DuplicateObject,
    "42701": DuplicateObject,
    "42710": DuplicateObject,
    "42501": PermissionDenied,
}


def statement_error(sqlstate: str) -> type[StatementFailed]:
    """The error type of a statement that failed with ``sqlstate``: classes 22 (data
    exceptions) and 23 (integrity) can never succeed on retry."""
    if sqlstate in _TYPED:
        return _TYPED[sqlstate]
    if sqlstate.startswith("22"):
        return InvalidValue
    if sqlstate.startswith("23"):
        return ConstraintViolation
    return StatementFailed
