"""What the dev servers look like (ServerInfo, DevState) and what is remembered (state.json)."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from twopc.devserver.broker_state import BrokerInfo, BrokerPlacement
from twopc.devserver.errors import DevServerError

ServerKind = Literal["pg", "mysql"]
STATE_VERSION = 1

#: The databases each dev server holds besides ``twopc`` (the participants ``pg`` and
#: ``mysql``), by the name of the participant each one is: the flight booking's three
#: services, and two more per server for transactions over many branches.
EXTRA_DATABASES: dict[ServerKind, dict[str, str]] = {
    "pg": {"flights": "flights", "payments": "payments", "pg-a": "twopc_a", "pg-b": "twopc_b"},
    "mysql": {"bookings": "bookings", "mysql-a": "twopc_a", "mysql-b": "twopc_b"},
}


@dataclass(frozen=True)
class ServerInfo:
    """One dev server as seen right now; ``url`` is SQLAlchemy-form and has no password."""

    kind: ServerKind
    host: str
    port: int
    user: str
    database: str
    datadir: Path
    logfile: Path
    pid: int | None
    running: bool
    url: str
    tls_ca: Path | None = None  # the CA that verifies the server's TLS certificate, if any

    def url_of(self, database: str) -> str:
        """The URL of another database on this server."""
        return f"{self.url.rpartition('/')[0]}/{database}"


@dataclass(frozen=True)
class DevState:
    """Both dev servers."""

    pg: ServerInfo
    mysql: ServerInfo
    broker: BrokerInfo | None = None  # set up by `twopc dev up` (DevServers.broker_up)

    def participants(self) -> dict[str, str]:
        """The participants of the databases besides ``twopc`` (:data:`EXTRA_DATABASES`):
        name -> URL, those of running servers only."""
        found: dict[str, str] = {}
        for info in (self.pg, self.mysql):
            if info.running:
                found |= {n: info.url_of(db) for n, db in EXTRA_DATABASES[info.kind].items()}
        return found

    def env_lines(self) -> list[str]:
        """Shell lines exporting TWOPC_PG_URL, TWOPC_MYSQL_URL and TWOPC_PARTICIPANTS (the
        other databases, as space-separated NAME=URL pairs), for ``eval``."""
        named = " ".join(
            f"{name}={info.url_of(db)}"
            for info in (self.pg, self.mysql)
            for name, db in EXTRA_DATABASES[info.kind].items()
        )
        return [
            f"export TWOPC_PG_URL={shlex.quote(self.pg.url)}",
            f"export TWOPC_MYSQL_URL={shlex.quote(self.mysql.url)}",
            f"export TWOPC_PARTICIPANTS={shlex.quote(named)}",
            *self._broker_lines(),
        ]

    def _broker_lines(self) -> list[str]:
        if self.broker is None:
            return []
        return [f"export TWOPC_BROKER_URL={shlex.quote(self.broker.url)}"]


@dataclass(frozen=True)
class Placement:
    """Where one server lives: its port and its instance directory."""

    port: int
    instance_dir: Path


@dataclass(frozen=True)
class StoredState:
    """The contents of state.json: chosen once at the first ``up``, reused ever after."""

    pg: Placement
    mysql: Placement
    broker: BrokerPlacement | None = None  # chosen at the first broker start

    def placement(self, kind: ServerKind) -> Placement:
        """The placement of server ``kind``."""
        return self.pg if kind == "pg" else self.mysql


def load_state(path: Path) -> StoredState | None:
    """Read state.json; None if it does not exist."""
    try:
        raw = json.loads(path.read_text())
        broker = BrokerPlacement.from_json(raw["broker"]) if raw.get("broker") else None
        return StoredState(_placement(raw["pg"]), _placement(raw["mysql"]), broker)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DevServerError(
            f"{path} is unreadable or damaged ({err}); stop any servers it started and "
            "remove it to start over"
        ) from err


def _placement(raw: dict[str, object]) -> Placement:
    port, instance_dir = raw["port"], raw["instance_dir"]
    if not isinstance(port, int) or not isinstance(instance_dir, str):
        raise ValueError("port must be an int and instance_dir a string")
    return Placement(port, Path(instance_dir))


def save_state(path: Path, state: StoredState) -> None:
    """Write state.json atomically (temp file, fsync, replace, fsync of the folder)."""
    body = {
        "version": STATE_VERSION,
        "pg": {"port": state.pg.port, "instance_dir": str(state.pg.instance_dir)},
        "mysql": {"port": state.mysql.port, "instance_dir": str(state.mysql.instance_dir)},
    }
    if state.broker is not None:
        body["broker"] = state.broker.to_json()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state.", suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(body, out, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
