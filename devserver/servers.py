"""DevServers: the throwaway PostgreSQL + MariaDB pair under one root directory."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path

from twopc.devserver.account import postgres_account, postgres_instance_dir
from twopc.devserver.binaries import Binaries, find_binaries
from twopc.devserver.broker_state import BrokerInfo, BrokerPlacement
from twopc.devserver.errors import DevServerError
from twopc.devserver.mariadb import MariaDBServer
from twopc.devserver.postgres import PostgresServer
from twopc.devserver.procs import free_port
from twopc.devserver.rabbitmq import RabbitMQServer, find_rabbitmq_server
from twopc.devserver.state import (
    DevState,
    Placement,
    ServerKind,
    StoredState,
    load_state,
    save_state,
)

_KINDS: tuple[ServerKind, ...] = ("pg", "mysql")


class DevServers:
    """Development PostgreSQL and MariaDB instances living under ``root``.

    ``root`` (e.g. ``./.twopc/dev``) holds ``pg/``, ``mariadb/`` and ``state.json``;
    the ports chosen at the first :meth:`up` are remembered there. When we run as
    root and the PostgreSQL user cannot reach ``root``, ``pg/`` lives in a private
    directory under /tmp whose location state.json records.
    """

    def __init__(self, root: Path) -> None:
        # Absolute: the servers' tools run in other working directories (and as other users).
        self.root = root.absolute()
        self.state_file = self.root / "state.json"
        self._binaries: Binaries | None = None

    def up(self) -> DevState:
        """Start both servers (setting them up the first time); harmless if already up."""
        with self._locked():
            stored = self._load_or_place()
            for kind in _KINDS:
                server = self._server(stored, kind)
                server.ensure_initialized()
                server.start()
                server.ensure_databases()  # already running: made by an older version?
            return self._live_state(stored)

    def down(self) -> None:
        """Cleanly stop both servers and wait until they are gone; harmless if not running."""
        with self._locked():
            stored = load_state(self.state_file)
            if stored is not None:
                for kind in _KINDS:
                    self._server(stored, kind).stop()
                if stored.broker is not None:
                    self._broker(stored.broker).stop()

    def status(self) -> DevState | None:
        """The servers' live state, or None if :meth:`up` was never run here."""
        stored = load_state(self.state_file)
        return None if stored is None else self._live_state(stored)

    def start(self, which: ServerKind) -> None:
        """(Re)start one server on its remembered port and data dir, e.g. after :meth:`kill`."""
        with self._locked():
            self._server(self._require_state(), which).start()

    def stop(self, which: ServerKind) -> None:
        """Cleanly stop one server and wait until it is gone."""
        with self._locked():
            self._server(self._require_state(), which).stop()

    def kill(self, which: ServerKind) -> None:
        """SIGKILL one server's main process (a crash, for tests) and wait until it is gone."""
        with self._locked():
            self._server(self._require_state(), which).kill()

    def broker_up(self) -> BrokerInfo:
        """Start the dev RabbitMQ (placed on free ports the first time, beside the databases
        of :meth:`up`, which must have run); harmless if it is running."""
        with self._locked():
            broker = self._broker(self._place_broker(self._require_state()))
            broker.start()
            return broker.info()

    def stop_broker(self) -> None:
        """Cleanly stop the dev RabbitMQ (its durable queues' messages are kept)."""
        with self._locked():
            placement = self._require_state().broker
            if placement is not None:
                self._broker(placement).stop()

    def kill_broker(self) -> None:
        """SIGKILL the dev RabbitMQ (a crash, for tests) and wait until it is gone."""
        with self._locked():
            placement = self._require_state().broker
            if placement is not None:
                self._broker(placement).kill()

    def destroy(self) -> None:
        """Stop both servers and delete all their files, including a PostgreSQL dir under /tmp."""
        self.down()
        with self._locked():
            stored = load_state(self.state_file)
            if stored is not None:
                for kind in _KINDS:
                    shutil.rmtree(stored.placement(kind).instance_dir, ignore_errors=True)
                if stored.broker is not None:
                    shutil.rmtree(stored.broker.instance_dir, ignore_errors=True)
            self.state_file.unlink(missing_ok=True)
        (self.root / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `twopc dev up` at once must not both run initdb or pick ports.
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _require_state(self) -> StoredState:
        stored = load_state(self.state_file)
        if stored is None:
            raise DevServerError(
                f"no dev servers set up under {self.root}; run `twopc dev up` first"
            )
        return stored

    def _load_or_place(self) -> StoredState:
        stored = load_state(self.state_file)
        if stored is None:
            pg_dir = postgres_instance_dir(self.root, postgres_account())
            pg_port = free_port()
            mysql_port = free_port()
            while mysql_port == pg_port:
                mysql_port = free_port()
            stored = StoredState(
                Placement(pg_port, pg_dir), Placement(mysql_port, self.root / "mariadb")
            )
            # Saved before anything starts, so `down` finds whatever a failed `up` left.
            save_state(self.state_file, stored)
        return stored

    def _place_broker(self, stored: StoredState) -> BrokerPlacement:
        if stored.broker is not None:
            return stored.broker
        taken = {stored.pg.port, stored.mysql.port}
        port, dist_port = free_port(), free_port()
        while port in taken or dist_port in {port, *taken}:
            port, dist_port = free_port(), free_port()
        placement = BrokerPlacement(port, dist_port, self.root / "rabbitmq")
        save_state(self.state_file, dataclasses.replace(stored, broker=placement))
        return placement

    @staticmethod
    def _broker(placement: BrokerPlacement) -> RabbitMQServer:
        return RabbitMQServer(find_rabbitmq_server(), placement)

    def _server(self, stored: StoredState, kind: ServerKind) -> PostgresServer | MariaDBServer:
        if self._binaries is None:
            self._binaries = find_binaries()
        binaries = self._binaries
        if kind == "pg":
            return PostgresServer(binaries, stored.pg, postgres_account())
        return MariaDBServer(binaries, stored.mysql)

    def _live_state(self, stored: StoredState) -> DevState:
        pg = self._server(stored, "pg").info()
        broker = None if stored.broker is None else self._broker(stored.broker).info()
        return DevState(pg=pg, mysql=self._server(stored, "mysql").info(), broker=broker)
