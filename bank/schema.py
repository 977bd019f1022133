"""The demo schema on both servers, created idempotently with SQLAlchemy, and its seed data.

Besides ``accounts``, the saga path's tables (``saga_steps``, ``saga_holds``,
``saga_notifications``) are created here too; their DDL belongs to :mod:`saga.tables`, which
also creates them before a saga runs.
"""

from __future__ import annotations

from collections.abc import Callable
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
from sqlalchemy.exc import SQLAlchemyError

from participants import DatabaseURL, ParticipantError
from participants.mysql import open_connection
from saga.tables import saga_ddl, saga_drop_ddl

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("balance", Numeric(20, 2), nullable=False),
    CheckConstraint("balance >= 0", name="accounts_balance_not_negative"),
    mysql_engine="InnoDB",
)


def init_schema(url: DatabaseURL, *, accounts_count: int, balance: Decimal, reset: bool) -> int:
    """Create the tables if missing and seed ``a1``…``aN``; returns how many accounts were added.

    Existing accounts keep their balances unless ``reset`` drops and recreates the tables
    (the saga tables included).
    """
    # Connections come from the same code as the participants' (TLS options included);
    # SQLAlchemy only provides the DDL dialect.
    engine = create_engine(url.sqlalchemy_url(), creator=_connector(url))
    try:
        with engine.begin() as conn:
            if reset:
                metadata.drop_all(conn)
                conn.exec_driver_sql(saga_drop_ddl())
            metadata.create_all(conn)
            for statement in saga_ddl(url.backend):
                conn.exec_driver_sql(statement)
            existing = set(conn.scalars(select(accounts.c.id)))
            wanted = [f"a{n}" for n in range(1, accounts_count + 1)]
            rows = [{"id": i, "balance": balance} for i in wanted if i not in existing]
            if rows:
                conn.execute(insert(accounts), rows)
            return len(rows)
    except SQLAlchemyError as err:
        orig = getattr(err, "orig", None)
        reason = url.scrub(str(orig) if orig is not None else str(err))
        raise ParticipantError(f"{url.backend} {url.location()}: init failed: {reason}") from err
    finally:
        engine.dispose()


def _connector(url: DatabaseURL) -> Callable[[], Any]:
    if url.backend == "pg":
        return lambda: psycopg.connect(**url.psycopg_kwargs())  # type: ignore[arg-type]
    return lambda: open_connection(url, autocommit=False)
