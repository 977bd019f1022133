"""Benchmark of the outbox: what announcing costs a transfer, and how fast events travel.

Two parts, on the configured servers and broker (``twopc init`` must have made the schema):

- **Transfer cost.** The same kind of 2PC transfers, one at a time, with ``announce=True``
  (the destination's branch also writes the ``transfer.committed`` event) and without,
  interleaved over the rounds (their order swapped every round, so noise on the machine
  hits both alike): transfers/s and p50/p99 of each, and their ratio per round.
- **Relays.** For each number of relays (threads of this process, each with its own
  connections, all relaying both outboxes) the notifications consumer runs beside them, and:

  1. *backlog*: ``transfers`` announced transfers commit with no relay running, then the
     relays start; the time until both outboxes are empty gives the relays' throughput
     (events/s, the consumer taking them meanwhile);
     ``caught_up_s`` is when the consumer had confirmed all of them, from the same start;
  2. *flow*: then, the relays still running, ``transfers`` transfers commit at a steady
     ``rate``, alternating direction (events on both databases); each one's end-to-end
     latency runs from its event's ``created_at`` (written in the transaction, just before
     its commit) to the consumer's effect (its confirmation row's ``sent_at``), p50/p99.

Every transfer announced in the whole run must end with exactly one confirmation: the
result says whether it did (``consumed_once``) and how many duplicates the consumer absorbed.
A run moves 0.01 per transfer and leaves it moved; its confirmations stay, as any
transfer's do. Another ``twopc consume notifications`` running meanwhile would take some
of the events: run the benchmark alone.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from twopc.bank import AccountRef, Transfer, run_transfer
from twopc.bank.notifications import CONFIRMATIONS_TABLE, NOTIFICATIONS, TOPOLOGY
from twopc.coordinator import Coordinator, CoordinatorConfig
from twopc.outbox import (
    ConsumerConfig,
    ConsumerRunner,
    Publisher,
    Relay,
    RelayConfig,
    ensure_outbox_tables,
    outbox_state,
)
from twopc.participants import Participant, participant_for

AMOUNT = Decimal("0.01")
COST_MODES = ("announce", "plain")
BACKLOG_WORKERS = 4  # threads committing the backlog as fast as they can
#: How long the benchmark waits for a step that must end (outboxes emptied, every event
#: confirmed) before it gives up on the run.
SETTLE_TIMEOUT = 120.0


class BenchmarkFailed(Exception):
    """A step did not end in time (relays or consumer stuck): the figures would mean nothing."""


@dataclass
class _Announced:
    """Every transfer announced in the run (gtrids), for the final exactly-once check."""

    ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, gtrid: str) -> None:
        with self.lock:
            self.ids.append(gtrid)


def run_outbox_benchmark(
    participants: Sequence[Participant],
    broker_url: str,
    home: Path,
    *,
    transfers: int = 300,
    relays: Sequence[int] = (1, 4),
    rounds: int = 3,
    rate: float = 50.0,
    accounts: int = 10,
    batch: int = 100,
    seed: int | None = None,
    on_step: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Run both parts; return a JSON-ready dict (see the module's docstring).
    ``participants`` are pg and mysql, in that order. ``on_step`` is called after each
    measured run (for progress). Raises :class:`BenchmarkFailed` when a step never ends."""
    if min([*relays, transfers, rounds, accounts, batch], default=0) < 1 or not relays:
        raise ValueError("transfers, relays, rounds, accounts and batch must be at least 1")
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    step = on_step or (lambda: None)
    chooser = random.Random(seed)
    announced = _Announced()
    for participant in participants:
        ensure_outbox_tables(participant)
    started = time.time()
    cost_runs: list[dict[str, Any]] = []
    relay_runs: list[dict[str, Any]] = []
    with Coordinator.open(participants, CoordinatorConfig(home)) as coordinator:
        for round_number in range(rounds):
            order = COST_MODES if round_number % 2 == 0 else COST_MODES[::-1]
            for mode in order:
                requests = [_request(chooser, accounts, n) for n in range(transfers)]
                run = _cost_run(coordinator, requests, mode == "announce", announced)
                cost_runs.append({"round": round_number + 1, "mode": mode, **run})
                step()
        with _consumer(participants[0], broker_url) as consumer:
            _settle(participants, broker_url, batch)  # the cost runs' events, unmeasured
            for round_number in range(rounds):
                for count in relays:
                    run = _relay_run(
                        coordinator, participants, broker_url, count, transfers, rate,
                        accounts, batch, chooser, announced,
                    )  # fmt: skip
                    relay_runs.append({"round": round_number + 1, **run})
                    step()
            check = _wait_consumed(participants[0], announced.ids, started)
        duplicates = consumer.stats.duplicates
    return {
        "transfers": transfers,
        "rounds": rounds,
        "rate": rate,
        "batch": batch,
        "amount": str(AMOUNT),
        "cost": {"runs": cost_runs, "summary": summarize_cost(cost_runs)},
        "relays": {"runs": relay_runs, "summary": summarize_relays(relay_runs)},
        "events": len(announced.ids),
        "consumed": check["consumed"],
        "missing": check["missing"],
        "consumed_once": check["missing"] == 0,
        "duplicates_absorbed": duplicates,
    }


def _request(chooser: random.Random, accounts: int, n: int) -> Transfer:
    """A transfer between random accounts, pg to mysql for even ``n``, back for odd."""
    pg = AccountRef("pg", f"a{chooser.randint(1, accounts)}")
    mysql = AccountRef("mysql", f"a{chooser.randint(1, accounts)}")
    source, destination = (pg, mysql) if n % 2 == 0 else (mysql, pg)
    return Transfer(source, destination, AMOUNT)


def _cost_run(
    coordinator: Coordinator, requests: list[Transfer], announce: bool, announced: _Announced
) -> dict[str, Any]:
    latencies = []
    started = time.perf_counter()
    for request in requests:
        began = time.perf_counter()
        outcome = run_transfer(coordinator, request, announce=announce)
        latencies.append(time.perf_counter() - began)
        if announce:
            announced.add(outcome.gtrid)
    seconds = time.perf_counter() - started
    return {
        "transfers_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": quantile_ms(latencies, 50),
        "p99_ms": quantile_ms(latencies, 99),
    }


def _relay_run(
    coordinator: Coordinator,
    participants: Sequence[Participant],
    broker_url: str,
    count: int,
    transfers: int,
    rate: float,
    accounts: int,
    batch: int,
    chooser: random.Random,
    announced: _Announced,
) -> dict[str, Any]:
    backlog_started = time.time()
    backlog = [_request(chooser, accounts, n) for n in range(transfers)]
    backlog_ids = _commit_all(coordinator, backlog, announced)
    with _relays(participants, broker_url, count, batch) as workers:
        started = time.perf_counter()
        _wait("the relays to empty the outboxes", lambda: _pending(participants) == 0)
        drain = time.perf_counter() - started
        published = sum(worker.stats.published for worker in workers)
        # The flow starts once the consumer has caught up with the backlog, so that its
        # events do not queue behind the backlog's.
        _end_to_end(participants[0], backlog_ids, backlog_started)
        caught_up = time.perf_counter() - started
        flow_started = time.time()
        flow = [_request(chooser, accounts, n) for n in range(transfers)]
        ids = _commit_paced(coordinator, flow, rate, announced)
        latencies = _end_to_end(participants[0], ids, flow_started)
    return {
        "relays": count,
        "backlog": transfers,
        "drain_s": round(drain, 3),
        "events_per_s": round(published / drain, 1) if drain > 0 else None,
        "caught_up_s": round(caught_up, 3),
        "flow": len(ids),
        "e2e_p50_ms": quantile_ms(latencies, 50),
        "e2e_p99_ms": quantile_ms(latencies, 99),
        "e2e_max_ms": round(1000 * max(latencies), 1),
    }


def _commit_all(
    coordinator: Coordinator, requests: list[Transfer], announced: _Announced
) -> list[str]:
    """Commit ``requests`` on a few threads, as fast as they go; their gtrids."""
    queue = iter(requests)
    take = threading.Lock()
    errors: list[BaseException] = []
    ids: list[str] = []

    def worker() -> None:
        while not errors:
            with take:
                request = next(queue, None)
            if request is None:
                return
            try:
                gtrid = run_transfer(coordinator, request).gtrid
            except Exception as err:  # reported by the caller: the run cannot go on
                errors.append(err)
            else:
                announced.add(gtrid)
                with take:
                    ids.append(gtrid)

    threads = [threading.Thread(target=worker) for _ in range(BACKLOG_WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchmarkFailed(f"a backlog transfer failed: {errors[0]}")
    return ids


def _commit_paced(
    coordinator: Coordinator, requests: list[Transfer], rate: float, announced: _Announced
) -> list[str]:
    """Commit ``requests`` one at a time, the n-th starting ``n / rate`` s after the first."""
    ids = []
    started = time.monotonic()
    for n, request in enumerate(requests):
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
        gtrid = run_transfer(coordinator, request).gtrid
        announced.add(gtrid)
        ids.append(gtrid)
    return ids


def _end_to_end(confirmed_on: Participant, ids: list[str], since: float) -> list[float]:
    """Seconds from each transfer's event to its confirmation, once all are confirmed."""
    wanted = set(ids)
    found: dict[str, float] = {}

    def all_confirmed() -> bool:
        found.update(
            (transfer_id, sent - created)
            for transfer_id, created, sent in _confirmations(confirmed_on, since)
            if transfer_id in wanted
        )
        return len(found) == len(wanted)

    _wait("the consumer to confirm every transfer", all_confirmed)
    return sorted(found.values())


_SINCE = (
    f"SELECT transfer_id, event_created_at, sent_at FROM {CONFIRMATIONS_TABLE} "
    "WHERE event_created_at >= %s"
)


def _confirmations(participant: Participant, since: float) -> list[tuple[str, float, float]]:
    with participant.local_transaction() as tx:
        rows = tx.execute(_SINCE, (since,)).fetchall()
    return [(str(t), float(c), float(s)) for t, c, s in rows]


def _wait_consumed(participant: Participant, ids: list[str], since: float) -> dict[str, int]:
    """Wait (bounded) for one confirmation of every announced transfer; how many came."""
    wanted = set(ids)
    seen: set[str] = set()

    def done() -> bool:
        seen.update(t for t, _, _ in _confirmations(participant, since - 1) if t in wanted)
        return seen == wanted

    with contextlib.suppress(BenchmarkFailed):  # reported as missing confirmations
        _wait("a confirmation of every transfer", done)
    return {"consumed": len(seen), "missing": len(wanted - seen)}


def _pending(participants: Sequence[Participant]) -> int:
    return sum(outbox_state(participant).pending for participant in participants)


def _wait(what: str, check: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.01)


def _settle(participants: Sequence[Participant], broker_url: str, batch: int) -> None:
    """Publish what the outboxes hold now (the cost runs' events), outside any measure."""
    publisher = Publisher(broker_url, TOPOLOGY)
    sources = _own(participants)
    try:
        Relay(sources, publisher, RelayConfig(batch=batch)).drain()
    finally:
        publisher.close()
        for source in sources:
            source.close()


def _own(participants: Sequence[Participant]) -> list[Participant]:
    """Participants of the same databases with connections of their own."""
    return [participant_for(p.name, p.url) for p in participants]


@contextmanager
def _relays(
    participants: Sequence[Participant], broker_url: str, count: int, batch: int
) -> Iterator[list[Relay]]:
    """``count`` relays running on threads until the block ends."""
    stop = threading.Event()
    workers = [
        Relay(_own(participants), Publisher(broker_url, TOPOLOGY), RelayConfig(batch=batch))
        for _ in range(count)
    ]
    threads = [threading.Thread(target=w.run, args=(stop.is_set,)) for w in workers]
    for thread in threads:
        thread.start()
    try:
        yield workers
    finally:
        stop.set()
        for thread, worker in zip(threads, workers, strict=True):
            thread.join(timeout=SETTLE_TIMEOUT)
            worker.publisher.close()
            for source in worker.sources:
                source.close()


@contextmanager
def _consumer(participant: Participant, broker_url: str) -> Iterator[ConsumerRunner]:
    """The notifications consumer running on a thread until the block ends."""
    stop = threading.Event()
    (own,) = _own([participant])
    runner = ConsumerRunner.open(NOTIFICATIONS, own, broker_url, TOPOLOGY, ConsumerConfig())
    thread = threading.Thread(target=runner.run, args=(stop.is_set,))
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(timeout=SETTLE_TIMEOUT)
        own.close()


def quantile_ms(values: Sequence[float], percent: int) -> float | None:
    """The ``percent``-th percentile of ``values`` (seconds), in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    # Inclusive: a percentile of few values stays within them (never beyond the maximum).
    cuts = (
        statistics.quantiles(ordered, n=100, method="inclusive")
        if len(ordered) > 1
        else ordered * 99
    )
    return round(1000 * cuts[percent - 1], 1)


def _spread(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def summarize_cost(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each mode's median [min-max] across rounds, and announce/plain throughput per round."""
    out: dict[str, Any] = {}
    for mode in COST_MODES:
        mine = [r for r in runs if r["mode"] == mode]
        out[mode] = {
            key: _spread([r[key] for r in mine if r[key] is not None])
            for key in ("transfers_per_s", "p50_ms", "p99_ms")
        }
    by_round = {(r["round"], r["mode"]): r["transfers_per_s"] for r in runs}
    ratios = [
        by_round[n, "announce"] / by_round[n, "plain"]
        for n in sorted({r["round"] for r in runs})
        if by_round.get((n, "plain"))
    ]
    out["announce_vs_plain"] = _spread(ratios, digits=3) if ratios else None
    return out


def summarize_relays(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per relay count across rounds: events/s and end-to-end p50/p99, median [min-max]."""
    out = []
    for count in sorted({r["relays"] for r in runs}):
        mine = [r for r in runs if r["relays"] == count]
        out.append(
            {"relays": count}
            | {
                key: _spread([r[key] for r in mine if r[key] is not None])
                for key in ("events_per_s", "e2e_p50_ms", "e2e_p99_ms")
            }
        )
    return out


def format_outbox_benchmark(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`run_outbox_benchmark`'s result."""
    rounds = result["rounds"]
    lines = [
        f"transfer cost: {result['transfers']} 2PC transfers of {result['amount']} per run, "
        f"one at a time, with and without the outbox event, {rounds} round(s) interleaved",
        f"{'round':>5} {'mode':<9} {'transfers/s':>11} {'p50 ms':>7} {'p99 ms':>7}",
    ]
    for run in result["cost"]["runs"]:
        lines.append(
            f"{run['round']:>5} {run['mode']:<9} {run['transfers_per_s']:>11.1f} "
            f"{_ms(run['p50_ms']):>7} {_ms(run['p99_ms']):>7}"
        )
    cost = result["cost"]["summary"]
    lines += ["", f"across {rounds} round(s), median [min-max]:"]
    for mode in COST_MODES:
        lines.append(
            f"{mode:<9} {_range(cost[mode]['transfers_per_s'])} transfers/s, "
            f"p50 {_range(cost[mode]['p50_ms'])} ms, p99 {_range(cost[mode]['p99_ms'])} ms"
        )
    ratio = cost["announce_vs_plain"]
    if ratio:
        lines.append(f"announce/plain throughput: {_range(ratio, '.3f')}")
    lines += [
        "",
        f"relays: a backlog of {result['transfers']} events drained (events/s; caught up: the "
        f"consumer confirmed them all), then {result['transfers']} transfers at "
        f"{result['rate']:g}/s, commit to confirmation (end-to-end ms)",
        f"{'round':>5} {'relays':>6} {'events/s':>9} {'caught up s':>11} {'e2e p50':>8} "
        f"{'e2e p99':>8} {'max':>8}",
    ]
    for run in result["relays"]["runs"]:
        lines.append(
            f"{run['round']:>5} {run['relays']:>6} {_ms(run['events_per_s']):>9} "
            f"{run['caught_up_s']:>11.2f} {_ms(run['e2e_p50_ms']):>8} "
            f"{_ms(run['e2e_p99_ms']):>8} {_ms(run['e2e_max_ms']):>8}"
        )
    lines += ["", f"across {rounds} round(s), median [min-max]:"]
    for row in result["relays"]["summary"]:
        lines.append(
            f"{row['relays']} relay(s): {_range(row['events_per_s'])} events/s, "
            f"end-to-end p50 {_range(row['e2e_p50_ms'])} ms, p99 {_range(row['e2e_p99_ms'])} ms"
        )
    once = "yes" if result["consumed_once"] else f"NO ({result['missing']} missing)"
    lines += [
        "",
        f"events {result['events']}, confirmed {result['consumed']}, every one once: {once}; "
        f"duplicates absorbed {result['duplicates_absorbed']}",
    ]
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _range(spread: dict[str, float], spec: str = ".1f") -> str:
    return f"{spread['median']:{spec}} [{spread['min']:{spec}}-{spread['max']:{spec}}]"
