"""``twopc bench transfers``: 2PC and the saga side by side on the real servers."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import ACCOUNTS, Databases

from twopc.benchmarks.bench_transfers import run_transfer_benchmark
from twopc.participants import DatabaseURL, MySQLParticipant, PostgresParticipant


def test_both_modes_run_and_conserve_money(db: Databases) -> None:
    before = db.balances()
    result = db.twopc("bench", "transfers", "--transfers", "6", "--workers", "1,2", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    runs = {(run["mode"], run["workers"]): run for run in figures["runs"]}
    assert set(runs) == {("2pc", 1), ("saga", 1), ("2pc", 2), ("saga", 2)}
    for run in runs.values():
        assert run["completed"] == 6 and run["failures"] == {}, run
        assert run["conserved"] is True
        assert run["transfers_per_s"] > 0 and run["p50_ms"] <= run["p99_ms"]
        assert run["audit_reads"] >= run["reads_total_off"] >= 0
    after = db.balances()
    assert sum(after.values()) == sum(before.values())
    assert after != before  # 24 transfers of 0.01 moved money between the hot accounts
    # Nothing left behind: no prepared branch, no unfinished saga, no coordinator log.
    assert db.pg_prepared() == [] and db.mysql_prepared() == []
    assert db.twopc_json("sagas")["sagas"] == []
    assert not any((db.home / "txlog").iterdir())
    # Like for like with the hand-written baselines: the benchmark's transfers announce nothing.
    assert db.pg_query("SELECT COUNT(*) FROM outbox") == [(0,)]
    assert db.mysql_query("SELECT COUNT(*) FROM outbox") == [(0,)]

    text = db.twopc("bench", "transfers", "--transfers", "2", "--workers", "1", "--modes", "2pc")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[1].split() == [
        "round", "mode", "workers", "transfers/s", "p50", "ms", "p99", "ms", "cpu", "ms",
        "failed", "reads", "off", "off+pending", "conserved",
    ]  # fmt: skip
    assert lines[2].split()[:3] == ["1", "2pc", "1"] and lines[2].split()[-1] == "yes"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--modes", "2pc,xa"),
            "Error: --modes '2pc,xa' must be comma-separated: 2pc, 2pc-early, saga, naive, "
            "sqlalchemy, local",
        ),
        (
            ("--rounds", "0"),
            "Error: Invalid value for '--rounds': 0 is not in the range 1<=x<=100. "
            "(see `twopc bench transfers --help`)",
        ),
        (("--workers", "0"), "Error: --workers '0' must be comma-separated integers >= 1"),
        (("--workers", "two"), "Error: --workers 'two' must be comma-separated integers >= 1"),
    ],
)
def test_bad_input_is_refused_before_anything_moves(
    db: Databases, args: tuple[str, ...], message: str
) -> None:
    before = db.balances()
    result = db.twopc("bench", "transfers", *args)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert db.balances() == before


def test_more_accounts_than_exist_is_refused(db: Databases) -> None:
    before = db.balances()
    result = db.twopc("bench", "transfers", "--accounts", str(ACCOUNTS + 1))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: pg has no account a{ACCOUNTS + 1}: run `twopc init --accounts {ACCOUNTS + 1}` "
        "or pass a smaller --accounts"
    )
    assert db.balances() == before
    assert sum(before.values()) == 2 * ACCOUNTS * Decimal("1000.00")


def test_progress_is_reported_once_per_transfer(db: Databases) -> None:
    participants = [
        PostgresParticipant("pg", DatabaseURL.parse(db.pg_url)),
        MySQLParticipant("mysql", DatabaseURL.parse(db.mysql_url)),
    ]
    calls: list[None] = []
    result = run_transfer_benchmark(
        participants,
        db.home,
        workers=(2,),
        transfers=5,
        accounts=ACCOUNTS,
        seed=7,
        on_transfer=lambda: calls.append(None),
    )
    assert len(calls) == 2 * 5  # two modes, five transfers each
    assert [run["completed"] for run in result["runs"]] == [5, 5]


def test_every_mode_interleaved_over_rounds_conserves_money(db: Databases, tmp_path: Path) -> None:
    """The baselines move money as 2PC does; their runs are interleaved round after round,
    and each mode is reported against naive in the same round, with its client CPU."""
    before = db.balances()
    plot = tmp_path / "bench.png"
    modes = "2pc,2pc-early,saga,naive,sqlalchemy,local"
    args = ("--modes", modes, "--transfers", "5", "--workers", "1,2", "--rounds", "2")
    result = db.twopc("bench", "transfers", *args, "--accounts", "4", "--plot", str(plot), "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert len(figures["runs"]) == 6 * 2 * 2
    orders = [[r["mode"] for r in figures["runs"] if r["round"] == n and r["workers"] == 1]
              for n in (1, 2)]  # fmt: skip
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])  # rotated
    for run in figures["runs"]:
        assert run["completed"] == 5 and run["failures"] == {}, run
        assert run["conserved"] is True and run["cpu_ms_per_transfer"] > 0
    summary = {(m["mode"], m["workers"]): m for m in figures["modes"]}
    assert set(summary) == {(m, w) for m in modes.split(",") for w in (1, 2)}
    assert summary["naive", 1]["vs_naive"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    for mode in summary.values():
        spread = mode["transfers_per_s"]
        assert spread["min"] <= spread["median"] <= spread["max"]
    assert sum(db.balances().values()) == sum(before.values())
    assert db.pg_prepared() == [] and db.mysql_prepared() == []  # naive's too
    assert plot.read_bytes().startswith(b"\x89PNG")
    # Round trips counted on the wire: a 2PC branch costs two (its statement with BEGIN or
    # XA START, the marker and the prepare; then COMMIT PREPARED), fewer than the
    # hand-written loop's (3 before the last statement carried the prepare, 7 + 6 before
    # pipelining).
    trips = figures["round_trips"]
    assert set(trips) == set(modes.split(","))
    assert all(row["failed"] == 0 for row in trips.values()), trips
    assert trips["2pc"]["pg"] <= 2.5 and trips["2pc"]["mysql"] <= 2.5, trips
    # Phase 2 in the background is counted once it has finished: at least two per server
    # (more when a transfer finds the rows of one still in phase 2 locked and runs again).
    assert trips["2pc-early"]["pg"] >= 2 and trips["2pc-early"]["mysql"] >= 2, trips
    assert trips["2pc"]["total"] < trips["naive"]["total"] < 3 * trips["2pc"]["total"], trips
    assert trips["local"]["mysql"] == 0 and trips["local"]["pg"] >= 3, trips
    assert "round trips per transfer, counted on the wire" in db.twopc(
        "bench", "transfers", "--transfers", "2", "--workers", "1", "--modes", "2pc"
    ).stdout
