"""The dual-write problem, shown and then fixed: `twopc demo dual-write`.

The same operations run three ways. Each operation moves 0.01 from pg:a1 to pg:a2 in one
local transaction that also records the operation (``dual_write_ops``), and announces it
with one event:

- ``after-commit``: commit, then publish the event straight to the broker;
- ``before-commit``: publish, then commit;
- ``outbox``: write the event in the transaction (:func:`twopc.outbox.write_event`); the
  relay publishes it later.

The process doing the work is a forked child that, with chance ``kill_chance`` per
operation, SIGKILLs itself at a random moment between the database write and the publish
(outbox: before or right after its commit; the relay too, with the same chance per wave
it publishes, once the broker has the wave on disk and before the rows are deleted). A
killed worker is started again from the next operation. Afterwards a consumer reads the
queue: **lost** events are operations that committed and were never delivered, **phantom**
events were delivered for operations that never committed, and **duplicates** are
deliveries the consumer absorbed (it records event ids in the same local transaction as its
effect).

Whether a worker dies at operation n is drawn from ``Random(f"{seed}/{mode}/{n}")``, so the
parent knows where to restart it without asking, and a seed replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from twopc.bank import ledger
from twopc.bank.accounts import AccountRef
from twopc.outbox import (
    Consumer,
    ConsumerConfig,
    ConsumerRunner,
    OutboxEvent,
    Publisher,
    Relay,
    RelayConfig,
    Subscription,
    Topology,
    ensure_outbox_tables,
    write_event,
)
from twopc.participants import DatabaseURL, LocalTransaction, Participant, participant_for
from twopc.saga import ensure_tables

MODES = ("after-commit", "before-commit", "outbox")
EVENT_TYPE = "demo.transfer"
SOURCE, DESTINATION = AccountRef("pg", "a1"), AccountRef("pg", "a2")
AMOUNT = Decimal("0.01")
CONSUMER_NAME = "dual-write"
TOPOLOGY = Topology((Subscription(CONSUMER_NAME, (EVENT_TYPE,)),))
#: Relay runs (each may be killed) before a last one that is not.
MAX_RELAY_RUNS = 10
RELAY_BATCH = 5
#: Seconds the count keeps consuming while the broker still holds events of the run.
COUNT_PATIENCE = 30.0

_OPS_DDL = (
    "CREATE TABLE IF NOT EXISTS dual_write_ops (run_id VARCHAR(60) NOT NULL, "
    "op INTEGER NOT NULL, PRIMARY KEY (run_id, op))"
)
_RECEIVED_DDL = (
    "CREATE TABLE IF NOT EXISTS dual_write_received (run_id VARCHAR(60) NOT NULL, "
    "op INTEGER NOT NULL, event_id VARCHAR(36) NOT NULL, PRIMARY KEY (run_id, op, event_id))"
)
_RECORD_OP = "INSERT INTO dual_write_ops (run_id, op) VALUES (%s, %s)"
_RECEIVED = "INSERT INTO dual_write_received (run_id, op, event_id) VALUES (%s, %s, %s)"


class DualWriteError(Exception):
    """The demo could not run (a refused operation, a worker that failed, not killed)."""


@dataclass
class ModeFigures:
    """One mode's counts."""

    mode: str
    operations: int
    committed: int = 0
    delivered: int = 0  # messages the consumer received, duplicates included
    lost: int = 0
    phantom: int = 0
    duplicates: int = 0
    worker_kills: int = 0
    relay_kills: int = 0
    seconds: float = 0.0


@dataclass
class DualWriteFigures:
    """The whole demo: every mode's figures, and how it was run."""

    operations: int
    kill_chance: float
    seed: int
    modes: list[ModeFigures] = field(default_factory=list)


def _receive(tx: LocalTransaction, event: OutboxEvent) -> None:
    payload = event.payload
    tx.execute(_RECEIVED, (str(payload["run_id"]), int(payload["op"]), event.event_id))


CONSUMER = Consumer(CONSUMER_NAME, (EVENT_TYPE,), _receive)


def run_dual_write(
    url: DatabaseURL,
    broker_url: str,
    operations: int,
    kill_chance: float,
    seed: int,
    say: Callable[[str], None] = lambda line: None,
) -> DualWriteFigures:
    """Run every mode on the PostgreSQL database at ``url`` and count what went wrong."""
    pg = participant_for("pg", url)
    probe = "SELECT o.op FROM dual_write_ops o, dual_write_received r WHERE 1 = 0"
    ensure_tables(pg, probe, [_OPS_DDL, _RECEIVED_DDL])
    ensure_outbox_tables(pg)
    figures = DualWriteFigures(operations, kill_chance, seed)
    for mode in MODES:
        say(f"{mode}: {operations} operations, each worker killed with chance {kill_chance}")
        figures.modes.append(_run_mode(pg, url, broker_url, mode, figures))
    pg.close()
    return figures


def _run_mode(
    pg: Participant, url: DatabaseURL, broker_url: str, mode: str, figures: DualWriteFigures
) -> ModeFigures:
    started = time.monotonic()
    run_id = f"{mode}-{uuid.uuid4().hex[:12]}"
    counts = ModeFigures(mode, figures.operations)
    plan = _Plan(figures.seed, mode, figures.kill_chance)
    start = 0
    while start < figures.operations:
        killed_at = plan.first_kill(start, figures.operations)
        work = partial(_work, url, broker_url, mode, run_id, start, figures.operations, plan)
        if _in_child(work) != (killed_at is not None):
            raise DualWriteError(f"{mode}: a worker was killed where the plan says it is not")
        if killed_at is None:
            break
        counts.worker_kills += 1
        start = killed_at + 1
    if mode == "outbox":
        counts.relay_kills = _relay_until_empty(url, broker_url, plan)
    _count(pg, broker_url, run_id, counts)
    counts.seconds = round(time.monotonic() - started, 2)
    return counts


@dataclass(frozen=True)
class _Plan:
    """Where workers die: drawn per operation (or per relay run and publish) from the seed."""

    seed: int
    mode: str
    chance: float

    def dies_at(self, op: int) -> bool:
        return random.Random(f"{self.seed}/{self.mode}/{op}").random() < self.chance

    def first_kill(self, start: int, end: int) -> int | None:
        return next((op for op in range(start, end) if self.dies_at(op)), None)

    def before_commit(self, op: int) -> bool:
        """Whether a worker dying at ``op`` dies before its commit: always when it published
        first, never when it publishes after; through the outbox, half the time."""
        if self.mode != "outbox":
            return self.mode == "before-commit"
        return random.Random(f"{self.seed}/{self.mode}/{op}/when").random() < 0.5

    def moment(self, op: int) -> float:
        """A random pause (seconds) inside the gap before the kill."""
        return random.Random(f"{self.seed}/{self.mode}/{op}/moment").uniform(0.0, 0.002)

    def relay_dies(self, run: int, waves: int) -> bool:
        """Whether relay run ``run`` dies right after the broker committed its ``waves``-th
        wave (a wave of one batch: its events of distinct aggregates)."""
        draw = random.Random(f"{self.seed}/relay/{run}/{waves}")
        return run < MAX_RELAY_RUNS and draw.random() < self.chance


def _in_child(work: Callable[[], None]) -> bool:
    """Run ``work`` in a forked process; whether it was SIGKILLed (DualWriteError when it
    failed otherwise)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 0
        try:
            work()
        except BaseException as err:  # reported by its exit code
            os.write(2, f"dual-write worker: {type(err).__name__}: {err}\n".encode())
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise DualWriteError(f"a worker failed (wait status {status}); see its error above")
    return False


def _die_after(pause: float) -> None:
    time.sleep(pause)
    os.kill(os.getpid(), signal.SIGKILL)


def _work(
    url: DatabaseURL, broker_url: str, mode: str, run_id: str, start: int, end: int, plan: _Plan
) -> None:
    """The worker: operations ``start``…``end - 1``, each announced the ``mode`` way."""
    pg = participant_for("pg", url)
    publisher = Publisher(broker_url, TOPOLOGY)
    for op in range(start, end):
        event = OutboxEvent.new(str(DESTINATION), EVENT_TYPE, {"run_id": run_id, "op": op})
        dies = plan.dies_at(op)
        if mode == "before-commit":
            publisher.publish(event)
        with pg.local_transaction() as tx:
            _operation(tx, run_id, op)
            if mode == "outbox":
                write_event(tx, event.aggregate, event.type, event.payload)
            if dies and plan.before_commit(op):
                _die_after(plan.moment(op))  # published (before-commit), or nothing happened
        if dies:
            _die_after(plan.moment(op))  # committed, not published (after-commit)
        if mode == "after-commit":
            publisher.publish(event)


def _operation(tx: LocalTransaction, run_id: str, op: int) -> None:
    refusal = ledger.debit(tx, SOURCE, AMOUNT) or ledger.credit(tx, DESTINATION, AMOUNT)
    if refusal is not None:
        raise DualWriteError(f"operation {op} refused: {refusal}")
    tx.execute(_RECORD_OP, (run_id, op))


class _KilledAfterConfirm(Publisher):
    """The relay's publisher, killed (per the plan) once the broker has a wave on disk,
    before the relay deletes its rows."""

    def __init__(self, url: str, plan: _Plan, run: int) -> None:
        super().__init__(url, TOPOLOGY)
        self._plan, self._run, self._published = plan, run, 0

    def publish_wave(self, wave: Sequence[tuple[OutboxEvent, Mapping[str, Any]]]) -> dict[str, str]:
        refusals = super().publish_wave(wave)
        self._published += 1
        if self._plan.relay_dies(self._run, self._published):
            _die_after(0.0)
        return refusals


def _relay_until_empty(url: DatabaseURL, broker_url: str, plan: _Plan) -> int:
    """Run relays (each maybe killed) until one drains the outbox; how many were killed."""
    kills = 0
    for run in range(MAX_RELAY_RUNS + 1):  # the last run is never killed (_Plan.relay_dies)
        if not _in_child(partial(_relay, url, broker_url, plan, run)):
            break
        kills += 1
    return kills


def _relay(url: DatabaseURL, broker_url: str, plan: _Plan, run: int) -> None:
    source = participant_for("pg", url)
    publisher = _KilledAfterConfirm(broker_url, plan, run)
    Relay([source], publisher, RelayConfig(batch=RELAY_BATCH)).drain()


def _count(pg: Participant, broker_url: str, run_id: str, counts: ModeFigures) -> None:
    """Consume everything the relay left in the queue, then compare with what committed.
    The consumer stops after half a second without a message; on a busy machine that can
    come before the queue is empty, so it goes again while the broker still holds some
    (within ``COUNT_PATIENCE``): an event not yet consumed is not a lost one."""
    give_up = time.monotonic() + COUNT_PATIENCE
    duplicates = 0
    while True:
        runner = ConsumerRunner.open(CONSUMER, pg, broker_url, TOPOLOGY, ConsumerConfig())
        duplicates += runner.run(lambda: False, idle_exit=0.5).duplicates
        try:
            waiting = runner.subscriber.backlog()
        finally:
            runner.subscriber.close()
        if waiting == 0 or time.monotonic() > give_up:
            break
    with pg.local_transaction() as tx:
        committed = _ops(tx, "SELECT op FROM dual_write_ops WHERE run_id = %s", run_id)
        received = _ops(tx, "SELECT op FROM dual_write_received WHERE run_id = %s", run_id)
    counts.committed = len(committed)
    counts.lost = len(committed - received)
    counts.phantom = len(received - committed)
    counts.delivered = len(received) + duplicates  # this run's, by event
    counts.duplicates = duplicates


def _ops(tx: LocalTransaction, query: str, run_id: str) -> set[int]:
    return {int(op) for (op,) in tx.execute(query, (run_id,)).fetchall()}
