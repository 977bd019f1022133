"""What twopc's 2PC is measured against: the same transfer done other ways, on the same servers.

Each baseline is one worker's way of moving an amount between a PostgreSQL account and a
MariaDB/MySQL account (or, for ``local``, between two PostgreSQL accounts), on connections of
its own, kept for the whole run:

- :class:`NaiveLoop` — the shortest correct hand-written two-phase commit: prepare PostgreSQL,
  prepare MySQL, append and fsync one line of decision, commit both — one statement at a time,
  one server after the other;
- :class:`SQLAlchemyTwoPhase` — SQLAlchemy's ``Session(twophase=True)`` over both servers,
  which prepares and commits both and keeps no decision log at all;
- :class:`LocalTransfer` — both accounts on PostgreSQL in one local transaction: the price of
  distributing at all.

They move money exactly as the coordinator does (debit refuses to go below zero), so a run
conserves money whatever mix of modes it interleaves.
"""

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from twopc.bank.accounts import natural_key
from twopc.participants import DatabaseURL
from twopc.participants.mysql import open_connection

_DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s AND balance >= %s"
_CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"
_FORMAT_ID = 0x6E616976  # "naiv": never ours (0x74706331), so recovery leaves them alone


class Refused(Exception):
    """The debit found too little money (or no account): nothing was changed."""


class Baseline(Protocol):
    """One worker's way to move ``amount`` between accounts; ``pg_pays`` says which way."""

    def move(self, pg_account: str, mysql_account: str, amount: Decimal, pg_pays: bool) -> None: ...

    def close(self) -> None: ...


class NaiveLoop:
    """Prepare PG, prepare MySQL, fsync a decision line, commit both: sequentially."""

    def __init__(self, pg_url: DatabaseURL, mysql_url: DatabaseURL, decisions: Path) -> None:
        self._pg = psycopg.connect(autocommit=True, **pg_url.psycopg_kwargs())  # type: ignore[arg-type]
        self._mysql = open_connection(mysql_url, autocommit=True)
        self._log = os.open(decisions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def move(self, pg_account: str, mysql_account: str, amount: Decimal, pg_pays: bool) -> None:
        gtrid = secrets.token_hex(10)
        pg_gid = f"naive-{gtrid}"
        xid = f"X'{gtrid.encode().hex()}',X'6d',{_FORMAT_ID}"
        pg_change, mysql_change = (_DEBIT, _CREDIT) if pg_pays else (_CREDIT, _DEBIT)
        self._pg.execute("BEGIN")
        refused = self._pg.execute(pg_change, _args(pg_change, amount, pg_account)).rowcount != 1
        cursor = self._mysql.cursor()
        cursor.execute(f"XA START {xid}")
        refused |= cursor.execute(mysql_change, _args(mysql_change, amount, mysql_account)) != 1
        cursor.execute(f"XA END {xid}")
        if refused:
            self._pg.execute("ROLLBACK")
            cursor.execute(f"XA ROLLBACK {xid}")
            raise Refused(f"{pg_account}/{mysql_account}")
        self._pg.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(pg_gid)))
        cursor.execute(f"XA PREPARE {xid}")
        os.write(self._log, f"COMMIT {gtrid}\n".encode())
        os.fdatasync(self._log)
        self._pg.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(pg_gid)))
        cursor.execute(f"XA COMMIT {xid}")

    def close(self) -> None:
        self._pg.close()
        self._mysql.close()
        os.close(self._log)


class SQLAlchemyTwoPhase:
    """``Session(twophase=True)`` with each server's ``accounts`` bound to its engine."""

    def __init__(self, pg_url: DatabaseURL, mysql_url: DatabaseURL) -> None:
        from sqlalchemy import Column, MetaData, Numeric, String, Table, create_engine
        from sqlalchemy.orm import sessionmaker

        def accounts() -> Table:  # one table per server, same name, each its own metadata
            columns = (Column("id", String(64), primary_key=True), Column("balance", Numeric))
            return Table("accounts", MetaData(), *columns)

        tables = [accounts(), accounts()]
        self._pg_table, self._mysql_table = tables
        self._engines = [
            create_engine(pg_url.sqlalchemy_url(), connect_args=_pg_options(pg_url)),
            create_engine(mysql_url.sqlalchemy_url(), connect_args=_mysql_options(mysql_url)),
        ]
        binds = dict(zip(tables, self._engines, strict=True))
        self._sessions = sessionmaker(twophase=True, binds=binds)

    def move(self, pg_account: str, mysql_account: str, amount: Decimal, pg_pays: bool) -> None:

        pg = self._change(self._pg_table, pg_account, amount, debit=pg_pays)
        mysql = self._change(self._mysql_table, mysql_account, amount, debit=not pg_pays)
        # PostgreSQL first, whatever the direction (as the coordinator's transfers do): two
        # opposite transfers never wait for each other across the servers, a cycle neither
        # server could see.
        with self._sessions() as session:
            for statement, account in (pg, mysql):
                if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
                    session.rollback()
                    raise Refused(account)
            session.commit()

    @staticmethod
    def _change(table: Any, account: str, amount: Decimal, *, debit: bool) -> tuple[Any, str]:
        from sqlalchemy import update

        change = update(table).where(table.c.id == account)
        if debit:
            change = change.where(table.c.balance >= amount)
        delta = -amount if debit else amount
        return change.values(balance=table.c.balance + delta), account

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()


class LocalTransfer:
    """Both accounts on PostgreSQL: one local transaction, no distribution at all."""

    def __init__(self, pg_url: DatabaseURL, offset: int) -> None:
        self._pg = psycopg.connect(autocommit=True, **pg_url.psycopg_kwargs())  # type: ignore[arg-type]
        self._offset = offset

    def move(self, pg_account: str, mysql_account: str, amount: Decimal, pg_pays: bool) -> None:
        # The "other side" is another PostgreSQL account: a{n} pays a{n + offset}, or back.
        other = f"a{int(pg_account[1:]) + self._offset}"
        payer, payee = (pg_account, other) if pg_pays else (other, pg_account)
        # Rows are locked in account order, as bank's transfers do, so opposite transfers
        # never wait for each other in a cycle.
        steps = sorted([(payer, _DEBIT), (payee, _CREDIT)], key=lambda s: natural_key(s[0]))
        with self._pg.transaction():
            for account, change in steps:
                if self._pg.execute(change, _args(change, amount, account)).rowcount != 1:
                    raise Refused(account)

    def close(self) -> None:
        self._pg.close()


def _args(change: str, amount: Decimal, account: str) -> tuple[Any, ...]:
    return (amount, account, amount) if change == _DEBIT else (amount, account)


def _pg_options(url: DatabaseURL) -> dict[str, object]:
    return dict(url.query)


def _mysql_options(url: DatabaseURL) -> dict[str, object]:
    kwargs = url.pymysql_kwargs()
    return {
        k: v for k, v in kwargs.items() if k not in ("database", "user", "host", "port", "password")
    }
