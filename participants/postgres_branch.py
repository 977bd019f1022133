"""PostgreSQL's branch protocol: ``BEGIN`` … ``PREPARE TRANSACTION`` … ``COMMIT PREPARED``.

Statements are sent explicitly on an autocommit connection rather than through psycopg's
``tpc_*`` API, because ``tpc_prepare()`` on a transaction that already failed returns without
error and prepares nothing. Here the transaction status is checked first, and the server's
reply to ``PREPARE TRANSACTION`` is checked too: a ``ROLLBACK`` reply is a NO vote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from twopc.participants.base import Participant, shut_down_socket
from twopc.participants.branch import Branch, BranchProtocol, Cursor, PreparedBranch, Vote
from twopc.participants.errors import (
    MisconfiguredServer,
    PrepareRefused,
    StatementFailed,
    UnknownXid,
)
from twopc.participants.markers import OutcomeMarkers
from twopc.participants.postgres_link import PostgresLink
from twopc.participants.xid import Xid

_UNDEFINED_OBJECT = "42704"
_PREPARED_DISABLED = "55000"

_PREPARED_SQL = """
    SELECT gid, extract(epoch FROM prepared)::float8, database
      FROM pg_prepared_xacts WHERE database = current_database()
"""


class PostgresBranches(BranchProtocol):
    """Branches of global transactions in one PostgreSQL database."""

    def __init__(self, participant: Participant, link: PostgresLink, markers: OutcomeMarkers):
        self._participant = participant  # lends the connections; its branches report to it
        self.link = link
        self.markers = markers

    def begin(self, xid: Xid) -> PostgresBranch:
        conn = self._participant.checkout()
        with self.link.translated("begin"):
            conn.execute("BEGIN")
        return PostgresBranch(self._participant, self, conn, xid)

    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        with self._participant.borrowed() as conn:
            self.finish_on(conn, xid, commit=commit)

    def finish_on(self, conn: psycopg.Connection[Any], xid: Xid, *, commit: bool) -> None:
        """``COMMIT PREPARED`` / ``ROLLBACK PREPARED`` on an idle connection."""
        verb = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED"
        try:
            with self.link.translated(verb.lower()):
                conn.execute(sql.SQL(verb + " {}").format(sql.Literal(xid.pg_gid())))
        except StatementFailed as err:
            if err.code == _UNDEFINED_OBJECT:
                raise UnknownXid(f"{self.link.server}: no prepared branch {xid}") from err
            raise

    def prepared_branches(self) -> list[PreparedBranch]:
        listing = self.link.translated("list prepared transactions")
        with self._participant.borrowed() as conn, listing:
            rows = conn.execute(_PREPARED_SQL).fetchall()
        server = self.link.server
        return [PreparedBranch(server, gid, Xid.from_pg_gid(gid), at, db) for gid, at, db in rows]

    def check_server(self) -> None:
        with self.link.connect() as conn, self.link.translated("check max_prepared_transactions"):
            row = conn.execute("SHOW max_prepared_transactions").fetchone()
        if row is None or int(row[0]) == 0:
            raise MisconfiguredServer(_disabled_message(self.link.server))


class PostgresBranch(Branch):
    """A branch held open on one PostgreSQL connection."""

    def __init__(
        self,
        participant: Participant,
        protocol: PostgresBranches,
        conn: psycopg.Connection[Any],
        xid: Xid,
    ) -> None:
        super().__init__(participant, xid)
        self._protocol = protocol
        self._link = protocol.link
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
        with self._link.translated("execute"):
            return self._conn.execute(query, params)

    def _sql_prepare(self) -> Vote:
        status = self._conn.info.transaction_status
        if status is not TransactionStatus.INTRANS:
            self._abandon()
            raise PrepareRefused(f"{self._link.server}: transaction is {status.name}")
        if self._wrote_nothing():
            self._sql_commit_one_phase()
            return Vote.READ_ONLY
        try:
            self._protocol.markers.write(self._sql_execute, self.xid)
        except StatementFailed as err:
            self._abandon()
            raise PrepareRefused(f"{self._link.server}: outcome marker: {err}") from err
        return self._prepare_transaction()

    def _prepare_transaction(self) -> Vote:
        try:
            with self._link.translated("prepare"):
                query = sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(self.xid.pg_gid()))
                reply = self._conn.execute(query).statusmessage
        except StatementFailed as err:
            self._abandon()
            if err.code == _PREPARED_DISABLED:
                raise MisconfiguredServer(_disabled_message(self._link.server)) from err
            raise PrepareRefused(f"{self._link.server}: {err}") from err
        if reply != "PREPARE TRANSACTION":
            # The server turned the PREPARE into a ROLLBACK: nothing is prepared.
            raise PrepareRefused(f"{self._link.server}: server replied {reply!r} to PREPARE")
        return Vote.PREPARED

    def _wrote_nothing(self) -> bool:
        with self._link.translated("check for writes"):
            row = self._conn.execute("SELECT txid_current_if_assigned() IS NULL").fetchone()
        return bool(row and row[0])

    def _abandon(self) -> None:
        """Roll back whatever is left of the local transaction, ignoring a dead link."""
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.Error:
            self._conn.close()

    def _sql_commit_prepared(self) -> None:
        self._protocol.finish_on(self._conn, self.xid, commit=True)

    def _sql_commit_one_phase(self) -> None:
        with self._link.translated("commit"):
            self._conn.execute("COMMIT")

    def _sql_rollback(self, *, prepared: bool) -> None:
        if prepared:
            self._protocol.finish_on(self._conn, self.xid, commit=False)
            return
        with self._link.translated("rollback"):
            self._conn.execute("ROLLBACK")


def _disabled_message(server: str) -> str:
    return (
        f"{server}: prepared transactions are disabled (max_prepared_transactions = 0); "
        "set max_prepared_transactions to at least 100 in postgresql.conf and restart PostgreSQL"
    )
