"""`twopc bench`: benchmarks measured against a baseline in the same run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from commands.common import BadInput, Context, emit, json_option, operational_errors

# -- benchmarks -------------------------------------------------------------------------------


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
@json_option
@click.pass_obj
@operational_errors
def bench_log(
    obj: Context,
    appenders: str,
    records: int,
    directory: Path | None,
    pin_cpu: int | None,
    as_json: bool,
) -> None:
    """Group-commit log appends against one raw fdatasync per record (threads racing, and
    one at a time), in the same run."""
    from benchmarks.bench_log import format_log_benchmark, pin_to_cpu, run_log_benchmark

    try:
        counts = [int(n) for n in appenders.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise BadInput(f"--appenders {appenders!r} must be comma-separated integers >= 1")
    if pin_cpu is not None:
        try:
            pin_to_cpu(pin_cpu)
        except ValueError as err:
            raise BadInput(f"--pin-cpu: {err}") from None
    (obj.home).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory or obj.home, prefix="bench-") as scratch:
        result = run_log_benchmark(Path(scratch), counts, records)
    emit(as_json, result, "\n".join(format_log_benchmark(result)))
