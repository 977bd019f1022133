"""Locating the PostgreSQL and MariaDB server programs on this machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from twopc.devserver.errors import DevServerError

_SYSTEM_DIRS = (Path("/usr/sbin"), Path("/usr/bin"))
_MARIADBD_NAMES = ("mariadbd", "mysqld")
_INSTALL_DB_NAMES = ("mariadb-install-db", "mysql_install_db")


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the server programs the dev servers need."""

    initdb: Path
    pg_ctl: Path
    postgres: Path
    mariadbd: Path
    mariadb_install_db: Path


def find_binaries() -> Binaries:
    """Find initdb/pg_ctl/postgres and mariadbd/mariadb-install-db.

    PostgreSQL is looked up via ``pg_config --bindir``, then ``PATH``, then the
    newest ``/usr/lib/postgresql/*/bin``; MariaDB via ``PATH``, ``/usr/sbin`` and
    ``/usr/bin`` (the ``mysqld``/``mysql_install_db`` names are accepted too).
    Raises DevServerError naming the Debian packages to install.
    """
    pg_bin = _find_pg_bindir()
    mariadbd = _find_program(_MARIADBD_NAMES)
    install_db = _find_program(_INSTALL_DB_NAMES)
    missing = [] if pg_bin else ["postgresql"]
    if mariadbd is None or install_db is None:
        missing.append("mariadb-server")
    if pg_bin is None or mariadbd is None or install_db is None:
        raise DevServerError(
            "database server programs not found (need PostgreSQL initdb/pg_ctl/postgres and "
            "MariaDB mariadbd/mariadb-install-db); install them with: "
            f"sudo apt-get install -y {' '.join(missing)}  (or run scripts/bootstrap.sh as root)"
        )
    return Binaries(pg_bin / "initdb", pg_bin / "pg_ctl", pg_bin / "postgres", mariadbd, install_db)


def _has_pg_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _find_pg_bindir() -> Path | None:
    for candidate in (_pg_config_bindir(), _path_bindir(), _newest_debian_bindir()):
        if candidate is not None and _has_pg_server(candidate):
            return candidate
    return None


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(done.stdout.strip())


def _path_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _newest_debian_bindir() -> Path | None:
    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if _has_pg_server(d)]
    return max(found, key=version) if found else None


def _find_program(names: tuple[str, ...]) -> Path | None:
    for name in names:
        on_path = shutil.which(name)
        if on_path:
            return Path(on_path)
        for directory in _SYSTEM_DIRS:
            if os.access(directory / name, os.X_OK):
                return directory / name
    return None
