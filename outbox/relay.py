"""The relay: publishes what the outboxes hold to the broker, deleting only what it confirmed.

One batch on one source (a participant's outbox) is one local transaction: claim (see
:mod:`twopc.outbox.store`), publish the events in waves (one broker transaction each, at
most one event per aggregate, in ``seq`` order) and wait for each wave's commit, delete the
published rows, count refusals (parking a row past ``max_attempts``), commit.

- A crash anywhere before the commit leaves every claimed row in the outbox: those already
  confirmed are published again by the next relay (at least once, never zero times).
- A refused event holds back only the rest of its own aggregate, and only until its
  back-off ends; after ``max_attempts`` it is parked, and its aggregate goes on.
- The broker gone: the confirmed part of the batch is settled, the rest stays; the relay
  backs off (doubling, up to ``broker_backoff.maximum``) and tries again. Writers never
  wait for the broker: they only insert into their outbox.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twopc.outbox.backoff import Backoff
from twopc.outbox.broker import Publisher
from twopc.outbox.errors import BrokerUnavailable
from twopc.outbox.store import (
    PendingEvent,
    claim,
    claim_transaction,
    delete_published,
    note_refusal,
    park,
)
from twopc.participants import LocalTransaction, Participant, ParticipantError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayConfig:
    """How a relay works. ``batch``: rows per claim; ``max_attempts``: refusals before an
    event is parked; ``refusal_backoff``: how long a refused event (and its aggregate)
    waits; ``broker_backoff``: pauses while the broker or a database is away; ``poll``:
    seconds between looks at empty outboxes."""

    batch: int = 100
    max_attempts: int = 5
    refusal_backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 2.0, 60.0))
    broker_backoff: Backoff = field(default_factory=lambda: Backoff(0.2, 2.0, 5.0))
    poll: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= 10_000:
            raise ValueError(f"batch must be 1-10000, got {self.batch}")
        if not 1 <= self.max_attempts <= 1000:
            raise ValueError(f"max_attempts must be 1-1000, got {self.max_attempts}")
        if not (math.isfinite(self.poll) and 0 < self.poll <= 60):
            raise ValueError(f"poll must be > 0 and <= 60 seconds, got {self.poll}")


@dataclass
class RelayStats:
    """What a relay did: events published, refusals, events parked, outages ridden out."""

    published: int = 0
    refused: int = 0
    parked: int = 0
    batches: int = 0
    outages: int = 0
    last_error: str = ""
    by_source: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Settlement:
    published: list[int]
    refused: list[tuple[PendingEvent, str]]
    lost_broker: BrokerUnavailable | None


class Relay:
    """Moves events from ``sources`` (participants whose outbox it empties) to the broker."""

    def __init__(
        self,
        sources: Sequence[Participant],
        publisher: Publisher,
        config: RelayConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = list(sources)
        self.publisher = publisher
        self.config = config or RelayConfig()
        self.stats = RelayStats()
        self._clock = clock

    def relay_batch(self, source: Participant) -> int:
        """Claim, publish and settle one batch of ``source``'s outbox; how many rows it
        claimed. Raises :class:`BrokerUnavailable` (after settling what was confirmed) and
        :class:`ParticipantError` (nothing settled: the claim is released)."""
        with claim_transaction(source) as tx:
            batch = claim(tx, source, self.config.batch, self._clock())
            if not batch:
                return 0
            settlement = self._publish(source, batch)
            self._settle(tx, settlement)
        self._count(source, settlement)
        if settlement.lost_broker is not None:
            raise settlement.lost_broker
        return len(batch)

    def drain(self, stop: Callable[[], bool] = lambda: False) -> RelayStats:
        """Relay until every source's outbox holds nothing publishable now (``--once``)."""
        while not stop():
            claimed = sum(self.relay_batch(source) for source in self.sources)
            if claimed == 0:
                break
        return self.stats

    def run(self, stop: Callable[[], bool]) -> RelayStats:
        """Relay until ``stop()`` says so, riding out broker and database outages."""
        failures = 0
        while not stop():
            try:
                claimed = sum(self.relay_batch(source) for source in self.sources)
                failures = 0
            except (BrokerUnavailable, ParticipantError) as err:
                failures += 1
                self._outage(err, failures)
                continue
            if claimed == 0:
                self.publisher.idle(self.config.poll)
        return self.stats

    def _outage(self, err: Exception, failures: int) -> None:
        self.stats.outages += failures == 1
        self.stats.last_error = str(err)
        pause = self.config.broker_backoff.delay(failures)
        log.warning("relay: %s; retrying in %.1fs", err, pause)
        time.sleep(pause)

    def _publish(self, source: Participant, batch: list[PendingEvent]) -> _Settlement:
        """Publish ``batch`` in waves of at most one event per aggregate, in ``seq`` order:
        a refused event's later rows are in later waves, and are held back."""
        published: list[int] = []
        refused: list[tuple[PendingEvent, str]] = []
        held_back: set[str] = set()  # aggregates with a refused event in this batch
        waiting = batch
        while waiting:
            wave, waiting = split_wave(waiting, held_back)
            items = [(p.event, {"source": source.name, "seq": p.seq}) for p in wave]
            try:
                refusals = self.publisher.publish_wave(items)
            except BrokerUnavailable as err:
                return _Settlement(published, refused, err)
            for pending in wave:
                why = refusals.get(pending.event.event_id)
                if why is None:
                    published.append(pending.seq)
                else:
                    refused.append((pending, why))
                    held_back.add(pending.event.aggregate)
        return _Settlement(published, refused, None)

    def _settle(self, tx: LocalTransaction, settlement: _Settlement) -> None:
        delete_published(tx, settlement.published)
        now = self._clock()
        for pending, error in settlement.refused:
            attempts = pending.attempts + 1
            if attempts >= self.config.max_attempts:
                park(tx, pending.seq, error, now)
                log.warning(
                    "relay: parked event %s after %d refusals: %s",
                    pending.event.event_id,
                    attempts,
                    error,
                )
            else:
                note_refusal(
                    tx, pending.seq, error, now + self.config.refusal_backoff.delay(attempts)
                )

    def _count(self, source: Participant, settlement: _Settlement) -> None:
        stats = self.stats
        stats.batches += 1
        stats.published += len(settlement.published)
        stats.by_source[source.name] = stats.by_source.get(source.name, 0) + len(
            settlement.published
        )
        stats.refused += len(settlement.refused)
        stats.parked += sum(
            1
            for pending, _ in settlement.refused
            if pending.attempts + 1 >= self.config.max_attempts
        )


def split_wave(
    waiting: Sequence[PendingEvent], held_back: set[str]
) -> tuple[list[PendingEvent], list[PendingEvent]]:
    """The next wave (the first waiting event of each aggregate not held back, in ``seq``
    order) and what waits after it; rows of held-back aggregates are dropped."""
    wave: list[PendingEvent] = []
    later: list[PendingEvent] = []
    taken: set[str] = set()
    for pending in waiting:
        aggregate = pending.event.aggregate
        if aggregate in held_back:
            continue
        (later if aggregate in taken else wave).append(pending)
        taken.add(aggregate)
    return wave, later
