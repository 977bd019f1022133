"""`twopc demo dual-write` against the real servers and RabbitMQ: publishing straight to the
broker loses events (after the commit) or invents them (before it) when the worker is
killed in between; the outbox loses none and invents none."""

from __future__ import annotations

import json

from conftest import Databases

from twopc.devserver import DevServers


def test_dual_write_demo_counts_lost_and_phantom_events(
    db: Databases, dev_servers: DevServers, broker_url: str
) -> None:
    dev_servers.broker_up()  # a test before may have killed it
    args = ("--operations", "10", "--kill-chance", "0.3", "--seed", "1", "--json")
    result = db.twopc("demo", "dual-write", *args, TWOPC_BROKER_URL=broker_url)
    assert result.returncode == 0, result.stderr
    modes = {m["mode"]: m for m in json.loads(result.stdout)["modes"]}
    assert list(modes) == ["after-commit", "before-commit", "outbox"]

    after, before, outbox = modes["after-commit"], modes["before-commit"], modes["outbox"]
    assert after["worker_kills"] > 0 and after["lost"] == after["worker_kills"]
    assert after["phantom"] == 0 and after["committed"] == 10
    assert before["worker_kills"] > 0 and before["phantom"] == before["worker_kills"]
    assert before["lost"] == 0 and before["committed"] == 10 - before["worker_kills"]

    assert outbox["worker_kills"] + outbox["relay_kills"] > 0
    assert (outbox["lost"], outbox["phantom"]) == (0, 0)
    assert outbox["delivered"] == outbox["committed"] + outbox["duplicates"]
    # What the demo counted is what the database holds: one row per committed operation.
    (committed,) = db.pg_query("SELECT COUNT(*) FROM dual_write_ops WHERE run_id LIKE 'outbox-%%'")[
        0
    ]
    assert committed == outbox["committed"]
    assert db.pg_query("SELECT COUNT(*) FROM outbox") == [(0,)]
