"""The outbox's pure rules, in milliseconds: back-off, events and their envelope, which
followers go out with their heads, URLs without passwords, and bad command-line input
(refused before any server is asked)."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from twopc.cli import main
from twopc.outbox import (
    Backoff,
    Consumer,
    InvalidEvent,
    OutboxEvent,
    PendingEvent,
    RelayConfig,
    check_url,
    redacted,
)
from twopc.outbox.relay import split_wave
from twopc.outbox.store import followers_in_order


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(0.5, 2.0, 3.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert Backoff(1.0, 1.0, 1.0).delay(100) == 1.0
    for bad in ((0.0, 2.0, 1.0), (1.0, 0.5, 2.0), (2.0, 2.0, 1.0), (math.nan, 2.0, 1.0)):
        with pytest.raises(ValueError):
            Backoff(*bad)


def test_relay_config_refuses_what_would_never_work() -> None:
    for bad in ({"batch": 0}, {"max_attempts": 0}, {"poll": 0.0}, {"poll": math.inf}):
        with pytest.raises(ValueError):
            RelayConfig(**bad)  # type: ignore[arg-type]


def test_an_event_travels_in_its_envelope_unchanged() -> None:
    event = OutboxEvent.new("pg:a1", "transfer.committed", {"amount": "1.00", "n": [1, 2]})
    uuid.UUID(event.event_id)  # the writer made the id
    assert OutboxEvent.from_message(event.to_message()) == event
    stored = event.payload_json()
    assert (
        OutboxEvent.from_row(event.event_id, "pg:a1", event.type, stored, event.created_at) == event
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("not-a-uuid", "a", "t", {}, 1.0), "is not a UUID"),
        ((str(uuid.uuid4()), "", "t", {}, 1.0), "aggregate must be 1-200"),
        ((str(uuid.uuid4()), "a", "t" * 201, {}, 1.0), "type must be 1-200"),
        ((str(uuid.uuid4()), "a", "t", [1], 1.0), "payload must be a JSON object"),
        ((str(uuid.uuid4()), "a", "t", {"x": object()}, 1.0), "payload is not JSON"),
        ((str(uuid.uuid4()), "a", "t", {"x": math.nan}, 1.0), "payload is not JSON"),
        ((str(uuid.uuid4()), "a", "t", {}, math.inf), "created_at must be a time"),
    ],
)
def test_a_malformed_event_is_refused(fields: tuple[object, ...], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        OutboxEvent(*fields)  # type: ignore[arg-type]


def test_a_message_that_carries_no_event_is_refused() -> None:
    for body in (b"not json", b"{}", b'{"event_id": "x"}'):
        with pytest.raises(InvalidEvent):
            OutboxEvent.from_message(body)


def _pending(seq: int, aggregate: str, not_before: float = 0.0) -> PendingEvent:
    event = OutboxEvent.new(aggregate, "test.event", {"seq": seq})
    return PendingEvent(seq, event, attempts=0, not_before=not_before)


def test_followers_stop_at_the_first_row_not_held_or_backing_off() -> None:
    wanted = [(2, "x"), (3, "y"), (4, "x"), (5, "z"), (6, "y"), (7, "z"), (8, "x")]
    locked = [
        _pending(2, "x"),
        _pending(4, "x"),
        _pending(5, "z", not_before=100.0),  # refused: backing off until 100
        _pending(6, "y"),  # 3 is another relay's (or gone): 6 must wait for it
        _pending(7, "z"),
        _pending(8, "x"),
    ]
    assert [p.seq for p in followers_in_order(wanted, locked, now=50.0)] == [2, 4, 8]
    assert [p.seq for p in followers_in_order(wanted, locked, now=150.0)] == [2, 4, 5, 7, 8]
    assert followers_in_order([], [], now=0.0) == []


def test_broker_urls_are_checked_and_never_shown_with_their_password() -> None:
    assert redacted("amqp://relay:s3cret@mq.example:5671/prod") == "amqp://***@mq.example:5671/prod"
    assert redacted("amqp://s3cret@[::1]:5672/") == "amqp://***@[::1]:5672/"
    assert redacted("amqp://127.0.0.1:5672/%2F") == "amqp://127.0.0.1:5672/%2F"
    check_url("amqps://relay:s3cret@mq.example/prod")
    for bad in ("http://relay:s3cret@mq.example/", "mq.example:5672", ""):
        with pytest.raises(ValueError) as refused:
            check_url(bad)
        assert "s3cret" not in str(refused.value)


def test_a_consumer_needs_a_plain_name_and_an_event_type() -> None:
    def effect(tx: object, event: object) -> None:
        pass

    for name, bindings in (("", ("t",)), ("a b", ("t",)), ("../x", ("t",)), ("ok", ())):
        with pytest.raises(ValueError):
            Consumer(name, bindings, effect)  # type: ignore[arg-type]


NOWHERE = {
    "TWOPC_PG_URL": "postgresql://twopc@127.0.0.1:1/twopc",
    "TWOPC_MYSQL_URL": "mysql://twopc@127.0.0.1:1/twopc",
    "TWOPC_BROKER_URL": "amqp://relay:s3cret@127.0.0.1:1/%2F",
}


@pytest.mark.parametrize(
    "args",
    [
        ["relay", "--once", "--broker-url", "http://relay:s3cret@127.0.0.1/"],
        ["relay", "--once", "--batch", "0"],
        ["relay", "--max-attempts", "0"],
        ["relay", "retry", "not-an-event-id"],
        ["consume", "nobody"],
        ["consume", "notifications", "--retention", "forever"],
        ["consume", "notifications", "--broker-url", "amqp://relay:s3cret@[::1"],
        ["relay", "--once", "--broker-url", ""],
        ["demo", "dual-write", "--operations", "0"],
        ["demo", "dual-write", "--kill-chance", "1.5"],
        ["demo", "dual-write", "--seed", "-1"],
        ["demo", "dual-write", "--broker-url", "nats://relay:s3cret@127.0.0.1/"],
    ],
)
def test_bad_outbox_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, ["--home", str(tmp_path), *args], env=NOWHERE)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert "s3cret" not in result.stderr and "relay:" not in result.stderr


def test_a_batch_goes_out_in_waves_of_one_event_per_aggregate_in_seq_order() -> None:
    batch = [
        _pending(1, "x"),
        _pending(2, "y"),
        _pending(3, "x"),
        _pending(4, "x"),
        _pending(5, "z"),
    ]
    wave, later = split_wave(batch, held_back=set())
    assert ([p.seq for p in wave], [p.seq for p in later]) == ([1, 2, 5], [3, 4])
    wave, later = split_wave(later, held_back=set())
    assert ([p.seq for p in wave], [p.seq for p in later]) == ([3], [4])
    # x was refused: its later rows wait for the next batch, after its back-off.
    assert split_wave(batch, held_back={"x"}) == ([batch[1], batch[4]], [])
