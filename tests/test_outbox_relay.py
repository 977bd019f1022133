"""The outbox against real PostgreSQL, MariaDB and RabbitMQ: what a committed change
announces reaches the broker at least once, in order per aggregate, whatever dies when."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from conftest import Databases
from outbox_kit import (
    TEST_QUEUE,
    TOPOLOGY,
    outbox_rows,
    prepare_queues,
    take_all,
    wait_for,
    write,
    write_many,
)

from twopc.bank.events import TRANSFER_COMMITTED
from twopc.bank.notifications import NOTIFICATIONS
from twopc.devserver import DevServers
from twopc.outbox import (
    Backoff,
    ConsumerConfig,
    ConsumerRunner,
    OutboxEvent,
    Outcome,
    Publisher,
    Relay,
    RelayConfig,
    Subscriber,
    Subscription,
    Topology,
    consume,
    parked_events,
    prepare,
    prune_consumed,
    write_event,
)
from twopc.participants import Participant


@dataclass
class Outbox:
    db: Databases
    url: str

    def participant(self, side: str) -> Participant:
        return self.db.pg() if side == "pg" else self.db.mysql()

    def relay(self, *sides: str, topology: Topology = TOPOLOGY, **config: object) -> Relay:
        sources = [self.participant(side) for side in sides]
        return Relay(sources, Publisher(self.url, topology), RelayConfig(**config))  # type: ignore[arg-type]

    def test_events(self) -> list[tuple[str, int]]:
        return [(e.aggregate, int(e.payload["n"])) for e in take_all(self.url, TEST_QUEUE.queue)]


@pytest.fixture()
def outbox(db: Databases, dev_servers: DevServers, broker_url: str) -> Outbox:
    dev_servers.broker_up()  # a test before may have killed it
    prepare_queues(broker_url)
    return Outbox(db, broker_url)


def test_transfers_announce_themselves_once_each(outbox: Outbox) -> None:
    """2PC and saga transfers write their event in the destination's database; a refused
    transfer writes none; `relay --once` publishes and deletes them; `consume` confirms each
    transfer once."""
    db = outbox.db
    env = {"TWOPC_BROKER_URL": outbox.url}
    assert db.twopc("transfer", "pg:a1", "mysql:a2", "5.00").returncode == 0
    assert db.twopc("transfer", "mysql:a3", "pg:a4", "6.00", "--mode", "saga").returncode == 0
    assert db.twopc("transfer", "pg:a1", "mysql:a2", "5000.00").returncode == 1
    mysql_rows = db.mysql_query("SELECT aggregate, event_type FROM outbox")
    assert mysql_rows == [("mysql:a2", TRANSFER_COMMITTED)]
    assert db.pg_query("SELECT aggregate FROM outbox") == [("pg:a4",)]
    waiting = db.twopc_json("relay", "status")
    assert [waiting[side]["pending"] for side in ("pg", "mysql")] == [1, 1]
    assert 0 <= waiting["mysql"]["oldest_age_s"] < 60 and waiting["mysql"]["parked"] == 0

    relayed = db.twopc("relay", "--once", "--json", **env)
    assert relayed.returncode == 0, relayed.stderr
    assert json.loads(relayed.stdout)["published"] == 2
    assert db.pg_query("SELECT COUNT(*) FROM outbox") == [(0,)]  # published: cleaned up
    assert db.mysql_query("SELECT COUNT(*) FROM outbox") == [(0,)]

    consumed = db.twopc("consume", "notifications", "--idle-exit", "0.5", "--json", **env)
    assert consumed.returncode == 0, consumed.stderr
    figures = json.loads(consumed.stdout)
    assert (figures["applied"], figures["duplicates"]) == (2, 0)
    rows = db.pg_query("SELECT message FROM transfer_confirmations ORDER BY message")
    assert [m.split(" (")[0] for (m,) in rows] == [
        "5.00 moved from pg:a1 to mysql:a2",
        "6.00 moved from mysql:a3 to pg:a4",
    ]


_CRASHING_RELAY = """
import os, signal, sys
from twopc.outbox import Publisher, Relay, RelayConfig
from twopc.participants import DatabaseURL, participant_for
from outbox_kit import TOPOLOGY

class Crashing(Publisher):
    def publish_wave(self, wave):
        refusals = super().publish_wave(wave)  # committed by the broker: on disk
        os.kill(os.getpid(), signal.SIGKILL)  # before the rows are deleted

source = participant_for("mysql", DatabaseURL.parse(sys.argv[1]))
config = RelayConfig(batch=int(sys.argv[2]))
Relay([source], Crashing(os.environ["TWOPC_BROKER_URL"], TOPOLOGY), config).drain()
"""


def _transfer_event(participant: Participant, transfer_id: str, account: str = "a2") -> None:
    payload = {
        "transfer_id": transfer_id,
        "source": "pg:a1",
        "destination": f"mysql:{account}",
        "amount": "1.00",
        "mode": "2pc",
    }
    with participant.local_transaction() as tx:
        write_event(tx, f"mysql:{account}", TRANSFER_COMMITTED, payload)


def test_relay_killed_after_publish_republishes_and_consumer_absorbs(outbox: Outbox) -> None:
    """SIGKILL after the broker committed 3 of 5 events, before their rows were deleted: the
    claim dies with the connection, the next relay publishes all 5 again (at least once),
    and the consumer applies each transfer once, absorbing the 3 duplicates."""
    db, mysql = outbox.db, outbox.db.mysql()
    for n in range(5):  # five accounts: a batch of 3 goes out in one wave
        _transfer_event(mysql, f"t{n}", f"a{n + 1}")
    tests_dir = os.path.dirname(__file__)
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_RELAY, db.mysql_url, "3"],
        env=db.env(TWOPC_BROKER_URL=outbox.url, PYTHONPATH=tests_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert outbox_rows(mysql) == 5  # nothing deleted: the batch's transaction never committed

    assert outbox.relay("mysql").drain().published == 5
    assert outbox_rows(mysql) == 0

    pg = db.pg()
    config = ConsumerConfig(keep_ids=True)
    runner = ConsumerRunner.open(NOTIFICATIONS, pg, outbox.url, TOPOLOGY, config)
    stats = runner.run(lambda: False, idle_exit=0.5)
    assert (stats.applied, stats.duplicates, stats.dead_lettered) == (5, 3, 0)
    confirmed = db.pg_query("SELECT transfer_id FROM transfer_confirmations ORDER BY 1")
    assert confirmed == [(f"t{n}",) for n in range(5)]
    # Cleanup: the record of applied ids is pruned past its retention.
    assert db.pg_query("SELECT COUNT(*) FROM consumed_events") == [(5,)]
    assert prune_consumed(pg, NOTIFICATIONS.name, retention=3600) == 0
    assert prune_consumed(pg, NOTIFICATIONS.name, retention=0) == 5


def _in_order(received: list[tuple[str, int]]) -> dict[str, list[int]]:
    per_aggregate: dict[str, list[int]] = defaultdict(list)
    for aggregate, n in received:
        per_aggregate[aggregate].append(n)
    return per_aggregate


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_two_relays_publish_each_event_once_in_order_per_aggregate(
    outbox: Outbox, side: str
) -> None:
    """Two relays on one outbox at once: every event published exactly once (the normal
    case), both relays did part of the work, and each aggregate's events arrive in the
    order they were written."""
    written = [(f"agg-{n % 40}", n) for n in range(280)]  # more aggregates than a batch
    write_many(outbox.participant(side), written)
    relays = [outbox.relay(side, batch=8) for _ in range(2)]
    start = threading.Barrier(2)

    def drain(relay: Relay) -> None:
        start.wait()
        relay.drain()

    threads = [threading.Thread(target=drain, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for relay in relays:
        relay.publisher.close()
    received = outbox.test_events()
    assert sorted(received, key=lambda e: e[1]) == written  # each exactly once
    assert all(relay.stats.published > 0 for relay in relays), [r.stats for r in relays]
    for aggregate, numbers in _in_order(received).items():
        assert numbers == sorted(numbers), aggregate
    assert outbox_rows(outbox.participant(side)) == 0


@pytest.mark.parametrize("side", ["pg", "mysql"])
def test_an_event_committed_later_with_a_smaller_seq_is_not_skipped(
    outbox: Outbox, side: str
) -> None:
    """Sequence numbers are not commit order: A takes a smaller seq, B a larger one and
    commits first, and is relayed; A commits afterwards and is relayed too."""
    participant = outbox.participant(side)
    relay = outbox.relay(side)
    with ExitStack() as open_a:
        tx_a = open_a.enter_context(participant.local_transaction())
        write_event(tx_a, "agg-a", "test.event", {"n": 1})
        write(participant, "agg-b", 2)  # another connection: commits now
        assert relay.drain().published == 1  # B; A is not visible yet, and not waited for
        assert outbox.test_events() == [("agg-b", 2)]
    with participant.local_transaction() as tx:
        seqs = tx.execute("SELECT seq FROM outbox").fetchall()
    assert len(seqs) == 1  # A, now committed, with the smaller seq
    assert relay.drain().published == 2
    assert outbox.test_events() == [("agg-a", 1)]
    relay.publisher.close()


def test_broker_killed_relay_backs_off_and_resumes(outbox: Outbox, dev_servers: DevServers) -> None:
    """The broker is SIGKILLed under a running relay: a transfer still commits at once, the
    relay backs off (bounded) and publishes its event when the broker is back; the event the
    broker had confirmed before it died is still in its durable queue."""
    db, mysql = outbox.db, outbox.db.mysql()
    fast = Backoff(0.05, 2.0, 0.5)
    relay = outbox.relay("pg", "mysql", broker_backoff=fast, poll=0.02)
    stop = threading.Event()
    worker = threading.Thread(target=relay.run, args=(stop.is_set,))
    worker.start()
    try:
        first = write(mysql, "agg-a", 1)
        wait_for("the first event to be published", lambda: outbox_rows(mysql) == 0)
        dev_servers.kill_broker()
        started = time.monotonic()
        moved = db.twopc("transfer", "pg:a1", "mysql:a2", "3.00")
        assert moved.returncode == 0, moved.stderr
        assert time.monotonic() - started < 10  # the business transaction never waits
        wait_for("the relay to notice the outage", lambda: relay.stats.outages >= 1)
        assert outbox_rows(mysql) == 1
        dev_servers.broker_up()
        wait_for("the transfer's event to be published", lambda: outbox_rows(mysql) == 0)
    finally:
        stop.set()
        worker.join(timeout=30)
        relay.publisher.close()
    assert not worker.is_alive()
    assert [e.event_id for e in take_all(outbox.url, TEST_QUEUE.queue)] == [first]
    announced = take_all(outbox.url, NOTIFICATIONS.subscription.queue)
    assert [e.payload["amount"] for e in announced] == ["3.00"]


def test_a_refused_event_is_parked_after_n_attempts_without_blocking_others(
    outbox: Outbox,
) -> None:
    """An event no queue takes (unroutable: the broker returns it) is retried with back-off,
    holding back only its own aggregate, parked after --max-attempts, and put back by
    `twopc relay retry ID`; an unknown or malformed id changes nothing."""
    db, pg = outbox.db, outbox.db.pg()
    refused = write(pg, "agg-x", 1, type="nobody.listens")
    write(pg, "agg-x", 2)
    write(pg, "agg-y", 3)
    now = [1000.0]
    relay = Relay(
        [pg],
        Publisher(outbox.url, TOPOLOGY),
        RelayConfig(max_attempts=3, refusal_backoff=Backoff(10.0, 1.0, 10.0)),
        clock=lambda: now[0],
    )
    relay.drain()
    assert outbox.test_events() == [("agg-y", 3)]  # agg-x waits behind its refused head
    relay.drain()
    assert (relay.stats.refused, outbox.test_events()) == (1, [])  # backing off
    now[0] += 11
    relay.drain()
    assert (relay.stats.refused, relay.stats.parked) == (2, 0)
    now[0] += 11
    relay.drain()  # the third refusal parks it; agg-x goes on
    assert (relay.stats.refused, relay.stats.parked) == (3, 1)
    assert outbox.test_events() == [("agg-x", 2)]
    (parked,) = parked_events(pg)
    assert (parked.event.event_id, parked.attempts) == (refused, 3)
    assert "unroutable" in parked.last_error

    listed = db.twopc_json("relay", "parked")
    assert [e["event_id"] for e in listed["pg"]] == [refused] and listed["mysql"] == []
    bad = db.twopc("relay", "retry", "not-an-id")
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1)
    assert "UUID" in bad.stderr
    unknown = db.twopc("relay", "retry", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1 and "no parked event" in unknown.stderr
    retried = db.twopc("relay", "retry", refused)
    assert retried.returncode == 0, retried.stderr
    assert parked_events(pg) == [] and outbox_rows(pg) == 1

    listener = Subscription("outbox-test-late", ("nobody.#",))
    with_listener = Topology((*TOPOLOGY.subscriptions, listener))
    prepare_queues(outbox.url, with_listener)
    assert outbox.relay("pg", topology=with_listener).drain().published == 1
    assert [e.event_id for e in take_all(outbox.url, listener.queue)] == [refused]
    relay.publisher.close()


def test_an_unreachable_broker_is_one_line_exit_1_without_its_password(outbox: Outbox) -> None:
    """(Malformed input is refused before any server is asked: test_outbox_rules.)"""
    db = outbox.db
    write(db.pg(), "agg-a", 1)
    secret = "s3cret-Pw"
    url = f"amqp://user:{secret}@127.0.0.1:1/"
    for args in (["relay", "--once"], ["consume", "notifications", "--idle-exit", "1"]):
        result = db.twopc(*args, "--broker-url", url)
        assert result.returncode == 1, (args, result.stderr)
        *retries, error = result.stderr.splitlines()  # a consumer warns as it retries
        assert error.startswith("Error: broker amqp://***@127.0.0.1:1/ unavailable"), error
        assert all(line.startswith("WARNING: consumer notifications: ") for line in retries)
        assert secret not in result.stderr + result.stdout and "user" not in result.stderr
    assert outbox_rows(db.pg()) == 1  # nothing published, nothing deleted


def test_a_consumer_that_dies_before_its_ack_gets_the_event_again_and_absorbs_it(
    outbox: Outbox,
) -> None:
    """The effect committed, the acknowledgement never sent (the link dropped): RabbitMQ
    delivers the message again, and the consumer finds its id recorded and changes nothing."""
    db, pg = outbox.db, outbox.db.pg()
    _transfer_event(db.mysql(), "t-lost-ack")
    assert outbox.relay("mysql").drain().published == 1
    prepare(pg, NOTIFICATIONS)
    first = Subscriber(outbox.url, TOPOLOGY, NOTIFICATIONS.subscription)
    delivery = next(d for d in first.deliveries(inactivity=5.0) if d is not None)
    event = OutboxEvent.from_message(delivery.body)
    assert consume(pg, NOTIFICATIONS, event) is Outcome.APPLIED
    first.close()  # no ack: the broker requeues the message
    stale = "INSERT INTO consumed_events (consumer, event_id, consumed_at) VALUES (%s, %s, 0)"
    db.pg_query(stale, (NOTIFICATIONS.name, "long-ago"))

    runner = ConsumerRunner.open(NOTIFICATIONS, pg, outbox.url, TOPOLOGY)
    stats = runner.run(lambda: False, idle_exit=0.5)
    assert (stats.applied, stats.duplicates) == (0, 1)
    # The record of applied ids is pruned past its retention as the consumer runs.
    assert db.pg_query("SELECT event_id FROM consumed_events") == [(event.event_id,)]
    assert db.pg_query("SELECT transfer_id FROM transfer_confirmations") == [("t-lost-ack",)]


def test_a_subscriber_counts_what_waits_in_its_queue(outbox: Outbox) -> None:
    """``backlog`` is what the broker still holds for the subscription, undelivered: how a
    count (the dual-write demo's) knows a consumer that went idle did not finish the queue."""
    subscriber = Subscriber(outbox.url, TOPOLOGY, TEST_QUEUE)
    try:
        assert subscriber.backlog() == 0
        write_many(outbox.participant("pg"), [("a", 1), ("b", 2), ("c", 3)])
        assert outbox.relay("pg").drain().published == 3
        assert subscriber.backlog() == 3
        assert sorted(outbox.test_events()) == [("a", 1), ("b", 2), ("c", 3)]
        assert subscriber.backlog() == 0
    finally:
        subscriber.close()
