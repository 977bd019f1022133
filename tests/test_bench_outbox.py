"""``twopc bench outbox`` against the real servers and RabbitMQ, run tiny: the JSON's shape,
and every transfer it announced confirmed exactly once."""

from __future__ import annotations

import json

import pytest
from conftest import Databases
from outbox_kit import prepare_queues

from twopc.devserver import DevServers

TRANSFERS = 4


@pytest.fixture()
def broker(db: Databases, dev_servers: DevServers, broker_url: str) -> str:
    dev_servers.broker_up()  # a test before may have killed it
    prepare_queues(broker_url)  # no other test's messages in the notifications queue
    return broker_url


def test_bench_outbox_measures_and_confirms_every_event_once(db: Databases, broker: str) -> None:
    before = db.balances()
    with_password = broker.replace("amqp://", "amqp://guest:guest@")  # the dev broker's user
    result = db.twopc(
        "bench", "outbox", "--transfers", str(TRANSFERS), "--rounds", "1", "--relays", "1,2",
        "--rate", "40", "--json", TWOPC_BROKER_URL=with_password,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert "guest:guest" not in result.stdout + result.stderr  # the password is never printed
    assert figures["broker"].startswith("amqp://")

    cost = figures["cost"]
    assert [(r["round"], r["mode"]) for r in cost["runs"]] == [(1, "announce"), (1, "plain")]
    for run in cost["runs"]:
        assert run["transfers_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
    assert set(cost["summary"]) == {"announce", "plain", "announce_vs_plain"}
    assert cost["summary"]["announce_vs_plain"]["median"] > 0

    runs = figures["relays"]["runs"]
    assert [r["relays"] for r in runs] == [1, 2]
    for run in runs:
        assert (run["backlog"], run["flow"]) == (TRANSFERS, TRANSFERS)
        assert run["events_per_s"] > 0 and 0 < run["drain_s"] <= run["caught_up_s"]
        assert 0 < run["e2e_p50_ms"] <= run["e2e_p99_ms"] <= run["e2e_max_ms"]
    assert [row["relays"] for row in figures["relays"]["summary"]] == [1, 2]

    # Announced: the cost run's transfers, and each relay run's backlog and flow.
    announced = TRANSFERS + 2 * 2 * TRANSFERS
    assert figures["events"] == figures["consumed"] == announced
    assert figures["consumed_once"] is True and figures["missing"] == 0
    assert figures["duplicates_absorbed"] >= 0
    # What it reported is what the databases hold: one confirmation per announced transfer
    # (plain ones announce nothing), each event recorded once, both outboxes empty.
    assert db.pg_query(
        "SELECT COUNT(DISTINCT transfer_id), COUNT(*) FROM transfer_confirmations"
    ) == [(announced, announced)]
    consumed = "SELECT COUNT(*) FROM consumed_events WHERE consumer = %s"
    assert db.pg_query(consumed, ("notifications",)) == [(announced,)]
    assert db.pg_query("SELECT COUNT(*) FROM outbox") == [(0,)]
    assert db.mysql_query("SELECT COUNT(*) FROM outbox") == [(0,)]
    moved = sum(before.values()) - sum(db.balances().values())
    assert moved == 0  # conserved: every transfer moved 0.01 from one side to the other

    human = db.twopc(
        "bench", "outbox", "--transfers", "2", "--rounds", "1", "--relays", "1", "--quiet",
        TWOPC_BROKER_URL=broker,
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "announce/plain throughput:" in human.stdout
    assert "every one once: yes" in human.stdout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--relays", "0"), "--relays '0' must be comma-separated integers >= 1"),
        (("--relays", "one,4"), "--relays 'one,4' must be comma-separated integers >= 1"),
        (("--relays", "1,65"), "--relays '1,65': at most 64 relays at once"),
        (
            ("--accounts", "11"),
            "pg has no account a11: run `twopc init --accounts 11` or pass a smaller --accounts",
        ),
    ],
)
def test_bench_outbox_rejects_bad_options(
    db: Databases, broker: str, args: tuple[str, ...], error: str
) -> None:
    before = db.balances()
    result = db.twopc("bench", "outbox", *args, TWOPC_BROKER_URL=broker)
    assert result.returncode == (1 if "--accounts" in args else 2)
    assert result.stderr.strip().splitlines() == [f"Error: {error}"]
    assert result.stdout == ""
    assert db.balances() == before  # nothing moved
    assert db.pg_query("SELECT COUNT(*) FROM outbox") == [(0,)]
    assert db.mysql_query("SELECT COUNT(*) FROM outbox") == [(0,)]


@pytest.mark.parametrize(
    ("rate", "error"),
    [
        (
            "0",
            "Invalid value for '--rate': 0.0 is not in the range 0.1<=x<=10000. "
            "(see `twopc bench outbox --help`)",
        ),
        ("nan", "--rate nan: give a number of transfers per second, 0.1 to 10000"),
    ],
)
def test_bench_outbox_rejects_a_bad_rate(db: Databases, broker: str, rate: str, error: str) -> None:
    result = db.twopc("bench", "outbox", "--rate", rate, TWOPC_BROKER_URL=broker)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"Error: {error}"]
    assert db.pg_query("SELECT COUNT(*) FROM outbox") == [(0,)]
