"""Real throwaway PostgreSQL and MariaDB servers: up, crash (SIGKILL), restart, down.

The servers are started once per module under a pytest tmp dir. As root that dir is
mode 0700, which the PostgreSQL user cannot traverse, so the private-dir placement is
exercised too.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest

from twopc.devserver import DevServerError, DevServers, DevState, ServerInfo, find_binaries


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServers]:
    dev = DevServers(tmp_path_factory.mktemp("devroot") / ".twopc" / "dev")
    try:
        yield dev
    finally:
        dev.destroy()  # stops both even when a test failed half-way


@pytest.fixture()
def state(servers: DevServers) -> DevState:
    """Both servers up (a no-op when an earlier test left them running)."""
    return servers.up()


def mysql_connect(info: ServerInfo) -> Any:
    url = urlsplit(info.url)
    return pymysql.connect(
        host=url.hostname,
        port=url.port,
        user=url.username,
        database=url.path.lstrip("/"),
        autocommit=True,
    )


def mysql_rows(info: ServerInfo, sql: str) -> list[tuple[Any, ...]]:
    conn = mysql_connect(info)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_find_binaries_returns_executables() -> None:
    found = find_binaries()
    for path in (found.initdb, found.pg_ctl, found.postgres, found.mariadbd):
        assert os.access(path, os.X_OK), path


def test_status_is_none_before_first_up(tmp_path: Path) -> None:
    assert DevServers(tmp_path / "never").status() is None


def test_up_serves_postgres_with_prepared_transactions(state: DevState) -> None:
    assert state.pg.running and state.pg.pid is not None
    with psycopg.connect(state.pg.url) as conn:
        setting = conn.execute("SHOW max_prepared_transactions").fetchone()
        assert setting is not None and int(setting[0]) >= 100
        conn.execute("CREATE TABLE prepared_probe (x int)")
        conn.execute("INSERT INTO prepared_probe VALUES (1)")
        conn.execute("PREPARE TRANSACTION 'devserver-test'")
        conn.commit()
    with psycopg.connect(state.pg.url, autocommit=True) as conn:
        listed = conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall()
        assert listed == [("devserver-test",)]
        conn.execute("ROLLBACK PREPARED 'devserver-test'")
        gone = conn.execute("SELECT to_regclass('prepared_probe')").fetchone()
        assert gone == (None,)  # the CREATE TABLE was rolled back with the branch


def test_up_serves_durable_mariadb_with_binlog(state: DevState) -> None:
    assert state.mysql.running and state.mysql.pid is not None
    names = "('log_bin', 'innodb_flush_log_at_trx_commit', 'sync_binlog')"
    rows = dict(mysql_rows(state.mysql, f"SHOW VARIABLES WHERE Variable_name IN {names}"))
    assert rows == {"log_bin": "ON", "innodb_flush_log_at_trx_commit": "1", "sync_binlog": "1"}


def test_up_again_is_harmless(servers: DevServers, state: DevState) -> None:
    again = servers.up()
    assert (again.pg.port, again.mysql.port) == (state.pg.port, state.mysql.port)
    assert (again.pg.pid, again.mysql.pid) == (state.pg.pid, state.mysql.pid)


def test_private_pg_dir_when_root_is_not_traversable(servers: DevServers, state: DevState) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands PostgreSQL to another user")
    assert not state.pg.datadir.is_relative_to(servers.root)
    assert str(state.pg.datadir.parent) in servers.state_file.read_text()
    assert state.pg.datadir.parent.stat().st_mode & 0o077 == 0


def test_pg_kill_then_start_keeps_port_and_data(servers: DevServers, state: DevState) -> None:
    with psycopg.connect(state.pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survivor (x int)")
        conn.execute("INSERT INTO survivor VALUES (42)")
    servers.kill("pg")
    after_kill = servers.status()
    assert after_kill is not None and not after_kill.pg.running and after_kill.pg.pid is None
    assert after_kill.mysql.running
    assert state.pg.pid is not None and not pid_exists(state.pg.pid)
    servers.start("pg")
    restarted = servers.status()
    assert restarted is not None and restarted.pg.running
    assert restarted.pg.port == state.pg.port
    with psycopg.connect(restarted.pg.url) as conn:
        assert conn.execute("SELECT x FROM survivor").fetchall() == [(42,)]


def test_mysql_kill_then_start_keeps_prepared_xa_branch(
    servers: DevServers, state: DevState
) -> None:
    conn = mysql_connect(state.mysql)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS survivor (x int) ENGINE=InnoDB")
        cur.execute("XA START 'devserver-test'")
        cur.execute("INSERT INTO survivor VALUES (7)")
        cur.execute("XA END 'devserver-test'")
        cur.execute("XA PREPARE 'devserver-test'")
    servers.kill("mysql")
    conn.close()
    after_kill = servers.status()
    assert after_kill is not None and not after_kill.mysql.running and after_kill.pg.running
    servers.start("mysql")
    restarted = servers.status()
    assert restarted is not None and restarted.mysql.running
    assert restarted.mysql.port == state.mysql.port
    assert [row[3] for row in mysql_rows(restarted.mysql, "XA RECOVER")] == [b"devserver-test"]
    mysql_rows(restarted.mysql, "XA ROLLBACK 'devserver-test'")
    assert mysql_rows(restarted.mysql, "XA RECOVER") == []
    assert mysql_rows(restarted.mysql, "SELECT x FROM survivor") == []


def test_up_replaces_stale_pid_files(servers: DevServers, state: DevState) -> None:
    servers.kill("pg")
    servers.kill("mysql")
    # A reboot can hand the old pid to an unrelated live process: use our own.
    pg_pidfile = state.pg.datadir / "postmaster.pid"
    lines = pg_pidfile.read_text().split("\n")
    pg_pidfile.write_text("\n".join([str(os.getpid()), *lines[1:]]))
    mysql_pidfile = state.mysql.datadir.parent / "mariadbd.pid"
    mysql_pidfile.write_text(f"{os.getpid()}\n")
    stale = servers.status()
    assert stale is not None and not stale.pg.running and not stale.mysql.running
    back = servers.up()
    assert back.pg.running and back.mysql.running
    assert (back.pg.port, back.mysql.port) == (state.pg.port, state.mysql.port)
    assert os.getpid() not in (back.pg.pid, back.mysql.pid)


def test_start_fails_clearly_when_port_is_taken(servers: DevServers, state: DevState) -> None:
    servers.stop("pg")
    with socket.socket() as squatter:
        # The port may hold connections in TIME_WAIT from the server just stopped: only a
        # listener conflicts with the server's bind, so take it over as servers do.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", state.pg.port))
        squatter.listen()
        with pytest.raises(DevServerError, match=f"port {state.pg.port}"):
            servers.start("pg")
    servers.start("pg")


def test_env_lines_export_both_urls(state: DevState) -> None:
    pg, mysql = f"twopc@127.0.0.1:{state.pg.port}", f"twopc@127.0.0.1:{state.mysql.port}"
    assert state.env_lines() == [
        f"export TWOPC_PG_URL=postgresql://{pg}/twopc",
        f"export TWOPC_MYSQL_URL=mysql://{mysql}/twopc",
        f"export TWOPC_PARTICIPANTS='flights=postgresql://{pg}/flights "
        f"payments=postgresql://{pg}/payments pg-a=postgresql://{pg}/twopc_a "
        f"pg-b=postgresql://{pg}/twopc_b bookings=mysql://{mysql}/bookings "
        f"mysql-a=mysql://{mysql}/twopc_a mysql-b=mysql://{mysql}/twopc_b'",
    ]


def test_down_stops_both_and_is_idempotent(servers: DevServers, state: DevState) -> None:
    servers.down()
    stopped = servers.status()
    assert stopped is not None
    assert not stopped.pg.running and not stopped.mysql.running
    assert stopped.pg.pid is None and stopped.mysql.pid is None
    assert state.pg.pid is not None and not pid_exists(state.pg.pid)
    assert state.mysql.pid is not None and not pid_exists(state.mysql.pid)
    servers.down()
