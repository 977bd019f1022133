"""PostgreSQL participant: ``BEGIN`` … ``PREPARE TRANSACTION`` … ``COMMIT PREPARED`` (psycopg 3).

Statements are sent explicitly on an autocommit connection rather than through psycopg's
``tpc_*`` API, because ``tpc_prepare()`` on a transaction that already failed returns without
error and prepares nothing. Here the transaction status is checked first, and the server's
reply to ``PREPARE TRANSACTION`` is checked too: a ``ROLLBACK`` reply is a NO vote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import RV, PQGen
from psycopg.connection import _WAIT_INTERVAL
from psycopg.pq import TransactionStatus

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
    ConstraintViolation,
    DuplicateKey,
    DuplicateObject,
    InvalidValue,
    LockWaitTimeout,
    MisconfiguredServer,
    ParticipantError,
    ParticipantUnavailable,
    PermissionDenied,
    PrepareRefused,
    StatementFailed,
    UndefinedColumn,
    UndefinedTable,
    UnknownXid,
)
from twopc.participants.lockwaits import LockWait, pg_lock_waits, pg_waits_of
from twopc.participants.xid import Xid

_UNDEFINED_OBJECT = "42704"
_LOCK_NOT_AVAILABLE = "55P03"
_PREPARED_DISABLED = "55000"
# Connection exceptions (08), operator intervention / shutdown (57P0x): the link is gone.
_UNAVAILABLE_PREFIXES = ("08", "57P")

_PREPARED_SQL = """
    SELECT gid, extract(epoch FROM prepared)::float8, database
      FROM pg_prepared_xacts WHERE database = current_database()
"""


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


class PostgresParticipant(Participant):
    """A PostgreSQL database as a 2PC resource manager."""

    def connect(self) -> psycopg.Connection[Any]:
        """An autocommit connection with this participant's lock-wait limit, every wait on
        it bounded by ``statement_limit``.

        The lock wait is a startup option, so it is set inside ``connect_timeout`` (a server
        that completes the handshake and then stops answering cannot hold a ``SET``) and
        costs no round trip.
        """
        kwargs = self.url.psycopg_kwargs()
        kwargs.setdefault("connect_timeout", 5)
        setting = f"-c lock_timeout={self.lock_wait_ms}"
        options = kwargs.get("options")
        kwargs["options"] = f"{options} {setting}" if options else setting
        with self._translated("connect"):
            conn = BoundedConnection.connect(autocommit=True, **kwargs)  # type: ignore[arg-type]
        conn.limit = self.statement_limit
        return conn

    @property
    def lock_wait_ms(self) -> int:
        """The ``lock_timeout`` set on every connection (at least 1 ms: 0 would disable it)."""
        return max(1, round(self.lock_wait * 1000))

    def _still_usable(self, conn: psycopg.Connection[Any]) -> bool:
        if conn.closed or conn.info.transaction_status is not TransactionStatus.IDLE:
            return False
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def begin(self, xid: Xid) -> PostgresBranch:
        conn = self.checkout()
        with self._translated("begin"):
            conn.execute("BEGIN")
        return PostgresBranch(self, conn, xid)

    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        with self.connect() as conn:
            self.finish_on(conn, xid, commit=commit)

    def finish_on(self, conn: psycopg.Connection[Any], xid: Xid, *, commit: bool) -> None:
        """``COMMIT PREPARED`` / ``ROLLBACK PREPARED`` on an idle connection."""
        verb = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED"
        try:
            with self._translated(verb.lower()):
                conn.execute(sql.SQL(verb + " {}").format(sql.Literal(xid.pg_gid())))
        except StatementFailed as err:
            if err.code == _UNDEFINED_OBJECT:
                raise UnknownXid(f"{self.server}: no prepared branch {xid}") from err
            raise

    def prepared_branches(self) -> list[PreparedBranch]:
        with self.connect() as conn, self._translated("list prepared transactions"):
            rows = conn.execute(_PREPARED_SQL).fetchall()
        return [
            PreparedBranch(self.server, gid, Xid.from_pg_gid(gid), at, db) for gid, at, db in rows
        ]

    def lock_waits(self) -> list[LockWait]:
        with self.connect() as conn, self._translated("read lock waits"):
            return pg_lock_waits(conn)

    def waits_of(self, session_id: int) -> list[LockWait]:
        with self.connect() as conn, self._translated("read lock waits"):
            return pg_waits_of(conn, session_id)

    def _check_server(self) -> None:
        with self.connect() as conn, self._translated("check max_prepared_transactions"):
            row = conn.execute("SHOW max_prepared_transactions").fetchone()
        if row is None or int(row[0]) == 0:
            raise MisconfiguredServer(_disabled_message(self.server))

    def _open_local(self) -> PostgresLocal:
        conn = self.checkout()
        with self._translated("begin"):
            conn.execute("BEGIN")
        return PostgresLocal(self, conn)

    def _translated(self, action: str) -> AbstractContextManager[None]:
        return translated_errors(psycopg.Error, partial(_translate, self, action))


class PostgresBranch(Branch):
    """A branch held open on one PostgreSQL connection."""

    def __init__(self, participant: PostgresParticipant, conn: psycopg.Connection[Any], xid: Xid):
        super().__init__(participant, xid)
        self._participant: PostgresParticipant = participant
        self._conn = conn

    @property
    def _connection(self) -> psycopg.Connection[Any]:
        return self._conn

    @property
    def session_id(self) -> int:
        return self._conn.info.backend_pid

    def _sql_interrupt(self) -> None:
        if self._conn.closed:
            return
        with contextlib.suppress(psycopg.Error):  # no answer: the caller escalates to sever()
            self._conn.cancel_safe(timeout=2.0)

    def _sql_sever(self) -> None:
        if not self._conn.closed:
            shut_down_socket(self._conn.pgconn.socket)

    def _sql_execute(self, query: str, params: Sequence[Any] | None) -> Cursor:
        with self._participant._translated("execute"):
            return self._conn.execute(query, params)

    def _sql_prepare(self) -> Vote:
        status = self._conn.info.transaction_status
        if status is not TransactionStatus.INTRANS:
            self._abandon()
            raise PrepareRefused(f"{self._participant.server}: transaction is {status.name}")
        if self._wrote_nothing():
            self._sql_commit_one_phase()
            return Vote.READ_ONLY
        try:
            self._write_marker()
        except StatementFailed as err:
            self._abandon()
            raise PrepareRefused(f"{self._participant.server}: outcome marker: {err}") from err
        return self._prepare_transaction()

    def _prepare_transaction(self) -> Vote:
        try:
            with self._participant._translated("prepare"):
                query = sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(self.xid.pg_gid()))
                reply = self._conn.execute(query).statusmessage
        except StatementFailed as err:
            self._abandon()
            if err.code == _PREPARED_DISABLED:
                raise MisconfiguredServer(_disabled_message(self._participant.server)) from err
            raise PrepareRefused(f"{self._participant.server}: {err}") from err
        if reply != "PREPARE TRANSACTION":
            # The server turned the PREPARE into a ROLLBACK: nothing is prepared.
            raise PrepareRefused(f"{self._participant.server}: server replied {reply!r} to PREPARE")
        return Vote.PREPARED

    def _wrote_nothing(self) -> bool:
        with self._participant._translated("check for writes"):
            row = self._conn.execute("SELECT txid_current_if_assigned() IS NULL").fetchone()
        return bool(row and row[0])

    def _abandon(self) -> None:
        """Roll back whatever is left of the local transaction, ignoring a dead link."""
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.Error:
            self._conn.close()

    def _sql_commit_prepared(self) -> None:
        self._participant.finish_on(self._conn, self.xid, commit=True)

    def _sql_commit_one_phase(self) -> None:
        with self._participant._translated("commit"):
            self._conn.execute("COMMIT")

    def _sql_rollback(self, *, prepared: bool) -> None:
        if prepared:
            self._participant.finish_on(self._conn, self.xid, commit=False)
            return
        with self._participant._translated("rollback"):
            self._conn.execute("ROLLBACK")


class PostgresLocal(LocalTransaction):
    """A plain PostgreSQL transaction on its own connection."""

    def __init__(self, participant: PostgresParticipant, conn: psycopg.Connection[Any]) -> None:
        super().__init__(participant, conn)
        self._participant: PostgresParticipant = participant
        self._conn: psycopg.Connection[Any] = conn

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Cursor:
        with self._participant._translated("execute"):
            return self._conn.execute(query, params)

    def _sql_commit(self) -> None:
        with self._participant._translated("commit"):
            reply = self._conn.execute("COMMIT").statusmessage
        if reply != "COMMIT":
            raise StatementFailed(f"{self._participant.server}: commit became {reply!r}")


def _translate(participant: PostgresParticipant, action: str, err: Exception) -> ParticipantError:
    sqlstate = err.sqlstate if isinstance(err, psycopg.Error) else None
    # libpq's texts never hold the password (psycopg quotes every parameter into the
    # conninfo it hands libpq, so no password makes that fail to parse and be echoed), and
    # the server part is built from the URL's parts without it: nothing is searched for.
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    message = f"{participant.server}: {action} failed: {first_line}"
    if sqlstate is None or sqlstate.startswith(_UNAVAILABLE_PREFIXES):
        return ParticipantUnavailable(message)
    if sqlstate == _LOCK_NOT_AVAILABLE:
        return LockWaitTimeout.after(message, participant.lock_wait_ms / 1000, code=sqlstate)
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


def _disabled_message(server: str) -> str:
    return (
        f"{server}: prepared transactions are disabled (max_prepared_transactions = 0); "
        "set max_prepared_transactions to at least 100 in postgresql.conf and restart PostgreSQL"
    )
