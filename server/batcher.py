"""Per-model dynamic batching.

Requests are queued with one future each. A worker per model instance takes as
many queued samples as fit into ``max_batch_size``, merges them into one array,
runs it on its instance, and hands each request its own slice of the result, or
the exception. Requests whose deadline has passed or whose caller went away are
never computed, and leave the queue (freeing their place in its bounds) at once.

Bounds, checked when a request is queued (:class:`QueueFull`, RESOURCE_EXHAUSTED):
``max_queue_size`` requests and ``max_queue_bytes`` input bytes waiting per model,
counting places reserved by callers still preparing their input (:meth:`reserve`:
the image service reserves before it decodes). A request larger than the whole byte
budget is admitted only into an empty queue, so every valid request can be served.

When a batch of several requests fails, each of its requests is run again on its own,
so one request that the model cannot compute fails alone. Nothing that goes wrong
while merging, running or splitting a batch stops a worker.

When a worker takes a batch (the policy, measured in ``docs/benchmarks.md``):

- at once when the queue holds a full batch or ``max_queue_delay`` is 0;
- at once when the model has been serving one request at a time (*greedy*, the
  default): no two requests were in flight together during the last
  :data:`CROWD_WINDOW_S`, so no one else is likely to join, and a lone request is
  never delayed;
- at once (greedy) when the queue holds as many requests as were ever in flight together
  during this and the previous :data:`CROWD_WINDOW_S` (counted from submit to release, so a
  request is in flight while its caller prepares or sends its answer): the usual
  crowd is all here, and no one else is known to be on the way. Without this rule
  a closed loop of four callers waited the whole ``max_queue_delay`` before every
  batch, for company that could not come (measured on LeNet: half the requests/s
  of batching off at concurrency 4);
- otherwise, under concurrent load, it waits for company until the batch fills or
  ``max_queue_delay`` has passed since the oldest queued request arrived *or* since
  the worker's instance became free, whichever is later: requests that queued while
  every instance computed have waited already, and the window after an instance
  frees up lets the callers just answered send their next requests into the batch.
  For a model whose batches compute for long, that window is longer: a fraction
  (:data:`RETURN_WINDOW_FRACTION`) of the batch just computed, up to
  :data:`MAX_RETURN_WINDOW_S`. An answered caller needs a round trip (the answer
  out, its next request in: a few milliseconds for 224x224 images) to come back;
  with only ``max_queue_delay`` to do it, the callers split into two groups that
  alternate on the instance, each batch half as large as it could be.
  (The wait is a timer, never a busy loop: spinning on the event loop would hold the
  GIL that grpc's completion-queue thread needs to hand over the very requests the
  batch waits for.)

With ``greedy=False`` every batch that is not full waits for company as above
(Triton's behaviour).

Where a batch runs: ONNX Runtime releases the GIL, so a batch normally runs on its
instance's own thread while the event loop keeps serving. Handing a batch to a
thread and its result back costs tens of microseconds of CPU and two thread
wake-ups, more than a tiny model's whole computation, so a batch whose predicted
compute time (a running per-sample average of this model's measured batches) is
below ``inline_compute_s`` runs on the event loop itself.

Times are the event loop's monotonic clock (``loop.time()``), never wall-clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from server.errors import DeadlineExceeded, InvalidInput, QueueFull, Unavailable

logger = logging.getLogger(__name__)

#: Runs one merged batch on instance ``index`` and returns the output batch.
RunBatch = Callable[[int, np.ndarray], np.ndarray]

#: Batches predicted to compute faster than this run on the event loop (see the module docstring).
DEFAULT_INLINE_COMPUTE_S = 200e-6
#: Weight of the newest batch in the running per-sample compute time.
_EWMA_WEIGHT = 0.2
#: How long after two requests were last in flight together a model counts as under concurrent load.
CROWD_WINDOW_S = 1.0
#: After an instance computed a batch for t seconds, it waits up to this fraction of t for company.
RETURN_WINDOW_FRACTION = 0.05
#: ... but never longer than this (and never shorter than max_queue_delay).
MAX_RETURN_WINDOW_S = 0.02


class BatchObserver(Protocol):
    """Receives what the batcher measured (statistics and metrics)."""

    def record_batch(self, size: int, queue_ns: Sequence[int], compute_ns: int) -> None: ...

    def set_pending(self, requests: int) -> None: ...


def merge(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Concatenate request arrays along the batch axis; return the batch and each request's size."""
    sizes = [len(a) for a in arrays]
    if len(arrays) == 1:
        return arrays[0], sizes  # the common unbatched case: no copy
    return np.concatenate(arrays, axis=0), sizes


def split(batch: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Cut an output batch back into per-request arrays (views), in request order."""
    if sum(sizes) != len(batch):
        raise ValueError(f"output batch has {len(batch)} rows; the requests hold {sum(sizes)} samples")
    parts = []
    offset = 0
    for size in sizes:
        parts.append(batch[offset : offset + size])
        offset += size
    return parts


#: Where a request is: waiting in the queue, taken into a batch, or gone (answered, cancelled,
#: expired) before it was taken.
_QUEUED, _TAKEN, _GONE = 0, 1, 2


class _Request:
    __slots__ = ("array", "deadline", "enqueued", "future", "nbytes", "size", "state", "timer")

    def __init__(
        self, array: np.ndarray, future: asyncio.Future[np.ndarray], deadline: float | None, now: float
    ) -> None:
        self.array: np.ndarray | None = array
        self.size = len(array)
        self.nbytes = array.nbytes
        self.future = future
        self.deadline = deadline
        self.enqueued = now
        self.state = _QUEUED
        self.timer: asyncio.TimerHandle | None = None


class Reservation:
    """A place in a model's queue, held while the caller prepares its input (see :meth:`reserve`)."""

    __slots__ = ("held", "nbytes")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.held = True


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _deliver(future: asyncio.Future[tuple[np.ndarray, int]], output: np.ndarray, compute_ns: int) -> None:
    if not future.done():
        future.set_result((output, compute_ns))


def _fail(future: asyncio.Future[tuple[np.ndarray, int]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


_Job = tuple[np.ndarray, asyncio.Future[tuple[np.ndarray, int]]]


class _InstanceThread:
    """One instance's own thread: runs the batches put to it and posts each result to the loop.

    A plain thread and a ``SimpleQueue`` instead of a ``ThreadPoolExecutor``: no
    ``concurrent.futures.Future`` and no future chaining per batch, only one
    ``call_soon_threadsafe`` back.
    """

    def __init__(self, name: str, index: int, run: RunBatch, loop: asyncio.AbstractEventLoop) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._index = index
        self._run = run
        self._loop = loop
        self._thread = threading.Thread(target=self._body, name=f"infer-{name}-{index}", daemon=True)
        self._thread.start()

    def submit(self, batch: np.ndarray) -> asyncio.Future[tuple[np.ndarray, int]]:
        """Run ``batch`` on the thread; the future gets (output, compute ns)."""
        future: asyncio.Future[tuple[np.ndarray, int]] = self._loop.create_future()
        self._jobs.put((batch, future))
        return future

    def stop(self) -> None:
        """Let the thread finish its current batch and exit (not waited for)."""
        self._jobs.put(None)

    def _body(self) -> None:
        clock = time.perf_counter_ns
        while (job := self._jobs.get()) is not None:
            batch, future = job
            started = clock()
            try:
                output = self._run(self._index, batch)
            except BaseException as exc:
                self._post(_fail, future, exc)
            else:
                self._post(_deliver, future, output, clock() - started)

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        # RuntimeError: the loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)


class DynamicBatcher:
    """Batches one model's requests over ``instances`` parallel runners.

    Must be created and used on one event loop; :meth:`start` needs it running.
    Callers that :meth:`submit` a request call :meth:`release` once they are done
    with its result (:meth:`infer` does both): until then the request counts as one
    the model is serving, which is how the batcher tells concurrent load from
    requests that come one at a time.
    """

    def __init__(
        self,
        name: str,
        run: RunBatch,
        *,
        instances: int,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        max_queue_bytes: int = 256 * 2**20,
        observer: BatchObserver | None = None,
        greedy: bool = True,
        inline_compute_s: float = DEFAULT_INLINE_COMPUTE_S,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.instances = instances
        self.greedy = greedy
        self.inline_compute_s = inline_compute_s
        self._run = run
        self._observer = observer
        #: Arrival order; entries whose state is _GONE are skipped (and dropped) when met.
        self._queue: collections.deque[_Request] = collections.deque()
        #: Requests waiting (state _QUEUED) plus reservations held, and their input bytes.
        self._waiting = 0
        self._waiting_bytes = 0
        #: Samples of the requests waiting in the queue.
        self._queued_samples = 0
        self._executing = 0
        #: Requests submitted and not yet released by their callers.
        self._serving = 0
        #: Idle workers wait on their own future here; a submit wakes one.
        self._idle_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Until this loop time the model counts as under concurrent load (see CROWD_WINDOW_S).
        self._crowded_until = 0.0
        #: Most requests in flight together (``_serving``) in this crowd window and the last one;
        #: the window rolls over at ``_crowd_rolls_at``.
        self._crowd_now = 0
        self._crowd_before = 0
        self._crowd_rolls_at = 0.0
        #: Workers waiting for company; woken when the batch fills.
        self._fill_waiters: list[asyncio.Future[None]] = []
        self._drained: asyncio.Event | None = None
        self._accepting = True
        self._closed = False
        self._workers: list[asyncio.Task[None]] = []
        self._threads: list[_InstanceThread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Running average of compute seconds per sample; None until a batch was measured.
        self._per_sample_s: float | None = None

    @property
    def pending(self) -> int:
        """Requests queued (or reserved) or being computed."""
        return self._waiting + self._executing

    @property
    def queued(self) -> int:
        """Requests waiting in the queue (not yet taken into a batch), reservations included."""
        return self._waiting

    @property
    def queued_bytes(self) -> int:
        """Input bytes of the requests waiting in the queue, reservations included."""
        return self._waiting_bytes

    @property
    def executing(self) -> int:
        """Batches being computed right now."""
        return self._executing

    def start(self) -> None:
        """Start one worker task and one thread per instance on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._drained = asyncio.Event()
        self._threads = [_InstanceThread(self.name, i, self._run, self._loop) for i in range(self.instances)]
        self._workers = [
            self._loop.create_task(self._worker(i), name=f"batcher-{self.name}-{i}")
            for i in range(self.instances)
        ]

    def reserve(self, nbytes: int) -> Reservation:
        """Hold a place for one request of ``nbytes`` input bytes before its input exists.

        Raises what :meth:`submit` raises when the queue is full or closing. Pass the
        reservation to :meth:`infer` or :meth:`submit`, or :meth:`cancel_reservation` it.
        """
        self._admit(nbytes)
        self._waiting += 1
        self._waiting_bytes += nbytes
        return Reservation(nbytes)

    def cancel_reservation(self, reservation: Reservation) -> None:
        """Give back a reserved place (safe to call more than once, and after it was used)."""
        self._drop_reservation(reservation)
        self._check_drained()

    def _drop_reservation(self, reservation: Reservation) -> None:
        if reservation.held:
            reservation.held = False
            self._waiting -= 1
            self._waiting_bytes -= reservation.nbytes

    def _admit(self, nbytes: int) -> None:
        if self._loop is None or not self._accepting:
            raise Unavailable(f"model {self.name!r} is not accepting requests (stopping)")
        if self._waiting >= self.max_queue_size:
            raise QueueFull(
                f"model {self.name!r} queue is full ({self.max_queue_size} requests waiting); retry later"
            )
        if self._waiting_bytes and self._waiting_bytes + nbytes > self.max_queue_bytes:
            raise QueueFull(
                f"model {self.name!r} queue holds {self._waiting_bytes} input bytes; this request's "
                f"{nbytes} would pass the limit of {self.max_queue_bytes} (--max-queue-bytes); retry later"
            )

    def submit(
        self, array: np.ndarray, deadline: float | None = None, reservation: Reservation | None = None
    ) -> asyncio.Future[np.ndarray]:
        """Queue ``array`` (batch-first) and return the future of its output.

        ``deadline`` is an absolute ``loop.time()``. Raises QueueFull at once when the
        queue is full (see the module docstring), Unavailable when the batcher is closing,
        InvalidInput for an array of no samples or more than ``max_batch_size``.
        Cancelling the future takes the request out of the queue.
        """
        request = self._enqueue(array, deadline, reservation)
        request.future.add_done_callback(lambda future: self._forget(request))
        return request.future

    def _enqueue(
        self, array: np.ndarray, deadline: float | None, reservation: Reservation | None
    ) -> _Request:
        loop = self._loop
        size = len(array) if array.ndim else 0
        held = reservation is not None and reservation.held
        if reservation is not None:
            # The reserved place becomes this request's (admitted already: no second check).
            self._drop_reservation(reservation)
        if loop is None or self._closed:
            raise Unavailable(f"model {self.name!r} is not accepting requests (stopped)")
        if not 1 <= size <= self.max_batch_size:
            self._check_drained()
            raise InvalidInput(
                f"a batch of {size} samples was queued for model {self.name!r}; "
                f"expected 1 to {self.max_batch_size}"
            )
        if not held:
            self._admit(array.nbytes)
        future: asyncio.Future[np.ndarray] = loop.create_future()
        now = loop.time()
        request = _Request(array, future, deadline, now)
        self._queue.append(request)
        self._waiting += 1
        self._waiting_bytes += request.nbytes
        self._queued_samples += size
        if deadline is not None:
            request.timer = loop.call_at(deadline, self._expire, request)
        self._serving += 1
        if self._serving > 1:
            self._crowded_until = now + CROWD_WINDOW_S
        if now >= self._crowd_rolls_at:
            self._crowd_before, self._crowd_now = self._crowd_now, self._serving
            self._crowd_rolls_at = now + CROWD_WINDOW_S
        elif self._serving > self._crowd_now:
            self._crowd_now = self._serving
        waiters = self._idle_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if self._fill_waiters and (
            self._queued_samples >= self.max_batch_size
            or (self.greedy and self._waiting >= self._usual_crowd())
        ):
            self._wake_fillers()
        return request

    def _leave_queue(self, request: _Request) -> None:
        """A waiting request will not be computed: free its place in the bounds now."""
        request.state = _GONE
        request.array = None
        if request.timer is not None:
            request.timer.cancel()
        self._waiting -= 1
        self._waiting_bytes -= request.nbytes
        self._queued_samples -= request.size
        self._check_drained()

    def _forget(self, request: _Request) -> None:
        """The caller stopped waiting (cancelled): a request still queued leaves the queue."""
        if request.state == _QUEUED:
            self._leave_queue(request)

    def _expire(self, request: _Request) -> None:
        if request.state == _QUEUED:
            self._leave_queue(request)
            _fail_request(request, DeadlineExceeded(f"request to model {self.name!r} expired while queued"))

    def release(self) -> None:
        """The caller of one :meth:`submit` is done with its result (or gave up on it)."""
        self._serving -= 1

    def _wake_fillers(self) -> None:
        for waiter in self._fill_waiters:
            _wake(waiter)
        self._fill_waiters.clear()

    async def infer(
        self, array: np.ndarray, deadline: float | None = None, reservation: Reservation | None = None
    ) -> np.ndarray:
        """:meth:`submit` and wait for the output, releasing the request afterwards."""
        request = self._enqueue(array, deadline, reservation)
        try:
            return await request.future
        except asyncio.CancelledError:
            self._forget(request)
            raise
        finally:
            self.release()

    async def drain(self, timeout: float | None) -> bool:
        """Stop accepting requests and wait until the queued and running ones are done.

        Returns False if ``timeout`` seconds passed first.
        """
        self._accepting = False
        if self._drained is None:
            return True
        if self.pending == 0:
            return True
        self._drained.clear()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the workers and threads, and fail anything still queued."""
        self._accepting = False
        self._closed = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            request = self._queue.popleft()
            if request.state == _QUEUED:
                self._leave_queue(request)
                _fail_request(request, Unavailable(f"model {self.name!r} was stopped"))
        for thread in self._threads:
            thread.stop()

    def _usual_crowd(self) -> int:
        """Most requests in flight together lately: more company than this is not expected."""
        return max(self._crowd_now, self._crowd_before)

    def _waits_for_company(self, now: float) -> bool:
        """Whether a batch that is not full should wait (see the module docstring): always when
        not greedy; when greedy, under concurrent load while part of the usual crowd is missing."""
        if self.max_queue_delay_s <= 0:
            return False
        if not self.greedy:
            return True
        return now < self._crowded_until and self._waiting < self._usual_crowd()

    async def _worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        queue_ = self._queue
        free_since = loop.time()
        # How long the instance waits for company after it frees up (see the module docstring).
        return_window = self.max_queue_delay_s
        while True:
            # Requests that left the queue (cancelled, expired) stay in it until met: drop them
            # from the head, so that the wait for company counts from the oldest live request.
            while queue_ and queue_[0].state != _QUEUED:
                queue_.popleft()
            if not queue_:
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle_waiters.append(waiter)
                await waiter
                continue
            now = loop.time()
            if self._queued_samples < self.max_batch_size and self._waits_for_company(now):
                deadline = max(queue_[0].enqueued + self.max_queue_delay_s, free_since + return_window)
                remaining = deadline - now
                if remaining > 0:
                    fill: asyncio.Future[None] = loop.create_future()
                    self._fill_waiters.append(fill)
                    timer = loop.call_later(remaining, _wake, fill)
                    try:
                        await fill
                    finally:
                        timer.cancel()
                    continue
            started = loop.time()
            batch = self._take(started)
            if batch:
                try:
                    await self._execute(loop, index, batch)
                except Exception:  # a bug of ours: answer the batch, keep the worker alive
                    logger.exception("model %s: batch of %d requests failed", self.name, len(batch))
                    for request in batch:
                        _fail_request(request, Unavailable(f"model {self.name!r} failed this batch"))
                free_since = loop.time()
                return_window = max(
                    self.max_queue_delay_s,
                    min(RETURN_WINDOW_FRACTION * (free_since - started), MAX_RETURN_WINDOW_S),
                )

    def _take(self, now: float) -> list[_Request]:
        """Pop the requests for one batch, in arrival order; drop cancelled and expired ones."""
        queue_ = self._queue
        batch: list[_Request] = []
        total = 0
        limit = self.max_batch_size
        while queue_:
            request = queue_[0]
            if request.state != _QUEUED:  # left the queue already (cancelled or expired)
                queue_.popleft()
                continue
            if request.future.done():  # the caller went away (cancelled)
                queue_.popleft()
                self._leave_queue(request)
                continue
            if request.deadline is not None and now >= request.deadline:
                queue_.popleft()
                self._expire(request)
                continue
            if total + request.size > limit:
                if batch:
                    break
                # Cannot happen (submit refuses it), but a request that can never fit must not
                # stay at the head: the worker would spin on an empty batch.
                queue_.popleft()
                self._leave_queue(request)
                _fail_request(request, InvalidInput(f"batch of {request.size} exceeds {limit}"))
                continue
            queue_.popleft()
            request.state = _TAKEN
            if request.timer is not None:
                request.timer.cancel()
            self._waiting -= 1
            self._waiting_bytes -= request.nbytes
            self._queued_samples -= request.size
            batch.append(request)
            total += request.size
        if not batch:
            self._check_drained()
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, index: int, batch: list[_Request]) -> None:
        self._executing += 1
        started = loop.time()
        observer = self._observer
        if observer is not None:
            observer.set_pending(self._waiting + self._executing)
        per_sample = self._per_sample_s
        failure: Exception | None = None
        try:
            arrays = [request.array for request in batch]
            merged, sizes = merge([a for a in arrays if a is not None])
            if per_sample is not None and per_sample * len(merged) < self.inline_compute_s:
                clock = time.perf_counter_ns()
                output = self._run(index, merged)
                compute_ns = time.perf_counter_ns() - clock
            else:
                output, compute_ns = await self._threads[index].submit(merged)
            parts = split(output, sizes)
        except Exception as exc:
            failure = exc
        except BaseException:
            # Cancelled (the batcher is closing): the callers still get an answer.
            for request in batch:
                _fail_request(request, Unavailable(f"model {self.name!r} was stopped"))
            raise
        else:
            seconds = compute_ns / 1e9 / len(merged)
            self._per_sample_s = (
                seconds if per_sample is None else per_sample + _EWMA_WEIGHT * (seconds - per_sample)
            )
            for request, part in zip(batch, parts, strict=True):
                request.array = None
                if not request.future.done():
                    request.future.set_result(part)
            if observer is not None:
                queue_ns = [int((started - request.enqueued) * 1e9) for request in batch]
                observer.record_batch(len(merged), queue_ns, compute_ns)
        finally:
            self._executing -= 1
            if observer is not None:
                observer.set_pending(self._waiting + self._executing)
            self._check_drained()
        if failure is not None:
            await self._fail_batch(loop, index, batch, failure)

    async def _fail_batch(
        self, loop: asyncio.AbstractEventLoop, index: int, batch: list[_Request], failure: Exception
    ) -> None:
        """A batch failed: one request alone gets the error; several are each run alone."""
        if len(batch) == 1:
            batch[0].array = None
            _fail_request(batch[0], failure)
            return
        logger.warning(
            "model %s: a batch of %d requests failed (%s); running each alone",
            self.name,
            len(batch),
            _first_line(failure),
        )
        try:
            for request in batch:
                if request.future.done():
                    continue
                if request.deadline is not None and loop.time() >= request.deadline:
                    _fail_request(
                        request, DeadlineExceeded(f"request to model {self.name!r} expired while queued")
                    )
                    continue
                await self._execute(loop, index, [request])
        except BaseException:
            for request in batch:
                _fail_request(request, Unavailable(f"model {self.name!r} was stopped"))
            raise

    def _check_drained(self) -> None:
        if self._drained is not None and self._waiting == 0 and self._executing == 0:
            self._drained.set()


def _fail_request(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
