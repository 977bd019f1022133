"""Benchmark of the flight booking in both modes, side by side on the same servers.

For each round, worker count and mode (the modes interleaved, their order rotated every
round, so that noise on the machine hits them alike), ``workers`` threads book ``bookings``
seats of a fresh flight of their own (``BX<n>``, seeded for the run, so every seat is free),
a share of them told to fail at one step (``charge`` by default: the card declined), so that
2PC rolls back and the saga compensates. Meanwhile a reader thread keeps reading the flight's
seats (``flights``) and then its bookings (``bookings``) with plain reads, as any page
showing them would. Reported per run and per mode across rounds:

- bookings/s (every booking that ended, booked or undone) and p50/p99 latency of those
  booked; how many were booked, and how many undone (rolled back, or compensated);
- reads, and among them **dirty** ones: reads that saw a seat held (pending or booked) or a
  booking made (pending or confirmed) for a booking that was then undone — the saga's
  pending holds, visible until its compensations free them. 2PC's changes become visible
  only when its branches commit, and an undone booking never commits, so it should show
  none (counted the same way, so a leak would show);
- **torn** reads: a seat booked for a booking the same read did not see confirmed, or a
  confirmed booking whose seat it did not see booked for it. Neither mode gives a plain
  reader of two databases one snapshot: 2PC commits its three branches one after the other
  (and the reader reads one database after the other); the saga confirms the booking (the
  pivot) before it books the seat. Of them, **seat-first** reads saw the seat booked and,
  read *later*, the booking not yet confirmed: the reader's own gap cannot make those, only
  a seat committed before its booking (2PC's branches committing apart; never the saga);
- the booking's invariants (:mod:`flights.invariants`) checked on the run's flight once it
  has finished: there must be none broken.

The servers are the configured ones (``twopc flights init`` must have made the tables); each
run leaves its flight, bookings and payments in place.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from twopc.benchmarks.driver import drive
from twopc.coordinator import Coordinator, CoordinatorConfig
from twopc.flights.booking import (
    BEFORE_PIVOT,
    BOOKED,
    CONFIRMED,
    PAY,
    PENDING,
    BookingRefused,
    BookingRequest,
    fresh_booking_id,
)
from twopc.flights.invariants import check_flights
from twopc.flights.saga import BOOKING_SAGA, booking_params
from twopc.flights.schema import seed_seats
from twopc.flights.tables import BOOKINGS, FLIGHTS
from twopc.flights.two_phase import book_with_2pc
from twopc.participants import Participant
from twopc.saga import COMPLETED, Orchestrator, SagaConfig

MODES = ("2pc", "saga")
#: The steps a share of the bookings may be told to fail at (up to the saga's pivot).
FAIL_STEPS = BEFORE_PIVOT
FLIGHT_PREFIX = "BX"
SEAT_LETTERS = "ABCDEFGHIJK"
#: Seats of one flight (rows 1-99, A-K): the most bookings a run can make.
MAX_BOOKINGS = 99 * len(SEAT_LETTERS)
AMOUNT = Decimal("80.00")
# Pause between two reads, so the reader does not starve the bookings of CPU.
_READ_PAUSE = 0.005
BOOKED_OUTCOME = "booked"


class BenchmarkFailed(Exception):
    """A run could not go on (its reader lost a server): its figures would mean nothing."""


@dataclass
class Tally:
    """What one run saw; filled by the workers and the reader."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    seen: list[frozenset[str]] = field(default_factory=list)  # per read: bookings seen live
    undone: set[str] = field(default_factory=set)  # bookings that ended not booked
    torn: int = 0
    seat_first: int = 0
    read_error: str | None = None
    halt: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Order:
    """One booking of a run: the request, its id, and the step it is told to fail at."""

    request: BookingRequest
    booking_id: str
    fail_at: str | None


def run_flight_benchmark(
    participants: Mapping[str, Participant],
    home: Path,
    *,
    workers: Sequence[int] = (1, 4),
    bookings: int = 100,
    rounds: int = 1,
    fail_share: float = 0.2,
    fail_at: str = PAY,
    seed: int | None = None,
    on_booking: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Run both modes at every worker count, ``rounds`` times, interleaved; return a
    JSON-ready dict: one entry per run, and per mode and worker count across the rounds.

    ``on_booking`` is called after each booking (for progress), one call at a time. Raises
    :class:`BenchmarkFailed` when the reader loses a server (the run stops then).
    """
    if min([*workers, bookings, rounds], default=0) < 1 or bookings > MAX_BOOKINGS:
        raise ValueError(f"workers, rounds >= 1 and bookings 1-{MAX_BOOKINGS}")
    if not 0 <= fail_share <= 1 or fail_at not in FAIL_STEPS:
        raise ValueError(f"fail_share 0-1 and fail_at among {', '.join(FAIL_STEPS)}")
    chooser = random.Random(seed)
    done = on_booking or (lambda: None)
    runs = []
    for round_number in range(rounds):
        turn = round_number % len(MODES)
        for count in workers:
            for mode in [*MODES[turn:], *MODES[:turn]]:
                orders = _orders(participants, bookings, fail_share, fail_at, chooser)
                run = _run(participants, home, mode, count, orders, done)
                runs.append(run | {"round": round_number + 1})
    return {
        "bookings": bookings,
        "fail_share": fail_share,
        "fail_at": fail_at,
        "amount": str(AMOUNT),
        "rounds": rounds,
        "runs": runs,
        "modes": summarize(runs),
    }


def _orders(
    participants: Mapping[str, Participant],
    bookings: int,
    fail_share: float,
    fail_at: str,
    chooser: random.Random,
) -> list[Order]:
    """``bookings`` orders for the seats of a fresh flight (seeded now), ``fail_share`` of
    them (rounded) told to fail at ``fail_at``, spread at random."""
    flight = _fresh_flight(participants[FLIGHTS])
    seats = [f"{n // len(SEAT_LETTERS) + 1}{SEAT_LETTERS[n % len(SEAT_LETTERS)]}"
             for n in range(bookings)]  # fmt: skip
    seed_seats(participants[FLIGHTS], [(flight, seat) for seat in seats])
    failing = set(chooser.sample(range(bookings), round(bookings * fail_share)))
    return [
        Order(BookingRequest(flight, seat, f"c{n}", AMOUNT), fresh_booking_id(),
              fail_at if n in failing else None)
        for n, seat in enumerate(seats)
    ]  # fmt: skip


def _fresh_flight(participant: Participant) -> str:
    """A flight number no seat has yet: ``BX`` and one more than the highest in use."""
    with participant.local_transaction() as local:
        found = local.execute(
            "SELECT DISTINCT flight FROM flight_seats WHERE flight LIKE %s", (f"{FLIGHT_PREFIX}%",)
        ).fetchall()
    numbers = [int(f[len(FLIGHT_PREFIX) :]) for (f,) in found if f[len(FLIGHT_PREFIX) :].isdigit()]
    number = max(numbers, default=0) + 1
    if number > 9999:
        raise BenchmarkFailed(f"no flight number left for {FLIGHT_PREFIX}: reset the tables")
    return f"{FLIGHT_PREFIX}{number}"


def _run(
    participants: Mapping[str, Participant],
    home: Path,
    mode: str,
    workers: int,
    orders: list[Order],
    done: Callable[[], object],
) -> dict[str, Any]:
    flight = orders[0].request.flight
    tally = Tally()
    with _booker(participants, home, mode) as book:
        stop = threading.Event()
        reader = threading.Thread(target=_read, args=(participants, flight, tally, stop))
        reader.start()
        try:
            seconds = _drive(orders, workers, book, tally, done)
        finally:
            stop.set()
            reader.join()
    if tally.read_error is not None:
        raise BenchmarkFailed(
            f"{mode} run with {workers} worker(s) stopped: the reader could not read the "
            f"servers ({tally.read_error}); see `twopc in-doubt` once they are back"
        )
    broken = check_flights(participants, flight, home=home)
    return _summary(mode, workers, flight, seconds, tally) | {
        "violations": [str(v) for v in broken]
    }


Book = Callable[[Order], str]  # returns the booking's outcome: booked, or how it failed


@contextmanager
def _booker(participants: Mapping[str, Participant], home: Path, mode: str) -> Iterator[Book]:
    """A thread-safe ``book(order)`` for ``mode``: a one-shot coordinator or orchestrator
    logging under ``home`` like any other, so ``twopc recover`` can finish whatever an
    interrupted run leaves behind."""
    listed = list(participants.values())
    if mode == "2pc":
        with Coordinator.open(listed, CoordinatorConfig(home)) as coordinator:
            yield partial(_two_phase, coordinator)
    else:
        with Orchestrator.open(listed, SagaConfig(home)) as orchestrator:
            yield partial(_saga, orchestrator)


def _two_phase(coordinator: Coordinator, order: Order) -> str:
    try:
        book_with_2pc(coordinator, order.request, order.booking_id, order.fail_at)
    except BookingRefused:
        return "rolled back"
    except Exception as err:  # counted and shown: a benchmark reports, it does not stop
        return type(err).__name__
    return BOOKED_OUTCOME


def _saga(orchestrator: Orchestrator, order: Order) -> str:
    params = booking_params(order.request, order.fail_at)
    try:
        outcome = orchestrator.run(BOOKING_SAGA, params, order.booking_id)
    except Exception as err:  # counted and shown, as above
        return type(err).__name__
    return BOOKED_OUTCOME if outcome.outcome == COMPLETED else str(outcome.outcome)


def _drive(
    orders: list[Order], workers: int, book: Book, tally: Tally, done: Callable[[], object]
) -> float:
    def record(order: Order, outcome: str, elapsed: float) -> None:
        tally.outcomes[outcome] += 1
        if outcome == BOOKED_OUTCOME:
            tally.latencies.append(elapsed)
        else:
            tally.undone.add(order.booking_id)
        done()

    return drive(orders, workers, book, record, lock=tally.lock, halt=tally.halt)


# -- the reader -----------------------------------------------------------------------------------

_SEATS = "SELECT seat, state, booking_id FROM flight_seats WHERE flight = %s AND state <> %s"
_BOOKINGS = "SELECT booking_id, seat, state FROM bookings WHERE flight = %s"


def _read(
    participants: Mapping[str, Participant], flight: str, tally: Tally, stop: threading.Event
) -> None:
    """Read the flight's seats, then its bookings, over and over, on connections kept open.
    A read that fails ends the reading and halts the run (``tally.read_error``)."""
    connections: list[Any] = []
    try:
        connections += [participants[FLIGHTS].connect(), participants[BOOKINGS].connect()]
        while not stop.wait(_READ_PAUSE):
            seats = _fetch(connections[0], _SEATS, (flight, "available"))
            bookings = _fetch(connections[1], _BOOKINGS, (flight,))
            live, seat_first, booking_first = seen(seats, bookings)
            with tally.lock:
                tally.seen.append(live)
                tally.torn += seat_first or booking_first
                tally.seat_first += seat_first
    except Exception as err:  # driver errors of either server, as raw as the reads are
        tally.read_error = " ".join(str(err).split()) or type(err).__name__
        tally.halt.set()
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):  # the server may be gone
                conn.close()


def _fetch(conn: Any, query: str, params: tuple[str, ...]) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()  # psycopg and PyMySQL connections alike (both autocommit)
    cursor.execute(query, params)
    rows = list(cursor.fetchall())
    cursor.close()
    return rows


def seen(
    seats: Sequence[tuple[Any, ...]], bookings: Sequence[tuple[Any, ...]]
) -> tuple[frozenset[str], bool, bool]:
    """What one read saw: the ids of the bookings it saw live (a seat pending or booked for
    one, or the booking pending or confirmed), and whether it saw a booking half done: a
    seat booked for a booking not confirmed in the read (seat first), or a confirmed
    booking whose seat was not booked for it (booking first)."""
    live = {str(b) for _, state, b in seats if state in (PENDING, BOOKED)}
    live |= {str(b) for b, _, state in bookings if state in (PENDING, CONFIRMED)}
    booked = {str(seat): str(b) for seat, state, b in seats if state == BOOKED}
    confirmed = {str(b): str(seat) for b, seat, state in bookings if state == CONFIRMED}
    seat_first = any(confirmed.get(b) != seat for seat, b in booked.items())
    booking_first = any(booked.get(seat) != b for b, seat in confirmed.items())
    return frozenset(live), seat_first, booking_first


# -- the figures ----------------------------------------------------------------------------------


def _summary(mode: str, workers: int, flight: str, seconds: float, tally: Tally) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    ended = sum(tally.outcomes.values())
    dirty = [live & tally.undone for live in tally.seen if live & tally.undone]
    return {
        "mode": mode,
        "workers": workers,
        "flight": flight,
        "seconds": round(seconds, 3),
        "booked": tally.outcomes[BOOKED_OUTCOME],
        "undone": ended - tally.outcomes[BOOKED_OUTCOME],
        "outcomes": dict(tally.outcomes),
        "bookings_per_s": round(ended / seconds, 1),
        "p50_ms": _quantile(latencies, 50, 1000),
        "p99_ms": _quantile(latencies, 99, 1000),
        "latencies_ms": [round(1000 * x, 3) for x in latencies],
        "reads": len(tally.seen),
        "dirty_reads": len(dirty),
        "dirty_bookings": len(frozenset().union(*dirty)),
        "torn_reads": tally.torn,
        "seat_first_reads": tally.seat_first,
    }


_TOTALS = ("booked", "undone", "reads", "dirty_reads", "torn_reads", "seat_first_reads")


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode and worker count across rounds: throughput's median and spread, p50/p99 of
    every booked latency of every round, and the totals."""
    keys = sorted(
        {(r["workers"], r["mode"]) for r in runs}, key=lambda k: (k[0], MODES.index(k[1]))
    )
    out = []
    for workers, mode in keys:
        mine = [r for r in runs if (r["workers"], r["mode"]) == (workers, mode)]
        rates = [r["bookings_per_s"] for r in mine]
        latencies = sorted(x for r in mine for x in r["latencies_ms"])
        out.append(
            {
                "mode": mode,
                "workers": workers,
                "bookings_per_s": {
                    "median": round(statistics.median(rates), 1),
                    "min": min(rates),
                    "max": max(rates),
                },
                "p50_ms": _quantile(latencies, 50),
                "p99_ms": _quantile(latencies, 99),
                **{key: sum(r[key] for r in mine) for key in _TOTALS},
                "violations": sum(len(r["violations"]) for r in mine),
            }
        )
    return out


def _quantile(ordered: Sequence[float], percent: int, scale: float = 1.0) -> float | None:
    if not ordered:
        return None
    cuts = statistics.quantiles(ordered, n=100) if len(ordered) > 1 else list(ordered) * 99
    return round(cuts[percent - 1] * scale, 1)


def format_flight_benchmark(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`run_flight_benchmark`'s result: every run, then each
    mode across the rounds."""
    share = f"{100 * result['fail_share']:.0f}%"
    lines = [
        f"{result['bookings']} bookings per run on a fresh flight, {share} failing at "
        f"{result['fail_at']}; a reader reads the seats and bookings meanwhile",
        f"{'round':>5} {'mode':<5} {'workers':>7} {'bookings/s':>10} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'booked':>6} {'undone':>6} {'reads':>6} {'dirty':>5} {'torn':>5}"
        f" {'seat-first':>10}  invariants",
    ]
    for run in result["runs"]:
        lines.append(
            f"{run['round']:>5} {run['mode']:<5} {run['workers']:>7} "
            f"{run['bookings_per_s']:>10.1f} {_ms(run['p50_ms']):>7} {_ms(run['p99_ms']):>7} "
            f"{run['booked']:>6} {run['undone']:>6} {run['reads']:>6} {run['dirty_reads']:>5} "
            f"{run['torn_reads']:>5} {run['seat_first_reads']:>10}  "
            + ("hold" if not run["violations"] else f"{len(run['violations'])} BROKEN")
        )
        others = {k: n for k, n in run["outcomes"].items() if k != BOOKED_OUTCOME}
        if others:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(others.items()))
            lines.append(f"{'':<20}undone: {kinds}")
        lines += [f"{'':<20}broken: {v}" for v in run["violations"]]
    lines += [
        "dirty: reads that saw a seat held or a booking made for a booking then undone; "
        "torn: reads that saw a booking half done (seat booked without its confirmed booking, "
        "or the reverse); seat-first: torn reads that saw the seat booked before its booking "
        "committed (the seats are read first); bookings/s counts every booking that ended, "
        "booked or undone; p50/p99 of those booked",
        "",
        f"across {result['rounds']} round(s), median [min-max]:",
        f"{'mode':<5} {'workers':>7} {'bookings/s':>20} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'booked':>6} {'undone':>6} {'reads':>6} {'dirty':>5} {'torn':>5} {'seat-first':>10} "
        f"{'broken':>6}",
    ]
    for mode in result["modes"]:
        rate = mode["bookings_per_s"]
        rates = f"{rate['median']:.1f} [{rate['min']:.1f}-{rate['max']:.1f}]"
        lines.append(
            f"{mode['mode']:<5} {mode['workers']:>7} {rates:>20} {_ms(mode['p50_ms']):>7} "
            f"{_ms(mode['p99_ms']):>7} {mode['booked']:>6} {mode['undone']:>6} "
            f"{mode['reads']:>6} {mode['dirty_reads']:>5} {mode['torn_reads']:>5} "
            f"{mode['seat_first_reads']:>10} {mode['violations']:>6}"
        )
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
