"""Helpers of the outbox tests: a topology with a test queue, writing events, reading queues."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika

from twopc.bank.notifications import NOTIFICATIONS
from twopc.outbox import OutboxEvent, Subscription, Topology, write_event
from twopc.participants import Participant

#: The bank's notifications queue and a queue of the tests' own event types (``test.*``).
TEST_QUEUE = Subscription("outbox-test", ("test.#",))
TOPOLOGY = Topology((NOTIFICATIONS.subscription, TEST_QUEUE))


def write(participant: Participant, aggregate: str, n: int, type: str = "test.event") -> str:
    """Commit one event (payload ``{"n": n}``) in its own local transaction; its id."""
    with participant.local_transaction() as tx:
        return write_event(tx, aggregate, type, {"n": n}).event_id


def write_many(participant: Participant, events: list[tuple[str, int]]) -> None:
    """Commit ``(aggregate, n)`` events, in this order, in one local transaction."""
    with participant.local_transaction() as tx:
        for aggregate, n in events:
            write_event(tx, aggregate, "test.event", {"n": n})


def prepare_queues(url: str, topology: Topology = TOPOLOGY) -> None:
    """Declare ``topology`` and empty its queues (another test's messages are gone)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        topology.declare(channel)
        for sub in topology.subscriptions:
            channel.queue_purge(sub.queue)
            channel.queue_purge(sub.dead_queue)
    finally:
        connection.close()


def take_all(url: str, queue: str) -> list[OutboxEvent]:
    """Every message now in ``queue`` (acknowledged: the queue is left empty), in order."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    events = []
    try:
        channel = connection.channel()
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return events
            events.append(OutboxEvent.from_message(body))
    finally:
        connection.close()


def outbox_rows(participant: Participant) -> int:
    with participant.local_transaction() as tx:
        (count,) = tx.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(count)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result
