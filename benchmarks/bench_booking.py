"""Benchmark of the three ways to book a flight, on the same throwaway servers.

``python -m twopc.benchmarks.bench_booking [--dir DIR] [--bookings N] [--clients 1,4]``
starts dev servers and a dev broker under ``DIR`` (a temporary directory by default,
removed afterwards), makes the booking's tables with 99 rows of seats, and books ``N``
seats in each mode — ``2pc`` (one global transaction), ``saga`` (the orchestrator) and
``choreography`` (the four services and a relay running on threads of this process, as a
deployment would keep them running; each client writes ``booking.requested`` and watches
the traces until the booking is finished) — with 1, then 4 client threads. Every booking
succeeds (each takes a seat nobody else takes). Reported per mode and client count:
bookings/s over the run and p50/p99 latency as a client sees it (for choreography that
includes the client's 5 ms polling of the traces; the traces' own first-to-last span is
reported beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twopc.coordinator import Coordinator, CoordinatorConfig
from twopc.devserver import DevServers
from twopc.flights import (
    BOOKING_SAGA,
    DATABASES,
    BookingRequest,
    book_with_2pc,
    booking_params,
    fresh_booking_id,
    init_flights,
    seats_of,
)
from twopc.flights.choreography import BOOKED, outcome_of, request_booking
from twopc.flights.services import Services, trace_entries
from twopc.flights.tables import BOOKINGS, FLIGHTS, PAYMENTS
from twopc.participants import DatabaseURL, Participant, participant_for
from twopc.saga import COMPLETED, Orchestrator, SagaConfig

MODES = ("2pc", "saga", "choreography")
ROWS = 99
POLL = 0.005
_EVENT_TABLES = ("booking_events", "outbox", "outbox_parked", "consumed_events")


def _participants(urls: dict[str, DatabaseURL]) -> dict[str, Participant]:
    return {name: participant_for(name, url) for name, url in urls.items()}


def _reset(urls: dict[str, DatabaseURL]) -> list[tuple[str, str]]:
    """Fresh tables, every seat available; the seats to book, in order."""
    made = _participants(urls)
    init_flights(made, rows=ROWS, reset=True)
    for participant in made.values():
        with participant.local_transaction() as tx:
            for table in _EVENT_TABLES:
                tx.execute(f"DELETE FROM {table}")
        participant.close()
    return seats_of(("TP101", "TP202"), ROWS)


Booker = Callable[[BookingRequest], float | None]  # a booking; the traces' span, if any


def _booker(
    mode: str, urls: dict[str, DatabaseURL], home: Path
) -> tuple[Booker, Callable[[], None]]:
    """One client's way to book in ``mode``, and how to close it."""
    made = _participants(urls)
    parts = [made[name] for name in DATABASES]
    if mode == "2pc":
        coordinator = Coordinator.open(parts, CoordinatorConfig(home))

        def two_phase(request: BookingRequest) -> float | None:
            book_with_2pc(coordinator, request, fresh_booking_id())
            return None

        return two_phase, coordinator.close
    if mode == "saga":
        orchestrator = Orchestrator.open(parts, SagaConfig(home))

        def saga(request: BookingRequest) -> float | None:
            outcome = orchestrator.run(BOOKING_SAGA, booking_params(request), fresh_booking_id())
            assert outcome.outcome == COMPLETED, outcome.state.last_error
            return None

        return saga, orchestrator.close

    def choreography(request: BookingRequest) -> float | None:
        booking_id = fresh_booking_id()
        with made[BOOKINGS].local_transaction() as tx:
            request_booking(tx, booking_id, request, None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            entries = trace_entries(made, booking_id)
            outcome, waiting = outcome_of(entries)
            if outcome == BOOKED:
                return entries[-1].at - entries[0].at
            assert not outcome or waiting, f"{booking_id}: {outcome}"
            time.sleep(POLL)
        raise AssertionError(f"booking {booking_id} unfinished after 60 s")

    def close() -> None:
        for participant in made.values():
            participant.close()

    return choreography, close


def _run(
    mode: str, clients: int, bookings: int, urls: dict[str, DatabaseURL], home: Path, broker: str
) -> dict[str, Any]:
    seats = _reset(urls)[:bookings]
    latencies: list[float] = []
    spans: list[float] = []
    lock = threading.Lock()
    services = Services(urls, broker).start() if mode == "choreography" else None

    def client() -> None:
        book, close = _booker(mode, urls, home)
        try:
            while True:
                with lock:
                    if not seats:
                        return
                    flight, seat = seats.pop(0)
                started = time.perf_counter()
                span = book(BookingRequest.parse(flight, seat, "bench", "80.00"))
                with lock:
                    latencies.append(time.perf_counter() - started)
                    spans.extend([] if span is None else [span])
        finally:
            close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if services is not None:
        services.stop()
    assert len(latencies) == bookings, f"{mode}: {len(latencies)} of {bookings} booked"
    return {
        "mode": mode,
        "clients": clients,
        "bookings": bookings,
        "per_second": round(bookings / elapsed, 1),
        "p50_ms": round(_quantile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(_quantile(latencies, 0.99) * 1000, 1),
        "trace_span_p50_ms": round(_quantile(spans, 0.50) * 1000, 1) if spans else None,
    }


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_booking_benchmark(
    root: Path, bookings: int, clients: Sequence[int]
) -> list[dict[str, Any]]:
    """Start servers under ``root``, run every mode at every client count; one row each."""
    servers = DevServers(root / "dev")
    state = servers.up()
    try:
        broker = servers.broker_up().url
        urls = {
            FLIGHTS: DatabaseURL.parse(state.pg.url_of("flights")),
            BOOKINGS: DatabaseURL.parse(state.mysql.url_of("bookings")),
            PAYMENTS: DatabaseURL.parse(state.pg.url_of("payments")),
        }
        return [
            _run(mode, count, bookings, urls, root / "home", broker)
            for count in clients
            for mode in MODES
        ]
    finally:
        servers.destroy()


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"{'mode':<13} {'clients':>7} {'bookings/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'trace p50 ms':>12}"
    ]
    for r in rows:
        span = "" if r["trace_span_p50_ms"] is None else f"{r['trace_span_p50_ms']:.1f}"
        lines.append(
            f"{r['mode']:<13} {r['clients']:>7} {r['per_second']:>10.1f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {span:>12}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, help="where the throwaway servers live")
    parser.add_argument("--bookings", type=int, default=200)
    parser.add_argument("--clients", default="1,4", help="client thread counts, like 1,4")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    if not 1 <= args.bookings <= len(seats_of(("TP101", "TP202"), ROWS)) or min(clients) < 1:
        parser.error("--bookings must be 1-1188 and client counts at least 1")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-booking-") as scratch:
        rows = run_booking_benchmark(Path(scratch), args.bookings, clients)
    print(json.dumps(rows, indent=2) if args.json else "\n".join(format_rows(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
