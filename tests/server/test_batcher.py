"""The dynamic batcher: merge/split, batching under concurrency, limits, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_testlib import Running, TinyModel, infer_request, ort_reference, output_array, start

from protocol import grpc_service_pb2 as pb
from server.batcher import DynamicBatcher, merge, split
from server.errors import DeadlineExceeded, InvalidInput, QueueFull


def test_merge_and_split_round_trip() -> None:
    arrays = [np.full((n, 2), i, dtype=np.float32) for i, n in enumerate((1, 3, 2))]
    batch, sizes = merge(arrays)
    assert batch.shape == (6, 2)
    assert sizes == [1, 3, 2]
    parts = split(batch * 10, sizes)
    for i, (part, original) in enumerate(zip(parts, arrays, strict=True)):
        np.testing.assert_array_equal(part, original * 10)
        assert (part == i * 10).all()


def test_merge_single_request_does_not_copy() -> None:
    array = np.zeros((4, 3), dtype=np.float32)
    batch, sizes = merge([array])
    assert batch is array
    assert sizes == [4]


def test_split_rejects_wrong_row_count() -> None:
    with pytest.raises(ValueError, match="output batch has 3 rows; the requests hold 4 samples"):
        split(np.zeros((3, 1)), [2, 2])


class SlowDouble:
    """A batch runner that takes ``delay`` seconds, doubles its input and records batch sizes."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.seen: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, index: int, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        with self.lock:
            self.batches.append(len(batch))
            self.seen.extend(batch[:, 0].tolist())
        return batch * 2


def _batcher(run: SlowDouble, greedy: bool = True, **kwargs: float) -> DynamicBatcher:
    options: dict[str, float] = {
        "instances": 1,
        "max_batch_size": 8,
        "max_queue_delay_s": 0.0,
        "max_queue_size": 64,
    }
    options.update(kwargs)
    return DynamicBatcher(
        "m",
        run,
        instances=int(options["instances"]),
        max_batch_size=int(options["max_batch_size"]),
        max_queue_delay_s=options["max_queue_delay_s"],
        max_queue_size=int(options["max_queue_size"]),
        greedy=greedy,
    )


async def test_batcher_batches_and_splits_correctly() -> None:
    run = SlowDouble(0.02)
    batcher = _batcher(run, instances=2, max_queue_delay_s=0.005)
    batcher.start()
    try:
        inputs = [np.full((1 + i % 3, 1), float(i), dtype=np.float32) for i in range(40)]
        outputs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    finally:
        await batcher.close()
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert max(run.batches) <= 8
    assert sum(run.batches) == sum(len(x) for x in inputs)
    assert len(run.batches) < len(inputs)  # requests were merged


async def test_queue_full_fails_fast() -> None:
    """A full queue (max_queue_size) refuses the next request at once with RESOURCE_EXHAUSTED."""
    run = SlowDouble(0.2)
    batcher = _batcher(run, max_batch_size=1, max_queue_size=2)
    batcher.start()
    try:
        first = batcher.submit(np.zeros((1, 1), np.float32))
        await asyncio.sleep(0.05)  # the worker takes it: the queue is empty again
        queued = [batcher.submit(np.zeros((1, 1), np.float32)) for _ in range(2)]
        with pytest.raises(QueueFull, match=r"model 'm' queue is full \(2 requests waiting\)"):
            batcher.submit(np.zeros((1, 1), np.float32))
        await asyncio.gather(first, *queued)
    finally:
        await batcher.close()


async def test_expired_and_cancelled_requests_are_not_computed() -> None:
    """Requests that expired or were cancelled while queued are never computed."""
    run = SlowDouble(0.15)
    batcher = _batcher(run, max_batch_size=1)
    batcher.start()
    loop = asyncio.get_running_loop()
    try:
        busy = batcher.submit(np.full((1, 1), 1.0, np.float32))
        await asyncio.sleep(0.02)
        expired = batcher.submit(np.full((1, 1), 2.0, np.float32), deadline=loop.time() + 0.05)
        cancelled = batcher.submit(np.full((1, 1), 3.0, np.float32))
        kept = batcher.submit(np.full((1, 1), 4.0, np.float32))
        cancelled.cancel()
        await busy
        with pytest.raises(DeadlineExceeded, match="expired while queued"):
            await expired
        await kept
    finally:
        await batcher.close()
    assert run.seen == [1.0, 4.0]


async def test_batching_under_concurrency_matches_ort(running: Running) -> None:
    """Many concurrent clients: each gets exactly ORT's answer for its own input, and batches formed."""
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1 + i % 4, 1, 8, 8)).astype(np.float32) for i in range(96)]
    responses = await asyncio.gather(*(running.infer.ModelInfer(infer_request("tiny", x)) for x in inputs))
    for x, response in zip(inputs, responses, strict=True):
        expected = ort_reference(running.repository, "tiny", 1, x)
        np.testing.assert_allclose(output_array(response), expected, rtol=1e-5, atol=1e-6)
    stats = (await running.infer.ModelStatistics(pb.ModelStatisticsRequest(name="tiny"))).model_stats[0]
    assert stats.inference_count == sum(len(x) for x in inputs)
    assert stats.inference_count / stats.execution_count > 1.5, "no batching happened"


async def test_deadline_exceeded_status(repository: tuple[Path, dict[str, TinyModel]]) -> None:
    # Greedy batching off: the lone request waits out the 2 ms queue delay, past its deadline.
    # (Greedy, the tiny model can answer within the deadline's rounding.)
    run = await start(*repository, greedy_batching=False)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await run.infer.ModelInfer(
                infer_request("tiny", np.zeros((1, 1, 8, 8), np.float32)), timeout=1e-6
            )
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await run.channel.close(None)
        await run.server.stop(0)


def _greedy_batcher(
    run: SlowDouble | OnThread, *, greedy: bool, delay: float, **kwargs: float
) -> DynamicBatcher:
    return DynamicBatcher(
        "m",
        run,
        instances=int(kwargs.get("instances", 1)),
        max_batch_size=int(kwargs.get("max_batch_size", 8)),
        max_queue_delay_s=delay,
        max_queue_size=64,
        greedy=greedy,
    )


async def test_lone_request_is_not_delayed_by_queue_delay() -> None:
    """Greedy (the default): one request at a time never waits max_queue_delay for company."""
    run = SlowDouble(0.0)
    batcher = _greedy_batcher(run, greedy=True, delay=1.0)
    batcher.start()
    loop = asyncio.get_running_loop()
    try:
        for i in range(5):
            started = loop.time()
            out = await batcher.infer(np.full((1, 1), float(i), np.float32))
            assert loop.time() - started < 0.5, "a lone request waited for the queue delay"
            np.testing.assert_array_equal(out, [[2.0 * i]])
    finally:
        await batcher.close()


async def test_lone_request_waits_when_greedy_is_off() -> None:
    run = SlowDouble(0.0)
    batcher = _greedy_batcher(run, greedy=False, delay=0.2)
    batcher.start()
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await batcher.infer(np.zeros((1, 1), np.float32))
        assert loop.time() - started >= 0.18
    finally:
        await batcher.close()


async def test_greedy_batcher_still_batches_concurrent_requests() -> None:
    """Under concurrent load the queue delay applies again: requests are merged into batches."""
    run = SlowDouble(0.01)
    batcher = _greedy_batcher(run, greedy=True, delay=0.02)
    batcher.start()
    try:
        inputs = [np.full((1, 1), float(i), np.float32) for i in range(40)]

        async def client(chunk: list[np.ndarray]) -> list[np.ndarray]:
            return [await batcher.infer(x) for x in chunk]

        results = await asyncio.gather(*(client(inputs[i::8]) for i in range(8)))
    finally:
        await batcher.close()
    for i in range(8):
        for x, y in zip(inputs[i::8], results[i], strict=True):
            np.testing.assert_array_equal(y, x * 2)
    assert sum(run.batches) == 40
    assert len(run.batches) <= 20, f"no batching under load: {run.batches}"


async def test_a_closed_loop_does_not_wait_for_company_that_cannot_come() -> None:
    """Four callers that each send again when answered: once all four are queued the batch goes.

    No fifth request can arrive while they wait, so waiting out the queue delay (0.5 s here)
    before every batch would only add it to every request: 5 rounds, 2.5 s, on the old batcher.
    """
    run = SlowDouble(0.0)
    batcher = _greedy_batcher(run, greedy=True, delay=0.5)
    batcher.start()
    loop = asyncio.get_running_loop()

    async def caller(i: int) -> list[np.ndarray]:
        return [await batcher.infer(np.full((1, 1), float(i), np.float32)) for _ in range(5)]

    started = loop.time()
    try:
        results = await asyncio.gather(*(caller(i) for i in range(4)))
    finally:
        await batcher.close()
    elapsed = loop.time() - started
    for i, outputs in enumerate(results):
        np.testing.assert_array_equal(np.concatenate(outputs), np.full((5, 1), 2.0 * i))
    assert run.batches == [4] * 5, run.batches
    assert elapsed < 1.25, f"the batches waited for company that could not come: {elapsed:.2f} s"


async def test_callers_answered_by_a_long_batch_can_join_the_next() -> None:
    """After a long batch the instance waits for the callers it answered, not only max_queue_delay.

    Eight closed-loop callers need 2 ms after each answer to send again (the round trip);
    the queue delay is 1 ms. The first caller starts alone, the other seven while it computes.
    Waiting only the queue delay, the two groups then take turns on the instance (batches
    1, 7, 1, 7, ...); a batch that computed for 0.2 s is followed by a window of 5% of that,
    so everyone is back in time (1, 8, 8, 7).
    """
    run = SlowDouble(0.2)
    batcher = _greedy_batcher(run, greedy=True, delay=0.001)
    batcher.start()

    async def caller(i: int) -> list[np.ndarray]:
        await asyncio.sleep(0.0 if i == 0 else 0.05)  # seven join while the first computes alone
        outputs = []
        for _ in range(3):
            outputs.append(await batcher.infer(np.full((1, 1), float(i), np.float32)))
            await asyncio.sleep(0.002)  # nothing slower here: the callers' timing is the test
        return outputs

    try:
        results = await asyncio.gather(*(caller(i) for i in range(8)))
    finally:
        await batcher.close()
    for i, outputs in enumerate(results):
        np.testing.assert_array_equal(np.concatenate(outputs), np.full((3, 1), 2.0 * i))
    assert sum(run.batches) == 24
    assert run.batches[1:3] == [8, 8], f"callers did not rejoin the batches: {run.batches}"


class OnThread:
    """A batch runner that records the thread each batch ran on."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.threads: list[str] = []

    def __call__(self, index: int, batch: np.ndarray) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        self.threads.append(threading.current_thread().name)
        return batch + 1


async def test_tiny_batches_run_inline_and_slow_ones_on_the_instance_thread() -> None:
    """Once a batch's measured compute is below the inline limit, batches skip the thread hand-off.

    The limit is 20 ms here, not the default 200 µs: the fast runner's first batch, measured on
    its thread, must come in under it even when a busy machine preempts that thread (a 200 µs
    limit failed in CI that way); the slow runner sleeps 50 ms, over any limit.
    """
    fast, slow = OnThread(), OnThread(delay=0.05)
    batchers = [
        DynamicBatcher(
            "m",
            run,
            instances=1,
            max_batch_size=8,
            max_queue_delay_s=0.0,
            max_queue_size=64,
            greedy=True,
            inline_compute_s=0.02,
        )
        for run in (fast, slow)
    ]
    for batcher in batchers:
        batcher.start()
    try:
        for batcher in batchers:
            for _ in range(4):
                np.testing.assert_array_equal(await batcher.infer(np.zeros((1, 1), np.float32)), [[1.0]])
    finally:
        for batcher in batchers:
            await batcher.close()
    main = threading.current_thread().name
    assert fast.threads[0] != main  # nothing measured yet: the first batch goes to the thread
    assert fast.threads[1:] == [main] * 3
    assert main not in slow.threads


async def test_runner_errors_reach_every_request_of_the_batch() -> None:
    """A model error reaches every request of the failing batch (each fails alone as well)."""

    def broken(index: int, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")

    batcher = DynamicBatcher(
        "m", broken, instances=1, max_batch_size=8, max_queue_delay_s=0.01, max_queue_size=64
    )
    batcher.start()
    try:
        futures = [batcher.submit(np.zeros((1, 1), np.float32)) for _ in range(3)]
        for future in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                await future
    finally:
        await batcher.close()


async def test_request_larger_than_max_batch_size_is_refused_at_submit() -> None:
    """A batch of 0 or more than max_batch_size samples is refused with INVALID_ARGUMENT when queued.

    Queued, it would sit at the head forever: every batch empty, the worker spinning on the loop.
    """
    run = SlowDouble(0.0)
    batcher = _batcher(run, max_batch_size=4)
    batcher.start()
    try:
        for rows in (0, 5):
            with pytest.raises(InvalidInput, match=rf"a batch of {rows} samples .* expected 1 to 4"):
                batcher.submit(np.zeros((rows, 1), np.float32))
        np.testing.assert_array_equal(await batcher.infer(np.ones((4, 1), np.float32)), np.full((4, 1), 2.0))
    finally:
        await batcher.close()


async def test_a_batch_that_cannot_be_merged_runs_each_request_alone() -> None:
    """A batch that cannot be merged (inputs of different shapes) runs each request alone; no worker dies."""
    run = SlowDouble(0.0)
    batcher = _batcher(run, max_queue_delay_s=0.05, greedy=False)
    batcher.start()
    try:
        narrow, wide = np.ones((1, 2), np.float32), np.ones((1, 3), np.float32)
        outputs = await asyncio.wait_for(asyncio.gather(batcher.submit(narrow), batcher.submit(wide)), 5)
        np.testing.assert_array_equal(outputs[0], narrow * 2)
        np.testing.assert_array_equal(outputs[1], wide * 2)
        assert run.batches == [1, 1]
        assert batcher.pending == 0
    finally:
        await batcher.close()


async def test_only_the_guilty_request_of_a_failed_batch_fails() -> None:
    """When a batch fails, each of its requests runs alone: only the one the model cannot compute fails."""
    computed: list[int] = []

    def refuses_nan(index: int, batch: np.ndarray) -> np.ndarray:
        computed.append(len(batch))
        if np.isnan(batch).any():
            raise RuntimeError("NaN in the batch")
        return batch * 2

    batcher = DynamicBatcher(
        "m",
        refuses_nan,
        instances=1,
        max_batch_size=8,
        max_queue_delay_s=0.05,
        max_queue_size=64,
        greedy=False,
    )
    batcher.start()
    try:
        values = [1.0, float("nan"), 3.0]
        futures = [batcher.submit(np.full((1, 1), v, np.float32)) for v in values]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert computed == [3, 1, 1, 1]  # the batch, then each request alone
        np.testing.assert_array_equal(results[0], [[2.0]])
        assert isinstance(results[1], RuntimeError)
        np.testing.assert_array_equal(results[2], [[6.0]])
    finally:
        await batcher.close()


async def test_queue_bytes_are_bounded() -> None:
    """Past --max-queue-bytes of queued input, RESOURCE_EXHAUSTED naming the bytes.

    A request larger than the whole budget is admitted only into an empty queue.
    """
    run = SlowDouble(0.2)
    batcher = DynamicBatcher(
        "m", run, instances=1, max_batch_size=1, max_queue_delay_s=0, max_queue_size=64, max_queue_bytes=100
    )
    batcher.start()
    try:
        busy = batcher.submit(np.zeros((1, 10), np.float32))
        await asyncio.sleep(0.05)  # taken: it no longer counts as queued
        queued = [batcher.submit(np.zeros((1, 10), np.float32)) for _ in range(2)]  # 80 bytes
        assert batcher.queued_bytes == 80
        with pytest.raises(QueueFull, match=r"queue holds 80 input bytes; this request's 40 .* limit of 100"):
            batcher.submit(np.zeros((1, 10), np.float32))
        batcher.submit(np.zeros((1, 5), np.float32))  # 20 more bytes fit exactly
        await asyncio.gather(busy, *queued)
        # A request larger than the whole budget still gets in when the queue is empty.
        await asyncio.sleep(0.25)
        assert batcher.queued_bytes == 0
        await batcher.submit(np.zeros((1, 50), np.float32))
    finally:
        await batcher.close()


async def test_cancelled_and_expired_requests_free_their_place_at_once() -> None:
    """A cancelled or expired request leaves the queue at once, while the worker is still busy."""
    run = SlowDouble(0.5)
    batcher = _batcher(run, max_batch_size=1, max_queue_size=2)
    batcher.start()
    loop = asyncio.get_running_loop()
    try:
        busy = batcher.submit(np.zeros((1, 1), np.float32))
        await asyncio.sleep(0.05)
        cancelled = asyncio.create_task(batcher.infer(np.zeros((1, 1), np.float32)))
        expiring = batcher.submit(np.zeros((1, 1), np.float32), deadline=loop.time() + 0.05)
        await asyncio.sleep(0)
        assert batcher.queued == 2
        cancelled.cancel()
        await asyncio.sleep(0)
        assert batcher.queued == 1  # the cancelled request's place is free while the worker is busy
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(expiring, 0.2)  # answered at its deadline, not when popped
        assert batcher.queued == 0
        assert not busy.done()
        kept = [batcher.submit(np.full((1, 1), 7.0, np.float32)) for _ in range(2)]
        await asyncio.gather(busy, *kept)
        assert run.batches == [1, 1, 1]
    finally:
        await batcher.close()


async def test_reservations_count_against_the_queue_bounds() -> None:
    """Places reserved before decoding (Classify) count against the queue bound until used or given back."""
    run = SlowDouble(0.0)
    batcher = _batcher(run, max_queue_size=2)
    batcher.start()
    try:
        first, second = batcher.reserve(4), batcher.reserve(4)
        with pytest.raises(QueueFull):
            batcher.reserve(4)
        batcher.cancel_reservation(second)
        batcher.cancel_reservation(second)  # twice is harmless
        out = await batcher.infer(np.ones((1, 1), np.float32), reservation=first)
        np.testing.assert_array_equal(out, [[2.0]])
        assert batcher.queued == 0
    finally:
        await batcher.close()


async def test_a_request_that_left_the_queue_does_not_shorten_the_next_ones_wait() -> None:
    """The wait for company counts from the oldest request still queued, not from one that left it."""
    run = SlowDouble(0.0)
    batcher = _batcher(run, max_queue_delay_s=0.3, greedy=False)
    batcher.start()
    loop = asyncio.get_running_loop()
    try:
        gone = asyncio.create_task(batcher.infer(np.zeros((1, 1), np.float32)))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.2)  # the worker still waits for company for the request that left
        started = loop.time()
        await batcher.infer(np.ones((1, 1), np.float32))
        assert loop.time() - started >= 0.25
        assert run.batches == [1]
    finally:
        await batcher.close()
