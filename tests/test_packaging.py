"""twopc installs as one import package: a wheel holds ``twopc`` and its ``.dist-info`` only,
``import coordinator`` finds nothing, ``python -m twopc`` is the command, and ``py.typed``
ships. The wheel is built from this checkout, as a user's ``pip install`` would."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (built,) = out.glob("twopc-*.whl")
    return built


def test_the_wheel_has_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"twopc"}
    assert len(tops) == 2, tops


def test_the_wheel_holds_the_package_and_nothing_of_the_checkout(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for module in (
        "twopc/__init__.py",
        "twopc/__main__.py",
        "twopc/cli.py",
        "twopc/py.typed",
        "twopc/coordinator/__init__.py",
        "twopc/participants/__init__.py",
        "twopc/txlog/__init__.py",
        "twopc/saga/__init__.py",
        "twopc/bank/__init__.py",
    ):
        assert module in names, module
    assert not any(n.startswith(("twopc/tests/", "twopc/scripts/", "twopc/.")) for n in names)
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "twopc = twopc.cli:main" in archive.read(entry_points).decode()


def run_elsewhere(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python from the project's environment, run from a directory that is not the checkout
    (so the checkout's own folders are not importable by accident)."""
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", ["coordinator", "participants", "txlog", "cli", "commands"])
def test_no_generic_top_level_names_are_importable(tmp_path: Path, name: str) -> None:
    result = run_elsewhere(tmp_path, "-c", f"import {name}")
    assert result.returncode == 1
    assert f"No module named '{name}'" in result.stderr


def test_python_dash_m_twopc_is_the_command(tmp_path: Path) -> None:
    result = run_elsewhere(tmp_path, "-m", "twopc", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: twopc [OPTIONS] COMMAND [ARGS]...")


def test_the_package_is_typed(tmp_path: Path) -> None:
    result = run_elsewhere(
        tmp_path, "-c", "import twopc, pathlib; print(pathlib.Path(twopc.__file__).parent)"
    )
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "py.typed").is_file()
