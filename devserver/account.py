"""Which OS account runs PostgreSQL, and where its files may live.

PostgreSQL refuses to run as root, so when we are root it runs as the ``postgres``
system user (or ``nobody``). That user must be able to reach its data directory;
when the project lives under a directory it cannot traverse (``/root``, a 0700
``mktemp -d``), the data goes to a private directory under /tmp instead, because
changing the permissions of the user's own directories is not ours to do.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twopc.devserver.errors import DevServerError

_SHARED_TMP_DIRS = (Path("/tmp"), Path("/var/tmp"))


@dataclass(frozen=True)
class Account:
    """An OS user that server commands run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def is_current(self) -> bool:
        """True if this is the user we already run as (no switching needed)."""
        return self.uid == os.geteuid()

    def popen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for subprocess to run a command as this account."""
        if self.is_current:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def can_traverse(self, path: Path) -> bool:
        """True if this user can search every directory from / down to ``path``."""
        if self.uid == 0:
            return True
        resolved = path.resolve()
        return all(self._may_search(d) for d in (resolved, *resolved.parents) if d.exists())

    def _may_search(self, directory: Path) -> bool:
        info = directory.stat()
        if info.st_uid == self.uid:
            return bool(info.st_mode & stat.S_IXUSR)
        if info.st_gid == self.gid or info.st_gid in self.groups:
            return bool(info.st_mode & stat.S_IXGRP)
        return bool(info.st_mode & stat.S_IXOTH)


def postgres_account() -> Account:
    """The account PostgreSQL runs as: ourselves, or when root ``postgres`` / ``nobody``."""
    if os.geteuid() != 0:
        return _account(pwd.getpwuid(os.geteuid()))
    for name in ("postgres", "nobody"):
        try:
            return _account(pwd.getpwnam(name))
        except KeyError:
            continue
    raise DevServerError(
        "running as root, but neither a 'postgres' nor a 'nobody' user exists to run "
        "PostgreSQL (it refuses to run as root); install the postgresql package or run as "
        "an ordinary user"
    )


def _account(entry: pwd.struct_passwd) -> Account:
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def postgres_instance_dir(root: Path, account: Account) -> Path:
    """Where PostgreSQL's instance directory goes: ``root/pg`` if reachable, else private."""
    if account.can_traverse(root):
        return root / "pg"
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    name = f"twopc-pg-{os.geteuid()}-{digest}"
    for shared in _SHARED_TMP_DIRS:
        if shared.is_dir() and account.can_traverse(shared):
            return shared / name
    raise DevServerError(
        f"user {account.name!r} cannot reach {root} nor /tmp; put the project somewhere "
        f"{account.name!r} can traverse, or run as an ordinary user"
    )


def make_owned_dir(directory: Path, account: Account) -> None:
    """Create ``directory`` (mode 0700) owned by ``account``, or check an existing one.

    An existing directory must be a real directory owned by ``account`` and closed
    to others: under a shared /tmp anyone could have created it first.
    """
    try:
        directory.mkdir(mode=0o700, parents=False)
        os.chown(directory, account.uid, account.gid)
        return
    except FileExistsError:
        pass
    info = directory.lstat()
    safe = stat.S_ISDIR(info.st_mode) and info.st_uid == account.uid
    if not safe or info.st_mode & 0o077:
        raise DevServerError(
            f"{directory} exists but is not a private directory owned by {account.name!r}; "
            "remove it and run again"
        )


def run_as(account: Account, argv: list[str], cwd: Path, what: str, log: Path) -> None:
    """Run ``argv`` as ``account``; on failure raise DevServerError quoting its output."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **account.popen_kwargs(),
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise DevServerError(f"{what} failed to run ({err}); see {log}") from err
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise DevServerError(f"{what} failed (exit {done.returncode}): {output}\nsee {log}")
