"""Prometheus metrics and the per-model statistics behind ModelStatistics.

Each server owns its own registry, so several servers can live in one process
(tests) without clashing metric names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

_DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
MODEL_STATES = ("READY", "LOADING", "UNLOADING", "UNAVAILABLE")


class Metrics:
    """The server's metric families, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.success = Counter("cnnserve_request_success", "Successful requests", ["model"], registry=r)
        self.failure = Counter(
            "cnnserve_request_failure", "Failed requests by reason", ["model", "reason"], registry=r
        )
        self.inference_count = Counter("cnnserve_inference_count", "Samples computed", ["model"], registry=r)
        self.execution_count = Counter("cnnserve_execution_count", "Batches executed", ["model"], registry=r)
        self.queue_duration = Histogram(
            "cnnserve_queue_duration_seconds",
            "Time requests wait in the batcher queue",
            ["model"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "cnnserve_compute_duration_seconds",
            "Time to compute one batch",
            ["model"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "cnnserve_pending_requests", "Requests queued or computing", ["model"], registry=r
        )
        self.model_state = Gauge(
            "cnnserve_model_state", "1 for the model's current state", ["model", "state"], registry=r
        )
        self._http: WSGIServer | None = None

    def set_state(self, model: str, state: str) -> None:
        """Mark ``state`` as the model's one current state."""
        for candidate in MODEL_STATES:
            self.model_state.labels(model, candidate).set(1.0 if candidate == state else 0.0)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (``/metrics``) in a thread; return its port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint without blocking (its poll loop takes up to 0.5 s to notice)."""
        if self._http is not None:
            http, self._http = self._http, None

            def shutdown() -> None:
                http.shutdown()
                http.server_close()

            threading.Thread(target=shutdown, name="metrics-shutdown", daemon=True).start()


@dataclass
class Duration:
    """A count and the cumulative nanoseconds behind it (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    """One batch size's executions (Triton's InferBatchStatistics): every count is per batch."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


#: The fields of Triton's ``inference_stats``, each a :class:`Duration` of :class:`ModelStats`.
INFERENCE_STATS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


@dataclass
class ModelStats:
    """Cumulative statistics of one loaded model version (Triton's ModelStatistics), plus metrics.

    The fields mean what Triton's statistics extension says they mean
    (``docs/protocol/extension_statistics.md`` in triton-inference-server/server;
    ``InferenceStatsAggregator`` in its core):

    ``inference_stats``, counted per *request*:

    - ``success``: requests answered, and their whole time in the data plane (arrival to
      the answer's tensors; the edge's encoding into protobuf or JSON comes after).
    - ``fail``: requests that failed, and their time; they count nowhere else.
    - ``queue``: time from entering the batcher's queue until the batch holding it is taken.
    - ``compute_input``: preparing the input tensor: the data plane's work before the request
      enters the queue (lookup, validation, turning the edge's tensor data or the images into
      the request's array).
    - ``compute_infer``: the ONNX Runtime run of the request's batch, counted once for
      every request in it (a batch of 3 requests that computed 2 ms adds 3 and 6 ms).
    - ``compute_output``: from the data plane receiving the request's slice of the output to
      the answer's tensors (the classification extension, or the top-k of Classify).
    - ``cache_hit`` / ``cache_miss``: always zero: there is no response cache.

    What none of them counts (perf_analyzer shows it as overhead): merging the requests into
    one array and splitting the output (the batcher times only the run), and the hand-offs
    between the event loop and the instance's thread.

    ``queue`` and the three ``compute_*`` counts are taken together when a batch has been
    computed, so every snapshot has them equal, which Triton's perf_analyzer checks between
    any two snapshots; the data plane adds the input and output nanoseconds when it answers.
    Once idle, all of them equal ``success.count`` (except for a request whose caller went
    away after its batch was computed: computed, yet a failure).

    Per model: ``inference_count`` is samples and ``execution_count`` batches, both of
    computed batches; ``last_inference_ms`` is when the last batch finished, in ms since the
    epoch. ``batch_stats`` holds one :class:`BatchStats` per executed batch size, whose counts
    are batches; their ``compute_input`` and ``compute_output`` have no nanoseconds, since the
    per-request work above is not per batch and the batcher times only the run itself.

    Updated on the event loop only, so it needs no lock.
    """

    name: str
    version: int
    metrics: Metrics | None = None
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batch_stats: dict[int, BatchStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Bound label children once: the hot path then skips the label lookup.
        m = self.metrics
        if m is not None:
            self._success = m.success.labels(self.name)
            self._inference = m.inference_count.labels(self.name)
            self._execution = m.execution_count.labels(self.name)
            self._queue = m.queue_duration.labels(self.name)
            self._compute = m.compute_duration.labels(self.name)
            self._pending = m.pending.labels(self.name)

    def record_batch(self, size: int, queue_ns: Sequence[int], compute_ns: int) -> None:
        """A batch of ``size`` samples from ``len(queue_ns)`` requests computed in ``compute_ns``.

        The batcher calls this once per successfully computed batch, right after handing the
        requests their results; ``queue_ns`` holds each request's wait.
        """
        requests = len(queue_ns)
        self.inference_count += size
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.queue.add(sum(queue_ns), requests)
        self.compute_input.count += requests
        self.compute_infer.add(compute_ns * requests, requests)
        self.compute_output.count += requests
        per_size = self.batch_stats.get(size)
        if per_size is None:
            per_size = self.batch_stats[size] = BatchStats()
        per_size.compute_input.count += 1
        per_size.compute_infer.add(compute_ns)
        per_size.compute_output.count += 1
        if self.metrics is not None:
            self._inference.inc(size)
            self._execution.inc()
            self._compute.observe(compute_ns / 1e9)
            for ns in queue_ns:
                self._queue.observe(ns / 1e9)

    def set_pending(self, requests: int) -> None:
        if self.metrics is not None:
            self._pending.set(requests)

    def record_success(self, duration_ns: int, input_ns: int = 0, output_ns: int = 0) -> None:
        """A request was answered after ``duration_ns``.

        ``input_ns`` is what it took before entering the queue, ``output_ns`` from its result to
        the encoded answer (see the class docstring).
        """
        self.success.add(duration_ns)
        self.compute_input.ns += input_ns
        self.compute_output.ns += output_ns
        if self.metrics is not None:
            self._success.inc()

    def record_failure(self, reason: str, duration_ns: int) -> None:
        self.fail.add(duration_ns)
        if self.metrics is not None:
            self.metrics.failure.labels(self.name, reason).inc()
