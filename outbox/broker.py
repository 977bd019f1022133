"""RabbitMQ, through pika's BlockingConnection: the only module that speaks AMQP.

Topology: one durable topic exchange, ``twopc.events``; an event's type is its routing key.
Each consumer has a durable queue, ``twopc.<name>``, bound to the types it wants, and a
dead-letter queue, ``twopc.<name>.dead``, for messages it cannot apply. Both the relay and
the consumers declare the whole topology (declaring is idempotent), so a consumer's queue
holds events published before the consumer first ran.

Durability: the relay publishes persistent messages (delivery mode 2), mandatory, in AMQP
transactions (waves). RabbitMQ answers a commit only once the persistent messages routed to
durable queues are written to disk, so a committed event survives a broker crash; an
unroutable message (no queue wants its type) comes back before that answer, and counts as
refused. (Publisher confirms give the same guarantee per message; pika's blocking channel
waits for each confirm before the next publish, one disk write per message.) pika errors
become :class:`BrokerUnavailable` or :class:`BrokerRefused` here, once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions

from twopc.outbox.errors import BrokerRefused, BrokerUnavailable
from twopc.outbox.events import OutboxEvent

EXCHANGE = "twopc.events"
DEAD_EXCHANGE = "twopc.dead"
#: Seconds to connect, and to wait for a silent broker, before calling it unavailable.
TIMEOUT = 10.0
# Errors that mean the link (or the broker) is gone, not that a message was refused.
_LINK_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.StreamLostError,
    OSError,
)


@dataclass(frozen=True)
class Subscription:
    """A consumer's durable queue and the event types (AMQP topic patterns) it receives."""

    name: str
    bindings: tuple[str, ...]

    @property
    def queue(self) -> str:
        return f"twopc.{self.name}"

    @property
    def dead_queue(self) -> str:
        return f"twopc.{self.name}.dead"


@dataclass(frozen=True)
class Topology:
    """Every consumer's queue: what the relay makes sure of before it publishes."""

    subscriptions: tuple[Subscription, ...] = ()

    def declare(self, channel: Any) -> None:
        """Declare the exchanges, queues and bindings on ``channel`` (idempotent)."""
        channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        channel.exchange_declare(DEAD_EXCHANGE, exchange_type="direct", durable=True)
        for sub in self.subscriptions:
            channel.queue_declare(sub.dead_queue, durable=True)
            channel.queue_bind(sub.dead_queue, DEAD_EXCHANGE, routing_key=sub.dead_queue)
            arguments = {
                "x-dead-letter-exchange": DEAD_EXCHANGE,
                "x-dead-letter-routing-key": sub.dead_queue,
            }
            channel.queue_declare(sub.queue, durable=True, arguments=arguments)
            for pattern in sub.bindings:
                channel.queue_bind(sub.queue, EXCHANGE, routing_key=pattern)


def redacted(url: str) -> str:
    """``url`` without its credentials: user and password become ``***`` (for messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def check_url(url: str) -> None:
    """ValueError unless ``url`` is an ``amqp://`` or ``amqps://`` URL pika accepts."""
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        raise ValueError(f"broker URL {redacted(url)!r} must start with amqp:// or amqps://")
    try:
        pika.URLParameters(url)
    except Exception as err:  # pika raises ValueError, TypeError or its own types
        raise ValueError(f"broker URL {redacted(url)!r}: {err}") from None


def connect(url: str, *, timeout: float = TIMEOUT) -> Any:
    """A pika BlockingConnection to ``url``; :class:`BrokerUnavailable` when it fails."""
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout * 3  # a broker out of memory or disk
    params.connection_attempts = 1
    params.heartbeat = 30
    try:
        return pika.BlockingConnection(params)
    except (*_LINK_ERRORS, pika.exceptions.AMQPError) as err:
        raise BrokerUnavailable(f"broker {redacted(url)} unavailable: {_describe(err)}") from err


def _describe(err: BaseException) -> str:
    text = str(err) or repr(err)
    return f"{type(err).__name__}: {text}" if type(err).__name__ not in text else text


class Publisher:
    """Publishes events in waves, each one AMQP transaction on a channel of its own, and
    waits for its commit; reconnects lazily after :class:`BrokerUnavailable`.

    RabbitMQ answers ``tx.commit`` once the wave's persistent messages routed to durable
    queues are on disk, and sends back (``basic.return``, before its answer) every mandatory
    message no queue took: one fsync per wave instead of one per message."""

    def __init__(self, url: str, topology: Topology, *, timeout: float = TIMEOUT) -> None:
        self.url = url
        self._topology = topology
        self._timeout = timeout
        self._connection: Any = None
        self._channel: Any = None
        self._returned: dict[str, str] = {}  # message id -> why, for the wave in flight

    def publish(self, event: OutboxEvent, headers: Mapping[str, Any] | None = None) -> None:
        """Publish ``event`` alone and wait until the broker has it on disk. Raises
        :class:`BrokerRefused` (this message only) or :class:`BrokerUnavailable`."""
        refusals = self.publish_wave([(event, headers or {})])
        if event.event_id in refusals:
            raise BrokerRefused(refusals[event.event_id])

    def publish_wave(self, wave: Sequence[tuple[OutboxEvent, Mapping[str, Any]]]) -> dict[str, str]:
        """Publish ``(event, headers)`` pairs in one transaction and wait for its commit.
        Returns the refused events' ids, each with why (the others are on disk). Raises
        :class:`BrokerUnavailable`: then nothing of the wave is known to be published."""
        channel = self._ready_channel()
        self._returned.clear()
        try:
            for event, headers in wave:
                channel.basic_publish(
                    EXCHANGE, event.type, event.to_message(), _properties(event, headers), True
                )
            channel.tx_commit()
            self._connection.process_data_events(0)  # hands over the returned messages
        except pika.exceptions.ChannelClosedByBroker as err:
            self._channel = None  # closed because of a message of this wave, not committed
            if len(wave) == 1:
                return {wave[0][0].event_id: f"channel closed by the broker: {err}"}
            refusals: dict[str, str] = {}
            for item in wave:  # one at a time, to tell which message it was
                refusals |= self.publish_wave([item])
            return refusals
        except (*_LINK_ERRORS, pika.exceptions.AMQPError) as err:
            self.close()
            raise BrokerUnavailable(f"lost the broker while publishing: {_describe(err)}") from err
        return dict(self._returned)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        why = f"unroutable: no queue is bound to {method.routing_key!r} ({method.reply_text})"
        self._returned[str(properties.message_id)] = why

    def idle(self, seconds: float) -> None:
        """Wait ``seconds`` while keeping the connection alive (heartbeats)."""
        if self._connection is None or not self._connection.is_open:
            time.sleep(seconds)
            return
        try:
            self._connection.sleep(seconds)
        except (*_LINK_ERRORS, pika.exceptions.AMQPError):
            self.close()  # found out at the next publish's reconnect

    def close(self) -> None:
        """Close the connection (quietly: it may already be gone)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _ready_channel(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self.close()
            self._connection = connect(self.url, timeout=self._timeout)
        if self._channel is None or not self._channel.is_open:
            try:
                channel = self._connection.channel()
                self._topology.declare(channel)
                channel.tx_select()
                channel.add_on_return_callback(self._on_return)
            except (*_LINK_ERRORS, pika.exceptions.AMQPError) as err:
                self.close()
                raise BrokerUnavailable(f"broker {redacted(self.url)}: {_describe(err)}") from err
            self._channel = channel
        return self._channel


def _properties(event: OutboxEvent, headers: Mapping[str, Any]) -> Any:
    """A persistent message (delivery mode 2) carrying the event's id and type."""
    return pika.BasicProperties(
        message_id=event.event_id,
        type=event.type,
        timestamp=int(event.created_at),
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        app_id="twopc-relay",
        headers={"aggregate": event.aggregate, **headers},
    )


@dataclass(frozen=True)
class Delivery:
    """One message handed to a consumer (acknowledge it by ``tag``)."""

    tag: int
    body: bytes
    redelivered: bool


class Subscriber:
    """Receives one subscription's messages (manual acknowledgements, a prefetch window)."""

    def __init__(
        self, url: str, topology: Topology, subscription: Subscription, *, prefetch: int = 50
    ) -> None:
        self.url = url
        self._topology = topology
        self._subscription = subscription
        self._prefetch = prefetch
        self._connection: Any = None
        self._channel: Any = None

    def deliveries(self, inactivity: float) -> Iterator[Delivery | None]:
        """Messages as they come; None after ``inactivity`` seconds without one. Raises
        :class:`BrokerUnavailable` when the link is lost (unacknowledged messages go back to
        the queue and are delivered again)."""
        channel = self._open()
        try:
            for method, _properties, body in channel.consume(
                self._subscription.queue, inactivity_timeout=inactivity
            ):
                if method is None:
                    yield None
                else:
                    yield Delivery(method.delivery_tag, bytes(body), bool(method.redelivered))
        except (*_LINK_ERRORS, pika.exceptions.AMQPError) as err:
            self.close()
            raise BrokerUnavailable(f"lost the broker while consuming: {_describe(err)}") from err

    def backlog(self) -> int:
        """Messages waiting in the queue, not yet delivered to any consumer (a passive
        declare: it changes nothing)."""
        channel = self._open()
        try:
            frame = channel.queue_declare(self._subscription.queue, passive=True)
        except (*_LINK_ERRORS, pika.exceptions.AMQPError) as err:
            self.close()
            raise BrokerUnavailable(f"lost the broker while counting: {_describe(err)}") from err
        return int(frame.method.message_count)

    def ack(self, delivery: Delivery) -> None:
        """The message's effect is committed: the broker may forget it."""
        self._settle(lambda channel: channel.basic_ack(delivery.tag))

    def dead_letter(self, delivery: Delivery) -> None:
        """The message cannot be applied, ever: move it to the dead-letter queue."""
        self._settle(lambda channel: channel.basic_nack(delivery.tag, requeue=False))

    def give_back(self, deliveries: Sequence[Delivery]) -> None:
        """Return messages not applied (this consumer is stopping or backing off)."""
        for delivery in deliveries:
            self._settle(lambda channel, d=delivery: channel.basic_nack(d.tag, requeue=True))

    def _settle(self, action: Any) -> None:
        if self._channel is None:
            raise BrokerUnavailable("the channel is gone: the broker will deliver it again")
        try:
            action(self._channel)
        except (*_LINK_ERRORS, pika.exceptions.AMQPError) as err:
            self.close()
            raise BrokerUnavailable(f"lost the broker while settling: {_describe(err)}") from err

    def close(self) -> None:
        """Close the connection quietly; unacknowledged messages are redelivered."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _open(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = connect(self.url)
        try:
            channel = self._connection.channel()
            self._topology.declare(channel)
            channel.basic_qos(prefetch_count=self._prefetch)
        except (*_LINK_ERRORS, pika.exceptions.AMQPError) as err:
            self.close()
            raise BrokerUnavailable(f"broker {redacted(self.url)}: {_describe(err)}") from err
        self._channel = channel
        return channel
