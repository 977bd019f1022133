"""Shared fixtures: one pair of throwaway servers per test session, clean state per test.

The servers are the project's own dev servers (``devserver``) in a temporary directory —
real PostgreSQL and MariaDB processes that tests may kill and restart. Every test that uses
``db`` starts with fresh ``accounts`` tables and no prepared branches, and leaves none behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from click.testing import CliRunner
from psycopg import sql

from twopc.bank.schema import init_schema
from twopc.cli import main as cli_main
from twopc.devserver import DevServers, DevState
from twopc.participants import (
    DatabaseURL,
    MySQLParticipant,
    Participant,
    PostgresParticipant,
    Xid,
)

# The CLI's configuration, as `eval "$(twopc dev env)"` exports it in a developer's shell:
# tests say what they use (Databases.env), and nothing of the shell's may steer them at the
# dev servers (TWOPC_PARTICIPANTS would add those as more participants to every command).
for _setting in (
    "TWOPC_HOME",
    "TWOPC_PG_URL",
    "TWOPC_MYSQL_URL",
    "TWOPC_PARTICIPANTS",
    "TWOPC_COORDINATOR_ID",
    "TWOPC_BROKER_URL",
):
    os.environ.pop(_setting, None)

ACCOUNTS = 10
_SESSION_ID = {"pg": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
OPENING = Decimal("1000.00")


@pytest.fixture(scope="session")
def dev_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServers]:
    servers = DevServers(tmp_path_factory.mktemp("servers") / "dev")
    servers.up()
    yield servers
    servers.destroy()


@pytest.fixture(scope="session")
def broker_url(dev_servers: DevServers) -> str:
    """The session's throwaway RabbitMQ beside the databases (ports of its own: the machine's
    broker is never used); stopped with them. Tests may kill and restart it."""
    return dev_servers.broker_up().url


@dataclass
class Databases:
    """Handles on the two test databases, with helpers that read server-side state."""

    servers: DevServers
    state: DevState
    home: Path

    @property
    def pg_url(self) -> str:
        return self.state.pg.url

    @property
    def mysql_url(self) -> str:
        return self.state.mysql.url

    def pg(self) -> PostgresParticipant:
        return PostgresParticipant("pg", DatabaseURL.parse(self.pg_url))

    def mysql(self) -> MySQLParticipant:
        return MySQLParticipant("mysql", DatabaseURL.parse(self.mysql_url))

    def pg_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            cursor = conn.execute(sql, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def mysql_connect(self) -> Any:
        """A plain autocommit connection for reading and setting up state. Without TLS: PyMySQL
        builds a context from the system's CA store for every connection otherwise (~20 ms)."""
        info = self.state.mysql
        return pymysql.connect(
            host=info.host,
            port=info.port,
            user=info.user,
            database=info.database,
            autocommit=True,
            ssl_disabled=True,
        )

    def mysql_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.mysql_connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def balance(self, side: str, account: str) -> Decimal:
        query = self.pg_query if side == "pg" else self.mysql_query
        rows = query("SELECT balance FROM accounts WHERE id = %s", (account,))
        return Decimal(rows[0][0])

    def balances(self) -> dict[str, Decimal]:
        out = {f"pg:{i}": Decimal(b) for i, b in self.pg_query("SELECT id, balance FROM accounts")}
        out |= {
            f"mysql:{i}": Decimal(b)
            for i, b in self.mysql_query("SELECT id, balance FROM accounts")
        }
        return out

    def pg_prepared(self) -> list[Xid | str]:
        """Prepared branches on the PostgreSQL server (xid when xid-shaped, else the gid)."""
        gids = [g for (g,) in self.pg_query("SELECT gid FROM pg_prepared_xacts ORDER BY prepared")]
        return [Xid.from_pg_gid(g) or g for g in gids]

    def mysql_prepared(self) -> list[Xid | str]:
        """Prepared branches on the MariaDB server, as listed by ``XA RECOVER``."""
        rows = self.mysql_query("XA RECOVER")
        return [Xid.from_mysql_recover(int(f), int(g), int(b), d) or repr(d) for f, g, b, d in rows]

    def clear_prepared(self) -> None:
        """Roll back every prepared branch on both servers (ours and foreign)."""
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            for (gid,) in conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall():
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        deadline = time.monotonic() + 10
        conn = self.mysql_connect()
        try:
            cursor = conn.cursor()
            while cursor.execute("XA RECOVER"):
                for fmt, glen, _, data in cursor.fetchall():
                    xid = f"X'{data[: int(glen)].hex()}',X'{data[int(glen) :].hex()}',{int(fmt)}"
                    try:
                        cursor.execute(f"XA ROLLBACK {xid}")
                    except pymysql.err.OperationalError as err:
                        # 1397 while the preparing session (a killed process) is not yet reaped.
                        if err.args[0] != 1397 or time.monotonic() > deadline:
                            raise
                time.sleep(0.1)
        finally:
            conn.close()

    def kill_idle_pooled(self, participant: Participant, side: str) -> int:
        """End, behind the pool's back, the session of a connection idle in
        ``participant``'s pool (the next one it lends); returns that session's id."""
        with participant.local_transaction() as local:
            pooled = int(local.execute(_SESSION_ID[side]).fetchone()[0])
        if side == "pg":
            self.pg_query("SELECT pg_terminate_backend(%s)", (pooled,))
        else:
            self.mysql_query("KILL %s", (pooled,))
        return pooled

    def clear_markers(self) -> None:
        """Delete every outcome marker on both servers (when the table exists)."""
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('twopc_outcomes')").fetchone() != (None,):
                conn.execute("DELETE FROM twopc_outcomes")
        if self.mysql_query("SHOW TABLES LIKE 'twopc_outcomes'"):
            self.mysql_query("DELETE FROM twopc_outcomes")

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TWOPC_HOME=str(self.home), TWOPC_PG_URL=self.pg_url, TWOPC_MYSQL_URL=self.mysql_url
        )
        env.update(extra)
        env.pop("TWOPC_COORDINATOR_ID", None)
        return env

    def twopc(
        self, *args: str, timeout: float = 120, process: bool = False, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``twopc`` command: in this process (click's test runner: output, exit
        code and environment as a process would have them), or as a process of its own when
        ``process`` is true or the command may kill itself (``--crash-at``) or hold
        (``--pause-at``), or when called from another thread than the main one (the runner
        swaps this process's standard streams, and only the main thread may set signal
        handlers). ``TWOPC_TEST_CLI=process`` runs every command as a process."""
        if (
            process
            or _NEEDS_A_PROCESS & set(args)
            or threading.current_thread() is not threading.main_thread()
            or os.environ.get("TWOPC_TEST_CLI") == "process"
        ):
            return subprocess.run(
                [twopc_executable(), *args],
                env=self.env(**env),
                text=True,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        return run_in_process(list(args), self.env(**env))

    def twopc_json(self, *args: str) -> Any:
        result = self.twopc(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


# Options with which a command kills itself or holds: those run as processes of their own.
_NEEDS_A_PROCESS = {"--crash-at", "--pause-at"}


def run_in_process(args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``twopc ARGS`` with click's test runner, in this process, with exactly ``environ``
    as its environment. What a process would show is kept: stdout and stderr apart, the exit
    code, and an unexpected exception's traceback on stderr (exit code 1)."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k not in environ}
    result = CliRunner().invoke(cli_main, args, env={**environ, **unset}, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        info = result.exc_info
        assert info is not None
        stderr += "".join(traceback.format_exception(*info))
    return subprocess.CompletedProcess(["twopc", *args], result.exit_code, result.stdout, stderr)


def twopc_executable() -> str:
    """The ``twopc`` script installed beside the running interpreter (the project's venv)."""
    found = shutil.which("twopc", path=str(Path(sys.executable).parent)) or shutil.which("twopc")
    assert found, "the twopc command is not installed: run scripts/bootstrap.sh"
    return found


@pytest.fixture()
def db(dev_servers: DevServers, tmp_path: Path) -> Iterator[Databases]:
    state = dev_servers.up()  # a test before may have stopped or killed a server
    databases = Databases(dev_servers, state, tmp_path / "home")
    databases.clear_prepared()
    databases.clear_markers()  # another test's home (and its coordinators' logs) is gone
    for url in (state.pg.url, state.mysql.url):
        init_schema(DatabaseURL.parse(url), accounts_count=ACCOUNTS, balance=OPENING, reset=True)
    yield databases
    databases.state = dev_servers.up()
    databases.clear_prepared()


AMOUNT = Decimal("7.25")  # what the crash and recovery tests move


@dataclass(frozen=True)
class Direction:
    """A cross-database transfer of AMOUNT; the source's branch is enlisted (and prepared) first."""

    source: str
    source_account: str
    destination: str
    destination_account: str

    @property
    def args(self) -> tuple[str, str, str]:
        return (
            f"{self.source}:{self.source_account}",
            f"{self.destination}:{self.destination_account}",
            str(AMOUNT),
        )

    def moved(self, before: dict[str, Decimal]) -> dict[str, Decimal]:
        """``before`` with AMOUNT moved from source to destination."""
        after = dict(before)
        after[f"{self.source}:{self.source_account}"] -= AMOUNT
        after[f"{self.destination}:{self.destination_account}"] += AMOUNT
        return after

    def __str__(self) -> str:
        return f"{self.source}-to-{self.destination}"
