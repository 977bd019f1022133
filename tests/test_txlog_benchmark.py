"""Smoke test of benchmarks/bench_log.py (the figures themselves are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twopc.benchmarks.bench_log import (
    format_cycle_benchmark,
    format_log_benchmark,
    run_cycle_benchmark,
    run_log_benchmark,
)


def test_log_benchmark_reports_raw_and_log_for_each_appender_count(tmp_path: Path) -> None:
    result = run_log_benchmark(tmp_path, [1, 4], records=40, rounds=1)
    assert [run["appenders"] for run in result["runs"]] == [1, 4]
    for run in result["runs"]:
        assert run["raw"]["records"] == run["raw_serial"]["records"] == 40
        assert run["log"]["records"] == 40
        assert run["ratio"] > 0 and run["ratio_serial"] > 0
        # Every forced record was synced by some fdatasync; a lone appender needs one each.
        assert 1 <= run["log"]["syncs"] <= 40
    assert result["runs"][0]["log"]["syncs"] == 40
    assert json.loads(json.dumps(result)) == result
    assert len(format_log_benchmark(result)) == 1 + 4 * 2


def test_log_benchmark_refuses_zero_appenders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_log_benchmark(tmp_path, [0], records=10, rounds=1)


def test_cycle_benchmark_keeps_disk_use_bounded(tmp_path: Path) -> None:
    result = run_cycle_benchmark(tmp_path, cycles=600, workers=4, segment_bytes=16 * 1024)
    assert result["unfinished"] == 0
    assert result["final_bytes"] <= 2 * 16 * 1024
    assert "disk use" in format_cycle_benchmark(result)[1]
