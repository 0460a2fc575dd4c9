"""Triton's perf_analyzer: a second load generator, independent of ours, at the same concurrencies.

Finding and running the binary lives in ``scripts/perf_analyzer.py`` (which also runs on
its own); this module runs it ``plan.repeats`` times against one server and summarizes
each level's figures over the repeats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import perf_analyzer as pa  # scripts/perf_analyzer.py: scripts/ is on sys.path

from benchmarking.commands import ROOT, log
from benchmarking.plan import Plan
from benchmarking.processes import Server
from benchmarking.stats import Spread, spread

#: The model Triton's perf_analyzer drives.
PERF_ANALYZER_MODEL = "lenet"
#: perf_analyzer's stability threshold: its default 10% rarely settles on this shared machine.
STABILITY_PERCENT = 50
#: Where ``make perf-analyzer`` installs it; used when CNNSERVE_PERF_ANALYZER names none.
MAKE_BINARY = ROOT / ".venv-perf-analyzer" / "bin" / "perf_analyzer"
#: Its figures summarized over repeats (µs except throughput), in the document's order.
FIGURES = (
    "throughput_infer_per_s",
    "avg_latency_us",
    "p50_us",
    "p99_us",
    "server_queue_us",
    "server_compute_input_us",
    "server_compute_infer_us",
    "server_compute_output_us",
)


def measure_perf_analyzer(repository: Path, plan: Plan) -> dict[str, Any]:
    """perf_analyzer (``-i grpc``) against our server with LeNet: every level, ``plan.repeats`` times.

    Returns ``{"skipped": why}`` when the binary or its libraries are missing (the message
    says how to provide them: ``CNNSERVE_PERF_ANALYZER``, see scripts/perf_analyzer.py).
    """
    if pa.BINARY_ENV not in os.environ and MAKE_BINARY.is_file():
        os.environ[pa.BINARY_ENV] = str(MAKE_BINARY)
    try:
        tool = pa.find()
    except pa.PerfAnalyzerMissing as exc:
        log(f"perf_analyzer not run: {exc}")
        return {"skipped": str(exc)}
    repeats: list[list[dict[str, Any]]] = []
    with Server(repository, [PERF_ANALYZER_MODEL]) as server:
        for repeat in range(plan.repeats):
            log(f"perf_analyzer, repeat {repeat + 1} of {plan.repeats}: concurrency {list(plan.concurrency)}")
            repeats.append(
                pa.run_levels(
                    tool,
                    server.address,
                    PERF_ANALYZER_MODEL,
                    plan.concurrency,
                    measurement_interval_ms=plan.perf_analyzer_interval_ms,
                    stability_percentage=STABILITY_PERCENT,
                )
            )
        return {
            "model": PERF_ANALYZER_MODEL,
            "version": pa.version(tool),
            "server_command": server.shown_command(),
            "measurement_interval_ms": plan.perf_analyzer_interval_ms,
            "stability_percentage": STABILITY_PERCENT,
            "repeats": repeats,
        }


def summarize(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per concurrency: each of :data:`FIGURES` over the repeats that finished, plus their errors."""
    by_level: dict[int, list[dict[str, Any]]] = {}
    for levels in result.get("repeats", []):
        for level in levels:
            by_level.setdefault(int(level["concurrency"]), []).append(level)
    summary = {}
    for concurrency, levels in sorted(by_level.items()):
        finished = [lvl for lvl in levels if "error" not in lvl]
        figures: dict[str, Spread | None] = {k: spread(lvl[k] for lvl in finished) for k in FIGURES}
        summary[concurrency] = {
            "command": levels[0]["command"],
            "figures": figures,
            "errors": [lvl["error"] for lvl in levels if "error" in lvl],
        }
    return summary
