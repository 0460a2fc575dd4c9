"""The driver: run each level of a :class:`BenchConfig` over one or several load processes.

Around each measured level it reads the server's batch counters (:mod:`.metrics`), the
server's and the machine's CPU (:mod:`.accounting`) and merges what the load processes
measured into one :class:`LevelReport`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from clients.bench.accounting import machine_busy_seconds, tree_cpu_seconds
from clients.bench.load import LevelSpec, Load, LoadResult, load_process
from clients.bench.metrics import scrape_counters
from clients.bench.payloads import build_requests
from clients.retry import RetryPolicy
from clients.sync import InferenceClient


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
    retries: int = 0
    max_outstanding: int = 1024
    metrics_url: str | None = None
    server_pid: int | None = None
    progress: bool = False

    @property
    def retry(self) -> RetryPolicy | None:
        """The clients' retry policy for ``retries`` (None, off, for 0)."""
        return RetryPolicy.from_retries(self.retries)


class Generator:
    """Runs the levels of a :class:`BenchConfig` over one or several load processes."""

    def __init__(self, config: BenchConfig, method: str, requests: list[bytes]) -> None:
        self.config = config
        context = multiprocessing.get_context("spawn")
        self.counters = [context.Value("q", 0, lock=False) for _ in range(config.processes)]
        self._local: Load | None = None
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        retry = config.retry
        if config.processes == 1:
            self._local = Load(config.server, method, requests, self.counters[0], config.connections, retry)
        else:
            for counter in self.counters:
                parent, child = context.Pipe()
                proc = context.Process(
                    target=load_process,
                    args=(child, config.server, method, requests, counter, config.connections, retry),
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
        task = asyncio.ensure_future(self._local.measure(spec))
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
        server_cpu0 = tree_cpu_seconds(c.server_pid) if c.server_pid else None
        machine0 = machine_busy_seconds()
        wall0 = time.perf_counter()
        results = self._run(specs(c.duration, c.requests), label, show)
        wall = time.perf_counter() - wall0
        machine1 = machine_busy_seconds()
        server_cpu1 = tree_cpu_seconds(c.server_pid) if c.server_pid else None
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
            machine_cpu_cores=(machine1 - machine0) / wall,
        )


def run(config: BenchConfig) -> list[LevelReport]:
    """Run every level of ``config`` against the server and return the reports, in order."""
    with InferenceClient(config.server, timeout=config.timeout, retry=config.retry) as client:
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
