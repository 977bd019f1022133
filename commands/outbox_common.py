"""What the outbox commands share: the broker's URL, every queue the project's consumers
read, stopping on a signal, outbox errors."""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from twopc.bank.notifications import TOPOLOGY as BANK_TOPOLOGY
from twopc.commands.common import BadInput, Context, Failure
from twopc.devserver import DevServerError
from twopc.flights.choreography import SUBSCRIPTIONS as FLIGHTS_SUBSCRIPTIONS
from twopc.outbox import OutboxError, Topology, check_url

#: The queues of the bank's consumers and of the choreographed booking's services: what
#: every relay and consumer the CLI runs declares, so that an event of either domain finds
#: its queues whichever relay publishes it.
TOPOLOGY = Topology((*BANK_TOPOLOGY.subscriptions, *FLIGHTS_SUBSCRIPTIONS))

_F = TypeVar("_F", bound=Callable[..., Any])


def broker_url_option(command: _F) -> _F:
    """``--broker-url`` / ``TWOPC_BROKER_URL``."""
    return click.option(
        "--broker-url",
        envvar="TWOPC_BROKER_URL",
        help="amqp://user:password@host:port/vhost of RabbitMQ (default: the broker of "
        "`twopc dev up`). Env: TWOPC_BROKER_URL.",
    )(command)


def resolve_broker_url(obj: Context, given: str | None) -> str:
    """The broker URL given, else the running dev broker's; BadInput when there is none.

    Also silences pika's own log: it logs every failed connection attempt at ERROR, in
    several lines, where the outbox reports the failure once, in its own words."""
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    if given is not None and not given.strip():
        raise BadInput("the broker URL is empty: give --broker-url / TWOPC_BROKER_URL a URL")
    url = given or _dev_broker_url(obj)
    if url is None:
        raise BadInput(
            "no broker configured: set --broker-url / TWOPC_BROKER_URL or run `twopc dev up`"
        )
    try:
        check_url(url)
    except ValueError as err:
        raise BadInput(str(err)) from None
    return url


def _dev_broker_url(obj: Context) -> str | None:
    try:
        state = obj.dev.status()
    except DevServerError:
        return None
    if state is None or state.broker is None or not state.broker.running:
        return None
    return state.broker.url


def outbox_errors(command: _F) -> _F:
    """Outbox errors (a broker that cannot be reached, …) as one-line failures, exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OutboxError as err:
            raise Failure(str(err)) from None

    return wrapper  # type: ignore[return-value]


class StopFlag:
    """Set by SIGTERM or SIGINT: a long-running relay or consumer finishes the batch or
    message in hand, settles it, and exits 0."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped

    def set(self, signum: int, frame: object) -> None:
        self.stopped = True


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """A :class:`StopFlag` that SIGTERM and SIGINT set while the block runs."""
    flag = StopFlag()
    previous = {sig: signal.signal(sig, flag.set) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
