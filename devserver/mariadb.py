"""One throwaway MariaDB server: mariadb-install-db, a detached mariadbd, SIGTERM/SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, NoReturn

from twopc.devserver.account import Account, run_as
from twopc.devserver.binaries import Binaries
from twopc.devserver.errors import DevServerError
from twopc.devserver.procs import (
    DEV_DATABASE,
    DEV_USER,
    LOOPBACK,
    MAX_SOCKET_PATH,
    describe_server,
    log_tail,
    pid_alive,
    port_in_use,
    server_pid,
    signal_and_wait,
)
from twopc.devserver.state import EXTRA_DATABASES, Placement, ServerInfo
from twopc.devserver.tls import ensure_tls_files

USER = DEV_USER
DATABASE = DEV_DATABASE
_READY_TIMEOUT = 60.0
_SETUP_SQL = (
    *(
        f"CREATE DATABASE IF NOT EXISTS `{db}`"
        for db in (DATABASE, *EXTRA_DATABASES["mysql"].values())
    ),
    f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1'",
    f"CREATE USER IF NOT EXISTS '{USER}'@'localhost'",
    f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION",
    f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'localhost' WITH GRANT OPTION",
)


class MariaDBServer:
    """A MariaDB server in ``placement.instance_dir``, run as ourselves (root: ``--user=root``)."""

    def __init__(self, binaries: Binaries, placement: Placement) -> None:
        self._bin = binaries
        self._place = placement
        self.datadir = placement.instance_dir / "data"
        self.logfile = placement.instance_dir / "mariadbd.err"
        self.pidfile = placement.instance_dir / "mariadbd.pid"
        self.tls_dir = placement.instance_dir / "tls"  # ca.pem verifies this server

    def pid(self) -> int | None:
        """The live mariadbd pid, or None."""
        return server_pid(self.pidfile, self.datadir)

    def info(self) -> ServerInfo:
        """This server as it is right now."""
        ca = self.tls_dir / "ca.pem"
        return describe_server(
            "mysql",
            "mysql",
            self._place.port,
            self.datadir,
            self.logfile,
            self.pid(),
            ca if ca.is_file() else None,
        )

    def ensure_initialized(self) -> None:
        """Run mariadb-install-db once; a half-made data dir from an interrupted run is redone."""
        if (self.datadir / "mysql").is_dir():
            return
        self._place.instance_dir.mkdir(mode=0o700, exist_ok=True)
        staging = self._place.instance_dir / "data.init"
        shutil.rmtree(staging, ignore_errors=True)
        argv = [str(self._bin.mariadb_install_db), "--no-defaults", f"--datadir={staging}"]
        argv.append(f"--tmpdir={self._tmpdir()}")  # passed on to the bootstrapping server
        argv += ["--auth-root-authentication-method=normal", "--skip-test-db", *_user_args()]
        install_log = self._place.instance_dir / "install-db.log"
        try:
            run_as(_myself(), argv, self._place.instance_dir, "mariadb-install-db", install_log)
        except DevServerError as err:
            install_log.write_text(str(err))
            raise
        staging.rename(self.datadir)

    def start(self) -> None:
        """Start mariadbd detached on its remembered port and wait until it serves."""
        if self.pid() is not None:
            return
        if port_in_use(self._place.port):
            raise DevServerError(
                f"cannot start MariaDB: port {self._place.port} (remembered in state.json) is "
                "taken by another process; stop that process, or run `twopc dev down` and delete "
                "state.json to pick new ports"
            )
        # A pid file left by a SIGKILL or a reboot would make mariadbd's pid check lie.
        self.pidfile.unlink(missing_ok=True)
        process = self._spawn()
        self._wait_ready(process)
        self._create_user_and_database()

    def ensure_databases(self) -> None:
        """Create the user and the databases the examples and tests use, if missing
        (a server set up by an older version gets the new ones too)."""
        self._create_user_and_database()

    def stop(self) -> None:
        """Clean shutdown via SIGTERM; waits until mariadbd has exited."""
        self._signal(signal.SIGTERM, "stop")

    def kill(self) -> None:
        """SIGKILL mariadbd and wait until it has exited."""
        self._signal(signal.SIGKILL, "kill")

    def _signal(self, signum: signal.Signals, what: str) -> None:
        signal_and_wait(self.pid(), signum, "mariadbd", what, self.logfile)

    def _socket_path(self) -> str:
        socket_path = str(self._place.instance_dir / "mysqld.sock")
        # An empty --socket disables the Unix socket; TCP still works.
        return socket_path if len(socket_path) <= MAX_SOCKET_PATH else ""

    def _server_args(self) -> list[str]:
        return [
            str(self._bin.mariadbd),
            "--no-defaults",  # must come first: never read /etc/mysql
            f"--datadir={self.datadir}",
            f"--tmpdir={self._tmpdir()}",
            f"--port={self._place.port}",
            f"--bind-address={LOOPBACK}",
            f"--socket={self._socket_path()}",
            f"--pid-file={self.pidfile}",
            f"--log-error={self.logfile}",
            # A fixed binlog name: the default embeds the host name, and XA recovery
            # after a crash reads the binlog.
            "--log-bin=twopc-bin",
            "--server-id=1",
            "--innodb-flush-log-at-trx-commit=1",
            "--sync-binlog=1",
            "--default-storage-engine=InnoDB",
            "--innodb-buffer-pool-size=64M",
            "--skip-name-resolve",
            "--max-connections=300",
            *self._tls_args(),
            *_user_args(),
        ]

    def _tmpdir(self) -> Path:
        """Temporary files of this server's own: two servers bootstrapping at once in a
        shared /tmp removed each other's temporary tables."""
        tmp = self._place.instance_dir / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        return tmp

    def _tls_args(self) -> list[str]:
        tls = ensure_tls_files(self.tls_dir)
        return [f"--ssl-ca={tls.ca}", f"--ssl-cert={tls.cert}", f"--ssl-key={tls.key}"]

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.logfile.open("ab") as log:
            try:
                return subprocess.Popen(
                    self._server_args(),
                    cwd=self._place.instance_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives us and our terminal's signals
                )
            except OSError as err:
                raise DevServerError(f"could not run {self._bin.mariadbd}: {err}") from err

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not self._accepts_root_login():
            if process.poll() is not None or not pid_alive(process.pid):
                self._fail_start(f"mariadbd exited with status {process.returncode}")
            if time.monotonic() > deadline:
                self._fail_start(f"mariadbd did not accept connections within {_READY_TIMEOUT}s")
            time.sleep(0.2)

    def _fail_start(self, what: str) -> NoReturn:
        raise DevServerError(f"{what}; read {self.logfile}. Last lines:\n{log_tail(self.logfile)}")

    def _connect_root(self) -> Any:
        import pymysql

        # install-db with normal auth creates root@127.0.0.1 with an empty password.
        return pymysql.connect(
            host=LOOPBACK, port=self._place.port, user="root", connect_timeout=2, autocommit=True
        )

    def _accepts_root_login(self) -> bool:
        import pymysql

        try:
            conn = self._connect_root()
        except pymysql.Error:
            return False
        conn.close()
        return True

    def _create_user_and_database(self) -> None:
        import pymysql

        try:
            conn = self._connect_root()
            with conn.cursor() as cur:
                for statement in _SETUP_SQL:
                    cur.execute(statement)
            conn.close()
        except pymysql.Error as err:
            raise DevServerError(
                f"MariaDB started but creating user/database {USER!r} failed: {err}; "
                f"see {self.logfile}"
            ) from err


def _user_args() -> list[str]:
    # mariadbd refuses to run as root unless told to; as anyone else it runs as itself.
    return ["--user=root"] if os.geteuid() == 0 else []


def _myself() -> Account:
    return Account("self", os.geteuid(), os.getegid(), ())
