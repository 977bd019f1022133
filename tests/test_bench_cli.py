"""``twopc bench log`` prints figures measured against a raw-fsync baseline in the same run."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
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
    for key in ("raw", "raw_serial", "log", "p50", "p99", "records_per_sync"):
        assert key in text
    assert not any(p.name.startswith("bench-") for p in tmp_path.iterdir())  # scratch removed
    human = bench(tmp_path, "--appenders", "2", "--records", "20")
    assert human.returncode == 0, human.stderr
    assert "log/raw" in human.stdout


@pytest.mark.parametrize("value", ["one,two", "0", "4,-1", ""])
def test_bench_log_rejects_bad_appenders(tmp_path: Path, value: str) -> None:
    result = bench(tmp_path, "--appenders", value)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"Error: --appenders {value!r} must be comma-separated integers >= 1"
    )
    assert list(tmp_path.iterdir()) == []  # nothing measured, nothing written


def test_bench_log_pins_to_one_cpu(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    result = bench(tmp_path, "--appenders", "2", "--records", "10", "--pin-cpu", str(cpu), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cpus"] == [cpu]


def test_bench_log_rejects_an_unusable_cpu(tmp_path: Path) -> None:
    result = bench(tmp_path, "--pin-cpu", "4096")
    assert result.returncode == 2
    assert result.stderr.startswith("Error: --pin-cpu: CPU 4096 is not usable here; usable CPUs:")
    assert len(result.stderr.strip().splitlines()) == 1


def on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run twopc with stderr on a pseudo-terminal (stdout stays a pipe)."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [twopc_executable(), *args], stdout=subprocess.PIPE, stderr=follower, text=True
    ) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert process.stdout is not None
        out = process.stdout.read()
        process.wait(timeout=120)
    return process.returncode, out, b"".join(chunks).decode()


def test_bench_log_shows_progress_on_a_terminal_unless_quiet(tmp_path: Path) -> None:
    args = ("--home", str(tmp_path), "bench", "log", "--appenders", "1", "--records", "6")
    code, out, err = on_a_terminal(*args, "--json")
    assert code == 0, err
    assert json.loads(out)["runs"][0]["appenders"] == 1  # stdout stays clean
    assert "measuring" in err and "100%" in err
    code, out, err = on_a_terminal(*args, "--json", "--quiet")
    assert code == 0 and err == ""
    assert json.loads(out)["runs"][0]["appenders"] == 1
