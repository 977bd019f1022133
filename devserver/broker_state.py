"""What the dev message broker looks like (BrokerInfo) and where it lives (BrokerPlacement).

Kept apart from the databases' :mod:`devserver.state` types: the broker has no user or
database, and a second port (Erlang distribution) that must stay free of the machine's own
RabbitMQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BrokerPlacement:
    """Where the dev broker lives: its AMQP port, its Erlang distribution port, its folder."""

    port: int
    dist_port: int
    instance_dir: Path

    def to_json(self) -> dict[str, object]:
        """The placement as state.json stores it."""
        return {
            "port": self.port,
            "dist_port": self.dist_port,
            "instance_dir": str(self.instance_dir),
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> BrokerPlacement:
        """Read a placement back; ValueError when it is not one."""
        port, dist_port, folder = raw["port"], raw["dist_port"], raw["instance_dir"]
        if not isinstance(port, int) or not isinstance(dist_port, int):
            raise ValueError("broker ports must be ints")
        if not isinstance(folder, str):
            raise ValueError("broker instance_dir must be a string")
        return cls(port, dist_port, Path(folder))


@dataclass(frozen=True)
class BrokerInfo:
    """The dev RabbitMQ as seen right now; ``url`` holds no password (the broker's own
    ``guest`` user, which RabbitMQ admits from loopback only, is the client's default)."""

    host: str
    port: int
    datadir: Path
    logfile: Path
    pid: int | None
    running: bool
    url: str
