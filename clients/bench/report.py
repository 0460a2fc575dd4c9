"""What a run reports: the text table, the JSON document and the PNG plot."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clients.bench.driver import BenchConfig, LevelReport


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(reports: Sequence[LevelReport]) -> str:
    """The reports as a fixed-width text table."""
    header = (
        "conc",
        "rate",
        "sent",
        "ok",
        "failed",
        "req/s",
        "samples/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "batch",
        "gen CPU",
        "srv CPU",
        "all CPU",
    )
    rows = [header]
    for r in reports:
        failures = ",".join(f"{k}:{v}" for k, v in r.failed.items()) or "0"
        if r.skipped:
            failures += f" (+{r.skipped} skipped)"
        rows.append(
            (
                str(r.concurrency) if r.mode == "closed" else "-",
                _fmt(r.rate, ".0f"),
                str(r.sent),
                str(r.succeeded),
                failures,
                f"{r.throughput_rps:.1f}",
                f"{r.samples_per_s:.1f}",
                _fmt(r.latency_ms["p50"], ".2f"),
                _fmt(r.latency_ms["p90"], ".2f"),
                _fmt(r.latency_ms["p99"], ".2f"),
                _fmt(r.latency_ms["max"], ".2f"),
                _fmt(r.server_mean_batch, ".2f"),
                f"{r.client_cpu_cores:.2f}",
                _fmt(r.server_cpu_cores, ".2f"),
                _fmt(r.machine_cpu_cores, ".2f"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(config: BenchConfig, reports: Sequence[LevelReport], command: str) -> dict[str, Any]:
    """The machine-readable form: the command, the configuration and one entry per level."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    return {
        "command": command,
        "config": settings,
        "cpu_count": len(os.sched_getaffinity(0)),
        "levels": [asdict(r) for r in reports],
    }


def plot(reports: Sequence[LevelReport], path: Path, title: str) -> None:
    """Throughput and latency (p50, p99) against concurrency (or rate) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    open_loop = bool(reports) and reports[0].mode == "open"
    xs = [r.rate if open_loop else r.concurrency for r in reports]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r.throughput_rps for r in reports], marker="o")
    left.set_ylabel("requests/s")
    right.plot(xs, [r.latency_ms["p50"] for r in reports], marker="o", label="p50")
    right.plot(xs, [r.latency_ms["p99"] for r in reports], marker="s", label="p99")
    right.set_ylabel("latency (ms)")
    right.legend()
    for axis in (left, right):
        axis.set_xlabel("request rate (/s)" if open_loop else "concurrency")
        if not open_loop:
            axis.set_xscale("log", base=2)
        axis.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path.write_bytes(buffer.getvalue())
