"""Measure the server against the in-process ceiling and write ``docs/benchmarks.md``.

::

    python scripts/benchmark.py            # the full run (about 10 minutes on 2 cores)
    python scripts/benchmark.py --quick    # a smoke test of the whole pipeline (about 1-2 minutes)

In one run on one machine it measures, for LeNet (1x28x28) and ResNet-18 (3x224x224):

1. the ceiling: ONNX Runtime in this process, no RPC, at batch sizes 1..64;
2. the real server (``python -m server`` as a subprocess) with dynamic batching as
   configured, and with batching off (``--max-batch-size 1``), driven by
   ``python -m clients.bench`` (a subprocess) at concurrency 1, 4, 8, 16, 64;
3. the server's memory (RSS) with the default models, and with every model of the
   zoo repository loaded.

It then checks the targets of issue 4 and writes the tables, plots (PNG), the
command behind every figure, and plainly which targets were missed and why. Every
number in the document comes from this run: never edit it by hand, run it again.
Missing models are exported first into the benchmark repository
(``python -m export ...``); their accuracy is irrelevant to speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients import InferenceClient, InferenceServerError  # noqa: E402
from clients.bench import process_tree  # noqa: E402
from modelrepo import latest_version, list_models, read_version  # noqa: E402

PYTHON = sys.executable
MODELS = ("lenet", "resnet18")
EXPORT_ARGS = {
    "lenet": ["--epochs", "1", "--max-train-samples", "200"],
    "resnet18": ["--image-size", "224", "--epochs", "1", "--max-train-samples", "200"],
}
GiB = 1 << 30


@dataclass(frozen=True)
class Plan:
    """How long and how wide the run is; --quick shrinks everything."""

    quick: bool
    concurrency: tuple[int, ...]
    duration: dict[str, float]
    warmup: float
    ceiling_batches: tuple[int, ...]
    ceiling_seconds: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, (1, 8, 16, 64), {"lenet": 1.0, "resnet18": 2.0}, 0.3, (1, 8, 64), 0.5)
        return cls(
            False, (1, 4, 8, 16, 64), {"lenet": 8.0, "resnet18": 12.0}, 2.0, (1, 2, 4, 8, 16, 32, 64), 4.0
        )


@dataclass
class ServerRun:
    """One server configuration driven by the load generator."""

    model: str
    batching: str  # "on" or "off"
    api: str  # "unary" (one ModelInfer call per request) or "stream" (ModelStreamInfer)
    workers: int  # server processes (--workers)
    server_command: str
    bench_command: str
    levels: list[dict[str, Any]]
    rss_bytes: int


@dataclass
class Results:
    """Everything measured, for the document and the JSON file."""

    started: str
    machine: dict[str, Any]
    plan: Plan
    ceilings: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[ServerRun] = field(default_factory=list)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: measure_perf_analyzer()'s result (empty when not run).
    perf_analyzer: dict[str, Any] = field(default_factory=dict)


def shown(command: Sequence[str]) -> str:
    """A command as a reader would type it: ``python`` and paths relative to the checkout."""
    parts = ["python" if c == PYTHON else c.replace(str(ROOT) + "/", "") for c in command]
    return shlex.join(parts)


def log(message: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_command(command: Sequence[str], timeout: float) -> None:
    log("$ " + shown(command))
    subprocess.run(list(command), cwd=ROOT, check=True, timeout=timeout)


def ensure_models(repository: Path, models: Sequence[str], allow_export: bool) -> list[str]:
    """Export the models the repository lacks; return those it holds afterwards."""
    present = set(list_models(repository))
    for name in models:
        if name in present or not allow_export:
            continue
        command = [PYTHON, "-m", "export", name, "--repository", str(repository), *EXPORT_ARGS[name]]
        run_command(command, timeout=3600)
    present = set(list_models(repository))
    return [m for m in models if m in present]


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": model or platform.processor(),
        # The cores this process may run on (a taskset or container limit), not all of the host.
        "cores": len(os.sched_getaffinity(0)),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


# -- the ceiling --------------------------------------------------------------------------------------------


def measure_ceiling(repository: Path, model: str, plan: Plan) -> dict[str, Any]:
    """ONNX Runtime in this process on random inputs: samples/s per batch size, batch-1 latency.

    The session is opened exactly as the server opens one instance of the model
    (``server.runtime.open_session`` with the server's default settings: the same
    intra-op thread count, no spinning thread pools, the same graph optimisations),
    so the ceiling and the served numbers differ only by serving.
    """
    from modelrepo.config import DATATYPES
    from server.runtime import Device, open_session

    version = read_version(repository, model, latest_version(repository, model) or 1)
    name = version.config.input.name
    shape = version.config.input.shape
    instances = version.config.batching.instances
    session, _device, threads = open_session(
        version.model_path,
        Device("cpu"),
        intra_op_threads=0,
        instances=instances,
        input_name=name,
        sample_shape=shape,
        dtype=DATATYPES[version.config.input.datatype],
    )
    rng = np.random.default_rng(0)
    per_batch = []
    batch1_latencies: list[float] = []
    for batch in plan.ceiling_batches:
        feed = {name: rng.standard_normal((batch, *shape)).astype(np.float32)}
        for _ in range(3):
            session.run(None, feed)
        times: list[float] = []
        end = time.perf_counter() + plan.ceiling_seconds
        while time.perf_counter() < end or len(times) < 3:
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        total = sum(times)
        per_batch.append(
            {
                "batch": batch,
                "calls": len(times),
                "samples_per_s": batch * len(times) / total,
                "p50_ms": float(np.percentile(times, 50) * 1e3),
            }
        )
        if batch == 1:
            batch1_latencies = times
        log(f"ceiling {model} batch {batch}: {per_batch[-1]['samples_per_s']:.1f} samples/s")
    best = max(per_batch, key=lambda b: b["samples_per_s"])
    return {
        "batches": per_batch,
        "best_samples_per_s": best["samples_per_s"],
        "best_batch": best["batch"],
        "batch1_p50_ms": float(np.percentile(batch1_latencies, 50) * 1e3),
        "session_threads": threads,
        "instances": instances,
    }


# -- the server ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """A free port P such that P .. P + count - 1 are all free (for --workers' metrics ports)."""
    while True:
        base = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


class Server:
    """``python -m server`` as a subprocess on free loopback ports."""

    def __init__(
        self, repository: Path, models: Sequence[str], extra: Sequence[str] = (), workers: int = 1
    ) -> None:
        self.port = free_port()
        self.workers = workers
        # Worker i serves its metrics on metrics_port + i.
        self.metrics_port = free_ports(workers)
        self.command = [
            PYTHON,
            "-m",
            "server",
            "--repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
        ]
        if models:
            self.command += ["--models", ",".join(models)]
        if workers > 1:
            self.command += ["--workers", str(workers)]
        self.command += list(extra)
        # Closed in __exit__; the server writes its log here for error reports.
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Every worker's metrics endpoint, comma-separated (``clients.bench`` adds them up)."""
        return ",".join(f"http://127.0.0.1:{self.metrics_port + i}/metrics" for i in range(self.workers))

    def _all_workers_up(self) -> bool:
        for i in range(self.workers):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port + i}/metrics", timeout=2):
                    pass
            except OSError:
                return False
        return True

    def shown_command(self) -> str:
        """The command as a reader would type it (ports as used in this run)."""
        return shown(self.command)

    def __enter__(self) -> Server:
        log("$ " + self.shown_command())
        self.proc = subprocess.Popen(self.command, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        with InferenceClient(self.address, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    # With --workers, connections made before every worker listens would all
                    # land on the first one: wait for each worker's metrics endpoint too.
                    if client.server_ready() and self._all_workers_up():
                        time.sleep(0.5)
                        return self
                except InferenceServerError:
                    pass
                time.sleep(0.3)
        raise RuntimeError(f"server not ready within 300 s:\n{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()

    def log_tail(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")[-4000:]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def bench(
    server: Server, model: str, plan: Plan, out: Path, extra: Sequence[str] = ()
) -> tuple[str, list[dict[str, Any]]]:
    """Run ``python -m clients.bench`` against the server; return its command and levels."""
    args = [
        "--server",
        server.address,
        "--model",
        model,
        "--concurrency",
        ",".join(str(c) for c in plan.concurrency),
        "--duration",
        str(plan.duration[model]),
        "--warmup",
        str(plan.warmup),
        "--metrics-url",
        server.metrics_url,
        "--server-pid",
        str(server.pid),
        "--json",
        str(out),
        "--no-progress",
        *extra,
    ]
    command = [PYTHON, "-m", "clients.bench", *args]
    run_command(command, timeout=3600)
    data = json.loads(out.read_text())
    return shown(command), data["levels"]


#: Load-generator connections for a --workers server: the kernel spreads connections, not requests.
WORKER_CONNECTIONS = 16


def measure_server(repository: Path, model: str, plan: Plan, work: Path) -> list[ServerRun]:
    """The model served with batching on and off (unary calls); for LeNet also on streams, and
    with two server processes (``--workers 2``)."""
    runs = []
    configs: list[tuple[str, list[str], int]] = [("on", [], 1), ("off", ["--max-batch-size", "1"], 1)]
    if model == "lenet":
        configs.append(("on", [], 2))
    for batching, extra, workers in configs:
        with Server(repository, [model], extra, workers=workers) as server:
            variants: list[tuple[str, list[str]]] = [("unary", [])]
            if workers > 1:
                variants = [("unary", ["--connections", str(WORKER_CONNECTIONS)])]
            elif model == "lenet" and batching == "on":
                # Same server, requests on ModelStreamInfer streams: what the unary call itself costs.
                variants.append(("stream", ["--stream"]))
            for api, bench_extra in variants:
                suffix = f"-workers-{workers}" if workers > 1 else ""
                out = work / f"{model}-batching-{batching}-{api}{suffix}.json"
                command, levels = bench(server, model, plan, out, bench_extra)
                rss = sum(rss_bytes(pid)[0] for pid in process_tree(server.pid))
                runs.append(
                    ServerRun(model, batching, api, workers, server.shown_command(), command, levels, rss)
                )
    return runs


def measure_memory(repository: Path, models: Sequence[str], label: str) -> dict[str, Any]:
    """RSS of a server with ``models`` loaded (all of the repository when empty), after serving each once."""
    with Server(repository, models) as server, InferenceClient(server.address, timeout=120) as client:
        loaded = [m.name for m in client.list_models(ready=True)]
        idle, _ = rss_bytes(server.pid)
        for name in loaded:
            metadata = client.model_metadata(name)
            shape = (1, *metadata.inputs[0].shape[1:])
            client.infer(name, np.zeros(shape, dtype=np.float32))
        rss, peak = rss_bytes(server.pid)
        log(f"memory {label}: {len(loaded)} models, RSS {rss / 2**20:.0f} MiB")
        return {
            "command": server.shown_command(),
            "models": loaded,
            "rss_idle_bytes": idle,
            "rss_bytes": rss,
            "peak_rss_bytes": peak,
        }


# -- Triton's perf_analyzer ----------------------------------------------------------------------------------
# Self-contained: measure_perf_analyzer() measures, perf_analyzer_lines() renders, main() calls both.
# Finding and running the binary lives in scripts/perf_analyzer.py (which also runs on its own).

#: The model Triton's perf_analyzer drives.
PERF_ANALYZER_MODEL = "lenet"
#: perf_analyzer's stability threshold: its default 10% rarely settles on this shared machine.
PERF_ANALYZER_STABILITY_PERCENT = 50
#: Its server-side columns (µs per request, from our ModelStatistics), in the document's order.
PERF_ANALYZER_SERVER_COLUMNS = (
    "server_queue_us",
    "server_compute_input_us",
    "server_compute_infer_us",
    "server_compute_output_us",
)


def _perf_analyzer_module() -> Any:
    """``scripts/perf_analyzer.py``, loaded by path (``scripts`` is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cnnserve_perf_analyzer", ROOT / "scripts" / "perf_analyzer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def measure_perf_analyzer(repository: Path, plan: Plan) -> dict[str, Any]:
    """Triton's perf_analyzer (``-i grpc``) against the server with LeNet, one run per concurrency.

    Returns ``{"skipped": why}`` when the binary or its libraries are missing (the message says
    how to provide them: ``CNNSERVE_PERF_ANALYZER``, see scripts/perf_analyzer.py).
    """
    pa = _perf_analyzer_module()
    try:
        tool = pa.find()
    except pa.PerfAnalyzerMissing as exc:
        log(f"perf_analyzer not run: {exc}")
        return {"skipped": str(exc)}
    interval_ms = 1000 if plan.quick else 2000
    with Server(repository, [PERF_ANALYZER_MODEL]) as server:
        log(f"perf_analyzer ({tool.binary}) at concurrency {list(plan.concurrency)}")
        levels = pa.run_levels(
            tool,
            server.address,
            PERF_ANALYZER_MODEL,
            plan.concurrency,
            measurement_interval_ms=interval_ms,
            stability_percentage=PERF_ANALYZER_STABILITY_PERCENT,
        )
        return {
            "model": PERF_ANALYZER_MODEL,
            "version": pa.version(tool),
            "server_command": server.shown_command(),
            "measurement_interval_ms": interval_ms,
            "stability_percentage": PERF_ANALYZER_STABILITY_PERCENT,
            "levels": levels,
        }


def perf_analyzer_lines(results: Results) -> list[str]:
    """The perf_analyzer section of the document, beside our generator's figures at each concurrency."""
    pa = results.perf_analyzer
    if not pa:
        return []
    lines = ["", "## Triton's perf_analyzer", ""]
    if "skipped" in pa:
        return [*lines, f"Not measured: {pa['skipped']}", ""]
    lines += [
        f"{pa['version']}, `-i grpc`, {pa['model']}, batch 1, random inputs, each concurrency a run of its "
        f"own with {pa['measurement_interval_ms']} ms windows until three agree within "
        f"{pa['stability_percentage']}%; figures from its `-f` latency report. perf_analyzer reads "
        "ModelStatistics around every window, so the server-side columns are our statistics as "
        "Triton's tools read them. Our own generator's figures (batching on, unary) are beside them.",
        "",
        f"Server: `{pa['server_command']}`",
        "",
    ]
    if pa["levels"]:
        first = pa["levels"][0]
        c = first["concurrency"]
        template = first["command"].replace(f"{c}:{c}:1", "C:C:1")
        lines += [f"perf_analyzer, at each concurrency C: `{template}`", ""]
    lines += [
        "| concurrency | infer/s | avg ms | p50 ms | p99 ms | server queue / input / infer / output µs "
        "| clients.bench requests/s | clients.bench p50 ms | clients.bench p99 ms |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for lvl in pa["levels"]:
        ours = level(results.runs, pa["model"], "on", lvl["concurrency"])
        ours_cells = "- | - | -"
        if ours is not None:
            lat = ours["latency_ms"]
            ours_cells = f"{ours['throughput_rps']:.1f} | {_ms(lat['p50'])} | {_ms(lat['p99'])}"
        if "error" in lvl:
            failed = lvl["error"].splitlines()[-1][:200]
            lines.append(f"| {lvl['concurrency']} | failed: {failed} | | | | | {ours_cells} |")
            continue
        server = " / ".join(f"{lvl[k]:.0f}" for k in PERF_ANALYZER_SERVER_COLUMNS)
        latency = " | ".join(f"{lvl[k] / 1000:.3f}" for k in ("avg_latency_us", "p50_us", "p99_us"))
        throughput = f"{lvl['throughput_infer_per_s']:.1f}"
        lines.append(f"| {lvl['concurrency']} | {throughput} | {latency} | {server} | {ours_cells} |")
    return [*lines, ""]


# -- targets and the document -------------------------------------------------------------------------------


def level(
    runs: Sequence[ServerRun],
    model: str,
    batching: str,
    concurrency: int,
    api: str = "unary",
    workers: int = 1,
) -> dict[str, Any] | None:
    for run in runs:
        if run.model == model and run.batching == batching and run.api == api and run.workers == workers:
            for lvl in run.levels:
                if lvl["concurrency"] == concurrency:
                    return lvl
    return None


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run
    why: str = ""


def _cpu_note(lvl: dict[str, Any] | None, cores: int) -> str:
    """A sentence on where the CPU went during a level (generator, server, everything else)."""
    if lvl is None:
        return ""
    gen = lvl["client_cpu_cores"]
    srv = lvl["server_cpu_cores"]
    note = f"The load generator used {gen:.2f} cores"
    if srv is not None:
        note += f" and the server {srv:.2f} cores"
    note += f" of the machine's {cores}"
    machine = lvl.get("machine_cpu_cores")
    if machine is not None:
        other = max(0.0, machine - gen - (srv or 0.0))
        note += f"; the whole machine was busy {machine:.2f} cores, {other:.2f} of them other work"
        if machine >= 0.85 * cores:
            note += " — the CPU was saturated"
    return note + "."


def check_targets(results: Results) -> list[Target]:
    """The issue's targets against this run's numbers, with a reason for every miss."""
    runs = results.runs
    cores = int(results.machine["cores"] or 1)
    targets = []

    resnet_ceiling = results.ceilings.get("resnet18")
    r8 = level(runs, "resnet18", "on", 8)
    if resnet_ceiling and r8:
        goal = 0.9 * resnet_ceiling["best_samples_per_s"]
        got = r8["samples_per_s"]
        why = ""
        if got < goal:
            batch = r8["server_mean_batch"] or 0.0
            at_batch = {b["batch"]: b["samples_per_s"] for b in resnet_ceiling["batches"]}
            near = min(at_batch, key=lambda size: abs(size - batch)) if at_batch else None
            why = (
                f"served {got:.1f} samples/s is {got / resnet_ceiling['best_samples_per_s']:.0%} of the "
                f"in-process ceiling. {_cpu_note(r8, cores)} The ceiling gives ONNX Runtime every core; "
                "served, the same cores also run gRPC, the batcher, the metrics and the load generator. "
                f"The server's mean executed batch was {batch:.1f}"
                + (
                    f" (in-process, batch {near} gives {at_batch[near]:.1f} samples/s)"
                    if near is not None
                    else ""
                )
                + (
                    ": with 8 clients and one instance, batches hold about half of the 8 requests: "
                    "the answered clients' next requests did not arrive within the window the "
                    "instance waits after a batch (5% of its compute time, up to 20 ms), and the "
                    "clients took turns in two groups."
                    if batch < 6
                    else ": batches already hold (nearly) all 8 requests, so the gap is the CPU "
                    "that the RPCs, the batcher and the load generator take from ONNX Runtime."
                )
            )
        targets.append(
            Target(
                "ResNet-18 throughput at concurrency 8",
                f">= 0.9 x ceiling = {goal:.1f} samples/s",
                f"{got:.1f} samples/s",
                got >= goal,
                why,
            )
        )
    else:
        targets.append(Target("ResNet-18 throughput at concurrency 8", ">= 0.9 x ceiling", "-", None))
    r1 = level(runs, "resnet18", "on", 1)
    if resnet_ceiling and r1 and r1["latency_ms"]["p50"] is not None:
        goal = resnet_ceiling["batch1_p50_ms"] + 2.0
        got = r1["latency_ms"]["p50"]
        why = ""
        if got > goal:
            why = (
                f"{got - resnet_ceiling['batch1_p50_ms']:.2f} ms over the in-process batch-1 latency: "
                "RPC, (de)serialising a 600 KB tensor, the batcher's queue delay and the thread hand-off. "
                f"{_cpu_note(r1, cores)}"
            )
        targets.append(
            Target("ResNet-18 p50 at concurrency 1", f"<= {goal:.2f} ms", f"{got:.2f} ms", got <= goal, why)
        )
    else:
        targets.append(Target("ResNet-18 p50 at concurrency 1", "<= ceiling batch-1 + 2 ms", "-", None))

    l16 = level(runs, "lenet", "on", 16)
    w16 = level(runs, "lenet", "on", 16, workers=2)
    if l16:
        got = l16["throughput_rps"]
        got_w = w16["throughput_rps"] if w16 else None
        best = max(got, got_w or 0.0)
        per_request_us = (l16["server_cpu_cores"] or 0.0) / max(got, 1e-9) * 1e6
        why = ""
        if best < 2500:
            why = (
                f"one server process answered {got:.0f} requests/s. {_cpu_note(l16, cores)} It spent about "
                f"{per_request_us:.0f} µs of CPU per request, against about 40 µs of model compute: for a "
                "model this small the cost is grpc.aio's per-call work (accepting the call, receiving, "
                "sending and finishing it, each a round trip through its completion-queue thread and the "
                "event loop), which no batching can share, as every request is its own RPC."
            )
            s16 = level(runs, "lenet", "on", 16, api="stream")
            if s16:
                why += (
                    f" The same server with the same requests on ModelStreamInfer streams (no unary call "
                    f"per request) answered {s16['throughput_rps']:.0f} requests/s at concurrency 16, "
                    "which locates the cost in the unary RPC path rather than in inference or batching."
                )
            if w16:
                why += (
                    f" Two server processes (--workers 2) answered {got_w:.0f} requests/s. "
                    f"{_cpu_note(w16, cores)} With the load generator on the same two cores, a second "
                    "process can only use what the generator and the first leave idle."
                )
        measured = f"{got:.0f} requests/s"
        if got_w is not None:
            measured += f"; {got_w:.0f} with --workers 2"
        targets.append(
            Target("LeNet throughput at concurrency 16", ">= 2500 requests/s", measured, best >= 2500, why)
        )
    else:
        targets.append(Target("LeNet throughput at concurrency 16", ">= 2500 requests/s", "-", None))
    l1 = level(runs, "lenet", "on", 1)
    if l1 and l1["latency_ms"]["p50"] is not None:
        got = l1["latency_ms"]["p50"]
        why = ""
        if got > 1.0:
            off1 = level(runs, "lenet", "off", 1)
            compare = ""
            if off1 and off1["latency_ms"]["p50"] is not None:
                compare = (
                    f" With batching off the same request took {off1['latency_ms']['p50']:.2f} ms at p50."
                )
            why = (
                "at concurrency 1 every request pays the full round trip alone: the client's and the "
                "server's gRPC stacks and the loopback network (a lone request does not wait in the "
                "batcher, and LeNet runs on the event loop without a thread hand-off)."
                + compare
                + " "
                + _cpu_note(l1, cores)
            )
        targets.append(Target("LeNet p50 at concurrency 1", "<= 1 ms", f"{got:.2f} ms", got <= 1.0, why))
    else:
        targets.append(Target("LeNet p50 at concurrency 1", "<= 1 ms", "-", None))

    on64, off64 = level(runs, "lenet", "on", 64), level(runs, "lenet", "off", 64)
    if on64 and off64:
        ratio = on64["throughput_rps"] / off64["throughput_rps"] if off64["throughput_rps"] else float("inf")
        batch = on64["server_mean_batch"] or 0.0
        met = ratio >= 2 and batch >= 8
        why = ""
        if not met:
            on_us = (on64["server_cpu_cores"] or 0.0) / max(on64["throughput_rps"], 1e-9) * 1e6
            off_us = (off64["server_cpu_cores"] or 0.0) / max(off64["throughput_rps"], 1e-9) * 1e6
            why = (
                f"batching gave {ratio:.2f}x with a mean executed batch of {batch:.1f}; the server spent "
                f"{on_us:.0f} µs of CPU per request with batching and {off_us:.0f} µs without. Batching "
                "can only save the per-batch part of that (one ONNX Runtime call of about 40 µs for "
                "LeNet, and the batch's bookkeeping); the per-request part, grpc.aio's handling of "
                "each unary RPC, is the same either way, so no batch size can double the throughput. "
                "The batch size itself is bounded by the queue delay: a batch waits at most "
                "max_queue_delay_us (500 µs in LeNet's config) for company, and requests reach the "
                "batcher only as fast as the one event loop can take them off the wire, one every "
                f"{1e6 / max(on64['throughput_rps'], 1e-9):.0f} µs here, so a batch gathers about "
                "delay / that interval + the requests that queued meanwhile. A mean batch of 8 needs a "
                "delay of about 8 such intervals. "
                f"{_cpu_note(on64, cores)}"
            )
            s64 = level(runs, "lenet", "on", 64, api="stream")
            if s64:
                why += (
                    f" On ModelStreamInfer streams the same server reached {s64['throughput_rps']:.0f} "
                    f"requests/s at concurrency 64 with a mean executed batch of "
                    f"{s64['server_mean_batch'] or 0:.1f}."
                )
        targets.append(
            Target(
                "LeNet batching vs off at concurrency 64",
                ">= 2x throughput and mean batch >= 8",
                f"{ratio:.2f}x, mean batch {batch:.1f}",
                met,
                why,
            )
        )
    else:
        targets.append(Target("LeNet batching vs off at concurrency 64", ">= 2x, mean batch >= 8", "-", None))

    default = results.memory.get("default")
    if default:
        rss = default["rss_bytes"]
        why = (
            "" if rss <= GiB else "ONNX Runtime arenas and the ResNet-18 weights dominate; see the peak RSS."
        )
        targets.append(
            Target(
                "Server RSS with the default models",
                "<= 1 GiB",
                f"{rss / 2**20:.0f} MiB",
                rss <= GiB,
                why,
            )
        )
    else:
        targets.append(Target("Server RSS with the default models", "<= 1 GiB", "-", None))
    return targets


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot_model(results: Results, model: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [run for run in results.runs if run.model == model]
    for n, run in enumerate(runs):
        color = f"C{n}"
        xs = [lvl["concurrency"] for lvl in run.levels]
        name = (
            f"batching {run.batching}"
            + (", streams" if run.api == "stream" else "")
            + (f", {run.workers} workers" if run.workers > 1 else "")
        )
        left.plot(xs, [lvl["samples_per_s"] for lvl in run.levels], marker="o", color=color, label=name)
        p50 = [lvl["latency_ms"]["p50"] for lvl in run.levels]
        p99 = [lvl["latency_ms"]["p99"] for lvl in run.levels]
        right.plot(xs, p50, marker="o", color=color, label=f"p50, {name}")
        right.plot(xs, p99, marker="s", color=color, linestyle="--", label=f"p99, {name}")
    ceiling = results.ceilings.get(model)
    if ceiling:
        left.axhline(ceiling["best_samples_per_s"], color="gray", linestyle=":", label="in-process ceiling")
        right.axhline(ceiling["batch1_p50_ms"], color="gray", linestyle=":", label="in-process batch-1 p50")
    left.set_ylabel("samples/s")
    right.set_ylabel("latency (ms)")
    concurrency = sorted({lvl["concurrency"] for run in runs for lvl in run.levels})
    for axis in (left, right):
        axis.set_xlabel("concurrency")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle(f"{model}: served throughput and latency vs concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _per_request_us(lvl: dict[str, Any] | None) -> float | None:
    if lvl is None or not lvl["server_cpu_cores"] or not lvl["throughput_rps"]:
        return None
    return float(lvl["server_cpu_cores"]) / float(lvl["throughput_rps"]) * 1e6


def gap_notes(results: Results) -> list[str]:
    """How the server spends its time per request, and what would close the remaining gaps."""
    runs = results.runs
    unary = _per_request_us(level(runs, "lenet", "on", 16))
    stream = _per_request_us(level(runs, "lenet", "on", 16, api="stream"))
    lines = [
        "## Where the time goes, and what would close the gaps",
        "",
        "The server batches greedily (a lone request runs at once; under concurrent load a batch "
        "waits up to `max_queue_delay_us` for company), runs batches predicted to compute in under "
        "200 µs on the event loop instead of handing them to a thread, gives tiny models one "
        "ONNX Runtime thread, and can run several processes on one port (`--workers`); see "
        "[server.md](server.md#batching-and-where-the-time-goes).",
        "",
    ]
    if unary is not None:
        text = (
            f"- **Per request, not per sample.** At LeNet concurrency 16 the server used about "
            f"{unary:.0f} µs of CPU per unary request"
        )
        if stream is not None:
            text += f" and {stream:.0f} µs per request on ModelStreamInfer streams"
        text += (
            ", against about 40 µs of model compute. The rest is grpc.aio's handling of each call "
            "(accept, receive, send, finish: each a hand-off between its completion-queue thread and "
            "the event loop), protobuf and our validation and metrics. Batching divides only the "
            "per-batch part (the ONNX Runtime call and its bookkeeping) among the requests, so for a "
            "model this small it cannot double throughput, and one process cannot go past one core's "
            "worth of calls. What would close it: clients that send many requests per RPC "
            "(ModelStreamInfer, or batched requests), more cores for `--workers` (each process adds "
            "about one core's worth of calls when the cores are free; here the load generator takes "
            "the second core), or a frontend whose per-call path is not Python (e.g. Triton's C++ "
            "server with this repository's ONNX models)."
        )
        lines.append(text)
    lines += [
        "- **Batch size under load.** A batch waits at most `max_queue_delay_us` for company "
        "(500 µs in the exported configs), and requests reach the batcher one event-loop step at a "
        "time, so the mean batch at high concurrency is about the delay divided by the per-request "
        "time above, plus what queued meanwhile. A larger delay for LeNet (`--max-queue-delay-us "
        "3000`) would give larger batches at concurrency 64, at the price of up to that much "
        "latency at moderate concurrency; greedy batching keeps concurrency 1 unaffected.",
        "- **ResNet-18.** Compute dominates: served throughput follows the in-process curve at the "
        "executed batch size, minus the CPU that gRPC and the load generator take from ONNX "
        "Runtime's threads on the same two cores. After a batch, the instance waits 5% of that "
        "batch's compute time (up to 20 ms) for the clients it just answered, so that at "
        "concurrency 8 all eight share one batch instead of two groups of four taking turns; more "
        "cores would remove the sharing.",
        "- **This machine.** Two cores shared by the load generator, the server and other "
        "engineers' jobs (see *machine CPU* in the tables): every figure is lower than on a "
        "quiet machine, the multi-process figures most of all.",
    ]
    return lines


def write_document(results: Results, targets: list[Target], out: Path, command: str) -> Path:
    m = results.machine
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {results.started}. Every number and figure below comes from that one "
        "run; do not edit them by hand, run the script again.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, ONNX Runtime {m['onnxruntime']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. "
        "Client and server share the same cores, as the issue's targets assume; the machine is also "
        "shared with other work, so background load can lower any number here.",
        "",
    ]
    if results.plan.quick:
        lines += [
            "**This is a `--quick` smoke-test run: durations are too short for the numbers to mean much.**",
            "",
        ]
    for note in results.skipped:
        lines += [f"- Not measured: {note}"]
    if results.skipped:
        lines.append("")

    lines += ["## Targets", "", "| target | goal | measured | result |", "|---|---|---|---|"]
    for t in targets:
        verdict = "not measured" if t.met is None else ("met" if t.met else "**MISSED**")
        lines.append(f"| {t.name} | {t.goal} | {t.measured} | {verdict} |")
    lines.append("")
    missed = [t for t in targets if t.met is False]
    if missed:
        lines += ["### Why targets were missed", ""]
        for t in missed:
            lines += [f"- **{t.name}**: {t.why}"]
        lines.append("")

    lines += [
        "## Ceiling: ONNX Runtime in-process, no RPC",
        "",
        "Measured in the benchmark script's own process (`python scripts/benchmark.py`, function "
        "`measure_ceiling`): one `onnxruntime.InferenceSession` opened exactly as the server opens a "
        "model instance (`server.runtime.open_session`: the same intra-op thread count, no spinning "
        "thread pools, the same graph optimisations), random inputs, "
        f"{results.plan.ceiling_seconds:g} s per batch size.",
        "",
    ]
    for model, ceiling in results.ceilings.items():
        lines += [
            f"**{model}**: best {ceiling['best_samples_per_s']:.1f} samples/s "
            f"(batch {ceiling['best_batch']}), "
            f"batch-1 p50 {ceiling['batch1_p50_ms']:.3f} ms; "
            f"{ceiling['session_threads']} intra-op thread(s), as the server uses.",
            "",
            "| batch | samples/s | p50 per call (ms) |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {b['batch']} | {b['samples_per_s']:.1f} | {b['p50_ms']:.3f} |" for b in ceiling["batches"]
        ]
        lines.append("")

    lines += ["## Served: dynamic batching on and off", ""]
    for model in dict.fromkeys(run.model for run in results.runs):
        lines += [f"### {model}", "", f"![{model}](benchmark_{model}.png)", ""]
        for run in (r for r in results.runs if r.model == model):
            lines += [
                f"Batching **{run.batching}**"
                + (", requests on ModelStreamInfer streams (one per worker)" if run.api == "stream" else "")
                + (
                    f", **{run.workers} server processes** (`--workers {run.workers}`; the generator "
                    f"spreads its requests over {WORKER_CONNECTIONS} connections)"
                    if run.workers > 1
                    else ""
                )
                + f". Server: `{run.server_command}`",
                "",
                f"Load: `{run.bench_command}`",
                "",
                "| concurrency | requests/s | samples/s | p50 ms | p90 ms | p99 ms | max ms | failed "
                "| server mean batch | generator CPU (cores) | server CPU (cores) | machine CPU (cores) |",
                "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
            ]
            for lvl in run.levels:
                lat = lvl["latency_ms"]
                failed = ", ".join(f"{k} {v}" for k, v in lvl["failed"].items()) or "0"
                mean_batch = lvl["server_mean_batch"]
                server_cpu = lvl["server_cpu_cores"]
                lines.append(
                    f"| {lvl['concurrency']} | {lvl['throughput_rps']:.1f} | {lvl['samples_per_s']:.1f} "
                    f"| {_ms(lat['p50'])} | {_ms(lat['p90'])} | {_ms(lat['p99'])} | {_ms(lat['max'])} "
                    f"| {failed} | {'-' if mean_batch is None else f'{mean_batch:.2f}'} "
                    f"| {lvl['client_cpu_cores']:.2f} "
                    f"| {'-' if server_cpu is None else f'{server_cpu:.2f}'} "
                    f"| {_ms(lvl.get('machine_cpu_cores'))} |"
                )
            lines += ["", f"Server RSS after this run: {run.rss_bytes / 2**20:.0f} MiB.", ""]

    lines += ["## Memory", ""]
    for label, title in (("default", "default models"), ("zoo", "whole zoo")):
        mem = results.memory.get(label)
        if mem is None:
            continue
        lines += [
            f"- **{title}** ({', '.join(mem['models'])}): RSS {mem['rss_bytes'] / 2**20:.0f} MiB after one "
            f"request to each model ({mem['rss_idle_bytes'] / 2**20:.0f} MiB before; peak "
            f"{mem['peak_rss_bytes'] / 2**20:.0f} MiB). Server: `{mem['command']}`",
        ]
    lines += perf_analyzer_lines(results)
    lines += ["", *gap_notes(results)]
    lines += [
        "",
        "## How to read this",
        "",
        "- *generator CPU* is the CPU time `clients.bench` itself used, in cores, over the level's "
        "wall time; "
        "*server CPU* is the server process's (all threads), read from `/proc`. When their sum reaches the "
        "core count, the machine, not the server alone, is the limit. *machine CPU* is every process on "
        "the machine (from `/proc/stat`): what it has beyond generator + server is other work sharing "
        "the cores during the run.",
        "- *server mean batch* is the change in `cnnserve_inference_count_total` over "
        "`cnnserve_execution_count_total` during the level, read from the server's metrics endpoint.",
        "- Latency is per successful request, measured by the generator from send to answer.",
        "- The raw results are in `benchmarks.json` and `benchmark_data/` beside this file.",
        "",
    ]
    path = out / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path


# -- main ---------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="short smoke-test run; writes to runs/benchmark-quick"
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=ROOT / "runs" / "benchmark_repository",
        help="repository of the benchmarked models (missing ones are exported into it)",
    )
    p.add_argument(
        "--zoo-repository",
        type=Path,
        default=ROOT / "model_repository",
        help="repository whose every model is loaded for the whole-zoo memory figure",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default docs/, quick: runs/benchmark-quick)"
    )
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated subset of lenet,resnet18 (default both; --quick exports only lenet)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    plan = Plan.make(args.quick)
    out = args.out or (ROOT / "runs" / "benchmark-quick" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    wanted = [m for m in args.models.split(",") if m]
    unknown = set(wanted) - set(MODELS)
    if unknown:
        raise SystemExit(f"--models has {sorted(unknown)}; expected a subset of {list(MODELS)}")
    results = Results(
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine_info(),
        plan=plan,
    )
    args.repository.mkdir(parents=True, exist_ok=True)
    # --quick exports only LeNet (seconds); ResNet-18 is used in quick mode only if already there.
    available = ensure_models(args.repository, [m for m in wanted if m == "lenet"], allow_export=True)
    available += ensure_models(
        args.repository, [m for m in wanted if m != "lenet"], allow_export=not args.quick
    )
    for model in wanted:
        if model not in available:
            results.skipped.append(f"{model} (not in {args.repository}; --quick does not export it)")

    # The generator's own JSON per run is kept beside the document.
    work = out / "benchmark_data"
    work.mkdir(exist_ok=True)
    for model in available:
        results.ceilings[model] = measure_ceiling(args.repository, model, plan)
    for model in available:
        results.runs += measure_server(args.repository, model, plan, work)
    if PERF_ANALYZER_MODEL in available:
        results.perf_analyzer = measure_perf_analyzer(args.repository, plan)
    if available:
        results.memory["default"] = measure_memory(args.repository, available, "default models")
    zoo = list_models(args.zoo_repository)
    if zoo:
        results.memory["zoo"] = measure_memory(args.zoo_repository, [], "whole zoo")
    else:
        results.skipped.append(f"whole-zoo memory (no models in {args.zoo_repository})")

    targets = check_targets(results)
    for model in dict.fromkeys(run.model for run in results.runs):
        plot_model(results, model, out / f"benchmark_{model}.png")
    (out / "benchmarks.json").write_text(
        json.dumps(
            {
                "command": command,
                "started": results.started,
                "machine": results.machine,
                "quick": plan.quick,
                "ceilings": results.ceilings,
                "runs": [run.__dict__ for run in results.runs],
                "memory": results.memory,
                "perf_analyzer": results.perf_analyzer,
                "targets": [t.__dict__ for t in targets],
            },
            indent=2,
        )
        + "\n"
    )
    path = write_document(results, targets, out, command)
    log(f"wrote {path}")
    for t in targets:
        verdict = "not measured" if t.met is None else ("met" if t.met else "MISSED")
        print(f"{t.name:45s} {t.goal:40s} {t.measured:28s} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
