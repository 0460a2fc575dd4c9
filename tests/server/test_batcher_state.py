"""The batcher as a state machine: hypothesis drives random interleavings of its operations.

Submit (some requests poisoned, some with deadlines), cancel, let time pass, shut down:
after every step the queue bounds hold; at the end every caller has exactly one
answer, its own (each request's rows carry its id, and the model doubles them),
only poisoned requests fail with the model's error, and a request answered
DEADLINE_EXCEEDED was never part of a batch that computed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.batcher import DynamicBatcher
from server.errors import DeadlineExceeded, InvalidInput, QueueFull, Unavailable

MAX_BATCH = 4
MAX_QUEUE = 6
MAX_QUEUE_BYTES = 40  # ten float32 values: about three requests


class Poisoned(RuntimeError):
    """What the model raises for a batch holding a poisoned (negative) row."""


class Doubler:
    """Doubles each batch after a short pause; refuses batches with a negative row."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batch_sizes: list[int] = []
        #: How many batches that computed successfully held each request id.
        self.succeeded: dict[int, int] = {}
        self.pause_s = 0.001

    def __call__(self, index: int, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.pause_s)
        ids = {int(abs(v)) for v in batch[:, 0]}
        with self.lock:
            self.batch_sizes.append(len(batch))
        if (batch < 0).any():
            raise Poisoned("poisoned row in the batch")
        with self.lock:
            for request_id in ids:
                self.succeeded[request_id] = self.succeeded.get(request_id, 0) + 1
        return batch * 2


@dataclass
class Sent:
    request_id: int
    rows: int
    poisoned: bool
    task: asyncio.Task[np.ndarray]


class BatcherMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.model = Doubler()
        self.sent: list[Sent] = []
        self.refused = 0
        self.closed = False
        self.next_id = 1

    @initialize(greedy=st.booleans(), inline=st.booleans(), delay_ms=st.sampled_from([0, 1, 3]))
    def start(self, greedy: bool, inline: bool, delay_ms: int) -> None:
        self.batcher = DynamicBatcher(
            "m",
            self.model,
            instances=1,
            max_batch_size=MAX_BATCH,
            max_queue_delay_s=delay_ms / 1000,
            max_queue_size=MAX_QUEUE,
            max_queue_bytes=MAX_QUEUE_BYTES,
            greedy=greedy,
            inline_compute_s=1.0 if inline else 0.0,
        )

        async def start() -> None:
            self.batcher.start()

        self.loop.run_until_complete(start())

    @rule(
        rows=st.integers(0, MAX_BATCH + 1),
        poisoned=st.booleans(),
        deadline_ms=st.none() | st.integers(0, 8),
        via_infer=st.booleans(),
    )
    def submit(self, rows: int, poisoned: bool, deadline_ms: int | None, via_infer: bool) -> None:
        request_id = self.next_id
        self.next_id += 1
        sign = -1.0 if poisoned else 1.0
        array = np.full((rows, 1), sign * request_id, np.float32)
        deadline = None if deadline_ms is None else self.loop.time() + deadline_ms / 1000
        # Read right before submitting, in the same step of the loop: timers and finished batches
        # change the queue whenever the loop runs.
        before: list[int] = []

        async def submit() -> asyncio.Task[np.ndarray] | None:
            before.extend((self.batcher.queued, self.batcher.queued_bytes))
            if via_infer:  # the data plane's path: cancelling the caller takes it out of the queue
                task = asyncio.ensure_future(self.batcher.infer(array, deadline))
                await asyncio.sleep(0)
                if task.done() and isinstance(task.exception(), QueueFull | Unavailable | InvalidInput):
                    return None
                return task
            try:
                # What a servicer does: the request is admitted (or refused) synchronously.
                future = self.batcher.submit(array, deadline)
            except (QueueFull, Unavailable, InvalidInput) as exc:
                if isinstance(exc, InvalidInput):
                    assert not 1 <= rows <= MAX_BATCH
                elif isinstance(exc, QueueFull):  # refused only when a bound would be passed
                    queued_before, bytes_before = before
                    assert queued_before == MAX_QUEUE or (
                        bytes_before > 0 and bytes_before + array.nbytes > MAX_QUEUE_BYTES
                    )
                else:
                    assert self.closed
                return None

            async def wait() -> np.ndarray:
                return await future

            return asyncio.ensure_future(wait())

        task = self.loop.run_until_complete(submit())
        if task is None:
            self.refused += 1
            return
        assert 1 <= rows <= MAX_BATCH and not self.closed
        queued_before, bytes_before = before
        assert (
            via_infer
            or (queued_before < MAX_QUEUE and bytes_before + array.nbytes <= MAX_QUEUE_BYTES)
            or (bytes_before == 0)
        )
        self.sent.append(Sent(request_id, rows, poisoned, task))

    @rule(pick=st.integers(0, 63))
    def cancel(self, pick: int) -> None:
        # Draws never depend on timing (hypothesis replays them): cancelling a finished task is a no-op.
        if self.sent:
            self.sent[pick % len(self.sent)].task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))

    @rule(ms=st.sampled_from([0, 1, 2, 5, 10]))
    def wait(self, ms: int) -> None:
        self.loop.run_until_complete(asyncio.sleep(ms / 1000))

    @precondition(lambda self: not self.closed)
    @rule(grace_ms=st.sampled_from([0, 5, 50]))
    def shut_down(self, grace_ms: int) -> None:
        async def stop() -> None:
            await self.batcher.drain(grace_ms / 1000)
            await self.batcher.close()

        self.loop.run_until_complete(stop())
        self.closed = True
        # Closed: nothing is left waiting.
        self.loop.run_until_complete(asyncio.sleep(0.01))
        assert all(s.task.done() for s in self.sent)

    @invariant()
    def bounds_hold(self) -> None:
        if not hasattr(self, "batcher"):
            return
        assert 0 <= self.batcher.queued <= MAX_QUEUE
        assert 0 <= self.batcher.queued_bytes <= MAX_QUEUE_BYTES
        assert all(size <= MAX_BATCH for size in self.model.batch_sizes)

    def teardown(self) -> None:
        try:
            if hasattr(self, "batcher") and not self.closed:
                # Everything admitted gets its answer, then the batcher stops.
                self.loop.run_until_complete(self.batcher.drain(5.0))
                self.loop.run_until_complete(self.batcher.close())
            self.loop.run_until_complete(asyncio.sleep(0.01))
            for sent in self.sent:
                assert sent.task.done(), f"request {sent.request_id} was never answered"
                if sent.task.cancelled():
                    continue
                exc = sent.task.exception()
                if exc is None:
                    assert not sent.poisoned
                    np.testing.assert_array_equal(
                        sent.task.result(), np.full((sent.rows, 1), 2.0 * sent.request_id, np.float32)
                    )
                elif isinstance(exc, Poisoned):
                    assert sent.poisoned, f"request {sent.request_id} failed for another's poison"
                elif isinstance(exc, DeadlineExceeded):
                    assert self.model.succeeded.get(sent.request_id, 0) == 0
                else:
                    assert isinstance(exc, Unavailable), repr(exc)
        finally:
            self.loop.close()


BatcherMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_batcher_state_machine = BatcherMachine.TestCase
