"""One throwaway PostgreSQL cluster: initdb, pg_ctl start/stop, SIGKILL for crash tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from twopc.devserver.account import Account, make_owned_dir, run_as
from twopc.devserver.binaries import Binaries
from twopc.devserver.errors import DevServerError
from twopc.devserver.procs import (
    DEV_DATABASE,
    DEV_USER,
    LOOPBACK,
    MAX_SOCKET_PATH,
    describe_server,
    ensure_gone,
    log_tail,
    pid_alive,
    pids_in_dir,
    port_in_use,
    read_pidfile,
    server_pid,
    wait_until_gone,
)
from twopc.devserver.state import EXTRA_DATABASES, Placement, ServerInfo

USER = DEV_USER
DATABASE = DEV_DATABASE
_INCLUDE_LINE = "include_if_exists = 'twopc.conf'  # added by twopc devserver\n"


class PostgresServer:
    """A PostgreSQL cluster in ``placement.instance_dir``, run as ``account``."""

    def __init__(self, binaries: Binaries, placement: Placement, account: Account) -> None:
        self._bin = binaries
        self._place = placement
        self._account = account
        self.datadir = placement.instance_dir / "data"
        self.logfile = placement.instance_dir / "postgresql.log"

    def pid(self) -> int | None:
        """The live postmaster pid, or None."""
        return server_pid(self.datadir / "postmaster.pid", self.datadir)

    def info(self) -> ServerInfo:
        """This server as it is right now."""
        return describe_server(
            "pg", "postgresql", self._place.port, self.datadir, self.logfile, self.pid()
        )

    def ensure_initialized(self) -> None:
        """Run initdb once; a half-made cluster from an interrupted run is redone."""
        if (self.datadir / "PG_VERSION").exists():
            return
        make_owned_dir(self._place.instance_dir, self._account)
        staging = self._place.instance_dir / "data.init"
        shutil.rmtree(staging, ignore_errors=True)
        argv = [str(self._bin.initdb), "-D", str(staging), "-U", USER, "--auth=trust"]
        argv += ["-E", "UTF8", "--locale=C"]
        run_as(self._account, argv, self._place.instance_dir, "PostgreSQL initdb", self.logfile)
        with (staging / "postgresql.conf").open("a") as conf:
            conf.write(_INCLUDE_LINE)
        staging.rename(self.datadir)

    def start(self) -> None:
        """Start the cluster on its remembered port (no-op if already running)."""
        if self.pid() is not None:
            return
        self._check_port_free()
        self._write_config()
        self._clear_stale_pidfile()
        argv = [str(self._bin.pg_ctl), "-D", str(self.datadir), "-l", str(self.logfile)]
        argv += ["-w", "-t", "60", "start"]
        try:
            run_as(self._account, argv, self._place.instance_dir, "PostgreSQL start", self.logfile)
        except DevServerError as err:
            raise DevServerError(
                f"{err}\nlast lines of the log:\n{log_tail(self.logfile)}"
            ) from err
        self._ensure_database()

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``); waits until every server process is gone."""
        pid = self.pid()
        if pid is None:
            return
        processes = pids_in_dir(self.datadir)
        argv = [str(self._bin.pg_ctl), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
        run_as(self._account, argv, self._place.instance_dir, "PostgreSQL stop", self.logfile)
        self._wait_gone([pid, *processes], "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and wait until it and its children have exited."""
        pid = self.pid()
        if pid is None:
            return
        processes = pids_in_dir(self.datadir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Children notice the postmaster's death and exit; a restart must wait for
        # them, or it would find the old shared memory still attached.
        self._wait_gone([pid, *processes], "kill")

    def _wait_gone(self, pids: list[int], what: str) -> None:
        ensure_gone(pids, f"PostgreSQL processes {pids}", what, self.logfile)

    def _check_port_free(self) -> None:
        if port_in_use(self._place.port):
            raise DevServerError(
                f"cannot start PostgreSQL: port {self._place.port} (remembered in state.json) is "
                "taken by another process; stop that process, or run `twopc dev down` and delete "
                "state.json to pick new ports"
            )

    def _socket_dir(self) -> Path | None:
        sockdir = self._place.instance_dir / "sock"
        if len(str(sockdir / f".s.PGSQL.{self._place.port}")) > MAX_SOCKET_PATH:
            return None  # too long for a Unix socket: TCP only
        if not sockdir.exists():
            make_owned_dir(sockdir, self._account)
        return sockdir

    def _write_config(self) -> None:
        # Rewritten at every start so it always matches state.json.
        sockdir = self._socket_dir()
        settings = {
            "listen_addresses": _quote(LOOPBACK),
            "port": str(self._place.port),
            "unix_socket_directories": _quote(str(sockdir) if sockdir else ""),
            # Enough for `twopc bench recovery --in-doubt 1000`.
            "max_prepared_transactions": "1100",
            "max_connections": "200",
            "shared_buffers": _quote("32MB"),
            "fsync": "on",
        }
        conf = self.datadir / "twopc.conf"
        conf.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        os.chown(conf, self._account.uid, self._account.gid)

    def _clear_stale_pidfile(self) -> None:
        # postmaster.pid names a dead (or zombie, or reused) pid. PostgreSQL clears
        # a dead one itself but counts a zombie or reused pid as alive; removing the
        # file is safe only once no process is left in the data directory.
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        self._clear_stale_socket_lock()
        leftovers = pids_in_dir(self.datadir)
        if leftovers and not wait_until_gone(leftovers, 10.0):
            raise DevServerError(
                f"cannot start PostgreSQL: old server processes {leftovers} still use "
                f"{self.datadir}; stop them first (see {self.logfile})"
            )
        pidfile.unlink(missing_ok=True)

    def _clear_stale_socket_lock(self) -> None:
        # The socket's lock file names the old postmaster too, with the same zombie
        # problem; the socket directory is private to this instance.
        lock = self._place.instance_dir / "sock" / f".s.PGSQL.{self._place.port}.lock"
        pid = read_pidfile(lock)
        if pid is not None and not pid_alive(pid):
            lock.unlink(missing_ok=True)

    def ensure_databases(self) -> None:
        """Create the databases the examples and tests use, if missing: ``twopc`` and those
        of :data:`EXTRA_DATABASES` (a server set up by an older version gets them too)."""
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg

        wanted = [DATABASE, *EXTRA_DATABASES["pg"].values()]
        try:
            with psycopg.connect(
                host=LOOPBACK,
                port=self._place.port,
                user=USER,
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            ) as conn:
                rows = conn.execute("SELECT datname FROM pg_database").fetchall()
                present = {name for (name,) in rows}
                for database in [d for d in wanted if d not in present]:
                    conn.execute(f'CREATE DATABASE "{database}"')
        except psycopg.Error as err:
            raise DevServerError(
                f"PostgreSQL started but creating its databases ({', '.join(wanted)}) failed: "
                f"{err}; see {self.logfile}"
            ) from err


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
