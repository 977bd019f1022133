"""Opening a connection is bounded: a server that accepts TCP and then says nothing (or says
it too slowly, or stalls the TLS handshake) costs at most the connect timeout, never minutes.

The hostile "servers" are sockets in the test process. The real servers check that, once
connected, a statement may still wait for a lock longer than the connect timeout.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import pymysql
import pytest
from conftest import ACCOUNTS, Databases

from twopc.bank.schema import init_schema
from twopc.participants import (
    DatabaseURL,
    MySQLParticipant,
    ParticipantError,
    ParticipantUnavailable,
)

CONNECT_TIMEOUT = 5.0
# What a bounded connect may take: the timeout plus start-up and scheduling slack.
BOUND = CONNECT_TIMEOUT + 3
# How long a hostile server keeps a client before giving up on it. Longer than BOUND, so
# an unbounded connect shows up as a slow failure rather than as a hung test run.
PATIENCE = 20.0
SCHEMES = {"pg": "postgresql", "mysql": "mysql"}
SYSTEM_CA = ssl.get_default_verify_paths().openssl_cafile

Behaviour = Callable[[socket.socket], None]


def mysql_greeting(capabilities: int) -> bytes:
    """A HandshakeV10 packet as MariaDB sends it (sequence number 0)."""
    body = b"\x0a" + b"5.5.5-10.11.0-MariaDB\x00" + struct.pack("<I", 7)
    body += b"abcdefgh\x00" + struct.pack("<H", capabilities & 0xFFFF)
    body += b"\x2d" + struct.pack("<H", 2) + struct.pack("<H", capabilities >> 16)
    body += b"\x15" + b"\x00" * 10 + b"ijklmnopqrst\x00" + b"mysql_native_password\x00"
    return struct.pack("<I", len(body))[:3] + b"\x00" + body


# LONG_PASSWORD | CONNECT_WITH_DB | PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH
CAPABILITIES = 0x1 | 0x8 | 0x200 | 0x8000 | 0x80000
CLIENT_SSL = 0x800


def say_nothing(conn: socket.socket) -> None:
    """Accept, read whatever comes, never write: the client waits for an answer (MySQL's
    greeting, PostgreSQL's reply to its TLS request) that never comes."""
    while conn.recv(4096):  # until the client hangs up (or PATIENCE runs out)
        pass


def dribble_greeting(conn: socket.socket) -> None:
    """A valid greeting, one byte every half second: every single read gets its byte in
    time, so only a limit on the connect as a whole stops the client."""
    for byte in mysql_greeting(CAPABILITIES):
        conn.sendall(bytes([byte]))
        time.sleep(0.5)
    say_nothing(conn)


def stall_tls(conn: socket.socket) -> None:
    """Offer TLS, then take the client's TLS request and ClientHello and never answer."""
    conn.sendall(mysql_greeting(CAPABILITIES | CLIENT_SSL))
    while conn.recv(4096):
        pass


class HostileServer:
    """A listening socket on 127.0.0.1 that treats every client with ``behaviour``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._behaviour = behaviour
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._treat, args=(conn,), daemon=True).start()

    def _treat(self, conn: socket.socket) -> None:
        conn.settimeout(PATIENCE)
        with conn, contextlib.suppress(OSError):  # the client hung up, or PATIENCE ran out
            self._behaviour(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


@contextmanager
def serving(behaviour: Behaviour) -> Iterator[HostileServer]:
    server = HostileServer(behaviour)
    try:
        yield server
    finally:
        server.close()


def timed(action: Callable[[], object]) -> tuple[BaseException | None, float]:
    """The error ``action`` raised (None if it returned) and the seconds it took."""
    start = time.monotonic()
    try:
        action()
    except Exception as err:
        return err, time.monotonic() - start
    return None, time.monotonic() - start


@pytest.mark.parametrize(
    ("behaviour", "query"),
    [
        pytest.param(say_nothing, "", id="no-greeting"),
        pytest.param(dribble_greeting, "", id="greeting-too-slow"),
        pytest.param(stall_tls, "", id="tls-handshake-stalls"),
        pytest.param(stall_tls, f"?ssl_ca={SYSTEM_CA}", id="verified-tls-handshake-stalls"),
    ],
)
def test_mysql_connect_is_bounded_whatever_the_server_does(
    behaviour: Behaviour, query: str
) -> None:
    with serving(behaviour) as server:
        url = DatabaseURL.parse(f"mysql://twopc:secret@127.0.0.1:{server.port}/twopc{query}")
        error, seconds = timed(MySQLParticipant("mysql", url).connect)
    assert CONNECT_TIMEOUT - 0.5 < seconds < BOUND, seconds
    assert isinstance(error, ParticipantUnavailable), repr(error)
    assert str(error) == (
        f"mysql 127.0.0.1:{server.port}/twopc: connect failed: (2003) Can't connect to "
        f"MySQL server on '127.0.0.1' (not connected within {CONNECT_TIMEOUT:g} s)"
    )


@pytest.mark.parametrize("backend", ["pg", "mysql"])
def test_the_schema_code_connects_within_the_bound(backend: str) -> None:
    """``twopc init`` opens its connections through the schema code: bounded as well."""
    with serving(say_nothing) as server:
        text = f"{SCHEMES[backend]}://twopc:secret@127.0.0.1:{server.port}/twopc"
        url = DatabaseURL.parse(text)
        error, seconds = timed(
            lambda: init_schema(url, accounts_count=1, balance=Decimal(1), reset=False)
        )
    assert seconds < BOUND, seconds
    assert isinstance(error, ParticipantError), repr(error)
    (line,) = str(error).splitlines()
    assert line.startswith(f"{backend} 127.0.0.1:{server.port}/twopc: init failed: "), line


@pytest.mark.parametrize("backend", ["pg", "mysql"])
@pytest.mark.parametrize("command", ["balances", "init"])
def test_the_cli_gives_up_on_a_silent_server_in_bounded_time(
    db: Databases, backend: str, command: str
) -> None:
    before = db.balances()
    arguments = ("init", "--accounts", str(ACCOUNTS)) if command == "init" else (command,)
    with serving(say_nothing) as server:
        url = f"{SCHEMES[backend]}://twopc@127.0.0.1:{server.port}/twopc"
        start = time.monotonic()
        result = db.twopc(*arguments, timeout=60, **{f"TWOPC_{backend.upper()}_URL": url})
        seconds = time.monotonic() - start
    assert seconds < BOUND + 2, seconds  # one bounded connect, plus the command's start-up
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {backend} 127.0.0.1:{server.port}/twopc: "), line
    assert result.stdout == ""
    assert db.balances() == before


def test_a_statement_may_wait_for_a_lock_longer_than_the_connect_timeout(
    db: Databases,
) -> None:
    """The connect bound does not stay on the socket as a read timeout: a statement that
    waits for a row lock runs to the participant's lock-wait limit, well past 5 s."""
    holder = db.mysql().connect()
    participant = MySQLParticipant("mysql", DatabaseURL.parse(db.mysql_url), lock_wait=8)
    waiter = participant.connect()
    try:
        holder.begin()
        holder.cursor().execute("SELECT * FROM accounts WHERE id = 'a1' FOR UPDATE")
        error, seconds = timed(
            lambda: waiter.cursor().execute("UPDATE accounts SET balance = 0 WHERE id = 'a1'")
        )
    finally:
        holder.rollback()
        holder.close()
        waiter.close()
    assert isinstance(error, pymysql.err.OperationalError), repr(error)
    assert error.args[0] == 1205  # lock wait timeout: the server's answer, not ours
    assert 7.5 < seconds < 12, seconds
