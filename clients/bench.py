"""Load generator: throughput and latency of a running server, per concurrency level.

::

    python -m clients.bench --server 127.0.0.1:8001 --model lenet \\
        --concurrency 1,4,16,64 --duration 10 --metrics-url http://127.0.0.1:8002/metrics \\
        --json bench.json --plot bench.png

Closed loop (default): at each concurrency level C, C workers each send a request
and wait for its answer before sending the next. Open loop (``--rate R[,R...]``):
requests start at R per second whatever the answers do, latency counted from the
moment each request was due (so a slow server cannot hide its queue), at most
``--max-outstanding`` in flight (the rest are counted as skipped, never sent).

Each level runs ``--warmup`` seconds unmeasured, then ``--duration`` seconds or
``--requests`` requests. It reports throughput, p50/p90/p99/max latency of the
successful requests, failures by gRPC status, the server's mean executed batch size
(from ``--metrics-url``: the change in ``cnnserve_inference_count_total`` over
``cnnserve_execution_count_total`` during the level) and the CPU the generator
itself used, in cores, so a reader can tell whether the generator was the limit
(with ``--server-pid``, the server's CPU too; and the whole machine's, so other load
on a shared machine shows).

The generator keeps its own cost per request small: requests are serialized once
up front and sent as bytes on a raw ``grpc.aio`` method (no protobuf work per
call, answers are not parsed), all from one event loop per process;
``--processes N`` runs N such loops in separate processes and merges the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import multiprocessing
import os
import shlex
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np

from clients import convert
from clients.sync import InferenceClient

logger = logging.getLogger(__name__)

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
CLASSIFY_METHOD = "/cnnserve.v1.ImageClassification/Classify"
INFERENCE_METRIC = "cnnserve_inference_count_total"
EXECUTION_METRIC = "cnnserve_execution_count_total"
#: Distinct pre-built requests per run: different payloads, built once.
REQUEST_VARIANTS = 8


@dataclass(frozen=True)
class LevelSpec:
    """One measured level, as sent to a load process (its share of the load)."""

    concurrency: int
    rate: float | None
    duration: float | None
    requests: int | None
    timeout: float
    max_outstanding: int
    stream: bool = False


@dataclass
class LoadResult:
    """What one load process measured in one level."""

    sent: int = 0
    succeeded: int = 0
    skipped: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    latencies: bytes = b""  # float64 seconds of the successful requests
    wall: float = 0.0
    cpu: float = 0.0


@dataclass
class LevelReport:
    """The merged measurement of one level."""

    mode: str
    concurrency: int
    rate: float | None
    batch_size: int
    request_mode: str
    api: str
    duration_s: float
    sent: int
    succeeded: int
    failed: dict[str, int]
    skipped: int
    throughput_rps: float
    samples_per_s: float
    latency_ms: dict[str, float | None]
    server_mean_batch: float | None
    server_inferences: float | None
    server_executions: float | None
    client_cpu_cores: float
    server_cpu_cores: float | None
    machine_cpu_cores: float | None


# -- the load itself (runs in each load process) ------------------------------------------------------------


class _Load:
    """One process's event loop, channel and pre-built requests."""

    def __init__(
        self,
        target: str,
        method: str,
        requests: Sequence[bytes],
        progress: Synchronized[int],
        connections: int = 1,
    ) -> None:
        self.target = target
        self.method = method
        self.requests = list(requests)
        self.progress = progress
        self.connections = connections
        self.loop = asyncio.new_event_loop()
        self.channels: list[grpc.aio.Channel] = []

    def run(self, spec: LevelSpec) -> LoadResult:
        return self.loop.run_until_complete(self._run(spec))

    def close(self) -> None:
        for channel in self.channels:
            self.loop.run_until_complete(channel.close(grace=None))
        self.loop.close()

    async def _run(self, spec: LevelSpec) -> LoadResult:
        if not self.channels:
            # Made on the loop that uses them; reused for every level. A local subchannel pool
            # gives each channel its own TCP connection (channels with equal options share one
            # otherwise), so SO_REUSEPORT can spread them over a server's --workers.
            options = [*convert.channel_options(), ("grpc.use_local_subchannel_pool", 1)]
            self.channels = [
                grpc.aio.insecure_channel(self.target, options=options) for _ in range(self.connections)
            ]
        # No serializers: requests go out as the bytes built up front, answers stay bytes.
        calls = [
            channel.unary_unary(self.method, request_serializer=None, response_deserializer=None)
            for channel in self.channels
        ]
        result = LoadResult()
        latencies: list[float] = []
        failed: Counter[str] = Counter()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if spec.stream:
            await self._streams(spec, result, latencies, failed)
        elif spec.rate is None:
            await self._closed(calls, spec, result, latencies, failed)
        else:
            await self._open(calls, spec, result, latencies, failed)
        result.wall = time.perf_counter() - wall0
        result.cpu = time.process_time() - cpu0
        result.succeeded = len(latencies)
        result.failed = dict(failed)
        result.latencies = np.asarray(latencies, dtype=np.float64).tobytes()
        return result

    async def _closed(
        self,
        calls: Sequence[grpc.aio.UnaryUnaryMultiCallable],
        spec: LevelSpec,
        result: LoadResult,
        latencies: list[float],
        failed: Counter[str],
    ) -> None:
        clock = time.perf_counter
        end = clock() + spec.duration if spec.duration is not None else None
        budget = [spec.requests if spec.requests is not None else -1]
        requests = self.requests
        count = len(requests)
        timeout = spec.timeout
        progress = self.progress
        record = latencies.append

        async def worker(offset: int) -> None:
            i = offset
            call = calls[offset % len(calls)]
            while True:
                if end is not None and clock() >= end:
                    return
                if budget[0] == 0:
                    return
                budget[0] -= 1
                request = requests[i % count]
                i += 1
                started = clock()
                try:
                    await call(request, timeout=timeout)
                except grpc.aio.AioRpcError as error:
                    failed[error.code().name] += 1
                else:
                    record(clock() - started)
                result.sent += 1
                progress.value += 1

        await asyncio.gather(*(worker(w) for w in range(spec.concurrency)))

    async def _streams(
        self, spec: LevelSpec, result: LoadResult, latencies: list[float], failed: Counter[str]
    ) -> None:
        """Closed loop where each worker sends its requests one after another on its own
        ModelStreamInfer stream: what a request costs without a unary call around it."""
        openers = [
            channel.stream_stream(STREAM_METHOD, request_serializer=None, response_deserializer=None)
            for channel in self.channels
        ]
        clock = time.perf_counter
        end = clock() + spec.duration if spec.duration is not None else None
        budget = [spec.requests if spec.requests is not None else -1]
        requests = self.requests
        count = len(requests)
        progress = self.progress
        record = latencies.append
        # The stream's own deadline: the whole level plus one request's timeout.
        lifetime = (spec.duration or 3600.0) + spec.timeout

        async def worker(offset: int) -> None:
            i = offset
            call: Any = None
            while True:
                if end is not None and clock() >= end:
                    break
                if budget[0] == 0:
                    break
                budget[0] -= 1
                if call is None:
                    call = openers[offset % len(openers)](None, timeout=lifetime)
                started = clock()
                try:
                    await call.write(requests[i % count])
                    i += 1
                    answer = await call.read()
                except grpc.aio.AioRpcError as error:
                    failed[error.code().name] += 1
                    call = None  # the stream is over: the next request opens a new one
                except asyncio.InvalidStateError:
                    failed["STREAM_CLOSED"] += 1
                    call = None
                else:
                    if not isinstance(answer, bytes):  # end of stream instead of an answer
                        failed["STREAM_CLOSED"] += 1
                        call = None
                    # Field 1 (error_message) is serialized first and only when set: tag byte 0x0a.
                    elif answer[:1] == b"\n":
                        failed["STREAM_ERROR"] += 1
                    else:
                        record(clock() - started)
                result.sent += 1
                progress.value += 1
            if call is not None:
                # Closing a stream that may be over already (its deadline passed, the server ended
                # it): grpc then raises one of several errors, some private (cygrpc's
                # ExecuteBatchError); the stream's outcome was counted above either way.
                with contextlib.suppress(Exception):
                    await call.done_writing()
                call.cancel()

        await asyncio.gather(*(worker(w) for w in range(spec.concurrency)))

    async def _open(
        self,
        calls: Sequence[grpc.aio.UnaryUnaryMultiCallable],
        spec: LevelSpec,
        result: LoadResult,
        latencies: list[float],
        failed: Counter[str],
    ) -> None:
        assert spec.rate is not None
        clock = time.perf_counter
        interval = 1.0 / spec.rate
        start = clock()
        end = start + spec.duration if spec.duration is not None else None
        limit = spec.requests
        requests = self.requests
        count = len(requests)
        timeout = spec.timeout
        progress = self.progress
        record = latencies.append
        in_flight: set[asyncio.Task[None]] = set()

        async def one(call: grpc.aio.UnaryUnaryMultiCallable, request: bytes, due: float) -> None:
            try:
                await call(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                failed[error.code().name] += 1
            else:
                # From when the request was due, not when it went out: queueing in the
                # generator counts, so an overloaded server cannot hide behind it.
                record(clock() - due)
            progress.value += 1

        i = 0
        while True:
            due = start + i * interval
            if (end is not None and due >= end) or (limit is not None and i >= limit):
                break
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if len(in_flight) >= spec.max_outstanding:
                result.skipped += 1
                continue
            task = asyncio.ensure_future(one(calls[i % len(calls)], requests[i % count], due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            result.sent += 1
        if in_flight:
            await asyncio.gather(*in_flight)


def _load_process(
    conn: Connection,
    target: str,
    method: str,
    requests: list[bytes],
    progress: Synchronized[int],
    connections: int = 1,
) -> None:
    """Body of a ``--processes`` load process: run each level it is sent until told to stop."""
    load = _Load(target, method, requests, progress, connections)
    try:
        while True:
            spec = conn.recv()
            if spec is None:
                break
            conn.send(load.run(spec))
    finally:
        load.close()


# -- building requests --------------------------------------------------------------------------------------


def build_requests(
    client: InferenceClient, model: str, version: str, mode: str, batch_size: int, image: Path | None
) -> tuple[str, list[bytes]]:
    """The method and a few serialized requests (different random payloads) for the model."""
    metadata = client.model_metadata(model, version)
    if len(metadata.inputs) != 1:
        raise ValueError(f"model {model!r} has {len(metadata.inputs)} inputs; the generator supports one")
    spec = metadata.inputs[0]
    sample_shape = tuple(spec.shape[1:])
    if any(d < 0 for d in sample_shape):
        raise ValueError(f"model {model!r} input {spec.name!r} has variable dimensions {list(spec.shape)}")
    rng = np.random.default_rng(0)
    requests: list[bytes] = []
    if mode == "tensor":
        dtype = np.dtype(convert.DATATYPES[spec.datatype])
        for _ in range(REQUEST_VARIANTS):
            batch = rng.standard_normal((batch_size, *sample_shape)).astype(dtype)
            checked = convert.check_inputs(metadata, {spec.name: batch})
            requests.append(convert.infer_request(model, checked, version=version).SerializeToString())
        return INFER_METHOD, requests
    if len(sample_shape) != 3:
        raise ValueError(f"image mode needs a CHW input; model {model!r} takes {list(spec.shape)}")
    channels, height, width = sample_shape
    for _ in range(REQUEST_VARIANTS):
        if image is not None:
            encoded = image.read_bytes()
        else:
            shape = (height, width) if channels == 1 else (height, width, 3)
            encoded = convert.encode_image(rng.integers(0, 256, size=shape, dtype=np.uint8))
        request = convert.classify_request([encoded] * batch_size, model, 1, version)
        requests.append(request.SerializeToString())
    return CLASSIFY_METHOD, requests


# -- measurements around the load ---------------------------------------------------------------------------


def scrape_counters(url: str, model: str, timeout: float = 5.0) -> tuple[float, float] | None:
    """(samples computed, batches executed) for ``model`` from the Prometheus endpoint, or None.

    ``url`` may list several endpoints separated by commas (one per server worker): their
    counters are added up.
    """
    label = f'model="{model}"'
    totals = {INFERENCE_METRIC: 0.0, EXECUTION_METRIC: 0.0}
    for one in url.split(","):
        try:
            with urllib.request.urlopen(one.strip(), timeout=timeout) as response:
                text = response.read().decode()
        except OSError as exc:
            logger.warning("cannot read metrics from %s: %s", one, exc)
            return None
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in totals and label in rest:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals[INFERENCE_METRIC], totals[EXECUTION_METRIC]


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a server's --workers), from /proc."""
    found = [pid]
    for current in found:
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            found.extend(int(child) for child in children)
    return found


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its child processes (all threads), from /proc, or None."""
    total = 0.0
    for index, member in enumerate(process_tree(pid)):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if index == 0:
                return None
            continue
        # utime and stime are fields 14 and 15 of /proc/PID/stat; [0] here is field 3.
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores, all processes), from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentiles_ms(latencies: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99/max/mean in milliseconds (None when nothing succeeded)."""
    if latencies.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) * 1e3
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(latencies.max() * 1e3),
        "mean": float(latencies.mean() * 1e3),
    }


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` divided into ``parts`` integers that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# -- the driver ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """Everything one run of the generator is configured with."""

    server: str
    model: str
    version: str = ""
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    rates: tuple[float, ...] = ()
    duration: float | None = 10.0
    requests: int | None = None
    warmup: float = 1.0
    batch_size: int = 1
    mode: str = "tensor"
    stream: bool = False
    image: Path | None = None
    processes: int = 1
    connections: int = 1
    timeout: float = 10.0
    max_outstanding: int = 1024
    metrics_url: str | None = None
    server_pid: int | None = None
    progress: bool = False


class Generator:
    """Runs the levels of a :class:`BenchConfig` over one or several load processes."""

    def __init__(self, config: BenchConfig, method: str, requests: list[bytes]) -> None:
        self.config = config
        context = multiprocessing.get_context("spawn")
        self.counters = [context.Value("q", 0, lock=False) for _ in range(config.processes)]
        self._local: _Load | None = None
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        if config.processes == 1:
            self._local = _Load(config.server, method, requests, self.counters[0], config.connections)
        else:
            for counter in self.counters:
                parent, child = context.Pipe()
                proc = context.Process(
                    target=_load_process,
                    args=(child, config.server, method, requests, counter, config.connections),
                    daemon=True,
                )
                proc.start()
                self._pipes.append(parent)
                self._procs.append(proc)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        for pipe in self._pipes:
            pipe.send(None)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()

    def _run(self, specs: list[LevelSpec | None], label: str, show: bool) -> list[LoadResult]:
        if self._local is not None:
            spec = specs[0]
            assert spec is not None
            if not show:
                return [self._local.run(spec)]
            return [self._local.loop.run_until_complete(self._with_progress(spec, label))]
        active = [(pipe, spec) for pipe, spec in zip(self._pipes, specs, strict=True) if spec is not None]
        for pipe, spec in active:
            pipe.send(spec)
        started = time.perf_counter()
        results = []
        for pipe, _ in active:
            while not pipe.poll(0.5):
                if show:
                    self._show(label, started)
            results.append(pipe.recv())
        return results

    async def _with_progress(self, spec: LevelSpec, label: str) -> LoadResult:
        assert self._local is not None
        started = time.perf_counter()
        task = asyncio.ensure_future(self._local._run(spec))
        while not task.done():
            await asyncio.wait([task], timeout=0.5)
            self._show(label, started)
        return task.result()

    def _show(self, label: str, started: float) -> None:
        done = sum(c.value for c in self.counters)
        elapsed = time.perf_counter() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(f"\r{label}: {elapsed:6.1f} s  {done:9d} done  {rate:9.0f} req/s ")
        sys.stderr.flush()

    def level(self, concurrency: int, rate: float | None) -> LevelReport:
        """Warm up, then measure one level; return the merged report."""
        c = self.config
        n = c.processes
        concurrencies = split_evenly(concurrency, n)
        rates = [rate / n if rate is not None else None] * n
        label = f"rate {rate:g}/s" if rate is not None else f"concurrency {concurrency}"
        show = c.progress

        def specs(duration: float | None, requests: int | None) -> list[LevelSpec | None]:
            shares = split_evenly(requests, n) if requests is not None else [None] * n
            result: list[LevelSpec | None] = []
            for i in range(n):
                idle = (rate is None and concurrencies[i] == 0) or shares[i] == 0
                result.append(
                    None
                    if idle
                    else LevelSpec(
                        concurrency=max(1, concurrencies[i]),
                        rate=rates[i],
                        duration=duration,
                        requests=shares[i],
                        timeout=c.timeout,
                        max_outstanding=max(1, c.max_outstanding // n),
                        stream=c.stream,
                    )
                )
            return result

        if c.warmup > 0:
            self._run(specs(c.warmup, None), label + " (warm-up)", show)
            if show:
                sys.stderr.write("\n")
        for counter in self.counters:
            counter.value = 0
        before = scrape_counters(c.metrics_url, c.model) if c.metrics_url else None
        server_cpu0 = process_cpu_seconds(c.server_pid) if c.server_pid else None
        machine0 = machine_busy_seconds()
        wall0 = time.perf_counter()
        results = self._run(specs(c.duration, c.requests), label, show)
        wall = time.perf_counter() - wall0
        machine1 = machine_busy_seconds()
        server_cpu1 = process_cpu_seconds(c.server_pid) if c.server_pid else None
        after = scrape_counters(c.metrics_url, c.model) if c.metrics_url else None
        if show:
            sys.stderr.write("\n")

        latencies = np.concatenate([np.frombuffer(r.latencies, dtype=np.float64) for r in results])
        failed: Counter[str] = Counter()
        for r in results:
            failed.update(r.failed)
        succeeded = sum(r.succeeded for r in results)
        inferences = executions = mean_batch = None
        if before is not None and after is not None:
            inferences, executions = after[0] - before[0], after[1] - before[1]
            mean_batch = inferences / executions if executions > 0 else None
        server_cpu = None
        if server_cpu0 is not None and server_cpu1 is not None:
            server_cpu = (server_cpu1 - server_cpu0) / wall
        return LevelReport(
            mode="closed" if rate is None else "open",
            concurrency=concurrency,
            rate=rate,
            batch_size=c.batch_size,
            request_mode=c.mode,
            api="stream" if c.stream else "unary",
            duration_s=wall,
            sent=sum(r.sent for r in results),
            succeeded=succeeded,
            failed=dict(sorted(failed.items())),
            skipped=sum(r.skipped for r in results),
            throughput_rps=succeeded / wall,
            samples_per_s=succeeded * c.batch_size / wall,
            latency_ms=percentiles_ms(latencies),
            server_mean_batch=mean_batch,
            server_inferences=inferences,
            server_executions=executions,
            # Load processes' CPU over the level's wall time; the parent only waits.
            client_cpu_cores=sum(r.cpu for r in results) / wall,
            server_cpu_cores=server_cpu,
            # Everything running on the machine, so other load shows up too.
            machine_cpu_cores=(machine1 - machine0) / wall
            if machine0 is not None and machine1 is not None
            else None,
        )


def run(config: BenchConfig) -> list[LevelReport]:
    """Run every level of ``config`` against the server and return the reports, in order."""
    with InferenceClient(config.server, timeout=config.timeout) as client:
        method, requests = build_requests(
            client, config.model, config.version, config.mode, config.batch_size, config.image
        )
    generator = Generator(config, method, requests)
    try:
        if config.rates:
            return [generator.level(max(config.concurrency), rate) for rate in config.rates]
        return [generator.level(c, None) for c in config.concurrency]
    finally:
        generator.close()


# -- output -------------------------------------------------------------------------------------------------


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


# -- command line -------------------------------------------------------------------------------------------


def _positive_list(kind: type, text: str) -> tuple[Any, ...]:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must hold positive numbers")
    return values


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m clients.bench``."""
    p = argparse.ArgumentParser(
        prog="python -m clients.bench",
        description="Closed- or open-loop load against a cnnserve server; see the module docstring.",
    )
    p.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the gRPC server")
    p.add_argument("--model", required=True, help="model to load")
    p.add_argument("--version", default="", help="model version (default: the latest)")
    p.add_argument(
        "--concurrency",
        type=lambda t: _positive_list(int, t),
        default=(1, 4, 16, 64),
        help="comma-separated closed-loop levels (default 1,4,16,64)",
    )
    p.add_argument(
        "--rate",
        type=lambda t: _positive_list(float, t),
        default=(),
        help="comma-separated open-loop request rates per second (replaces the closed-loop levels)",
    )
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, default=None, help="seconds per level (default 10)")
    bound.add_argument("--requests", type=int, default=None, help="requests per level")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each level")
    p.add_argument("--batch-size", type=int, default=1, help="samples per request")
    p.add_argument(
        "--mode", choices=["tensor", "image"], default="tensor", help="raw tensors or encoded images"
    )
    p.add_argument("--image", type=Path, default=None, help="image file for --mode image (default: random)")
    p.add_argument(
        "--stream",
        action="store_true",
        help="tensor mode, closed loop: one ModelStreamInfer stream per worker instead of unary calls",
    )
    p.add_argument("--processes", type=int, default=1, help="load processes, each with its own event loop")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="TCP connections per load process, workers spread over them (a server's --workers "
        "share connections, not requests)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of each request, seconds")
    p.add_argument("--max-outstanding", type=int, default=1024, help="open loop: most requests in flight")
    p.add_argument(
        "--metrics-url",
        default=None,
        help="Prometheus endpoint(s), comma-separated (one per server worker), for the mean batch size",
    )
    p.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="server process id, for its CPU use (/proc; child processes such as workers included)",
    )
    p.add_argument("--json", type=Path, default=None, dest="json_path", help="write the results as JSON")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of throughput and latency")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress on stderr (default: when stderr is a terminal)",
    )
    return p


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BenchConfig:
    """Check the parsed flags and build the :class:`BenchConfig`."""
    for name in ("batch_size", "processes", "connections", "max_outstanding"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} is {getattr(args, name)}; expected >= 1")
    if args.requests is not None and args.requests < 1:
        parser.error(f"--requests is {args.requests}; expected >= 1")
    duration = args.duration if args.duration is not None else (None if args.requests else 10.0)
    if duration is not None and not 0 < duration <= 3600:
        parser.error(f"--duration is {duration}; expected 0 < S <= 3600")
    if args.stream and (args.mode != "tensor" or args.rate):
        parser.error("--stream works with --mode tensor and closed-loop --concurrency only")
    if args.timeout <= 0 or args.warmup < 0:
        parser.error(f"--timeout {args.timeout} must be > 0 and --warmup {args.warmup} >= 0")
    return BenchConfig(
        server=args.server,
        model=args.model,
        version=args.version,
        concurrency=args.concurrency,
        rates=args.rate,
        duration=duration,
        requests=args.requests,
        warmup=args.warmup,
        batch_size=args.batch_size,
        mode=args.mode,
        stream=args.stream,
        image=args.image,
        processes=args.processes,
        connections=args.connections,
        timeout=args.timeout,
        max_outstanding=args.max_outstanding,
        metrics_url=args.metrics_url,
        server_pid=args.server_pid,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (1 if the server cannot be reached or the model is unknown)."""
    from clients.errors import InferenceServerError

    parser = get_args_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    command = shlex.join(["python", "-m", "clients.bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        reports = run(config)
    except InferenceServerError as exc:
        print(f"error: {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mode = f"{config.mode} requests of batch {config.batch_size}" + (" on streams" if config.stream else "")
    print(f"{config.model} @ {config.server}: {mode}, {config.processes} load process(es)")
    print(format_table(reports))
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(to_json(config, reports, command), indent=2) + "\n")
    if args.plot is not None:
        plot(reports, args.plot, f"{config.model}: {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
