"""HTTP against gRPC on one server, and JSON tensors against binary ones; writes ``docs/http_benchmark.md``.

::

    python scripts/http_benchmark.py                 # about 3 minutes: 5 interleaved rounds
    python scripts/http_benchmark.py --rounds 3 --out /tmp/httpbench

One ``python -m server`` process serves LeNet on gRPC and HTTP (loopback, metrics off). Each
round runs, in this order and at concurrency 16:

1. Triton's perf_analyzer ``-i grpc`` (unary ModelInfer, raw tensor contents);
2. perf_analyzer ``-i http`` (binary tensor data extension): the same C++ load generator, so
   the two figures differ only in the protocol;
3. ``tritonclient.http.aio`` with binary tensor data, then 4. with JSON tensors: perf_analyzer
   cannot send JSON, so JSON is measured from this Python client and shown against binary
   from the same client.

The rounds interleave the four series (A B C D A B C D ...) so that the machine's drift falls
on all of them alike; each series is summarized as its median and min-max over the rounds.
The verdicts (``scripts/http_benchmark_report.py``) compare medians; the document, its chart
and the raw rounds (``docs/benchmark_data/lenet-http-vs-grpc.json``) hold only figures of the
run. The run stops early, with the rounds done so far, when it would exceed its time budget.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ itself is sys.path[0], for `benchmarking` and `perf_analyzer`

import perf_analyzer as pa  # noqa: E402
from benchmarking.commands import PYTHON, log, shown  # noqa: E402
from benchmarking.models import ensure_models  # noqa: E402
from benchmarking.perf import MAKE_BINARY  # noqa: E402
from benchmarking.processes import ServerProcess, free_port  # noqa: E402
from benchmarking.provenance import machine_info, source_state  # noqa: E402

from clients import InferenceClient  # noqa: E402

MODEL = "lenet"
PROTOCOLS = ("grpc", "http")
#: The four series of a round, in the order each round runs them.
SERIES = ("perf_analyzer/grpc", "perf_analyzer/http", "tritonclient/binary", "tritonclient/json")
DOCUMENT = "http_benchmark.md"
CHART = "http_benchmark.png"
RAW = "benchmark_data/lenet-http-vs-grpc.json"


@dataclass(frozen=True)
class Plan:
    """How wide and how long one run is."""

    rounds: int = 5
    concurrency: int = 16
    #: perf_analyzer: ``windows`` time windows of ``window_ms`` each, merged into one figure.
    window_ms: int = 2000
    windows: int = 3
    #: tritonclient: unmeasured seconds, then measured seconds, per series and round.
    client_warmup_s: float = 0.5
    client_seconds: float = 4.0
    #: The whole run, server start included, stops starting rounds past this.
    budget_s: float = 270.0


# -- perf_analyzer over either protocol ------------------------------------------------------------


def perf_analyzer_command(
    tool: pa.PerfAnalyzer,
    protocol: str,
    address: str,
    model: str,
    csv_path: Path,
    *,
    concurrency: tuple[int, int, int],
    window_ms: int,
    windows: int | None = None,
    stability_percentage: int = 50,
    batch_size: int = 1,
) -> list[str]:
    """One perf_analyzer run over ``protocol`` (``grpc``: the gRPC port, ``http``: the HTTP port).

    ``concurrency`` is perf_analyzer's ``--concurrency-range`` (start, end, step). With
    ``windows`` it measures exactly that many time windows per level and merges them (a
    stability threshold that always holds; the repeats are ours); without, it measures until
    three windows agree within ``stability_percentage``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol is {protocol!r}; expected one of {PROTOCOLS}")
    argv = [
        str(tool.binary),
        "-m",
        model,
        "-i",
        protocol,
        "-u",
        address,
        "-b",
        str(batch_size),
        "--concurrency-range",
        ":".join(map(str, concurrency)),
        "--measurement-mode",
        "time_windows",
        "--measurement-interval",
        str(window_ms),
    ]
    if windows is None:
        argv += ["--stability-percentage", str(stability_percentage)]
    else:
        argv += ["--stability-percentage", "1000", "--max-trials", str(windows)]
    return [*argv, "-f", str(csv_path)]


def run_perf_analyzer(tool: pa.PerfAnalyzer, argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run one perf_analyzer command: its CSV rows (``rows``), or ``error`` with its output's end.

    ``generator_cpu_s`` is the CPU time perf_analyzer used (user + system).
    """
    csv_path = Path(argv[-1])
    csv_path.unlink(missing_ok=True)  # a report left by an earlier run must not pass for this one's
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = subprocess.run(
            list(argv), env=tool.env(), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout_s:g} s"}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or not csv_path.exists():
        return {"error": f"exit status {result.returncode}: {output[-2000:]}", "generator_cpu_s": cpu}
    figures: dict[str, Any] = {"rows": pa.read_latency_report(csv_path), "generator_cpu_s": cpu}
    # The requests of its measurement windows, as its report says ("Request count: N").
    counts = re.findall(r"Request count: (\d+)", output)
    if counts:
        figures["requests"] = int(counts[-1])
    return figures


def find_perf_analyzer() -> pa.PerfAnalyzer:
    """The binary ``CNNSERVE_PERF_ANALYZER`` names, else the one ``make perf-analyzer`` installs."""
    if pa.BINARY_ENV not in os.environ and MAKE_BINARY.is_file():
        os.environ[pa.BINARY_ENV] = str(MAKE_BINARY)
    return pa.find()


# -- the server -------------------------------------------------------------------------------------


class HttpAndGrpcServer(ServerProcess):
    """``python -m server`` with LeNet on a gRPC and an HTTP loopback port, no metrics port."""

    def __init__(self, repository: Path, model: str) -> None:
        port, self.http_port = free_port(), free_port()
        command = [
            PYTHON,
            "-m",
            "server",
            "--repository",
            str(repository),
            "--models",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            "-1",
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
        ]
        super().__init__(command, port)

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def ready(self, client: InferenceClient) -> bool:
        if not client.server_ready():
            return False
        try:
            with urllib.request.urlopen(f"http://{self.http_address}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def cpu_s(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)


# -- one client, two encodings ----------------------------------------------------------------------


async def drive_tritonclient(
    address: str,
    model: str,
    batch: np.ndarray,
    *,
    binary: bool,
    concurrency: int,
    warmup_s: float,
    seconds: float,
) -> dict[str, Any]:
    """``concurrency`` closed loops of ``tritonclient.http.aio`` infer calls: requests/s and latency.

    Every call builds its inputs anew, as a caller would; ``binary`` chooses the binary tensor
    data extension for the input and the output, else JSON ``data`` both ways.
    """
    import tritonclient.http as httpclient
    import tritonclient.http.aio as aioclient

    client = aioclient.InferenceServerClient(address, conn_limit=concurrency)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    shape = list(batch.shape)

    async def one() -> None:
        tensor = httpclient.InferInput("input", shape, "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        output = httpclient.InferRequestedOutput("logits", binary_data=binary)
        result = await client.infer(model, [tensor], outputs=[output])
        result.as_numpy("logits")

    warmup_requests = 0

    async def loop(until: float, record: bool) -> None:
        nonlocal warmup_requests
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                await one()
            except Exception as exc:  # every failure is counted by kind, none stops the run
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                continue
            if record:
                latencies.append(time.perf_counter() - start)
            else:
                warmup_requests += 1

    try:
        await asyncio.gather(*(loop(time.monotonic() + warmup_s, False) for _ in range(concurrency)))
        cpu_before, started = time.process_time(), time.monotonic()
        await asyncio.gather(*(loop(started + seconds, True) for _ in range(concurrency)))
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_before
    finally:
        await client.close()
    return {
        "requests": len(latencies),
        "warmup_requests": warmup_requests,
        "failed": failures,
        "duration_s": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
        "generator_cpu_s": cpu,
    }


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- the rounds -------------------------------------------------------------------------------------


@contextmanager
def _machine_cpu() -> Iterator[dict[str, float]]:
    """Seconds of wall time and of busy CPU (all processes, every core) over the block."""
    measured: dict[str, float] = {}
    t0, c0 = time.monotonic(), psutil.cpu_times()
    yield measured
    t1, c1 = time.monotonic(), psutil.cpu_times()
    measured["wall_s"] = t1 - t0
    measured["machine_busy_cpu_s"] = (sum(c1) - c1.idle - c1.iowait) - (sum(c0) - c0.idle - c0.iowait)


def _measured(server: HttpAndGrpcServer, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``'s figures plus the server's and the whole machine's CPU over it."""
    server_before = server.cpu_s()
    with _machine_cpu() as machine:
        figures = measure()
    figures["server_cpu_s"] = server.cpu_s() - server_before
    figures.update(machine)
    return figures


def perf_analyzer_round(
    tool: pa.PerfAnalyzer, server: HttpAndGrpcServer, protocol: str, plan: Plan, work: Path
) -> dict[str, Any]:
    """One perf_analyzer measurement over ``protocol``: its figures, in the names the report reads."""
    address = server.address if protocol == "grpc" else server.http_address
    argv = perf_analyzer_command(
        tool,
        protocol,
        address,
        MODEL,
        work / f"{protocol}.csv",
        concurrency=(plan.concurrency, plan.concurrency, 1),
        window_ms=plan.window_ms,
        windows=plan.windows,
    )
    timeout = plan.windows * plan.window_ms / 1000 + 60
    result = _measured(server, lambda: run_perf_analyzer(tool, argv, timeout))
    result["command"] = shown_perf_analyzer(argv)
    rows = result.pop("rows", None)
    if rows:
        (row,) = rows
        result["requests_per_s"] = row["throughput_infer_per_s"]  # batch 1: one inference per request
        result["p50_ms"] = row["p50_us"] / 1e3
        result["p99_ms"] = row["p99_us"] / 1e3
        result["perf_analyzer"] = row
    return result


def shown_perf_analyzer(argv: Sequence[str]) -> str:
    """A perf_analyzer command as a reader would type it: the binary by name, the CSV a placeholder."""
    return pa.shown(argv)


def tritonclient_round(
    server: HttpAndGrpcServer, encoding: str, batch: np.ndarray, plan: Plan
) -> dict[str, Any]:
    def measure() -> dict[str, Any]:
        return asyncio.run(
            drive_tritonclient(
                server.http_address,
                MODEL,
                batch,
                binary=encoding == "binary",
                concurrency=plan.concurrency,
                warmup_s=plan.client_warmup_s,
                seconds=plan.client_seconds,
            )
        )

    return _measured(server, measure)


def measure_rounds(
    tool: pa.PerfAnalyzer, server: HttpAndGrpcServer, plan: Plan, deadline: float
) -> tuple[list[dict[str, Any]], str | None]:
    """The interleaved rounds, each running every :data:`SERIES` once; why the run stopped early, if so."""
    batch = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    rounds: list[dict[str, Any]] = []
    last_round_s = 0.0
    with tempfile.TemporaryDirectory(prefix="http-benchmark-") as tmp:
        for number in range(1, plan.rounds + 1):
            if time.monotonic() + last_round_s > deadline:
                return rounds, (
                    f"stopped after {len(rounds)} of {plan.rounds} rounds: one more would pass the "
                    f"{plan.budget_s:g} s budget"
                )
            started = time.monotonic()
            entry: dict[str, Any] = {"round": number, "load_average": list(os.getloadavg()), "series": {}}
            for series in SERIES:
                driver, kind = series.split("/")
                log(f"round {number} of {plan.rounds}: {series}")
                if driver == "perf_analyzer":
                    figures = perf_analyzer_round(tool, server, kind, plan, Path(tmp))
                else:
                    figures = tritonclient_round(server, kind, batch, plan)
                if "error" in figures:
                    log(f"{series} failed: {figures['error'][-300:]}")
                entry["series"][series] = figures
            rounds.append(entry)
            last_round_s = time.monotonic() - started
    return rounds, None


def tritonclient_description(plan: Plan) -> str:
    import tritonclient

    version = getattr(tritonclient, "__version__", None)
    if version is None:
        from importlib.metadata import version as installed

        version = installed("tritonclient")
    return (
        f"tritonclient {version} (`tritonclient.http.aio`, aiohttp), {plan.concurrency} coroutines in "
        f"closed loops in one process, {plan.client_warmup_s:g} s unmeasured then "
        f"{plan.client_seconds:g} s measured per round"
    )


def measure(repository: Path, plan: Plan, started_at: float) -> dict[str, Any]:
    """Start the server, run the rounds, stop the server: every raw figure of the run."""
    skipped: list[str] = []
    if MODEL not in ensure_models(repository, [MODEL], [MODEL], skipped):
        raise RuntimeError(f"no {MODEL} in {repository}: {'; '.join(skipped)}")
    tool = find_perf_analyzer()
    deadline = started_at + plan.budget_s
    server = HttpAndGrpcServer(repository, MODEL)
    with server:  # stopped (SIGTERM) however the rounds end
        rounds, stopped = measure_rounds(tool, server, plan, deadline)
        server_command = server.shown_command()
    return {
        "model": MODEL,
        "repository": shown([str(repository)]),
        "server_command": server_command,
        "perf_analyzer_version": pa.version(tool),
        "tritonclient": tritonclient_description(plan),
        "series": list(SERIES),
        "rounds": rounds,
        "stopped_early": stopped,
    }


# -- the command line -------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/http_benchmark.py", description=__doc__.split("\n\n")[0])
    defaults = Plan()
    p.add_argument(
        "--rounds", type=int, default=defaults.rounds, help="interleaved rounds (at least 3 for a verdict)"
    )
    p.add_argument("--window-ms", type=int, default=defaults.window_ms, help="perf_analyzer's time window")
    p.add_argument(
        "--client-seconds",
        type=float,
        default=defaults.client_seconds,
        help="tritonclient's measured seconds",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=ROOT / "runs" / "benchmark_repository",
        help=f"repository holding {MODEL} (exported into it when missing)",
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "docs", help="where the document, chart and raw data go"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from http_benchmark_report import check_targets, plot, render, summarize

    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.window_ms < 100 or args.client_seconds <= 0:
        parser.error("--rounds must be >= 1, --window-ms >= 100 and --client-seconds > 0")
    plan = Plan(rounds=args.rounds, window_ms=args.window_ms, client_seconds=args.client_seconds)
    started_at = time.monotonic()
    out: Path = args.out
    written = [out / DOCUMENT, out / CHART, out / RAW]
    run: dict[str, Any] = {
        "command": shlex.join(
            ["python", "scripts/http_benchmark.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": source_state(ROOT, written),
        "machine": machine_info(),
        "cpu_count": os.cpu_count(),
        "plan": asdict(plan),
    }
    args.repository.mkdir(parents=True, exist_ok=True)
    try:
        run.update(measure(args.repository, plan, started_at))
    except pa.PerfAnalyzerMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    run["load_average_at_end"] = list(os.getloadavg())
    run["duration_s"] = time.monotonic() - started_at

    summary = summarize(run)
    targets = check_targets(summary)
    (out / RAW).parent.mkdir(parents=True, exist_ok=True)
    (out / RAW).write_text(json.dumps(run, indent=2) + "\n")
    plot(summary, out / CHART)
    (out / DOCUMENT).write_text(render(run, summary, targets, chart=CHART, raw=RAW))
    log(f"wrote {out / DOCUMENT}, {out / CHART}, {out / RAW} in {run['duration_s']:.0f} s")
    for name, s in summary.series.items():
        figure = s.requests_per_s.format(".0f") if s.requests_per_s else "no figure"
        print(f"{name:22s} {figure:>24s} requests/s")
    for t in targets:
        verdict = "not judged" if t.met is None else ("met" if t.met else "MISSED")
        print(f"{t.name}: {t.measured} -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
