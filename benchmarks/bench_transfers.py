"""Benchmark of the ways to move money, side by side on the same servers.

Modes: ``2pc`` (twopc's coordinator), ``2pc-early`` (the same, acknowledging each transfer at
its decision, with phase 2 in the background: a run's time includes finishing those phase 2s),
``saga`` (twopc's orchestrator), and the baselines of
:mod:`twopc.benchmarks.baselines` — ``naive`` (the shortest hand-written 2PC loop),
``sqlalchemy`` (``Session(twophase=True)``, no decision log) and ``local`` (one local
PostgreSQL transaction: what distributing costs at all).

For each round, worker count and mode (modes interleaved, their order rotated every round,
so that noise on the machine hits them alike), ``workers`` threads run ``transfers``
transfers between the first ``accounts`` accounts of each side (fewer accounts: hotter rows),
in both directions, while an auditor thread keeps reading both servers' totals with plain
reads, as any reporting query would. Reported per run and per mode across rounds:

- transfers/s and p50/p99 latency of the transfers that finished;
- failures by kind (lock timeouts, aborted or compensated sagas, other errors);
- audit reads, and how many of them saw money missing or doubled: the overall total off,
  and for the saga also the total counting what its holds show as pending. Neither mode can
  give a plain reader of two servers one snapshot: 2PC commits the servers one after the
  other, a saga commits each step at once;
- whether the money was conserved once the run had finished (it must be);
- client CPU per transfer (the process's CPU time over the run, less the auditor's), and
  each mode's throughput relative to ``naive`` in the same round, with its spread.

The servers are the configured ones (``twopc init`` must have made the schema); a run moves
0.01 at a time and puts nothing back.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from twopc.bank import AccountRef, Transfer, read_balances, run_transfer, run_transfer_saga
from twopc.benchmarks.baselines import (
    Baseline,
    LocalTransfer,
    NaiveLoop,
    Refused,
    SQLAlchemyTwoPhase,
)
from twopc.benchmarks.driver import drive
from twopc.benchmarks.roundtrips import count_round_trips
from twopc.coordinator import Coordinator, CoordinatorConfig
from twopc.participants import DatabaseURL, LockWaitTimeout, Participant
from twopc.saga import COMPLETED, Orchestrator, SagaConfig

MODES = ("2pc", "2pc-early", "saga", "naive", "sqlalchemy", "local")
# Transfers (one at a time, through counting relays) over which round trips are counted.
ROUND_TRIP_TRANSFERS = 40
AMOUNT = Decimal("0.01")
# Seconds a 2pc-early run waits at its end for the phase 2s still in the background.
_SETTLE_PATIENCE = 120.0
# Pause between two audit reads, so the auditor does not starve the transfers of CPU.
_AUDIT_PAUSE = 0.005


class BenchmarkFailed(Exception):
    """A run could not go on (its auditor lost a server): its figures would mean nothing."""


@dataclass
class Tally:
    """What one run saw; filled by the workers and the auditor. ``audit_error`` is set
    (and ``halt`` with it) when the auditor could not read a server."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    auditor_cpu: float = 0.0  # seconds of CPU the auditor thread used (not the transfers')
    reads: int = 0
    total_off: int = 0
    total_with_pending_off: int = 0
    audit_error: str | None = None
    halt: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_transfer_benchmark(
    participants: Sequence[Participant],
    home: Path,
    *,
    modes: Sequence[str] = ("2pc", "saga"),
    workers: Sequence[int] = (1, 8),
    transfers: int = 200,
    accounts: int = 10,
    rounds: int = 1,
    seed: int | None = None,
    on_transfer: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Run every mode at every worker count, ``rounds`` times, modes interleaved; return a
    JSON-ready dict: one entry per run, and per mode and worker count across the rounds.

    ``on_transfer`` is called after each transfer (for progress), one call at a time.
    Raises :class:`BenchmarkFailed` when the auditor loses a server (the run stops then).
    """
    if not set(modes) <= set(MODES) or not modes:
        raise ValueError(f"modes must be among {', '.join(MODES)}, got {list(modes)}")
    if min([*workers, transfers, accounts, rounds], default=0) < 1:
        raise ValueError("workers, transfers, accounts and rounds must be at least 1")
    chooser = random.Random(seed)
    done = on_transfer or (lambda: None)
    runs = []
    for round_number in range(rounds):
        turn = round_number % len(modes)
        for count in workers:
            for mode in [*modes[turn:], *modes[:turn]]:
                run = _run(participants, home, mode, count, transfers, accounts, chooser, done)
                runs.append(run | {"round": round_number + 1})
    round_trips = count_round_trips(
        participants,
        home,
        modes,
        _mover,
        _request,
        transfers=min(transfers, ROUND_TRIP_TRANSFERS),
        accounts=accounts,
        settle=_settle,
    )
    return {
        "transfers": transfers,
        "accounts": accounts,
        "amount": str(AMOUNT),
        "rounds": rounds,
        "runs": runs,
        "modes": summarize(runs),
        "round_trips": round_trips,
    }


def _run(
    participants: Sequence[Participant],
    home: Path,
    mode: str,
    workers: int,
    transfers: int,
    accounts: int,
    chooser: random.Random,
    done: Callable[[], object],
) -> dict[str, Any]:
    requests = [_request(chooser, accounts) for _ in range(transfers)]
    opening = read_balances(list(participants))
    expected = opening.overall + opening.pending_overall
    tally = Tally()
    with _mover(participants, home, mode, accounts) as move:
        stop = threading.Event()
        auditor = threading.Thread(target=_audit, args=(participants, expected, tally, stop))
        auditor.start()
        cpu_before = time.process_time()
        try:
            seconds = _drive(requests, workers, move, tally, done)
            seconds += _settle(move)
        finally:
            stop.set()
            auditor.join()
        cpu = time.process_time() - cpu_before - tally.auditor_cpu
    if tally.audit_error is not None:
        raise BenchmarkFailed(
            f"{mode} run with {workers} worker(s) stopped: the auditor could not read the "
            f"servers ({tally.audit_error}); see `twopc in-doubt` once they are back"
        )
    closing = read_balances(list(participants))
    conserved = closing.overall + closing.pending_overall == expected
    return _summary(mode, workers, seconds, cpu, tally) | {"conserved": conserved}


def _request(chooser: random.Random, accounts: int) -> Transfer:
    pg = AccountRef("pg", f"a{chooser.randint(1, accounts)}")
    mysql = AccountRef("mysql", f"a{chooser.randint(1, accounts)}")
    source, destination = (pg, mysql) if chooser.random() < 0.5 else (mysql, pg)
    return Transfer(source, destination, AMOUNT)


Move = Callable[[Transfer], str | None]  # returns a failure kind, or None when it went through


@contextmanager
def _mover(
    participants: Sequence[Participant], home: Path, mode: str, accounts: int
) -> Iterator[Move]:
    """A thread-safe ``move(transfer)`` for ``mode``. A coordinator or orchestrator is a
    one-shot one logging under ``home`` like any other, so ``twopc recover`` can finish
    whatever an interrupted run leaves behind; a baseline gets connections of its own in
    every worker thread."""
    if mode in ("2pc", "2pc-early"):
        config = CoordinatorConfig(home, acknowledge_at_decision=mode == "2pc-early")
        with Coordinator.open(participants, config) as coordinator:
            yield _TwoPhase(coordinator)
    elif mode == "saga":
        with Orchestrator.open(participants, SagaConfig(home)) as orchestrator:
            yield partial(_saga, orchestrator)
    else:
        with _baselines(participants, home, mode, accounts) as move:
            yield move


@contextmanager
def _baselines(
    participants: Sequence[Participant], home: Path, mode: str, accounts: int
) -> Iterator[Move]:
    urls = {participant.name: participant.url for participant in participants}
    made: list[Baseline] = []
    mine = threading.local()
    guard = threading.Lock()

    def baseline() -> Baseline:
        if not hasattr(mine, "baseline"):
            mine.baseline = _baseline(mode, urls, home, accounts)
            with guard:
                made.append(mine.baseline)
        return mine.baseline  # type: ignore[no-any-return]

    def move(request: Transfer) -> str | None:
        pg, mysql = sorted((request.source, request.destination), key=lambda a: a.side != "pg")
        try:
            baseline().move(pg.id, mysql.id, request.amount, request.source.side == "pg")
        except Refused:
            return "refused"
        except Exception as err:  # counted and shown: a benchmark reports, it does not stop
            return type(err).__name__
        return None

    try:
        yield move
    finally:
        for each in made:
            with contextlib.suppress(Exception):
                each.close()


def _baseline(mode: str, urls: dict[str, DatabaseURL], home: Path, accounts: int) -> Baseline:
    if mode == "naive":
        home.mkdir(parents=True, exist_ok=True)
        return NaiveLoop(urls["pg"], urls["mysql"], home / "naive-decisions.log")
    if mode == "sqlalchemy":
        return SQLAlchemyTwoPhase(urls["pg"], urls["mysql"])
    return LocalTransfer(urls["pg"], offset=accounts)


class _TwoPhase:
    """``move`` for the coordinator's modes."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def __call__(self, request: Transfer) -> str | None:
        try:
            run_transfer(self.coordinator, request, announce=False)  # like for like: no outbox
        except LockWaitTimeout:
            return "lock timeout"
        except Exception as err:  # counted and shown: a benchmark reports, it does not stop
            return type(err).__name__
        return None


def _settle(move: Move) -> float:
    """Seconds until the transfers ``move`` acknowledged at their decision have finished
    phase 2 (none for the other modes): a run is over when its work is."""
    if not isinstance(move, _TwoPhase):
        return 0.0
    started = time.perf_counter()
    if not move.coordinator.wait_for_phase_two(_SETTLE_PATIENCE):
        raise BenchmarkFailed(f"phase 2 still running after {_SETTLE_PATIENCE:g}s")
    return time.perf_counter() - started


def _saga(orchestrator: Orchestrator, request: Transfer) -> str | None:
    try:
        outcome = run_transfer_saga(orchestrator, request, announce=False)
    except Exception as err:  # counted and shown, as above
        return type(err).__name__
    return None if outcome.outcome == COMPLETED else str(outcome.outcome)


def _drive(
    requests: list[Transfer], workers: int, move: Move, tally: Tally, done: Callable[[], object]
) -> float:
    def record(request: Transfer, failure: str | None, elapsed: float) -> None:
        if failure is None:
            tally.latencies.append(elapsed)
        else:
            tally.failures[failure] += 1
        done()

    return drive(requests, workers, move, record, lock=tally.lock, halt=tally.halt)


# Every balance and every saga hold, in one statement (one snapshot) per server.
_TOTALS = (
    "SELECT (SELECT COALESCE(SUM(balance), 0) FROM accounts),"
    " (SELECT COALESCE(SUM(amount), 0) FROM saga_holds)"
)


def _audit(
    participants: Sequence[Participant], expected: Decimal, tally: Tally, stop: threading.Event
) -> None:
    """Read both servers' totals back to back, over and over, on connections kept open (so
    the reader's own gap between the servers is as short as a plain reader can make it).

    A read that fails (a server went away) ends the audit and halts the run: it is
    recorded in ``tally.audit_error`` for the caller to report, never left to kill the
    thread with a traceback."""
    connections: list[Any] = []
    started = time.thread_time()
    try:
        connections += [participant.connect() for participant in participants]
        _audit_until(connections, expected, tally, stop)
    except Exception as err:  # driver errors of either server, as raw as the reads are
        tally.audit_error = " ".join(str(err).split()) or type(err).__name__
        tally.halt.set()
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):  # the server may be gone
                conn.close()
        tally.auditor_cpu = time.thread_time() - started


def _audit_until(
    connections: list[Any], expected: Decimal, tally: Tally, stop: threading.Event
) -> None:
    while not stop.wait(_AUDIT_PAUSE):
        totals = [_totals(conn) for conn in connections]
        balance = sum((b for b, _ in totals), Decimal(0))
        pending = sum((p for _, p in totals), Decimal(0))
        with tally.lock:
            tally.reads += 1
            tally.total_off += balance != expected
            tally.total_with_pending_off += balance + pending != expected


def _totals(conn: Any) -> tuple[Decimal, Decimal]:
    cursor = conn.cursor()  # psycopg and PyMySQL connections alike (both autocommit)
    cursor.execute(_TOTALS)
    balance, pending = cursor.fetchone()
    cursor.close()
    return Decimal(balance), Decimal(pending)


def _summary(mode: str, workers: int, seconds: float, cpu: float, tally: Tally) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "mode": mode,
        "workers": workers,
        "seconds": round(seconds, 3),
        "completed": len(latencies),
        "transfers_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(cuts[49] * 1000, 1) if cuts else None,
        "p99_ms": round(cuts[98] * 1000, 1) if cuts else None,
        "cpu_ms_per_transfer": round(1000 * cpu / len(latencies), 3) if latencies else None,
        "latencies_ms": [round(1000 * x, 3) for x in latencies],
        "failures": dict(tally.failures),
        "audit_reads": tally.reads,
        "reads_total_off": tally.total_off,
        "reads_total_with_pending_off": tally.total_with_pending_off,
    }


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode and worker count across rounds: throughput's median and spread, its ratio to
    ``naive`` in the same round (when naive ran), client CPU per transfer, p50/p99 of every
    latency of every round."""
    naive = {(r["round"], r["workers"]): r["transfers_per_s"] for r in runs if r["mode"] == "naive"}
    keys = sorted(
        {(r["workers"], r["mode"]) for r in runs}, key=lambda k: (k[0], MODES.index(k[1]))
    )
    out = []
    for workers, mode in keys:
        mine = [r for r in runs if (r["workers"], r["mode"]) == (workers, mode)]
        rates = [r["transfers_per_s"] for r in mine]
        ratios = [
            r["transfers_per_s"] / naive[r["round"], workers]
            for r in mine
            if naive.get((r["round"], workers))
        ]
        latencies = sorted(x for r in mine for x in r["latencies_ms"])
        cpu = [r["cpu_ms_per_transfer"] for r in mine if r["cpu_ms_per_transfer"] is not None]
        out.append(
            {
                "mode": mode,
                "workers": workers,
                "transfers_per_s": _spread(rates),
                "vs_naive": _spread(ratios, digits=2) if ratios else None,
                "cpu_ms_per_transfer": round(statistics.median(cpu), 3) if cpu else None,
                "p50_ms": _quantile(latencies, 50),
                "p99_ms": _quantile(latencies, 99),
                "failed": sum(sum(r["failures"].values()) for r in mine),
                "conserved": all(r["conserved"] for r in mine),
            }
        )
    return out


def _spread(values: Sequence[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def _quantile(ordered: Sequence[float], percent: int) -> float | None:
    if not ordered:
        return None
    cuts = statistics.quantiles(ordered, n=100) if len(ordered) > 1 else list(ordered) * 99
    return round(cuts[percent - 1], 1)


def format_transfer_benchmark(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`run_transfer_benchmark`'s result: every run, then each
    mode across the rounds."""
    lines = [
        f"{result['transfers']} transfers of {result['amount']} per run between the first "
        f"{result['accounts']} accounts of each side; an auditor reads both totals meanwhile",
        f"{'round':>5} {'mode':<10} {'workers':>7} {'transfers/s':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'cpu ms':>6} {'failed':>6} {'reads':>6} {'off':>5} {'off+pending':>11}"
        "  conserved",
    ]
    for run in result["runs"]:
        failed = sum(run["failures"].values())
        lines.append(
            f"{run['round']:>5} {run['mode']:<10} {run['workers']:>7} "
            f"{run['transfers_per_s']:>11.1f} {_ms(run['p50_ms']):>7} {_ms(run['p99_ms']):>7} "
            f"{_ms(run['cpu_ms_per_transfer']):>6} {failed:>6} {run['audit_reads']:>6} "
            f"{_share(run['reads_total_off'], run['audit_reads']):>5} "
            f"{_share(run['reads_total_with_pending_off'], run['audit_reads']):>11}  "
            f"{'yes' if run['conserved'] else 'NO'}"
        )
        if run["failures"]:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(run["failures"].items()))
            lines.append(f"{'':<25}failures: {kinds}")
    lines.append(
        "off: audit reads whose overall total was not the opening total (a transfer seen half "
        "done); off+pending: the same counting saga holds as pending money; cpu ms: client CPU "
        "per transfer"
    )
    return [
        *lines,
        "",
        *format_modes(result["modes"], result["rounds"]),
        "",
        *format_round_trips(result["round_trips"]),
    ]


def format_round_trips(counted: dict[str, dict[str, float]]) -> list[str]:
    """Round trips per transfer by mode and server, as counted on the wire."""
    names = sorted({n for row in counted.values() for n in row} - {"total", "failed"})
    lines = [
        "round trips per transfer, counted on the wire (one at a time, pooled connections):",
        f"{'mode':<10} " + " ".join(f"{n:>7}" for n in names) + f" {'total':>7}",
    ]
    for mode, row in counted.items():
        cells = " ".join(f"{row.get(n, 0):>7.2f}" for n in names)
        lines.append(f"{mode:<10} {cells} {row['total']:>7.2f}")
    return lines


def format_modes(modes: Sequence[dict[str, Any]], rounds: int) -> list[str]:
    """Each mode across the rounds: median [min-max] throughput and ratio to naive."""
    lines = [
        f"across {rounds} round(s), median [min-max]:",
        f"{'mode':<10} {'workers':>7} {'transfers/s':>22} {'x naive':>18} {'cpu ms':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7}",
    ]
    for mode in modes:
        rate, ratio = mode["transfers_per_s"], mode["vs_naive"]
        rates = f"{rate['median']:.1f} [{rate['min']:.1f}-{rate['max']:.1f}]"
        ratios = f"{ratio['median']:.2f} [{ratio['min']:.2f}-{ratio['max']:.2f}]" if ratio else "-"
        lines.append(
            f"{mode['mode']:<10} {mode['workers']:>7} {rates:>22} {ratios:>18} "
            f"{_ms(mode['cpu_ms_per_transfer']):>7} {_ms(mode['p50_ms']):>7} "
            f"{_ms(mode['p99_ms']):>7}"
        )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _share(count: int, reads: int) -> str:
    return f"{100 * count / reads:.0f}%" if reads else "-"
