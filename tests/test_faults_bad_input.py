"""Fault scenario 6: the bad-input battery.

Every case runs the installed ``twopc`` once, with URLs that carry a distinctive password
(MariaDB users are created with it; the dev PostgreSQL trusts local connections, so a
password there is accepted and ignored), and with the dev servers reachable under
``HOME/dev``, so a command that silently fell back to them would be caught. The cases run
side by side, six at a time, each transfer on an account pair of its own, so a change on
the servers still points at the case that made it. For each case:

- the documented exit status: 2 for bad input or usage, 1 for an operational failure (a
  refused transfer, an unreachable server), never a hang;
- exactly one line on stderr when it fails, and never a traceback;
- a refusal asked for ``--json`` prints one JSON document on stdout;
- no piece of a password in anything printed;
- nothing changed on either server: balances identical, nothing prepared.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import pymysql
import pytest
from conftest import OPENING, Databases
from faultkit import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Finished,
    Snapshot,
    leaked,
    record,
    report,
    run,
    snapshot,
)

from twopc.bank.schema import init_schema
from twopc.devserver import DevServers
from twopc.participants import DatabaseURL

SECRET = "Pl0ugh-Xyzzy-7731"  # user faultpw on MariaDB
AT_SECRET = "Xyzzy@Pl0ugh-7731"  # user faultat on MariaDB: an '@' inside the password
USAGE, FAILED = frozenset({EXIT_USAGE}), frozenset({EXIT_FAILED})
LONG_GTRID = "t-0123456789abcdef." + "a" * 90
AT_URL = "mysql://faultat:" + AT_SECRET + "@127.0.0.1:{mysql_port}/twopc"  # '@' as it is
AT_DEAD_URL = "postgresql://twopc:" + AT_SECRET + "@127.0.0.1:{dead}/twopc"
ENCODED_DEAD_URL = "postgresql://twopc:" + AT_SECRET.replace("@", "%40") + "@127.0.0.1:{dead}/twopc"


@dataclass(frozen=True)
class Case:
    """One bad input: ``args`` may hold {src} and {dst} (the case's own accounts, pg:aN and
    mysql:aN), {mysql} (the URL with the password), {mysql_port}, {dead} (a port where
    nothing listens), {mute} (a port that accepts and never greets), {file} (a regular
    file) and {lockonly} (a HOME whose only log directory holds just a LOCK file)."""

    id: str
    args: tuple[str, ...]
    codes: frozenset[int] = USAGE
    json_document: bool = False  # stdout must be one JSON document
    timeout: float = 30


T = ("transfer", "{src}", "{dst}")  # a transfer between the case's accounts, short of its amount


def amount(case_id: str, text: str) -> Case:
    return Case(f"amount-{case_id}", ("transfer", "--", "{src}", "{dst}", text))


CASES = [
    # amounts: exact decimals > 0 with at most 2 places, ASCII digits, nothing around them
    amount("nan", "nan"),
    amount("inf", "inf"),
    amount("minus-inf", "-inf"),
    amount("1e308", "1e308"),
    amount("minus-1", "-1"),
    amount("zero", "0"),
    amount("0.001", "0.001"),
    amount("spaces", " 0.5 "),
    amount("arabic-indic-5", "\u0665"),
    amount("fullwidth-5", "\uff15"),
    amount("empty", ""),
    amount("exponent", "1e2"),
    amount("hex", "0x10"),
    amount("underscore", "1_000"),
    amount("19-digits", "1" * 19),
    # accounts
    Case("account-no-id", ("transfer", "pg:", "{dst}", "1")),
    Case("account-unknown-side", ("transfer", "oracle:a1", "{dst}", "1")),
    Case("account-no-side", ("transfer", "a1", "{dst}", "1")),
    Case("account-cyrillic", ("transfer", "pg:\u04301", "{dst}", "1")),
    Case("same-account", ("transfer", "{src}", "{src}", "1")),
    # refusals: operational failures, JSON on stdout when asked
    Case("unknown-destination", ("transfer", "{src}", "mysql:nosuch", "1", "--json"), FAILED,
         json_document=True),
    Case("insufficient-funds", (*T, "5000", "--json"), FAILED, json_document=True),
    Case("saga-unknown-source", ("transfer", "pg:nosuch", "{dst}", "1", "--mode", "saga",
                                 "--json"), FAILED, json_document=True),
    # waits and limits
    Case("lock-wait-nan", (*T, "1", "--lock-wait", "nan")),
    Case("lock-wait-inf", (*T, "1", "--lock-wait", "inf")),
    Case("lock-wait-0", (*T, "1", "--lock-wait", "0")),
    Case("lock-wait-1e308", (*T, "1", "--lock-wait", "1e308")),
    Case("lock-wait-3000000", (*T, "1", "--lock-wait", "3000000")),
    Case("lock-wait-negative", (*T, "1", "--lock-wait", "-1")),
    Case("pause-seconds-nan", (*T, "1", "--pause-at", "after-prepare", "--pause-seconds", "nan")),
    Case("pause-seconds-inf", (*T, "1", "--pause-at", "after-prepare", "--pause-seconds", "inf")),
    Case("retry-deadline-nan", (*T, "1", "--mode", "saga", "--retry-deadline", "nan")),
    Case("retry-deadline-inf", (*T, "1", "--mode", "saga", "--retry-deadline", "inf")),
    Case("recover-retry-deadline-nan", ("recover", "--retry-deadline", "nan")),
    # options that do not go together
    Case("at-step-in-2pc", (*T, "1", "--at-step", "2")),
    Case("saga-point-in-2pc", (*T, "1", "--crash-at", "after-debit")),
    Case("crash-and-pause", (*T, "1", "--crash-at", "after-prepare", "--pause-at", "before-end")),
    Case("saga-id-in-2pc", (*T, "1", "--saga-id", "x1")),
    Case("saga-id-space", (*T, "1", "--mode", "saga", "--saga-id", "a b")),
    Case("coordinator-id-path", (*T, "1", "--coordinator-id", "../x")),
    Case("retention-words", (*T, "1", "--mode", "saga", "--retention", "forever")),
    # resolve
    Case("resolve-commit-and-rollback", ("resolve", "t-0123456789abcdef.0123", "--commit",
                                         "--rollback")),
    Case("resolve-no-decision", ("resolve", "t-0123456789abcdef.0123")),
    Case("resolve-garbage-gtrid", ("resolve", "bad gtrid!", "--rollback")),
    Case("resolve-empty-gtrid", ("resolve", "", "--commit")),
    Case("resolve-long-gtrid", ("resolve", LONG_GTRID, "--rollback")),
    Case("resolve-unknown-gtrid", ("resolve", "t-0123456789abcdef.0123456789abcdef0123",
                                   "--rollback"), FAILED),
    # URLs: refused, unreachable or mute, never printed with their password
    Case("pg-url-empty", ("--pg-url", "", *T, "1")),
    Case("mysql-url-empty", ("--mysql-url", "", *T, "1")),
    Case("pg-url-not-a-url", ("--pg-url", f"twopc:{SECRET}", "balances")),
    Case("pg-url-bad-port", ("--pg-url", f"postgresql://twopc:{SECRET}@127.0.0.1:99999/twopc",
                             "balances")),
    Case("pg-url-is-mysql", ("--pg-url", "{mysql}", "balances")),
    Case("mysql-url-unknown-option", ("--mysql-url", "{mysql}?color=red", "balances")),
    Case("mysql-password-with-at", ("--mysql-url", AT_URL, "balances"),
         frozenset({EXIT_OK, EXIT_FAILED, EXIT_USAGE})),
    Case("pg-password-with-at-dead-port", ("--pg-url", AT_DEAD_URL, *T, "1"),
         frozenset({EXIT_FAILED, EXIT_USAGE})),
    Case("pg-url-encoded-password-dead-port", ("--pg-url", ENCODED_DEAD_URL, *T, "1"), FAILED),
    Case("mysql-url-dead-port", ("--mysql-url", f"mysql://faultpw:{SECRET}@127.0.0.1:{{dead}}/t",
                                 "in-doubt"), FAILED),
    Case("mysql-url-never-greets", ("--mysql-url", f"mysql://faultpw:{SECRET}@127.0.0.1:{{mute}}/t",
                                    "balances"), FAILED),
    Case("pg-url-never-greets", ("--pg-url", f"postgresql://twopc:{SECRET}@127.0.0.1:{{mute}}/t",
                                 "balances"), FAILED),
    # HOME and logs
    Case("home-under-a-file", ("--home", "{file}/home", *T, "1"),
         frozenset({EXIT_FAILED, EXIT_USAGE})),
    Case("log-verify-lock-only", ("--home", "{lockonly}", "log", "verify"),
         frozenset({EXIT_OK, EXIT_FAILED})),
    # other commands
    Case("init-balance-nan", ("init", "--balance", "nan")),
    Case("balances-unknown-account", ("balances", "pg:nosuch"), FAILED),
    Case("balances-bad-account", ("balances", "pg")),
]  # fmt: skip


# -- the surroundings every case runs in ---------------------------------------------------------

FIRST_ACCOUNT = 11  # case i moves between pg:a(11+i) and mysql:a(11+i); a1..a10 belong to no one


@pytest.fixture(scope="module")
def password_users(dev_servers: DevServers) -> None:
    """MariaDB users whose passwords must never be printed (PostgreSQL trusts local users)."""
    info = dev_servers.up().mysql
    conn = pymysql.connect(host=info.host, port=info.port, user=info.user, autocommit=True)
    try:
        with conn.cursor() as cursor:
            for user, password in (("faultpw", SECRET), ("faultat", AT_SECRET)):
                for host in ("127.0.0.1", "localhost"):
                    cursor.execute(
                        f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY %s", (password,)
                    )
                    cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}'")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mute_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in [*held, listener]:
        conn.close()


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def urls(db: Databases) -> dict[str, str]:
    pg, mysql = db.state.pg, db.state.mysql
    return {
        "pg": f"postgresql://twopc:{SECRET}@{pg.host}:{pg.port}/{pg.database}",
        "mysql": f"mysql://faultpw:{SECRET}@{mysql.host}:{mysql.port}/{mysql.database}",
        "mysql_port": str(mysql.port),
    }


def accounts_of(index: int) -> dict[str, str]:
    return {"src": f"pg:a{FIRST_ACCOUNT + index}", "dst": f"mysql:a{FIRST_ACCOUNT + index}"}


def expand(case: Case, index: int, values: dict[str, str]) -> list[str]:
    values = values | accounts_of(index)
    return [arg.format(**values) if "{" in arg else arg for arg in case.args]


@dataclass(frozen=True)
class Battery:
    """Every case's process, and the servers before and after all of them."""

    done: dict[str, Finished]
    before: Snapshot
    after: Snapshot


@pytest.fixture(scope="module")
def battery(
    dev_servers: DevServers,
    tmp_path_factory: pytest.TempPathFactory,
    password_users: None,
    mute_port: int,
) -> Battery:
    root = tmp_path_factory.mktemp("battery")
    db = Databases(dev_servers, dev_servers.up(), root / "home")
    db.clear_prepared()
    for url in (db.pg_url, db.mysql_url):
        init_schema(DatabaseURL.parse(url), accounts_count=FIRST_ACCOUNT + len(CASES),
                    balance=OPENING, reset=True)  # fmt: skip
    db.home.mkdir()
    (db.home / "dev").symlink_to(db.servers.root)  # the dev servers a bad URL may fall back to
    (root / "a-file").write_text("not a directory\n")
    (root / "lock-only" / "txlog" / "c1").mkdir(parents=True)
    (root / "lock-only" / "txlog" / "c1" / "LOCK").touch()
    configured = urls(db)
    values = configured | {
        "dead": str(dead_port()), "mute": str(mute_port), "file": str(root / "a-file"),
        "lockonly": str(root / "lock-only"),
    }  # fmt: skip
    env: dict[str, str | None] = {
        "TWOPC_PG_URL": configured["pg"],
        "TWOPC_MYSQL_URL": configured["mysql"],
    }
    before = snapshot(db)
    with ThreadPoolExecutor(6) as pool:
        futures = {
            case.id: pool.submit(
                run, db, *expand(case, index, values), timeout=case.timeout, env=env
            )
            for index, case in enumerate(CASES)
        }
        done = {case_id: future.result() for case_id, future in futures.items()}
    after = snapshot(db)
    db.clear_prepared()  # whatever a case left, after it was seen
    return Battery(done, before, after)


# -- the battery ---------------------------------------------------------------------------------


def case_problems(case: Case, done: Finished) -> list[str]:
    problems = []
    if done.code not in case.codes:
        problems.append(f"{done.describe()}: expected exit {sorted(case.codes)}")
    lines = done.stderr.splitlines()
    if done.code not in (EXIT_OK, None) and len(lines) != 1:
        problems.append(f"expected one line on stderr, got {len(lines)}: {lines[:8]}")
    if "Traceback" in done.stderr:
        problems.append("a traceback on stderr")
    if case.json_document and done.document() is None:
        problems.append(f"--json: stdout is not one JSON document: {done.stdout!r}")
    for secret in (SECRET, AT_SECRET):
        if pieces := leaked(done.stdout + done.stderr, secret):
            problems.append(f"password printed ({pieces}): {(done.stdout + done.stderr)[:300]!r}")
    return problems


@pytest.mark.parametrize(
    ("index", "case"), [pytest.param(i, c, id=c.id) for i, c in enumerate(CASES)]
)
def test_bad_input(battery: Battery, index: int, case: Case) -> None:
    done = battery.done[case.id]
    problems = case_problems(case, done)
    own = accounts_of(index).values()
    moved = {
        account: str(battery.after.delta(battery.before, account))
        for account in own
        if battery.after.delta(battery.before, account)
    }
    if moved:
        problems.append(f"balances changed: {moved}")
    record("bad input", problems, bad_inputs=1)
    assert not problems, report(problems)


def test_the_battery_changed_nothing_else(battery: Battery) -> None:
    """Nothing prepared after all of them, and no account but the cases' own ones moved
    (a bad URL that fell back to the dev servers, say)."""
    owned = {a for i in range(len(CASES)) for a in accounts_of(i).values()}
    problems = []
    if battery.after.prepared or battery.after.foreign:
        problems.append(f"left prepared: {battery.after.prepared + battery.after.foreign}")
    moved = {
        account: str(battery.after.delta(battery.before, account))
        for account in battery.after.balances
        if account not in owned and battery.after.delta(battery.before, account)
    }
    if moved:
        problems.append(f"balances changed outside the cases' accounts: {moved}")
    assert not problems, report(problems)


def test_the_battery_is_big_enough() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
