"""The demo schema on both servers, created idempotently with SQLAlchemy, and its seed data.

Besides ``accounts``, the saga tables are created here too: the engine's ``saga_steps``
(its DDL belongs to :mod:`saga.tables`) and the transfer saga's ``saga_holds`` and
``saga_notifications`` (:mod:`bank.tables`); both are also made sure of before a saga runs.
So are the outbox tables transfers announce themselves in (:mod:`twopc.outbox`) and the
notifications consumer's (:mod:`bank.notifications`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import (
    CheckConstraint,
    Column,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from twopc.bank.notifications import confirmations_ddl, confirmations_drop_ddl
from twopc.bank.tables import transfer_ddl, transfer_drop_ddl
from twopc.outbox import consumed_ddl, outbox_ddl, outbox_drop_ddl
from twopc.participants import DatabaseURL, ParticipantError, PreparedBranch, participant_for
from twopc.participants.mysql import CONNECT_TIMEOUT, open_connection
from twopc.saga.tables import saga_ddl, saga_drop_ddl

#: Seconds any statement of :func:`init_schema` waits for a lock before it fails: a DROP
#: or CREATE queued behind another transaction's locks would otherwise wait forever (and,
#: queued, block every later reader of the table in PostgreSQL).
LOCK_WAIT = 10


class ResetRefused(ParticipantError):
    """A reset was refused: prepared transactions hold, or may hold, locks on the tables."""


metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("balance", Numeric(20, 2), nullable=False),
    CheckConstraint("balance >= 0", name="accounts_balance_not_negative"),
    mysql_engine="InnoDB",
)


def init_schema(
    url: DatabaseURL,
    *,
    accounts_count: int,
    balance: Decimal,
    reset: bool,
    lock_wait: int = LOCK_WAIT,
) -> int:
    """Create the tables if missing and seed ``a1``…``aN``; returns how many accounts were added.

    Existing accounts keep their balances unless ``reset`` drops and recreates the tables
    (the saga tables included); a reset is refused (:class:`ResetRefused`, nothing dropped)
    while the database holds a prepared transaction. No statement waits more than
    ``lock_wait`` seconds for a lock.
    """
    if reset:
        check_reset_allowed([url])
    # Connections come from the same code as the participants' (TLS options included);
    # SQLAlchemy only provides the DDL dialect.
    engine = create_engine(url.sqlalchemy_url(), creator=_connector(url))
    try:
        with engine.begin() as conn:
            _limit_lock_waits(conn, url, lock_wait)
            if reset:
                metadata.drop_all(conn)
                conn.exec_driver_sql(saga_drop_ddl())
                conn.exec_driver_sql(transfer_drop_ddl())
                conn.exec_driver_sql(outbox_drop_ddl())
                conn.exec_driver_sql(confirmations_drop_ddl())
            metadata.create_all(conn)
            for statement in _domain_ddl(url.backend):
                conn.exec_driver_sql(statement)
            existing = set(conn.scalars(select(accounts.c.id)))
            wanted = [f"a{n}" for n in range(1, accounts_count + 1)]
            rows = [{"id": i, "balance": balance} for i in wanted if i not in existing]
            if rows:
                conn.execute(insert(accounts), rows)
            return len(rows)
    except SQLAlchemyError as err:
        orig = getattr(err, "orig", None)
        text = str(orig if orig is not None else err).strip() or repr(err)
        reason = text.splitlines()[0]  # driver texts hold no password; later lines are detail
        raise ParticipantError(f"{url.backend} {url.location()}: init failed: {reason}") from err
    finally:
        engine.dispose()


def _domain_ddl(backend: str) -> list[str]:
    # The saga engine's table, the transfer saga's, the outbox transfers announce
    # themselves in, and the notifications consumer's (its effect and its record of ids).
    return [
        *saga_ddl(backend),
        *transfer_ddl(backend),
        *outbox_ddl(backend),
        *consumed_ddl(backend),
        *confirmations_ddl(backend),
    ]


def check_reset_allowed(urls: Iterable[DatabaseURL]) -> None:
    """Raise :class:`ResetRefused` if any of these databases holds a prepared transaction.

    A prepared branch keeps its locks until it is committed or rolled back, so dropping a
    table it touched would wait for it. PostgreSQL lists prepared transactions per
    database; MariaDB's ``XA RECOVER`` does not say which database a branch touched, so
    there every prepared branch on the server counts. Check every database before
    resetting any, so a refusal leaves all of them as they were.
    """
    held = {url: _prepared(url) for url in urls}
    found = {url: branches for url, branches in held.items() if branches}
    if found:
        raise ResetRefused(_refusal(found))


def _prepared(url: DatabaseURL) -> list[PreparedBranch]:
    participant = participant_for(url.backend, url)
    try:
        return participant.prepared_branches()
    finally:
        participant.close()


def _refusal(found: dict[DatabaseURL, list[PreparedBranch]]) -> str:
    def held(url: DatabaseURL, branches: list[PreparedBranch]) -> str:
        ours = sum(1 for b in branches if b.xid is not None and b.xid.is_ours)
        return f"{url.backend} {url.location()} holds {len(branches)} ({ours} of them twopc's)"

    return (
        "reset refused, nothing dropped: prepared transactions hold locks the reset would "
        f"wait for: {', '.join(held(url, b) for url, b in found.items())}; see them with "
        "`twopc in-doubt`, finish twopc's with `twopc recover` (any others with whatever "
        "prepared them), then retry"
    )


def _limit_lock_waits(conn: Connection, url: DatabaseURL, seconds: int) -> None:
    if url.backend == "pg":
        # LOCAL: for this transaction, which is all of init (PostgreSQL's DDL is transactional).
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{seconds:d}s'")
    else:
        # lock_wait_timeout bounds metadata locks (DDL), innodb_lock_wait_timeout row locks.
        conn.exec_driver_sql(
            f"SET SESSION lock_wait_timeout = {seconds:d}, innodb_lock_wait_timeout = {seconds:d}"
        )


def _connector(url: DatabaseURL) -> Callable[[], Any]:
    if url.backend == "pg":
        kwargs = url.psycopg_kwargs()
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)  # as the participants connect
        return lambda: psycopg.connect(**kwargs)  # type: ignore[arg-type]
    return lambda: open_connection(url, autocommit=False)
