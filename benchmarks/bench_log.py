"""Benchmark of ``txlog``: group commit against raw fdatasync, and bounded disk use.

``python -m twopc.benchmarks.bench_log --appenders 1 8 64 --records 2000 [--json]`` runs, for each
appender count and in alternating rounds, three measurements of the same record size with
the same number of threads, and prints records/s and p50/p99 latency for each:

- raw (parallel): every thread writes + fdatasyncs its own record on one ``O_APPEND`` file,
  racing the others. One fsync per record, but concurrent fdatasyncs of one file can be
  merged by the file system (ext4 and XFS commit their journal once for all of them), so
  this baseline scales with threads on such file systems.
- raw (serial): the same, one record at a time (a log with no group commit of its own,
  which must keep records whole and in order): about one fsync latency per record.
- log: forced appends to a :class:`txlog.TransactionLog`, with the average number of
  records each of its fdatasyncs made durable.

Ratios are given against both raw baselines. ``--pin-cpu N`` first pins the process (so
every measurement) to CPU N: appender threads of one CPython process run Python one at a
time anyway, and on one CPU they wake each other without cross-CPU wake-ups.
``--cycles K`` instead runs K begin(force)/commit(force)/end(final, unforced) cycles and
reports the log's peak and final disk use. Directories are made under ``--dir`` (default:
the system temp dir); it must be on a real disk (not tmpfs) for the figures to mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twopc.txlog import DEFAULT_SEGMENT_BYTES, Record, TransactionLog
from twopc.txlog.files import disk_usage
from twopc.txlog.segments import encode_record

DEFAULT_APPENDERS = (1, 8, 64)
_BODY = {"branches": ["postgres", "mysql"], "decision": "commit"}
# Disk use is sampled this often (seconds) during the cycle benchmark.
_SAMPLE_INTERVAL = 0.05


@dataclass(frozen=True)
class Timing:
    """One measurement: every append's latency and the wall time of the whole run."""

    latencies: list[float]
    seconds: float


def sample_record(number: int) -> Record:
    """The record both benchmarks write: a COMMIT decision naming two branches."""
    return Record("commit", f"bench-coordinator-{number:012d}", _BODY)


def pin_to_cpu(cpu: int) -> None:
    """Pin this process's threads (and those it starts later) to ``cpu``; ``ValueError``
    naming the usable CPUs if it is not one of them."""
    usable = sorted(os.sched_getaffinity(0))
    if cpu not in usable:
        raise ValueError(f"CPU {cpu} is not usable here; usable CPUs: {usable}")
    os.sched_setaffinity(0, {cpu})


#: Measurements per appender count and round: raw parallel, raw serial, log.
MEASUREMENTS_PER_ROUND = 3


def run_log_benchmark(
    directory: Path,
    appenders: list[int],
    records: int,
    rounds: int = 3,
    on_measured: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Measure both raw baselines and forced log appends for each appender count.

    ``records`` is the total per measurement, split across the appenders and across
    ``rounds`` that alternate the three (so a shared disk's drift hits them alike).
    ``on_measured`` is called after each of the ``len(appenders) * rounds *
    MEASUREMENTS_PER_ROUND`` measurements (for progress).
    Returns a JSON-ready dict: ``record_bytes`` and one entry per count under ``runs``.
    """
    if any(count < 1 for count in appenders):
        raise ValueError(f"appender counts must be at least 1, got {appenders}")
    record_bytes = len(encode_record(sample_record(0)))
    measured = on_measured or (lambda: None)
    runs = [
        _compare(Path(directory), count, records, record_bytes, rounds, measured)
        for count in appenders
    ]
    return {
        "directory": str(directory),
        "record_bytes": record_bytes,
        "cpus": sorted(os.sched_getaffinity(0)),
        "runs": runs,
    }


def _compare(
    directory: Path,
    appenders: int,
    records: int,
    record_bytes: int,
    rounds: int,
    measured: Callable[[], object],
) -> dict[str, Any]:
    per_thread = max(1, records // appenders // rounds)
    timings: dict[str, list[Timing]] = {"raw": [], "raw_serial": [], "log": []}
    syncs = 0
    for round_number in range(rounds):
        name = f"{appenders}-{round_number}"
        for serial, key in ((False, "raw"), (True, "raw_serial")):
            path = directory / f"{key}-{name}"
            timings[key].append(_measure_raw(path, appenders, per_thread, record_bytes, serial))
            measured()
        timing, log_syncs = _measure_log(directory / f"log-{name}", appenders, per_thread)
        timings["log"].append(timing)
        syncs += log_syncs
        measured()
    result: dict[str, Any] = {"appenders": appenders}
    result.update((key, _summary(each)) for key, each in timings.items())
    log_rate = result["log"]["records_per_s"]
    result["log"]["syncs"] = syncs
    result["log"]["records_per_sync"] = round(result["log"]["records"] / max(syncs, 1), 1)
    result["ratio"] = round(log_rate / result["raw"]["records_per_s"], 2)
    result["ratio_serial"] = round(log_rate / result["raw_serial"]["records_per_s"], 2)
    return result


def _measure_raw(
    path: Path, appenders: int, per_thread: int, record_bytes: int, serial: bool
) -> Timing:
    """Raw appends: write + fdatasync per record to one O_APPEND file. ``serial`` holds a
    lock across both (a log without group commit of its own); otherwise the threads race,
    and the file system may merge their concurrent fdatasyncs into one journal commit."""
    payload = b"r" * record_bytes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    one_at_a_time = threading.Lock() if serial else contextlib.nullcontext()

    def append_one(_number: int) -> None:
        with one_at_a_time:
            os.write(fd, payload)
            os.fdatasync(fd)

    try:
        return _run_threads(appenders, per_thread, append_one)
    finally:
        os.close(fd)


def _measure_log(path: Path, appenders: int, per_thread: int) -> tuple[Timing, int]:
    """Forced log appends; also returns how many fdatasyncs the log needed."""
    with TransactionLog.open(path) as log:
        timing = _run_threads(
            appenders, per_thread, lambda n: log.append(sample_record(n), force=True)
        )
        return timing, log.stats().syncs


def _run_threads(appenders: int, per_thread: int, append: Callable[[int], object]) -> Timing:
    latencies: list[list[float]] = [[] for _ in range(appenders)]

    def appender(index: int) -> None:
        for step in range(per_thread):
            started = time.perf_counter()
            append(index * per_thread + step)
            latencies[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=appender, args=(i,)) for i in range(appenders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Timing([x for each in latencies for x in each], time.perf_counter() - started)


def _summary(timings: list[Timing]) -> dict[str, Any]:
    latencies = sorted(x for timing in timings for x in timing.latencies)
    elapsed = sum(timing.seconds for timing in timings)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "records": len(latencies),
        "seconds": round(elapsed, 3),
        "records_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(cuts[49] * 1000, 3),
        "p99_ms": round(cuts[98] * 1000, 3),
    }


def run_cycle_benchmark(
    directory: Path, cycles: int, workers: int = 16, segment_bytes: int = DEFAULT_SEGMENT_BYTES
) -> dict[str, Any]:
    """Run ``cycles`` begin(force)/commit(force)/end(final, unforced) transactions from
    ``workers`` threads and report throughput and the log's peak and final disk use."""
    path = Path(directory) / "cycles"
    peak = [0]
    stop = threading.Event()
    with TransactionLog.open(path, segment_bytes=segment_bytes) as log:
        sampler = threading.Thread(target=_sample_disk, args=(path, peak, stop))
        sampler.start()
        started = time.perf_counter()
        try:
            _run_cycles(log, cycles, workers)
        finally:
            elapsed = time.perf_counter() - started
            stop.set()
            sampler.join()
        unfinished = len(log.unfinished())
    final = disk_usage(path)
    return {
        "cycles": cycles,
        "workers": workers,
        "seconds": round(elapsed, 1),
        "cycles_per_s": round(cycles / elapsed, 1),
        "peak_bytes": max(peak[0], final),
        "final_bytes": final,
        "unfinished": unfinished,
    }


def _run_cycles(log: TransactionLog, cycles: int, workers: int) -> None:
    def worker(index: int) -> None:
        for number in range(index, cycles, workers):
            txid = f"bench-coordinator-{number:012d}"
            log.append(Record("begin", txid, {"branches": _BODY["branches"]}), force=True)
            log.append(Record("commit", txid, _BODY), force=True)
            log.append(Record("end", txid, final=True), force=False)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _sample_disk(path: Path, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(_SAMPLE_INTERVAL):
        try:
            peak[0] = max(peak[0], disk_usage(path))
        except FileNotFoundError:  # a segment removed between listing and stat
            continue


_LABELS = {"raw": "raw (parallel)", "raw_serial": "raw (serial)", "log": "log"}


def format_log_benchmark(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`run_log_benchmark`'s result."""
    lines = [
        f"record size {result['record_bytes']} bytes, directory {result['directory']}, "
        f"CPUs {','.join(str(cpu) for cpu in result['cpus'])}"
    ]
    for run in result["runs"]:
        for name, label in _LABELS.items():
            m = run[name]
            extra = f"  {m['records_per_sync']} records/fsync" if name == "log" else ""
            lines.append(
                f"{run['appenders']:>3} appenders {label:<15}{m['records_per_s']:>10.1f} rec/s"
                f"  p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms{extra}"
            )
        lines.append(
            f"{run['appenders']:>3} appenders log/raw: {run['ratio']:.2f}x parallel, "
            f"{run['ratio_serial']:.2f}x serial"
        )
    return lines


def format_cycle_benchmark(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`run_cycle_benchmark`'s result."""
    mib = 1024 * 1024
    return [
        f"{result['cycles']} cycles with {result['workers']} workers in {result['seconds']} s "
        f"({result['cycles_per_s']} cycles/s)",
        f"disk use: peak {result['peak_bytes'] / mib:.2f} MiB, "
        f"final {result['final_bytes'] / mib:.2f} MiB, unfinished {result['unfinished']}",
    ]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m twopc.benchmarks.bench_log", description=__doc__
    )
    parser.add_argument("--appenders", type=int, nargs="+", default=list(DEFAULT_APPENDERS))
    parser.add_argument("--records", type=int, default=3000, help="records per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/log rounds")
    parser.add_argument("--cycles", type=int, help="run the disk-use cycle benchmark instead")
    parser.add_argument("--workers", type=int, default=16, help="threads for --cycles")
    parser.add_argument("--dir", type=Path, help="parent of the benchmark's temp directory")
    parser.add_argument("--pin-cpu", type=int, help="run every measurement on this CPU")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    args = _parse(argv)
    if args.pin_cpu is not None:
        try:
            pin_to_cpu(args.pin_cpu)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    with tempfile.TemporaryDirectory(prefix="twopc-bench-", dir=args.dir) as scratch:
        if args.cycles is not None:
            result = run_cycle_benchmark(Path(scratch), args.cycles, args.workers)
            lines = format_cycle_benchmark(result)
        else:
            result = run_log_benchmark(Path(scratch), args.appenders, args.records, args.rounds)
            lines = format_log_benchmark(result)
    print(json.dumps(result, indent=2) if args.json else "\n".join(lines))


if __name__ == "__main__":
    main()
