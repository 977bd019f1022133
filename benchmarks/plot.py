"""Pictures of a transfer benchmark (``twopc bench transfers --plot FILE.png``): throughput
against workers per mode (median, with the rounds' spread), and each mode's latency
distribution at every worker count. Needs matplotlib (``pip install 'twopc[plot]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt


def plot_transfer_benchmark(result: dict[str, Any], path: Path) -> None:
    """Draw ``result`` (of ``run_transfer_benchmark``) into the PNG at ``path``."""
    modes = list(dict.fromkeys(m["mode"] for m in result["modes"]))
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(13, 5))
    for mode in modes:
        rows = [m for m in result["modes"] if m["mode"] == mode]
        workers = [m["workers"] for m in rows]
        median = [m["transfers_per_s"]["median"] for m in rows]
        low = [m["transfers_per_s"]["median"] - m["transfers_per_s"]["min"] for m in rows]
        high = [m["transfers_per_s"]["max"] - m["transfers_per_s"]["median"] for m in rows]
        throughput.errorbar(workers, median, yerr=[low, high], marker="o", capsize=3, label=mode)
    throughput.set(xlabel="workers", ylabel="transfers/s", title="throughput (median, spread)")
    throughput.legend()
    _latencies(latency, result["runs"], modes)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _latencies(axes: Any, runs: Sequence[dict[str, Any]], modes: list[str]) -> None:
    """One box per mode and worker count, every latency of every round."""
    keys = sorted(
        {(r["workers"], r["mode"]) for r in runs}, key=lambda k: (k[0], modes.index(k[1]))
    )
    data = [
        [x for r in runs if (r["workers"], r["mode"]) == key for x in r["latencies_ms"]]
        for key in keys
    ]
    axes.boxplot(data, showfliers=False)
    axes.set_xticks(range(1, len(keys) + 1), [f"{m}\n{w}w" for w, m in keys], fontsize=7)
    axes.set(ylabel="ms", title="latency per transfer (whiskers 1.5 IQR)")
