"""The participants' boundaries, read from the source: each server's SQL, driver and error codes
stay in that server's modules, and each role lives in a class of its own.

Server modules are ``participants/postgres*.py`` and ``participants/mysql*.py``; every other
module of the folder is server-neutral. These are static checks (no server, milliseconds).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from twopc.participants.branch import BranchProtocol
from twopc.participants.lockwaits import LockInspector
from twopc.participants.markers import OutcomeMarkers
from twopc.participants.mysql import MySQLLocal, MySQLParticipant
from twopc.participants.mysql_branch import MySQLBranches
from twopc.participants.mysql_link import MySQLLink
from twopc.participants.mysql_locks import MySQLLockWaits
from twopc.participants.pool import ConnectionPool
from twopc.participants.postgres import PostgresLocal, PostgresParticipant
from twopc.participants.postgres_branch import PostgresBranches
from twopc.participants.postgres_link import PostgresLink
from twopc.participants.postgres_locks import PostgresLockWaits

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "participants"
SERVERS = {"postgres": "psycopg", "mysql": "pymysql"}
# Upper-case SQL as the modules write it; server-neutral code never holds such a string.
SQL = re.compile(
    r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE|XA [A-Z]+|"
    r"PREPARE TRANSACTION|COMMIT PREPARED|ROLLBACK PREPARED|SHOW)\b"
)


def server_of(path: Path) -> str | None:
    """The server a module of participants/ belongs to, None for a server-neutral one."""
    return next((server for server in SERVERS if path.stem.startswith(server)), None)


MODULES = sorted(FOLDER.glob("*.py"))
NEUTRAL = [path for path in MODULES if server_of(path) is None]


def imported(tree: ast.AST) -> set[str]:
    """Top-level names of every module ``tree`` imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def strings(tree: ast.AST) -> list[str]:
    """Every string constant of ``tree`` but its docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def test_the_folder_has_server_and_neutral_modules() -> None:
    assert {p.stem for p in MODULES if server_of(p)} >= {
        "postgres", "postgres_link", "postgres_branch", "postgres_locks",
        "mysql", "mysql_link", "mysql_branch", "mysql_locks",
    }  # fmt: skip
    assert {p.stem for p in NEUTRAL} >= {"base", "branch", "pool", "markers", "lockwaits"}


@pytest.mark.parametrize("path", NEUTRAL, ids=lambda p: p.name)
def test_a_neutral_module_imports_no_driver_and_holds_no_sql(path: Path) -> None:
    tree = parsed(path)
    assert imported(tree).isdisjoint(SERVERS.values())
    assert [s for s in strings(tree) if SQL.search(s)] == []


@pytest.mark.parametrize("path", [p for p in MODULES if server_of(p)], ids=lambda p: p.name)
def test_a_server_module_imports_only_its_own_driver(path: Path) -> None:
    others = {driver for server, driver in SERVERS.items() if server != server_of(path)}
    assert imported(parsed(path)).isdisjoint(others)


@pytest.mark.parametrize("path", NEUTRAL, ids=lambda p: p.name)
def test_a_neutral_module_reads_no_error_code(path: Path) -> None:
    """Error codes are read where they are translated: no ``.code`` / ``.sqlstate`` /
    ``.args`` of an error in server-neutral code."""
    reads = [
        node.attr
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Load)
        and node.attr in ("code", "sqlstate", "errno", "args")
    ]
    assert reads == []


def test_no_layer_above_the_participants_reads_driver_errors() -> None:
    """Outside participants/ (and the tests, which inspect servers directly), nothing imports
    a driver's error classes or reads a SQLSTATE."""
    offenders = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        top = path.relative_to(ROOT).parts[0]
        if top in ("participants", "tests", "build", "scripts") or top.startswith("."):
            continue
        text = path.read_text()
        if re.search(r"\bsqlstate\b|pymysql\.err\b|psycopg\.errors\b|pymysql\.constants\.ER", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# -- one class per role -----------------------------------------------------------------------

ROLES: dict[str, set[str]] = {
    "connections": {"connect", "still_usable"},
    "pool": {"checkout", "release", "discard", "idle"},
    "branch protocol": {"begin", "finish_prepared", "prepared_branches", "check_server"},
    "lock waits": {"lock_waits", "waits_of"},
    "markers": {"ensure_table", "write", "has", "committed", "of_coordinator", "forget"},
    "local transaction": {"execute", "commit"},
}
HOLDERS = {
    "pool": [ConnectionPool],
    "connections": [PostgresLink, MySQLLink],
    "branch protocol": [PostgresBranches, MySQLBranches],
    "lock waits": [PostgresLockWaits, MySQLLockWaits],
    "markers": [OutcomeMarkers],
    "local transaction": [PostgresLocal, MySQLLocal],
}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("role", list(HOLDERS))
def test_each_role_is_held_by_classes_of_its_own(role: str) -> None:
    others = set().union(*(methods for name, methods in ROLES.items() if name != role))
    for cls in HOLDERS[role]:
        assert ROLES[role] <= public(cls), cls
        assert public(cls).isdisjoint(others - ROLES[role]), cls


def test_the_server_roles_implement_the_neutral_interfaces() -> None:
    assert issubclass(PostgresBranches, BranchProtocol) and issubclass(
        MySQLBranches, BranchProtocol
    )
    assert issubclass(PostgresLockWaits, LockInspector)
    assert issubclass(MySQLLockWaits, LockInspector)


@pytest.mark.parametrize("cls", [PostgresParticipant, MySQLParticipant], ids=lambda c: c.__name__)
def test_a_server_participant_only_puts_its_roles_together(cls: type) -> None:
    """Everything a server's participant class defines itself: which role objects, and how
    its server rounds the lock-wait limit. The rest is delegation, inherited."""
    own = {name for name in vars(cls) if not name.startswith(("__", "_abc_"))}
    assert own <= {"_compose", "lock_wait_ms", "lock_wait_seconds"}, own
