"""The README's library example runs as written, against the test servers."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from conftest import OPENING, Databases, twopc_executable
from flightkit import Trip, trip, trip_tables

README = Path(__file__).resolve().parent.parent / "README.md"
__all__ = ["trip", "trip_tables"]  # fixtures


def test_library_example_moves_money(db: Databases, tmp_path: Path) -> None:
    text = README.read_text()
    example = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S)
    assert example, "README lost its library example"
    result = subprocess.run(
        [sys.executable, "-c", example.group(1)],
        cwd=tmp_path,
        env=db.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"billing-1\.[0-9a-f]{20} 2pc\n", result.stdout)
    assert db.balance("pg", "a1") == OPENING - Decimal("10.00")
    assert db.balance("mysql", "a2") == OPENING + Decimal("10.00")


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci and "scripts/test.sh" in README.read_text()


def test_saga_example_runs_a_saga_of_your_own(db: Databases, tmp_path: Path) -> None:
    """The README's user-defined saga, as written: three steps, the pivot in the middle."""
    text = README.read_text()
    example = re.search(r"<!-- saga-example -->\n```python\n(.*?)```", text, re.S)
    assert example, "README lost its saga example"
    run = [sys.executable, "-c", example.group(1)]
    for _ in range(2):  # the second run replays saga order-17: nothing moves twice
        result = subprocess.run(
            run, cwd=tmp_path, env=db.env(), capture_output=True, text=True, timeout=60, check=False
        )
        assert (result.returncode, result.stdout) == (0, "order-17 completed\n"), result.stderr
        assert db.balance("pg", "a1") == OPENING - Decimal("10.00")
        assert db.balance("mysql", "a2") == OPENING + Decimal("10.00")
        assert db.balance("pg", "a3") == OPENING + Decimal("0.10")
    keys = [k for (k,) in db.pg_query("SELECT idempotency_key FROM saga_steps ORDER BY 1")]
    assert keys == ["order-17-step-1", "order-17-step-3"]
    assert db.mysql_query("SELECT idempotency_key FROM saga_steps") == [("order-17-step-2",)]


def test_flights_example_runs_as_written(trip: Trip) -> None:
    """The README's flight booking commands, in order, with the exit status each comment
    gives: in this process, but for the one that kills itself (the installed command)."""
    text = README.read_text()
    example = re.search(r"<!-- flights-example -->\n```sh\n(.*?)```", text, re.S)
    assert example, "README lost its flight booking example"
    commands = [line for line in example.group(1).splitlines() if line.startswith("twopc ")]
    assert len(commands) == 11
    for line in commands:
        command, _, comment = line.partition("  #")
        args = shlex.split(command)[1:]
        code = re.search(r"\(exit (\d)\)", comment)
        if "killed" in comment:
            done = subprocess.run(
                [twopc_executable(), *args], env=trip.env(), capture_output=True, text=True,
                timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == -signal.SIGKILL, (line, done.stderr)
            continue
        result = trip.cli(*args)
        assert result.exit_code == (int(code.group(1)) if code else 0), (line, result.output)
    assert trip.taken() == {
        "TP101 3C": "booked", "TP101 4C": "booked", "TP101 6C": "booked", "TP202 1A": "booked",
    }  # fmt: skip
    assert sorted(trip.bookings().values()) == ["cancelled", *["confirmed"] * 4]
    assert len(trip.confirmations()) == 4 and trip.prepared() == []


def test_outbox_example_publishes_and_consumes_once(db: Databases, broker_url: str) -> None:
    """The README's outbox example: an event written with its change, relayed, applied once."""
    text = README.read_text()
    example = re.search(r"<!-- outbox-example -->\n```python\n(.*?)```", text, re.S)
    assert example, "README lost its outbox example"
    result = subprocess.run(
        [sys.executable, "-c", example.group(1)],
        env=db.env(TWOPC_BROKER_URL=broker_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "1\n"), result.stderr
    assert db.pg_query("SELECT balance FROM accounts WHERE id = 'c42'") == [(Decimal("0.00"),)]
    assert db.pg_query("SELECT COUNT(*) FROM outbox") == [(0,)]
