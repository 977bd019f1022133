"""`twopc bench`: benchmarks measured against a baseline in the same run."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from twopc.bank import SIDES, read_balances
from twopc.commands.common import (
    BadInput,
    Context,
    Failure,
    emit,
    json_option,
    lock_wait_option,
    operational_errors,
    progress,
    quiet_option,
)
from twopc.commands.outbox_common import broker_url_option, outbox_errors, resolve_broker_url
from twopc.flights.booking import BEFORE_PIVOT
from twopc.outbox import redacted

ROUNDS = 3  # alternating raw/log rounds per appender count


@click.group()
def bench() -> None:
    """Benchmarks: figures measured against a baseline in the same run."""


@bench.command("log")
@click.option(
    "--appenders",
    default="1,8,64",
    show_default=True,
    help="Comma-separated numbers of concurrent appending threads.",
)
@click.option(
    "--records",
    default=3000,
    show_default=True,
    type=click.IntRange(1),
    help="Records per measurement.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write (default: a temporary directory under HOME).",
)
@click.option(
    "--pin-cpu",
    type=click.IntRange(0),
    help="Run every measurement on this one CPU (no cross-CPU wake-ups between threads).",
)
@quiet_option
@json_option
@click.pass_obj
@operational_errors
def bench_log(
    obj: Context,
    appenders: str,
    records: int,
    directory: Path | None,
    pin_cpu: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Group-commit log appends against one raw fdatasync per record (threads racing, and
    one at a time), in the same run."""
    from twopc.benchmarks.bench_log import (
        MEASUREMENTS_PER_ROUND,
        format_log_benchmark,
        pin_to_cpu,
        run_log_benchmark,
    )

    counts = _counts("--appenders", appenders)
    if pin_cpu is not None:
        try:
            pin_to_cpu(pin_cpu)
        except ValueError as err:
            raise BadInput(f"--pin-cpu: {err}") from None
    (obj.home).mkdir(parents=True, exist_ok=True)
    steps = len(counts) * ROUNDS * MEASUREMENTS_PER_ROUND
    with (
        tempfile.TemporaryDirectory(dir=directory or obj.home, prefix="bench-") as scratch,
        progress(steps, "measuring", quiet=quiet) as measured,
    ):
        result = run_log_benchmark(Path(scratch), counts, records, ROUNDS, measured)
    emit(as_json, result, "\n".join(format_log_benchmark(result)))


def _counts(option: str, text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise BadInput(f"{option} {text!r} must be comma-separated integers >= 1")
    return counts


@bench.command("transfers")
@click.option(
    "--modes",
    default="2pc,saga",
    show_default=True,
    help="Comma-separated: 2pc, 2pc-early (acknowledged at the decision, phase 2 in the "
    "background), saga, naive (a hand-written 2PC loop), sqlalchemy (Session(twophase=True)), "
    "local (one PostgreSQL transaction).",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Run every mode this many times, interleaved, and report medians and spreads.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw throughput by workers and the latency distributions into this PNG "
    "(needs matplotlib: pip install 'twopc[plot]').",
)
@click.option(
    "--workers",
    default="1,8",
    show_default=True,
    help="Comma-separated numbers of concurrent transfer threads.",
)
@click.option(
    "--transfers", default=200, show_default=True, type=click.IntRange(1), help="Per run."
)
@click.option(
    "--accounts",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Transfers pick among accounts a1..aN of each side (fewer: hotter rows).",
)
@lock_wait_option(10.0)
@quiet_option
@json_option
@click.pass_obj
@operational_errors
def bench_transfers(
    obj: Context,
    modes: str,
    rounds: int,
    plot: Path | None,
    workers: str,
    transfers: int,
    accounts: int,
    lock_wait: float,
    quiet: bool,
    as_json: bool,
) -> None:
    """2PC against the saga on the configured servers: throughput, latency, failures, and
    what a concurrent plain reader sees. Moves 0.01 per transfer and leaves it moved."""
    from twopc.benchmarks.bench_transfers import (
        MODES,
        BenchmarkFailed,
        format_transfer_benchmark,
        run_transfer_benchmark,
    )

    chosen = modes.split(",")
    if not chosen or not set(chosen) <= set(MODES):
        raise BadInput(f"--modes {modes!r} must be comma-separated: {', '.join(MODES)}")
    counts = _counts("--workers", workers)
    draw = _plotter(plot)
    participants = obj.participants(SIDES, lock_wait)
    wanted = 2 * accounts if "local" in chosen else accounts  # local pays a{n} <-> a{n+N}
    _check_accounts(read_balances(participants).sides, wanted)
    total = transfers * len(chosen) * len(counts) * rounds
    with progress(total, "transferring", quiet=quiet) as transferred:
        try:
            result = run_transfer_benchmark(
                participants,
                obj.home,
                modes=chosen,
                workers=counts,
                transfers=transfers,
                accounts=accounts,
                rounds=rounds,
                on_transfer=transferred,
            )
        except BenchmarkFailed as err:
            raise Failure(str(err)) from None
    emit(as_json, result, "\n".join(format_transfer_benchmark(result)))
    if draw is not None and plot is not None:
        draw(result, plot)
    if not all(run["conserved"] for run in result["runs"]):
        raise click.ClickException(
            "money was not conserved: run `twopc audit` and `twopc in-doubt`"
        )


@bench.command("flights")
@click.option(
    "--bookings",
    default=100,
    show_default=True,
    type=click.IntRange(1, 1089),
    help="Bookings per run, each of a free seat of a fresh flight (at most 99 rows of A-K).",
)
@click.option(
    "--workers",
    default="1,4",
    show_default=True,
    help="Comma-separated numbers of concurrent booking threads.",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Run both modes this many times, interleaved, and report medians and spreads.",
)
@click.option(
    "--fail-share",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="The share of bookings told to fail (2PC rolls them back, the saga compensates).",
)
@click.option(
    "--fail-at",
    default="charge",
    show_default=True,
    type=click.Choice(BEFORE_PIVOT),
    help="The step they fail at (charge: the card declined).",
)
@lock_wait_option(10.0)
@quiet_option
@json_option
@click.pass_obj
@operational_errors
def bench_flights(
    obj: Context,
    bookings: int,
    workers: str,
    rounds: int,
    fail_share: float,
    fail_at: str,
    lock_wait: float,
    quiet: bool,
    as_json: bool,
) -> None:
    """The flight booking in 2PC and as a saga, side by side on the configured databases:
    bookings/s, latency, what was undone, what a concurrent reader saw (dirty and torn
    reads), and the booking's invariants after each run. Each run books a fresh flight's
    seats (BX1, BX2, ...) and leaves them booked. Exit 1 when an invariant is broken."""
    from twopc.benchmarks.bench_flights import (
        BenchmarkFailed,
        format_flight_benchmark,
        run_flight_benchmark,
    )
    from twopc.flights import DATABASES
    from twopc.participants import UndefinedTable

    counts = _counts("--workers", workers)
    participants = {p.name: p for p in obj.participants(DATABASES, lock_wait)}
    total = bookings * 2 * len(counts) * rounds
    with progress(total, "booking", quiet=quiet) as booked:
        try:
            result = run_flight_benchmark(
                participants,
                obj.home,
                workers=counts,
                bookings=bookings,
                rounds=rounds,
                fail_share=fail_share,
                fail_at=fail_at,
                on_booking=booked,
            )
        except BenchmarkFailed as err:
            raise Failure(str(err)) from None
        except UndefinedTable as err:
            raise Failure(f"{err}: create the booking's tables with `twopc flights init`") from None
    emit(as_json, result, "\n".join(format_flight_benchmark(result)))
    if any(run["violations"] for run in result["runs"]):
        raise click.ClickException(
            "the booking's invariants were broken: see `twopc flights check` and `twopc in-doubt`"
        )


@bench.command("outbox")
@click.option(
    "--transfers",
    default=300,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Transfers per run: per mode for the cost, per backlog and per flow for the relays.",
)
@click.option(
    "--relays",
    default="1,4",
    show_default=True,
    help="Comma-separated numbers of relays running at once (threads of this process).",
)
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Run everything this many times, interleaved, and report medians and spreads.",
)
@click.option(
    "--rate",
    default=50.0,
    show_default=True,
    type=click.FloatRange(0.1, 10_000),
    help="Transfers per second committed while the end-to-end latency is measured.",
)
@click.option(
    "--accounts",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Transfers pick among accounts a1..aN of each side.",
)
@click.option(
    "--batch",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Events each relay claims per database transaction.",
)
@broker_url_option
@quiet_option
@json_option
@click.pass_obj
@operational_errors
@outbox_errors
def bench_outbox(
    obj: Context,
    transfers: int,
    relays: str,
    rounds: int,
    rate: float,
    accounts: int,
    batch: int,
    broker_url: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """The outbox measured: what writing the event costs a 2PC transfer (with and without,
    interleaved), the relays' throughput draining a backlog (events/s) and the end-to-end
    latency from a transfer's commit to the notifications consumer's confirmation (p50/p99)
    at each relay count. Moves 0.01 per transfer and leaves it moved; run it alone (another
    notifications consumer would take some of its events)."""
    from twopc.benchmarks.bench_outbox import (
        BenchmarkFailed,
        format_outbox_benchmark,
        run_outbox_benchmark,
    )

    if not math.isfinite(rate):  # click's FloatRange lets nan through
        raise BadInput(f"--rate {rate}: give a number of transfers per second, 0.1 to 10000")
    counts = _counts("--relays", relays)
    if max(counts) > 64:
        raise BadInput(f"--relays {relays!r}: at most 64 relays at once")
    url = resolve_broker_url(obj, broker_url)
    participants = obj.participants(SIDES)
    _check_accounts(read_balances(participants).sides, accounts)
    steps = rounds * (2 + len(counts))
    with progress(steps, "measuring", quiet=quiet) as measured:
        try:
            result = run_outbox_benchmark(
                participants,
                url,
                obj.home,
                transfers=transfers,
                relays=counts,
                rounds=rounds,
                rate=rate,
                accounts=accounts,
                batch=batch,
                on_step=measured,
            )
        except BenchmarkFailed as err:
            raise Failure(str(err)) from None
    result["broker"] = redacted(url)
    emit(as_json, result, "\n".join(format_outbox_benchmark(result)))
    if not result["consumed_once"]:
        raise Failure(
            f"{result['missing']} announced transfer(s) got no confirmation: see `twopc relay "
            "status` and `twopc relay parked`"
        )


@bench.command("recovery")
@click.option(
    "--in-doubt",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="In-doubt transactions to make (the server must allow as many prepared ones).",
)
@click.option(
    "--coordinators",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Dead coordinators they are spread over.",
)
@click.option(
    "--blocked-on",
    default="pg",
    show_default=True,
    type=click.Choice(["pg", "mysql"]),
    help="The server on which the blocked transfer waits for its row.",
)
@lock_wait_option(60.0)
@json_option
@click.pass_obj
@operational_errors
def bench_recovery(
    obj: Context,
    in_doubt: int,
    coordinators: int,
    blocked_on: str,
    lock_wait: float,
    as_json: bool,
) -> None:
    """Recovery at scale: make in-doubt transactions of dead coordinators (half decided),
    block a transfer on one of them, then time `recover`: branches/s, when the first and
    last locks were freed, and when the blocked transfer went through. Uses a table of its
    own (bench_in_doubt) on both servers, and the configured HOME's recovery."""
    from twopc.benchmarks.bench_recovery import (
        format_recovery_benchmark,
        run_recovery_benchmark,
    )

    participants = obj.participants(SIDES, lock_wait)
    result = run_recovery_benchmark(
        participants,
        obj.home,
        in_doubt=in_doubt,
        coordinators=coordinators,
        blocked_on=blocked_on,
    )
    emit(as_json, result, "\n".join(format_recovery_benchmark(result)))
    if result["left_in_doubt"] or result["problems"]:
        raise Failure("recovery left transactions in doubt: see `twopc in-doubt`")


def _plotter(plot: Path | None) -> Callable[[dict[str, Any], Path], None] | None:
    """The plotting function when ``--plot`` is given (checked before anything runs)."""
    if plot is None:
        return None
    try:
        from twopc.benchmarks.plot import plot_transfer_benchmark
    except ImportError as err:
        raise BadInput(f"--plot needs matplotlib ({err}): pip install 'twopc[plot]'") from None
    return plot_transfer_benchmark


def _check_accounts(sides: Mapping[str, Sequence[tuple[str, object]]], accounts: int) -> None:
    for side, rows in sides.items():
        present = {account for account, _ in rows}
        missing = [f"a{n}" for n in range(1, accounts + 1) if f"a{n}" not in present]
        if missing:
            raise click.ClickException(
                f"{side} has no account {missing[0]}: run `twopc init --accounts {accounts}` "
                "or pass a smaller --accounts"
            )
