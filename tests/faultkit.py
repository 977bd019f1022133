"""The fault harness's shared parts: processes of the installed ``twopc``, faults, invariants.

Everything here reads the truth with its own SQL (psycopg and PyMySQL straight to the
servers), never through the project's library, so a bug in the library cannot hide itself:

- money: the sum of every balance on both servers plus the saga holds (what ``twopc
  balances`` shows as pending) never changes;
- atomicity per transfer: a transfer reported committed (exit 0, ``--json``) is applied on
  both sides, one aborted or refused (exit 1 or 2) on neither, one killed on both or neither;
- nothing of ours (format id 0x74706331) stays prepared after ``twopc recover``, and no
  outcome marker (``twopc_outcomes``) of a finished transaction is left behind;
- ``twopc audit --json`` agrees: no violation, and exit 0 once recovery is done.

Checks collect problems as sentences instead of asserting one by one, so a failing test
shows every broken invariant at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import queue
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pymysql
from conftest import ACCOUNTS, Databases, twopc_executable

from twopc.devserver.procs import pids_in_dir

FORMAT_ID = 0x74706331  # "tpc1": every branch of ours carries it
SIDES = ("pg", "mysql")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_IN_DOUBT = 0, 1, 2, 3

#: ``TWOPC_FAULTS_LONG=1`` turns the short form (part of the normal suite) into the long one.
LONG = os.environ.get("TWOPC_FAULTS_LONG") == "1"

POINTS_2PC = ("after-first-prepare", "after-prepare", "after-decision", "after-first-commit",
              "before-end")  # fmt: skip
BEFORE_DECISION = frozenset(POINTS_2PC[:2])

PAUSED = re.compile(r"paused at (\S+): pid (\d+) (gtrid|saga) (\S+)")

# A test run started in the background (``cmd &``, some CI runners) ignores SIGINT, and every
# child would inherit that: Ctrl-C scenarios would then test nothing. Children of a process
# that catches SIGINT start with the default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def seed() -> int:
    """The random seed of a randomised scenario: ``TWOPC_FAULTS_SEED`` or a fresh one."""
    return int(os.environ.get("TWOPC_FAULTS_SEED") or random.SystemRandom().randrange(1 << 32))


# -- the truth, read with our own SQL -----------------------------------------------------------


def _missing_table(err: Exception) -> bool:
    if isinstance(err, psycopg.errors.UndefinedTable):
        return True
    return isinstance(err, pymysql.err.ProgrammingError) and err.args[0] == 1146


HARNESS_WAIT = 30  # seconds any statement of the harness itself may take


def pg_query(db: Databases, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """One statement on PostgreSQL, bounded: the harness must not hang where twopc might."""
    with psycopg.connect(
        db.pg_url,
        autocommit=True,
        connect_timeout=10,
        options=f"-c statement_timeout={HARNESS_WAIT}s",
    ) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def mysql_query(db: Databases, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """One statement on MariaDB, bounded like :func:`pg_query`."""
    info = db.state.mysql
    conn = pymysql.connect(
        host=info.host,
        port=info.port,
        user=info.user,
        database=info.database,
        autocommit=True,
        connect_timeout=10,
        read_timeout=HARNESS_WAIT,
        write_timeout=HARNESS_WAIT,
        ssl_disabled=True,  # see Databases.mysql_connect
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params or None)
            return list(cursor.fetchall())
    finally:
        conn.close()


def query(db: Databases, side: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return (pg_query if side == "pg" else mysql_query)(db, sql, params)


def rows_or_none(db: Databases, side: str, sql: str) -> list[Any]:
    """The rows of a query on a table that may not exist yet (then none)."""
    try:
        return query(db, side, sql)
    except (psycopg.Error, pymysql.err.MySQLError) as err:
        if _missing_table(err):
            return []
        raise


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return f"<undecodable {text!r}>"


def prepared_branches(db: Databases) -> dict[str, list[str]]:
    """Every prepared transaction on both servers: ``ours`` (``side gtrid/bqual``) and ``foreign``.

    PostgreSQL's list is cluster-wide, so every database counts; psycopg spells an xid
    ``<format id>_<base64 gtrid>_<base64 bqual>``. MariaDB's ``XA RECOVER`` gives the format
    id and the gtrid and bqual lengths of its ``data`` column.
    """
    ours: list[str] = []
    foreign: list[str] = []
    for (gid,) in pg_query(db, "SELECT gid FROM pg_prepared_xacts ORDER BY prepared"):
        fmt, _, rest = gid.partition("_")
        gtrid, _, bqual = rest.partition("_")
        if fmt == str(FORMAT_ID):
            ours.append(f"pg {_b64(gtrid)}/{_b64(bqual)}")
        else:
            foreign.append(f"pg {gid}")
    for fmt, glen, _, data in mysql_query(db, "XA RECOVER"):
        raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        gtrid = raw[: int(glen)].decode("utf-8", "replace")
        bqual = raw[int(glen) :].decode("utf-8", "replace")
        (ours if int(fmt) == FORMAT_ID else foreign).append(f"mysql {gtrid}/{bqual}")
    return {"ours": ours, "foreign": foreign}


@dataclass(frozen=True)
class Snapshot:
    """Both servers at one moment (read one after the other: take it when nothing runs)."""

    balances: dict[str, Decimal]
    holds: Decimal  # saga holds: what `twopc balances` shows as pending
    markers: dict[str, frozenset[str]]  # committed twopc_outcomes rows per side: gtrid/branch
    prepared: list[str]  # ours
    foreign: list[str]

    @property
    def money(self) -> Decimal:
        return sum(self.balances.values(), Decimal(0)) + self.holds

    def delta(self, before: Snapshot, account: str) -> Decimal:
        return self.balances.get(account, Decimal(0)) - before.balances.get(account, Decimal(0))


def snapshot(db: Databases) -> Snapshot:
    balances: dict[str, Decimal] = {}
    for side in SIDES:
        for account, balance in query(db, side, "SELECT id, balance FROM accounts"):
            balances[f"{side}:{account}"] = Decimal(balance)
    holds = sum(
        (
            Decimal(amount)
            for side in SIDES
            for (amount,) in rows_or_none(db, side, "SELECT amount FROM saga_holds")
        ),
        Decimal(0),
    )
    markers = {
        side: frozenset(
            f"{gtrid}/{branch}"
            for gtrid, branch in rows_or_none(db, side, "SELECT gtrid, branch FROM twopc_outcomes")
        )
        for side in SIDES
    }
    branches = prepared_branches(db)
    return Snapshot(balances, holds, markers, branches["ours"], branches["foreign"])


def outcome_table_missing(db: Databases) -> bool:
    pg = pg_query(db, "SELECT to_regclass('twopc_outcomes') IS NULL")[0][0]
    mysql = mysql_query(
        db,
        "SELECT COUNT(*) = 0 FROM information_schema.tables"
        " WHERE table_schema = DATABASE() AND table_name = 'twopc_outcomes'",
    )[0][0]
    return bool(pg) or bool(mysql)


def ready(db: Databases) -> None:
    """The documented set-up before many transfers start at once: ``twopc init`` (which
    also creates the coordinator's marker table; the db fixture seeds only the accounts)."""
    if outcome_table_missing(db):
        done = run(db, "init", "--accounts", str(ACCOUNTS), timeout=60)
        assert done.code == EXIT_OK, done.describe()


def client_sessions(db: Databases) -> dict[str, list[int]]:
    """Client sessions on each server other than the ones of this test process (ids to
    kill): those of the processes a scenario ran. The test process's own connections (the
    one asking, and any an earlier in-process command of the same worker still holds) are
    told by their client port, one of this process's sockets."""
    own = _own_tcp_ports()
    pg = [
        pid
        for (pid, port) in pg_query(
            db,
            "SELECT pid, client_port FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid() AND datname = current_database()",
        )
        if port not in own
    ]
    mysql = [
        int(ident)
        for (ident, host) in mysql_query(
            db,
            "SELECT id, host FROM information_schema.processlist WHERE id <> CONNECTION_ID()"
            " AND command NOT IN ('Daemon', 'Binlog Dump') AND user NOT IN"
            " ('system user', 'event_scheduler', 'unauthenticated user')",
        )
        if _port_of(str(host)) not in own
    ]
    return {"pg": pg, "mysql": mysql}


def _own_tcp_ports() -> set[int]:
    """Local TCP ports of this process's sockets (from /proc: its fds' socket inodes)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _port_of(host: str) -> int | None:
    """The client port of a MariaDB processlist host (``127.0.0.1:54321``); None for a
    Unix socket (``localhost``)."""
    _, sep, port = host.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def kill_sessions(db: Databases, side: str) -> list[int]:
    """Have the server end every other client session (pg_terminate_backend / KILL)."""
    killed = client_sessions(db)[side]
    for ident in killed:
        if side == "pg":
            pg_query(db, "SELECT pg_terminate_backend(%s)", (ident,))
        else:
            with suppress(pymysql.err.OperationalError):  # 1094: it ended meanwhile
                mysql_query(db, f"KILL {int(ident)}")
    return killed


def wait_sessions_gone(db: Databases, timeout: float = 35) -> list[str]:
    """Wait until the servers have reaped the sessions of killed processes.

    MariaDB keeps a prepared branch attached to its session until the server notices the
    client is gone; recovery meanwhile rightly says "not yet". Judging recovery before the
    servers caught up would blame it for our own haste. A session waiting on a row lock
    notices only when its wait ends, which the participants bound by their lock wait (the
    scenarios use at most 30 s): the default allows that much, and costs nothing when the
    sessions go at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = client_sessions(db)
        if not any(left.values()):
            return []
        if time.monotonic() > deadline:
            # Left by a killed client (a backend waiting on a lock does not notice its
            # client is gone): end them, or they would block everything after them.
            for side in SIDES:
                kill_sessions(db, side)
            return [f"client sessions still open {timeout:.0f}s after every process ended: {left}"]
        time.sleep(0.1)


# -- running the installed twopc ----------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """What one ``twopc`` process did. ``code`` is None when it had to be killed (it hung)."""

    args: tuple[str, ...]
    code: int | None
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        status = "hung (killed by the harness)" if self.code is None else f"exit {self.code}"
        err = self.stderr.strip().splitlines()
        tail = " | ".join(err[-3:]) if err else ""
        return f"`twopc {' '.join(self.args)}`: {status} after {self.seconds:.1f}s; stderr: {tail}"

    def document(self) -> Any:
        """stdout as JSON, or None when it is not one JSON document."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None

    @property
    def error_lines(self) -> list[str]:
        """stderr lines that are not the ``paused at`` notice of --pause-at."""
        return [line for line in self.stderr.splitlines() if not PAUSED.match(line)]


def twopc_env(db: Databases, env: dict[str, str | None] | None = None) -> dict[str, str]:
    """The test environment (HOME and both URLs set), with ``env`` applied; None unsets."""
    full = db.env()
    for name, value in (env or {}).items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    return full


class Proc:
    """One running ``twopc`` process. Its output is read on threads, so a full pipe never
    blocks it and a test can wait for one stderr line (the ``paused at`` notice)."""

    def __init__(self, db: Databases, *args: str, env: dict[str, str | None] | None = None) -> None:
        self.args = tuple(args)
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [twopc_executable(), *args],
            env=twopc_env(db, env),
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.paused_at: float | None = None  # when its ``paused at`` line came (monotonic)
        self.paused_id = ""  # the gtrid (saga id) that line names
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._stderr_lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, None), daemon=True),
            threading.Thread(
                target=self._pump, args=(self.popen.stderr, self._stderr_lines), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: Any, lines: queue.Queue[str | None] | None) -> None:
        into = self._stdout if lines is None else self._stderr
        with suppress(OSError, ValueError):
            for line in stream:
                into.append(line)
                if lines is not None:
                    if self.paused_at is None and (match := PAUSED.match(line)):
                        self.paused_at, self.paused_id = time.monotonic(), match.group(4)
                    lines.put(line)
        if lines is not None:
            lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_paused(self, timeout: float = 30) -> re.Match[str] | None:
        """The ``paused at`` notice, or None if the process ended or stayed silent first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._stderr_lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            if match := PAUSED.match(line):
                return match
        return None

    def send(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            self.popen.send_signal(signum)

    def finish(self, timeout: float) -> Finished:
        """Wait at most ``timeout`` seconds from now; a process still running then is killed
        and reported as hung (code None)."""
        try:
            code: int | None = self.popen.wait(timeout=max(timeout, 0.01))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=30)
            code = None
        seconds = time.monotonic() - self.started
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        return Finished(self.args, code, "".join(self._stdout), "".join(self._stderr), seconds)

    def kill(self) -> Finished:
        self.send(signal.SIGKILL)
        return self.finish(30)


def run(
    db: Databases, *args: str, timeout: float = 60, env: dict[str, str | None] | None = None
) -> Finished:
    """Run ``twopc ARGS`` to its end (killed and reported as hung after ``timeout`` seconds)."""
    return Proc(db, *args, env=env).finish(timeout)


@contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Whatever happens in the block, no process of ours outlives it."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.running():
                proc.kill()


# -- transfers and what became of them ----------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One transfer request, on accounts no other transfer touches in the same window."""

    source: str
    destination: str
    amount: Decimal
    mode: str = "2pc"

    def args(self, *extra: str) -> list[str]:
        return [
            "transfer", self.source, self.destination, str(self.amount),
            "--mode", self.mode, "--json", *extra,
        ]  # fmt: skip

    def __str__(self) -> str:
        return f"{self.mode} {self.source} -> {self.destination} {self.amount}"


@dataclass(frozen=True)
class Ran:
    """A move and how its process ended; ``note`` says what the harness did to it."""

    move: Move
    done: Finished
    note: str = ""


def applied_allowed(mode: str, code: int | None) -> frozenset[bool] | None:
    """Whether a transfer may be applied once recovery is done, given its exit status.

    None: the status itself is not one the README documents.
    """
    either = frozenset({True, False})
    if code is None or code < 0:  # hung (then killed), or killed by a signal
        return either
    if code == EXIT_OK:
        return frozenset({True})
    if code in (EXIT_FAILED, EXIT_USAGE):
        return frozenset({False})
    if code == EXIT_IN_DOUBT:  # 2PC: the commit is logged; a saga: unfinished, either way
        return frozenset({True}) if mode == "2pc" else either
    return None


def judge(ran: Ran, before: Snapshot, after: Snapshot) -> list[str]:
    """Problems with one transfer: half applied, or applied against what it reported."""
    move, done = ran.move, ran.done
    label = f"[{move}{'; ' + ran.note if ran.note else ''}] {done.describe()}"
    problems = []
    if "Traceback" in done.stderr:
        problems.append(f"{label}: a traceback on stderr")
    if done.code is None:
        problems.append(f"{label}: did not end in bounded time")
    source, destination = after.delta(before, move.source), after.delta(before, move.destination)
    if (source, destination) == (-move.amount, move.amount):
        applied = True
    elif (source, destination) == (0, 0):
        applied = False
    else:
        return [*problems, f"{label}: not atomic: source {source:+}, destination {destination:+}"]
    allowed = applied_allowed(move.mode, done.code)
    if allowed is None:
        problems.append(f"{label}: undocumented exit status")
    elif applied not in allowed:
        problems.append(f"{label}: {'applied' if applied else 'not applied'} after recovery")
    if done.code == EXIT_OK:
        document = done.document()
        outcome = document.get("outcome") if isinstance(document, dict) else None
        if outcome not in ("committed", "completed"):
            problems.append(f"{label}: exit 0 without a committed --json document: {done.stdout!r}")
    return problems


def ledger_problems(runs: Sequence[Ran], before: Snapshot, after: Snapshot) -> list[str]:
    """For transfers sharing accounts: when every one has a definite outcome (exit 0 or a 2PC
    exit 3: applied; exit 1 or 2: not), the balances must be exactly what they add up to."""
    expected: dict[str, Decimal] = {}
    for ran in runs:
        allowed = applied_allowed(ran.move.mode, ran.done.code)
        if allowed is None or len(allowed) != 1:
            return []  # some outcome is unknown: conservation is all that can be checked
        if True in allowed:
            expected[ran.move.source] = expected.get(ran.move.source, Decimal(0)) - ran.move.amount
            dst = ran.move.destination
            expected[dst] = expected.get(dst, Decimal(0)) + ran.move.amount
        else:
            expected.setdefault(ran.move.source, Decimal(0))
            expected.setdefault(ran.move.destination, Decimal(0))
    wrong = {
        account: (str(after.delta(before, account)), str(change))
        for account, change in expected.items()
        if after.delta(before, account) != change
    }
    if not wrong:
        return []
    return [f"balances do not add up to the reported outcomes (moved, reported): {wrong}"]


def judge_all(runs: Sequence[Ran], before: Snapshot, after: Snapshot) -> list[str]:
    return [problem for ran in runs for problem in judge(ran, before, after)]


def exit_problem(ran: Ran, allowed: frozenset[int] | set[int]) -> list[str]:
    """A problem when the process ended with a status outside ``allowed``."""
    if ran.done.code in allowed:
        return []
    return [f"[{ran.move}; {ran.note}] {ran.done.describe()}: expected exit {sorted(allowed)}"]


# -- recovery and the invariants ----------------------------------------------------------------


def audit_problems(db: Databases, *, settled: bool) -> list[str]:
    """``twopc audit --json``: never a violation; exit 0 once settled (3 allowed before)."""
    done = run(db, "audit", "--json", timeout=60)
    allowed = {EXIT_OK} if settled else {EXIT_OK, EXIT_IN_DOUBT}
    when = "after recover" if settled else "before recover"
    document = done.document()
    problems = []
    if done.code not in allowed:
        problems.append(f"audit {when}: {done.describe()} (expected {sorted(allowed)})")
    if not isinstance(document, dict):
        return [*problems, f"audit {when}: no JSON document: {done.stdout!r}"]
    if document.get("violations") != 0 or document.get("problems"):
        problems.append(
            f"audit {when}: violations {document.get('violations')}, problems "
            f"{document.get('problems')}, transactions {document.get('transactions')}"
        )
    return problems


def recover_problems(db: Databases) -> tuple[list[str], Any]:
    """``twopc recover --json`` once every coordinator is dead: exit 0, nothing left."""
    done = run(db, "recover", "--json", timeout=150)
    document = done.document()
    problems = []
    if done.code != EXIT_OK:
        problems.append(f"recover: {done.describe()}; report: {done.stdout.strip()[:1500]}")
    if isinstance(document, dict):
        sagas = document.get("sagas") or {}
        if document.get("problems") or document.get("in_doubt_remains"):
            problems.append(f"recover left problems: {document.get('problems')}")
        if sagas.get("problems") or sagas.get("unfinished_remain"):
            problems.append(f"recover left sagas unfinished: {sagas}")
        if "heuristic" in json.dumps(document):
            problems.append(f"recover reported a heuristic outcome: {document}")
    elif done.code is not None:
        problems.append(f"recover printed no JSON document: {done.stdout!r}")
    return problems, document


def invariant_problems(before: Snapshot, after: Snapshot) -> list[str]:
    """The global invariants once everything is recovered (``before``: when nothing ran)."""
    problems = []
    if after.prepared:
        problems.append(f"still prepared after recover: {after.prepared}")
    if after.money != before.money:
        problems.append(
            f"money not conserved: balances + holds = {after.money}, expected {before.money} "
            f"(holds {after.holds})"
        )
    if after.holds:
        problems.append(f"saga holds left after recover: {after.holds}")
    # Markers other tests left on purpose are not ours to judge: only new ones count.
    leaked = {side: sorted(after.markers[side] - before.markers[side]) for side in SIDES}
    if any(leaked.values()):
        problems.append(f"outcome markers leaked (twopc_outcomes gtrid/branch): {leaked}")
    return problems


def settle(
    db: Databases,
    before: Snapshot,
    runs: Sequence[Ran] = (),
    *,
    audit_first: bool = True,
) -> list[str]:
    """Recover, then check every invariant and every transfer; returns the problems found.

    Money is compared with ``before`` (taken when nothing ran: no saga in flight).
    """
    problems = wait_sessions_gone(db)
    if audit_first:
        problems += audit_problems(db, settled=False)
    recovered, _ = recover_problems(db)
    problems += recovered
    after = snapshot(db)
    problems += invariant_problems(before, after)
    problems += audit_problems(db, settled=True)
    problems += judge_all(runs, before, after)
    return problems


def repair(db: Databases) -> None:
    """After a failed check, clear what would blame the next round for this one: prepared
    branches and leftover outcome markers (the problem is already reported)."""
    db.clear_prepared()
    for side in SIDES:
        with suppress(psycopg.Error, pymysql.err.MySQLError):
            query(db, side, "DELETE FROM twopc_outcomes")


def record(scenario: str, problems: Sequence[str], **counts: int) -> None:
    """Add one test's figures (kills, faults, bad inputs, problems found) to the file named
    by ``TWOPC_FAULTS_FIGURES``, one JSON line each: scripts/faults-long.sh sums them into
    the table of RELIABILITY.md."""
    path = os.environ.get("TWOPC_FAULTS_FIGURES")
    if path:
        line = {
            "scenario": scenario,
            "cases": 1,
            "failed": int(bool(problems)),
            "problems": len(problems),
            **counts,
        }
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")


def report(problems: list[str], limit: int = 60) -> str:
    shown = "\n".join(f"- {p}" for p in problems[:limit])
    more = f"\n… and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problem(s):\n{shown}{more}"


# -- holding transfers at every point while something breaks ----------------------------------

HOLD = 4.0  # seconds each transfer stays at its point: long enough for all to get there
_HELD_AMOUNT = Decimal("4.50")

#: One transfer per point, each on its own account pair; both directions where order matters.
EVERY_POINT = [
    (Move("pg:a1", "mysql:a1", _HELD_AMOUNT), "after-first-prepare"),
    (Move("mysql:a2", "pg:a2", _HELD_AMOUNT), "after-first-prepare"),
    (Move("pg:a3", "mysql:a3", _HELD_AMOUNT), "after-prepare"),
    (Move("mysql:a4", "pg:a4", _HELD_AMOUNT), "after-decision"),
    (Move("pg:a5", "mysql:a5", _HELD_AMOUNT), "after-first-commit"),
    (Move("mysql:a6", "pg:a6", _HELD_AMOUNT), "after-first-commit"),
    (Move("pg:a7", "mysql:a7", _HELD_AMOUNT, "saga"), "after-debit"),
    (Move("mysql:a8", "pg:a8", _HELD_AMOUNT, "saga"), "after-credit"),
]


def documented_exits(move: Move, point: str) -> set[int]:
    """Before the decision a transfer may commit or abort; after it, commit or be in doubt;
    a saga may complete, compensate or stay unfinished."""
    if move.mode == "saga":
        return {EXIT_OK, EXIT_FAILED, EXIT_IN_DOUBT}
    return {EXIT_OK, EXIT_FAILED} if point in BEFORE_DECISION else {EXIT_OK, EXIT_IN_DOUBT}


def hold_at_every_point(
    db: Databases,
    fault: Callable[[], object],
    label: str,
    exits: Callable[[Move, str], set[int]] = documented_exits,
) -> list[str]:
    """Hold every transfer of EVERY_POINT at its point, run ``fault``, let them carry on
    (each must end within 60 s of the fault, with an exit status ``exits`` allows), then
    recover and check every invariant."""
    ready(db)
    before = snapshot(db)
    procs = [
        Proc(db, *move.args("--pause-at", point, "--pause-seconds", str(HOLD)))
        for move, point in EVERY_POINT
    ]
    problems = []
    with running(procs):
        for (move, point), proc in zip(EVERY_POINT, procs, strict=True):
            if proc.wait_paused(timeout=30) is None:
                problems.append(f"[{move}] never paused at {point}")
        fault()
        faulted = time.monotonic()
        finished = [proc.finish(timeout=faulted + 60 - time.monotonic()) for proc in procs]
    runs = [
        Ran(move, done, f"{label} at {point}")
        for (move, point), done in zip(EVERY_POINT, finished, strict=True)
    ]
    for ran, (move, point) in zip(runs, EVERY_POINT, strict=True):
        problems += exit_problem(ran, exits(move, point))
    return problems + settle(db, before, runs)


# -- faults on the servers ----------------------------------------------------------------------


def server_pids(db: Databases, side: str) -> list[int]:
    """Every process of one server (PostgreSQL: postmaster and backends; MariaDB: mariadbd)."""
    info = db.state.pg if side == "pg" else db.state.mysql
    return pids_in_dir(info.datadir)


@contextmanager
def frozen(db: Databases, side: str) -> Iterator[list[int]]:
    """SIGSTOP every process of one server for the block; SIGCONT whatever happens."""
    pids = server_pids(db, side)
    assert pids, f"no {side} server processes to freeze"
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield pids
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def crash_and_restart(db: Databases, side: str) -> None:
    """SIGKILL one server (its main process; PostgreSQL's children follow), then start it."""
    kind = "pg" if side == "pg" else "mysql"
    db.servers.kill(kind)
    db.servers.start(kind)
    db.state = db.servers.up()


# -- passwords that must never be printed -------------------------------------------------------


def leaked(text: str, secret: str) -> list[str]:
    """Pieces of ``secret`` (whole, URL-encoded, or a piece between '@'s) found in ``text``."""
    pieces = {secret, secret.replace("@", "%40")}
    pieces |= {piece for piece in secret.split("@") if len(piece) >= 4}
    return sorted(piece for piece in pieces if piece in text)


@dataclass
class Schedule:
    """When the soak kills what: a seeded random source the test prints on failure."""

    seed: int
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def pick(self, options: Sequence[str]) -> str:
        return self.rng.choice(list(options))

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def between(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)

    def cents(self, low: int = 1, high: int = 999) -> Decimal:
        return Decimal(self.rng.randint(low, high)) / 100
