"""The load engine: one event loop sending pre-built requests, closed or open loop, unary or stream.

A :class:`Load` runs in the generator's own process (``--processes 1``) or in each spawned
load process (:func:`load_process`). It keeps its own cost per request small: the requests
arrive already serialized and go out as bytes on raw ``grpc.aio`` methods (no protobuf
work per call, answers are not parsed), so that the generator is rarely the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import grpc
import grpc.aio
import numpy as np

from clients import convert
from clients.retry import RetryPolicy

STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


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


class Load:
    """One process's event loop, channel and pre-built requests."""

    def __init__(
        self,
        target: str,
        method: str,
        requests: Sequence[bytes],
        progress: Synchronized[int],
        connections: int = 1,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.target = target
        self.method = method
        self.requests = list(requests)
        self.progress = progress
        self.connections = connections
        self.retry = retry
        self.loop = asyncio.new_event_loop()
        self.channels: list[grpc.aio.Channel] = []

    def run(self, spec: LevelSpec) -> LoadResult:
        """Measure one level on this load's own event loop."""
        return self.loop.run_until_complete(self.measure(spec))

    def close(self) -> None:
        for channel in self.channels:
            self.loop.run_until_complete(channel.close(grace=None))
        self.loop.close()

    async def measure(self, spec: LevelSpec) -> LoadResult:
        """Measure one level (a coroutine, for callers that show progress beside it)."""
        if not self.channels:
            # Made on the loop that uses them; reused for every level. A local subchannel pool
            # gives each channel its own TCP connection (channels with equal options share one
            # otherwise), so SO_REUSEPORT can spread them over a server's --workers.
            options = [
                *convert.channel_options(retry=self.retry),
                ("grpc.use_local_subchannel_pool", 1),
            ]
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


def load_process(
    conn: Connection,
    target: str,
    method: str,
    requests: list[bytes],
    progress: Synchronized[int],
    connections: int = 1,
    retry: RetryPolicy | None = None,
) -> None:
    """Body of a ``--processes`` load process: run each level it is sent until told to stop."""
    load = Load(target, method, requests, progress, connections, retry)
    try:
        while True:
            spec = conn.recv()
            if spec is None:
                break
            conn.send(load.run(spec))
    finally:
        load.close()
