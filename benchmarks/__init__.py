"""Benchmarks that measure the project's own components (no databases): ``bench_log``
compares the transaction log's group commit against raw one-fdatasync-per-record appends
and measures the log's disk use under an endless stream of transactions.

Import from the module (``from benchmarks.bench_log import run_log_benchmark``): the package
does not re-export it, because importing it here would make ``python -m
benchmarks.bench_log`` load the module twice (runpy warns about exactly that).
"""
