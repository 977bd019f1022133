"""``twopc bench log`` prints figures measured against a raw-fsync baseline in the same run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import twopc_executable


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [twopc_executable(), "--home", str(tmp_path), "bench", "log", *args],
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_bench_log_compares_with_raw_fsync(tmp_path: Path) -> None:
    result = bench(tmp_path, "--appenders", "1,4", "--records", "40", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    text = json.dumps(figures)
    for key in ("raw", "log", "p50", "p99"):
        assert key in text
    assert not any(p.name.startswith("bench-") for p in tmp_path.iterdir())  # scratch removed
    human = bench(tmp_path, "--appenders", "2", "--records", "20")
    assert human.returncode == 0, human.stderr
    assert "log/raw" in human.stdout


def test_bench_log_rejects_bad_appenders(tmp_path: Path) -> None:
    result = bench(tmp_path, "--appenders", "one,two")
    assert result.returncode == 2
    assert result.stderr.strip() == "Error: --appenders 'one,two' must be comma-separated integers"
