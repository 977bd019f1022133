"""PostgreSQL's branch protocol: ``BEGIN`` … ``PREPARE TRANSACTION`` … ``COMMIT PREPARED``.

Statements are sent explicitly on an autocommit connection rather than through psycopg's
``tpc_*`` API, because ``tpc_prepare()`` on a transaction that already failed returns without
error and prepares nothing. Here the transaction status is checked first, and the server's
reply to ``PREPARE TRANSACTION`` is checked too: a ``ROLLBACK`` reply is a NO vote.

Round trips: ``BEGIN`` travels with the branch's first statement (psycopg's pipeline mode),
and the outcome marker with ``PREPARE TRANSACTION``, so a one-statement branch costs three:
its statement, its prepare, its commit; two when the statement is sent as the branch's last,
with its prepare. The marker is inserted only if the transaction wrote something, which is
how a read-only branch is told without a query of its own.

The branch overlaps (see :mod:`twopc.participants.branch`): a phase's request goes out as one
simple-protocol query on libpq's non-blocking connection, and its reply is read through
psycopg's own result generators under the connection's bounded wait. Several statements in
one query need the simple protocol, so their values are bound by psycopg on the client
(:class:`psycopg.ClientCursor`).

A last statement sent not to wait for row locks carries ``SET LOCAL lock_timeout = 1``
(after ``BEGIN``, for the rest of its transaction, which its ``PREPARE TRANSACTION`` ends): a
row another transaction holds fails it at once with :class:`LockBusy`, after which the branch
is rolled back on its connection, which stays usable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Sequence
from typing import Any

import psycopg
from psycopg import generators, sql
from psycopg.errors import error_from_result
from psycopg.pq import DiagnosticField, ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult

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
    BranchStateError,
    LockBusy,
    LockWaitTimeout,
    MisconfiguredServer,
    ParticipantError,
    ParticipantUnavailable,
    PrepareRefused,
    StatementFailed,
    UnknownXid,
)
from twopc.participants.markers import OutcomeMarkers
from twopc.participants.postgres_link import PostgresLink
from twopc.participants.requests import requests_of, wait_until_gone
from twopc.participants.xid import Xid

_UNDEFINED_OBJECT = "42704"
_PREPARED_DISABLED = "55000"
# The branch's outcome marker, written only when the transaction has written something (an
# INSERT of no row assigns no transaction id): its row count tells a read-only branch.
_MARKER_IF_WRITTEN = (
    "INSERT INTO twopc_outcomes (gtrid, branch, created_at) "
    "SELECT %s, %s, %s WHERE txid_current_if_assigned() IS NOT NULL"
)


# A statement that must not wait for row locks: PostgreSQL's lock_timeout, 1 ms, for the
# rest of its transaction (PREPARE TRANSACTION ends it).
_NO_LOCK_WAIT = "SET LOCAL lock_timeout = 1"

# The marker, then the prepare, as one query (values bound by psycopg's ClientCursor).
_MARKER_AND_PREPARE = _MARKER_IF_WRITTEN + "; PREPARE TRANSACTION %s"

_PREPARED_SQL = """
    SELECT gid, extract(epoch FROM prepared)::float8, database
      FROM pg_prepared_xacts WHERE database = current_database()
"""

_ELSEWHERE_SQL = "SELECT gid FROM pg_prepared_xacts WHERE database <> current_database()"

# Sessions running a tagged request (see participants.requests), in any database.
_TAGGED_SQL = """
    SELECT pid, query FROM pg_stat_activity
     WHERE pid <> pg_backend_pid() AND state = 'active' AND starts_with(query, '/* twopc ')
"""
_TERMINATE_SQL = "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid"
_STILL_THERE_SQL = "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)"


class PostgresBranches(BranchProtocol):
    """Branches of global transactions in one PostgreSQL database."""

    def __init__(self, participant: Participant, link: PostgresLink, markers: OutcomeMarkers):
        self._participant = participant  # lends the connections; its branches report to it
        self.link = link
        self.markers = markers

    def begin(self, xid: Xid) -> PostgresBranch:
        """A branch on a pooled connection; its ``BEGIN`` goes with its first statement."""
        conn, verified = self._participant.take(trust_recent=True)
        return PostgresBranch(self._participant, self, conn, xid, verified=verified)

    def finish_prepared(self, xid: Xid, *, commit: bool) -> None:
        self._participant.redoable(lambda conn: self.finish_on(conn, xid, commit=commit))

    def finish_on(self, conn: psycopg.Connection[Any], xid: Xid, *, commit: bool) -> None:
        """``COMMIT PREPARED`` / ``ROLLBACK PREPARED`` on an idle connection."""
        verb = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED"
        try:
            with self.link.translated(verb.lower()):
                conn.execute(sql.SQL(verb + " {}").format(sql.Literal(xid.pg_gid())))
        except StatementFailed as err:
            raise self.unknown_or(err, xid) from err

    def unknown_or(self, err: StatementFailed, xid: Xid) -> ParticipantError:
        """What a failed ``COMMIT/ROLLBACK PREPARED`` of ``xid`` means: no such branch
        (:class:`UnknownXid`), or ``err`` itself."""
        if err.code == _UNDEFINED_OBJECT:
            return UnknownXid(f"{self.link.server}: no prepared branch {xid}")
        return err

    def prepared_branches(self) -> list[PreparedBranch]:
        """Every prepared branch in this database, ours and foreign. ``pg_prepared_xacts``
        is cluster-wide, so it is filtered on the database: a branch another participant
        prepared in another database of the same server is not listed here."""
        listing = self.link.translated("list prepared transactions")
        with self._participant.borrowed() as conn, listing:
            rows = conn.execute(_PREPARED_SQL).fetchall()
        server = self.link.server
        return [PreparedBranch(server, gid, Xid.from_pg_gid(gid), at, db) for gid, at, db in rows]

    def prepared_elsewhere(self) -> set[str]:
        listing = self.link.translated("list prepared transactions")
        with self._participant.borrowed() as conn, listing:
            rows = conn.execute(_ELSEWHERE_SQL).fetchall()
        xids = (Xid.from_pg_gid(gid) for (gid,) in rows)
        return {x.gtrid for x in xids if x is not None and x.is_ours}

    def stop_requests(self, prefixes: Collection[str]) -> set[str]:
        """Terminate the sessions running a request of a branch whose gtrid starts with one
        of ``prefixes`` and wait until they are gone; the gtrids they named."""
        with self.link.connect() as conn, self.link.translated("stop requests"):
            found = requests_of(conn.execute(_TAGGED_SQL).fetchall(), prefixes)
            if not found:
                return set()
            sessions = sorted(found)
            conn.execute(_TERMINATE_SQL, [sessions])
            wait_until_gone(
                lambda: {pid for (pid,) in conn.execute(_STILL_THERE_SQL, [sessions])},
                self.link.server,
            )
        return set().union(*found.values())

    def check_server(self) -> None:
        with self.link.connect() as conn, self.link.translated("check max_prepared_transactions"):
            row = conn.execute("SHOW max_prepared_transactions").fetchone()
        if row is None or int(row[0]) == 0:
            raise MisconfiguredServer(_disabled_message(self.link.server))


class PostgresBranch(Branch):
    """A branch held open on one PostgreSQL connection."""

    overlaps = True
    prepares_early = True
    refuses_lock_waits = True

    def __init__(
        self,
        participant: Participant,
        protocol: PostgresBranches,
        conn: psycopg.Connection[Any],
        xid: Xid,
        *,
        verified: bool = True,
    ) -> None:
        super().__init__(participant, xid)
        self._protocol = protocol
        self._link = protocol.link
        self._conn = conn
        self._verified = verified  # the server was heard on this connection when it was lent
        self._begun = False  # BEGIN sent (with the first statement)
        self._prepare_sent = False  # the overlapped prepare's request went out
        # The last statements' binders, the first one's result index, whether they wait.
        self._sent_last: tuple[list[psycopg.ClientCursor[Any]], int, bool] | None = None

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
            if self._begun:
                return self._conn.execute(query, params)
        return self._begin_with(query, params)

    def _begin_with(self, query: str, params: Sequence[Any] | None) -> Cursor:
        """``BEGIN`` and the first statement in one round trip."""
        cursor = self._first_request(lambda: self._pipelined(("BEGIN", None), (query, params)))
        self._begun = True
        return cursor

    def _use(self, conn: psycopg.Connection[Any], verified: bool) -> None:
        self._conn, self._verified = conn, verified
        self._begun = False

    def _pipelined(self, *statements: tuple[Any, Sequence[Any] | None]) -> Cursor:
        """Send ``statements`` in one round trip; the last one's cursor. The first error
        raises (PostgreSQL skips what follows an error in a pipeline)."""
        with self._link.translated("execute"), self._conn.pipeline():
            cursors = [self._conn.execute(query, params) for query, params in statements]
        return cursors[-1]

    def _vote(self, markers: int, reply: str | None) -> Vote:
        if reply != "PREPARE TRANSACTION":
            # The server turned the PREPARE into a ROLLBACK: nothing is prepared.
            raise PrepareRefused(f"{self._link.server}: server replied {reply!r} to PREPARE")
        if markers == 0:  # it wrote nothing: finish the empty prepared transaction now
            self._protocol.finish_on(self._conn, self.xid, commit=True)
            self._finished_cleanly = True
            return Vote.READ_ONLY
        return Vote.PREPARED

    def _abandon(self) -> None:
        """Roll back whatever is left of the local transaction, ignoring a dead link."""
        try:
            self._conn.execute("ROLLBACK")
        except psycopg.Error:
            self._conn.close()

    def _sql_send_last(self, statements: list[Statement], wait_for_locks: bool) -> None:
        """One simple-protocol query: [``BEGIN``;] [``SET LOCAL lock_timeout``;] the
        statements; the marker; ``PREPARE TRANSACTION``. The values are bound by psycopg on
        the client (a ``ClientCursor`` per statement): only the simple protocol takes several
        statements at once. The server runs nothing after the first error, so the position
        of the failed result says whose error it is. The xid's tag opens it (recovery finds a
        dead coordinator's request by it)."""
        binders = [psycopg.ClientCursor(self._conn) for _ in statements]
        head = [] if self._begun else ["BEGIN"]
        if not wait_for_locks:
            head.append(_NO_LOCK_WAIT)
        # A newline ends each statement: one ending in a -- comment cannot swallow the rest.
        texts = [f"{b.mogrify(q, v)}\n" for b, (q, v) in zip(binders, statements, strict=True)]
        marker = binders[0].mogrify(_MARKER_AND_PREPARE, self._marker())
        self._sent_last = (binders, len(head), wait_for_locks)
        self._begun = True  # from here on the server may hold the branch, even prepared
        request = "; ".join([*head, *texts, marker])
        self._send_text(f"{self.xid.request_tag()} {request}", "execute")

    def _sql_receive_last(self) -> tuple[list[Cursor], Vote]:
        if self._sent_last is None:
            raise BranchStateError(f"branch {self.xid}: no last statement was sent")
        binders, first, wait_for_locks = self._sent_last
        self._sent_last = None
        end = first + len(binders)  # the index of the marker's result
        failed: int | None = None
        try:
            with self._link.translated("execute"):
                results = self._conn.wait(generators.fetch_many(self._conn.pgconn))
                failed = _first_error(results)
                if failed is not None and failed < end:
                    raise error_from_result(results[failed], encoding=self._conn.info.encoding)
        except StatementFailed as err:
            self._abandon()
            if failed is not None and failed >= first:
                err.statement = failed - first
            if wait_for_locks or not isinstance(err, LockWaitTimeout):
                raise  # BEGIN's or a statement's own error
            self._finished_cleanly = not self._conn.closed  # rolled back: the link is sound
            busy = LockBusy(f"{self._link.server}: row locked by another transaction")
            busy.statement = err.statement
            raise busy from err
        if failed is not None:
            self._abandon()
            reason = results[failed].error_message.decode(errors="replace").strip()
            sqlstate = results[failed].error_field(DiagnosticField.SQLSTATE)
            if sqlstate == _PREPARED_DISABLED.encode():
                raise MisconfiguredServer(_disabled_message(self._link.server))
            raise PrepareRefused(f"{self._link.server}: prepare failed: {reason}")
        if len(results) != end + 2:
            self._conn.close()
            raise ParticipantUnavailable(
                f"{self._link.server}: execute: {len(results)} replies, expected {end + 2}"
            )
        # Each statement's result, read through the cursor that bound it (the way psycopg's
        # pipeline hands each cursor its results).
        for binder, result in zip(binders, results[first:end], strict=True):
            binder._set_results([result])
        written, prepared = results[end:]
        reply = prepared.command_status
        vote = self._vote(written.command_tuples or 0, reply.decode() if reply else None)
        return list(binders), vote

    def _marker(self) -> tuple[str, str, float, str]:
        """The values of ``_MARKER_AND_PREPARE``: the marker's row, then the gid."""
        return (self.xid.gtrid, self.xid.bqual, time.time(), self.xid.pg_gid())

    def _send_text(self, text: str, action: str) -> None:
        """Queue ``text`` (one simple-protocol query: several statements may share it) and
        flush it to the server without waiting for any reply."""
        pgconn = self._conn.pgconn
        with self._link.translated(action):
            pgconn.send_query(text.encode(self._conn.info.encoding))
            self._conn.wait(generators.send(pgconn))

    # -- overlapped phases: a request now, its reply later ---------------------------------

    def _sql_send_prepare(self) -> None:
        self._prepare_sent = False
        if not self._begun or self._conn.info.transaction_status is not TransactionStatus.INTRANS:
            return  # nothing to send: the receive says why (read-only, or a NO vote)
        self._prepare_sent = True
        binder = psycopg.ClientCursor(self._conn)
        marker = binder.mogrify(_MARKER_AND_PREPARE, self._marker())
        self._send_text(f"{self.xid.request_tag()} {marker}", "prepare")

    def _sql_receive_prepare(self) -> Vote:
        if not self._begun:
            return Vote.READ_ONLY
        if not self._prepare_sent:  # the transaction had already failed
            status = self._conn.info.transaction_status
            self._abandon()
            raise PrepareRefused(f"{self._link.server}: transaction is {status.name}")
        try:
            written, prepared = self._receive("prepare", expect=2)
        except StatementFailed as err:
            self._abandon()
            if err.code == _PREPARED_DISABLED:
                raise MisconfiguredServer(_disabled_message(self._link.server)) from err
            raise PrepareRefused(f"{self._link.server}: {err}") from err
        reply = prepared.command_status
        return self._vote(written.command_tuples or 0, reply.decode() if reply else None)

    def _sql_send_commit(self) -> None:
        self._send_text(f"COMMIT PREPARED {self.xid.pg_gid_literal()}", "commit prepared")

    def _sql_receive_commit(self) -> None:
        try:
            self._receive("commit prepared", expect=1)
        except StatementFailed as err:
            raise self._protocol.unknown_or(err, self.xid) from err

    def _receive(self, action: str, *, expect: int) -> list[PGresult]:
        """Read every result of the query sent; the first error raises (the server skips the
        statements after it). ``expect`` results, else the reply is not understood: the
        connection is closed (what the server did is then looked up by xid)."""
        with self._link.translated(action):
            results: list[PGresult] = self._conn.wait(generators.fetch_many(self._conn.pgconn))
            for result in results:
                if result.status == ExecStatus.FATAL_ERROR:
                    raise error_from_result(result, encoding=self._conn.info.encoding)
        if len(results) != expect:
            self._conn.close()
            raise ParticipantUnavailable(
                f"{self._link.server}: {action}: {len(results)} replies, expected {expect}"
            )
        return results

    def _sql_commit_one_phase(self) -> None:
        if not self._begun:
            return  # nothing was sent: nothing to commit
        with self._link.translated("commit"):
            self._conn.execute("COMMIT")

    def _sql_rollback(self, *, prepared: bool) -> None:
        if prepared:
            self._protocol.finish_on(self._conn, self.xid, commit=False)
            return
        if not self._begun:
            return  # nothing was sent: nothing to roll back
        with self._link.translated("rollback"):
            self._conn.execute("ROLLBACK")


def _first_error(results: Sequence[PGresult]) -> int | None:
    return next((n for n, r in enumerate(results) if r.status == ExecStatus.FATAL_ERROR), None)


def _disabled_message(server: str) -> str:
    return (
        f"{server}: prepared transactions are disabled (max_prepared_transactions = 0); "
        "set max_prepared_transactions to at least 100 in postgresql.conf and restart PostgreSQL"
    )
