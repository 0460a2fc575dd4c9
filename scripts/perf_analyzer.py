"""Triton's perf_analyzer against a running server: find it, run it level by level, read its CSV.

::

    python scripts/perf_analyzer.py --server 127.0.0.1:8001 --model lenet --concurrency 1,4,8,16

Each concurrency is one ``perf_analyzer -i grpc --concurrency-range C:C`` run, so that the levels
are exactly the ones our own load generator measures; the figures are read from its
latency report CSV (``-f``, microseconds). perf_analyzer also reads ModelStatistics before and
after every measurement window and aborts when the server's statistics are inconsistent, so a
run that reaches its end checks them as well.

Getting perf_analyzer (it is not a dependency of this project):

- the ``tritonclient`` 2.51.0 wheel ships the binary as ``bin/perf_analyzer``::

      python -m venv /tmp/pa
      /tmp/pa/bin/pip install --no-deps tritonclient==2.51.0 nvidia-cuda-runtime-cu12
      apt-get install libb64-0d        # Debian/Ubuntu: the binary links libb64.so.0d

- ``CNNSERVE_PERF_ANALYZER`` names the binary (default: ``perf_analyzer`` on ``PATH``);
- it links ``libcudart.so.12`` even for CPU-only servers: the ``nvidia-cuda-runtime-cu12`` wheel's
  ``nvidia/cuda_runtime/lib`` in the binary's own environment is found by itself; other
  directories go in ``CNNSERVE_PERF_ANALYZER_LIBRARY_PATH`` (``:``-separated).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BINARY_ENV = "CNNSERVE_PERF_ANALYZER"
LIBRARY_ENV = "CNNSERVE_PERF_ANALYZER_LIBRARY_PATH"
SETUP_HINT = (
    f"install it with `pip install --no-deps tritonclient==2.51.0 nvidia-cuda-runtime-cu12` in a "
    f"virtualenv and `apt-get install libb64-0d`, then set {BINARY_ENV}=<venv>/bin/perf_analyzer "
    f"(see scripts/perf_analyzer.py)"
)

#: perf_analyzer's CSV columns (all microseconds except throughput) and our names for them.
CSV_COLUMNS = {
    "Inferences/Second": "throughput_infer_per_s",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_us",
    "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us",
    "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
}
#: The columns that add up to perf_analyzer's average latency.
LATENCY_PARTS = (
    "client_send_us",
    "network_us",
    "server_queue_us",
    "server_compute_input_us",
    "server_compute_infer_us",
    "server_compute_output_us",
    "client_recv_us",
)


class PerfAnalyzerMissing(RuntimeError):
    """perf_analyzer or one of its libraries is not there; the message says how to provide it."""


@dataclass(frozen=True)
class PerfAnalyzer:
    """The binary and the library directories it needs on ``LD_LIBRARY_PATH``."""

    binary: Path
    library_path: tuple[str, ...]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        parts = [*self.library_path, *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))]
        if parts:
            env["LD_LIBRARY_PATH"] = ":".join(parts)
        return env


def _cuda_runtime_dirs(binary: Path) -> list[str]:
    """``nvidia/cuda_runtime/lib`` of the Python environment the binary was installed into."""
    prefix = binary.resolve().parent.parent
    return [str(p) for p in sorted(prefix.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))]


def find() -> PerfAnalyzer:
    """The perf_analyzer to run, with its libraries; raises PerfAnalyzerMissing saying what is missing."""
    named = os.environ.get(BINARY_ENV)
    found = named or shutil.which("perf_analyzer")
    if not found:
        raise PerfAnalyzerMissing(
            f"no perf_analyzer: {BINARY_ENV} is unset and none is on PATH; {SETUP_HINT}"
        )
    binary = Path(found)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise PerfAnalyzerMissing(f"{BINARY_ENV}={found} is not an executable file; {SETUP_HINT}")
    extra = [d for d in os.environ.get(LIBRARY_ENV, "").split(":") if d]
    tool = PerfAnalyzer(binary, tuple(extra + _cuda_runtime_dirs(binary)))
    missing = _missing_libraries(tool)
    if missing:
        raise PerfAnalyzerMissing(
            f"{binary} cannot load {', '.join(missing)}: libb64.so.0d comes from "
            f"`apt-get install libb64-0d`, libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel (its "
            f"lib directory is found next to the binary's environment, or name it in {LIBRARY_ENV})"
        )
    return tool


def _missing_libraries(tool: PerfAnalyzer) -> list[str]:
    try:
        result = subprocess.run(
            ["ldd", str(tool.binary)], env=tool.env(), capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []  # no ldd: the run itself will say what is missing
    return [line.split("=>")[0].strip() for line in result.stdout.splitlines() if "not found" in line]


def version(tool: PerfAnalyzer) -> str:
    """What ``perf_analyzer --version`` says, e.g. ``Perf Analyzer Version 2.51.0 (commit unknown)``."""
    result = subprocess.run(
        [str(tool.binary), "--version"], env=tool.env(), capture_output=True, text=True, timeout=30
    )
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else ""


def command(
    tool: PerfAnalyzer,
    server: str,
    model: str,
    concurrency: int,
    csv_path: Path,
    *,
    measurement_interval_ms: int,
    stability_percentage: int,
) -> list[str]:
    """One perf_analyzer run at one concurrency over gRPC."""
    return [
        str(tool.binary),
        "-m",
        model,
        "-i",
        "grpc",
        "-u",
        server,
        "--concurrency-range",
        f"{concurrency}:{concurrency}:1",
        "--measurement-interval",
        str(measurement_interval_ms),
        "--stability-percentage",
        str(stability_percentage),
        "-f",  # the latency report (CSV); 2.51.0 has no --latency-report-file spelling
        str(csv_path),
    ]


def read_latency_report(path: Path) -> list[dict[str, Any]]:
    """perf_analyzer's CSV as one dict per concurrency, in our names, plus ``avg_latency_us``."""
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {"concurrency": int(raw["Concurrency"])}
            for column, name in CSV_COLUMNS.items():
                row[name] = float(raw[column])
            row["avg_latency_us"] = sum(row[name] for name in LATENCY_PARTS)
            rows.append(row)
    return sorted(rows, key=lambda r: r["concurrency"])


def run_levels(
    tool: PerfAnalyzer,
    server: str,
    model: str,
    concurrency: Sequence[int],
    *,
    measurement_interval_ms: int = 2000,
    stability_percentage: int = 50,
    timeout_s: float = 300,
) -> list[dict[str, Any]]:
    """Run perf_analyzer at each concurrency; one dict per level with its command and figures.

    A level perf_analyzer could not finish has ``error`` (the end of its output) instead.
    """
    levels = []
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        for c in concurrency:
            csv_path = Path(tmp) / f"c{c}.csv"
            argv = command(
                tool,
                server,
                model,
                c,
                csv_path,
                measurement_interval_ms=measurement_interval_ms,
                stability_percentage=stability_percentage,
            )
            level: dict[str, Any] = {"concurrency": c, "command": shown(argv)}
            try:
                result = subprocess.run(
                    argv, env=tool.env(), capture_output=True, text=True, timeout=timeout_s, check=False
                )
            except subprocess.TimeoutExpired:
                level["error"] = f"no result within {timeout_s:g} s"
                levels.append(level)
                continue
            output = (result.stdout + result.stderr).strip()
            if result.returncode != 0 or not csv_path.exists():
                level["error"] = f"exit status {result.returncode}: {output[-1500:]}"
            else:
                (row,) = read_latency_report(csv_path)
                level.update(row)
            levels.append(level)
    return levels


def shown(argv: Sequence[str]) -> str:
    """The command as a reader would type it: the binary by name, the CSV as a placeholder."""
    parts = list(argv)
    parts[0] = "perf_analyzer"
    parts[-1] = "REPORT.csv"
    return shlex.join(parts)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/perf_analyzer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="gRPC address of a running server, HOST:PORT")
    p.add_argument("--model", required=True, help="model to measure")
    p.add_argument("--concurrency", default="1,4,8,16", help="comma-separated concurrency levels")
    p.add_argument("--measurement-interval-ms", type=int, default=2000, help="perf_analyzer's window")
    p.add_argument(
        "--stability-percentage",
        type=int,
        default=50,
        help="perf_analyzer's stability threshold (its default 10%% rarely settles on a shared machine)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the levels here as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        tool = find()
    except PerfAnalyzerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    levels = run_levels(
        tool,
        args.server,
        args.model,
        [int(c) for c in args.concurrency.split(",") if c],
        measurement_interval_ms=args.measurement_interval_ms,
        stability_percentage=args.stability_percentage,
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"binary": str(tool.binary), "levels": levels}, indent=2) + "\n")
    print(
        f"{'concurrency':>11} {'infer/s':>9} {'avg us':>8} {'p50 us':>8} {'p99 us':>8}  "
        "server queue/input/infer/output us"
    )
    for lvl in levels:
        if "error" in lvl:
            print(f"{lvl['concurrency']:>11} failed: {lvl['error']}")
            continue
        server = "/".join(
            f"{lvl[k]:.0f}"
            for k in (
                "server_queue_us",
                "server_compute_input_us",
                "server_compute_infer_us",
                "server_compute_output_us",
            )
        )
        print(
            f"{lvl['concurrency']:>11} {lvl['throughput_infer_per_s']:>9.1f} {lvl['avg_latency_us']:>8.0f} "
            f"{lvl['p50_us']:>8.0f} {lvl['p99_us']:>8.0f}  {server}"
        )
    return 1 if any("error" in lvl for lvl in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
