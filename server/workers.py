"""``--workers N``: N supervised server processes sharing the gRPC and HTTP ports with SO_REUSEPORT.

One Python process serves RPCs on one core at most: grpc.aio's Python layer and the
event loop hold the GIL. Several processes each bind the same port with
``SO_REUSEPORT`` and the kernel spreads incoming *connections* (not requests) over
them, so a client needs several connections to use several workers.

The process started by ``python -m server`` becomes a supervisor: it starts worker
0, learns its port (which matters for ``--port 0``) and starts the other workers on
that port. Each worker loads its own copy of the models, with its share of the cores
for ONNX Runtime's automatic intra-op threads (cores // N, see
:func:`server.runtime.default_intra_op_threads`), and serves its own metrics: worker ``i`` on
``--metrics-port`` + ``i`` (with ``--metrics-port 0``, each on a free port, logged at start).

A worker that dies, whatever its exit status and also when killed by a signal, is
started again on the same port after a back-off of :data:`FIRST_BACKOFF_S` that
doubles with each death up to :data:`MAX_BACKOFF_S` (and starts over once the worker
has served for :data:`STABLE_AFTER_S`). When the workers keep dying, that is more than
:data:`RESTART_LIMIT` restarts within :data:`RESTART_WINDOW_S`, the supervisor logs
one error line, stops the others and exits 1. A start-up error before the workers
were first ready (bad settings: the same :class:`~server.errors.StartupError` a
single process reports) is not retried: one line, exit 2.

SIGTERM or SIGINT, at any time, stops the workers: those still starting are
terminated at once (they have admitted no request), serving ones drain within the
grace period (and are killed :data:`STOP_MARGIN_S` after it). A requested stop exits
0, or 1 when a serving worker did not stop cleanly. Workers ignore SIGINT (a Ctrl-C
reaches the whole process group; the supervisor answers it) and get SIGTERM when
the supervisor dies, so none outlives it holding the port.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from server.app import create_server
from server.errors import StartupError
from server.logs import setup_logging
from server.runtime import available_cores
from server.settings import Settings

logger = logging.getLogger("server")

#: How long the supervisor waits for a worker to load its models and bind before killing it.
START_TIMEOUT_S = 600.0
#: Back-off before a dead worker's first restart; it doubles with each further death...
FIRST_BACKOFF_S = 0.5
#: ...up to this.
MAX_BACKOFF_S = 30.0
#: A worker that served this long before it died starts over at FIRST_BACKOFF_S.
STABLE_AFTER_S = 60.0
#: More restarts than this (all workers together) within RESTART_WINDOW_S: the workers keep dying.
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
#: How long past the grace period a stopping worker may take before it is killed.
STOP_MARGIN_S = 10.0
#: How often the supervisor looks at its stop flag while nothing else happens.
POLL_S = 0.1

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STARTUP = 2

_PR_SET_PDEATHSIG = 1


def worker_settings(settings: Settings, index: int, port: int, http_port: int | None = None) -> Settings:
    """Worker ``index``'s settings: the shared ports (``http_port`` None: the settings') and its own
    metrics port."""
    metrics_port = settings.metrics_port
    if metrics_port > 0:
        metrics_port += index
    http = settings.http_port if http_port is None else http_port
    return replace(settings, port=port, http_port=http, metrics_port=metrics_port)


def describe_exit(exitcode: int | None) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL`` (multiprocessing's negative codes)."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


# -- the worker process -------------------------------------------------------------------------


def _end_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so that no worker outlives it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: a killed supervisor leaves its workers running
        return
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def _serve_worker(settings: Settings, index: int, conn: Connection) -> int:
    try:
        server, port = await create_server(settings)
    except StartupError as exc:
        conn.send(("error", exc.message))
        return EXIT_STARTUP
    # Only now does SIGTERM mean "drain": until here it keeps its default action and ends the
    # process at once, since a worker still loading has admitted no request.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    logger.info(
        "worker %d (pid %d) serving on port %d, metrics on %s, HTTP on %s",
        index,
        os.getpid(),
        port,
        server.metrics_port if server.metrics_port is not None else "-",
        server.http_port if server.http_port is not None else "-",
    )
    conn.send(("serving", (port, server.http_port)))
    await stop.wait()
    await server.stop()
    return EXIT_OK


def _worker_main(settings: Settings, index: int, conn: Connection, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(parent_pid)
    setup_logging(settings.log_level, settings.log_format)
    code = asyncio.run(_serve_worker(settings, index, conn))
    conn.close()
    raise SystemExit(code)


# -- the supervisor ---------------------------------------------------------------------------


@dataclass
class _Worker:
    """One worker slot: the process now in it (None while waiting to restart) and its history."""

    index: int
    process: BaseProcess | None = None
    #: The pipe on which the worker reports; open until it has.
    conn: Connection | None = None
    started_at: float = 0.0
    serving_since: float | None = None
    #: The StartupError message the worker reported, if it did.
    error: str | None = None
    backoff: float = FIRST_BACKOFF_S
    restart_at: float | None = None


class _Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers = [_Worker(i) for i in range(settings.workers)]
        #: The shared gRPC and HTTP ports, once worker 0 has bound them.
        self.port: int | None = None
        self.http_port: int | None = None
        self.ready = False
        self.restarts: deque[float] = deque()
        self.stop_requested = False
        self.context = multiprocessing.get_context("spawn")

    def request_stop(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def run(self) -> int:
        """Supervise until a stop signal or a failure; return the exit code."""
        self._start(self.workers[0])
        while not self.stop_requested:
            waitables: list[Connection | int] = [w.conn for w in self.workers if w.conn is not None]
            waitables += [w.process.sentinel for w in self.workers if w.process is not None]
            wait(waitables, timeout=POLL_S)
            code = self._step(time.monotonic())
            if code is not None:
                self._stop_all()
                return code
        logger.info("stop signal received; stopping %d workers", len(self.workers))
        return EXIT_OK if self._stop_all() else EXIT_FAILED

    def _start(self, worker: _Worker) -> None:
        port = self.settings.port if self.port is None else self.port
        parent, child = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main,
            args=(
                worker_settings(self.settings, worker.index, port, self.http_port),
                worker.index,
                child,
                os.getpid(),
            ),
            name=f"cnnserve-worker-{worker.index}",
        )
        process.start()
        child.close()
        worker.process, worker.conn = process, parent
        worker.started_at = time.monotonic()
        worker.serving_since = worker.error = worker.restart_at = None
        logger.info("worker %d (pid %s) starting", worker.index, process.pid)

    def _step(self, now: float) -> int | None:
        """React to what happened: reports, deaths, due restarts; an exit code ends supervision."""
        for worker in self.workers:
            self._read_report(worker, now)
            process = worker.process
            if process is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    self._start(worker)
                continue
            if worker.serving_since is None and now - worker.started_at > START_TIMEOUT_S:
                logger.error(
                    "worker %d did not start within %.0fs; killing it", worker.index, START_TIMEOUT_S
                )
                process.kill()
                process.join()
            if process.exitcode is not None:
                code = self._on_death(worker, process, now)
                if code is not None:
                    return code
        if not self.ready and all(w.serving_since is not None for w in self.workers):
            self.ready = True
            logger.info("ready on port %d (%d workers)", self.port, len(self.workers))
        return None

    def _read_report(self, worker: _Worker, now: float) -> None:
        if worker.conn is None or not worker.conn.poll():
            return
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):  # it died before reporting: its exit code says the rest
            kind, value = "", None
        worker.conn.close()
        worker.conn = None
        if kind == "error":
            worker.error = value
        elif kind == "serving":
            worker.serving_since = now
            if self.port is None:
                self.port, self.http_port = value
                for other in self.workers[1:]:
                    self._start(other)

    def _on_death(self, worker: _Worker, process: BaseProcess, now: float) -> int | None:
        process.join()
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None
        worker.process = None
        if worker.error is not None and not self.ready:
            logger.error("cannot start: %s", worker.error)
            return EXIT_STARTUP
        served = now - worker.serving_since if worker.serving_since is not None else None
        logger.error(
            "worker %d (pid %s) %s %s",
            worker.index,
            process.pid,
            describe_exit(process.exitcode),
            f"after serving {served:.1f}s" if served is not None else "while starting",
        )
        if served is not None and served >= STABLE_AFTER_S:
            worker.backoff = FIRST_BACKOFF_S
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if len(self.restarts) >= RESTART_LIMIT:
            logger.error(
                "workers keep dying: %d restarts within %.0fs and worker %d %s; stopping",
                len(self.restarts),
                RESTART_WINDOW_S,
                worker.index,
                describe_exit(process.exitcode),
            )
            return EXIT_FAILED
        self.restarts.append(now)
        worker.restart_at = now + worker.backoff
        logger.warning("restarting worker %d in %.1fs", worker.index, worker.backoff)
        worker.backoff = min(MAX_BACKOFF_S, worker.backoff * 2)
        return None

    def _stop_all(self) -> bool:
        """Stop every worker; whether each serving one drained and exited 0."""
        serving = [w.process for w in self.workers if w.process is not None and w.serving_since is not None]
        starting = [w.process for w in self.workers if w.process is not None and w.serving_since is None]
        for process in serving + starting:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = (
            time.monotonic() + self.settings.shutdown_delay + self.settings.grace_period + STOP_MARGIN_S
        )
        clean = True
        for process in serving + starting:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("worker %s did not stop within the grace period; killing it", process.name)
                process.kill()
                process.join()
            if process in serving and process.exitcode != 0:
                logger.error("worker %s %s while stopping", process.name, describe_exit(process.exitcode))
                clean = False
        for worker in self.workers:
            if worker.conn is not None:
                worker.conn.close()
                worker.conn = None
            worker.process = None
        return clean


def run_workers(settings: Settings) -> int:
    """Run and supervise ``settings.workers`` server processes on one port; return the exit code."""
    cores = available_cores()
    if settings.intra_op_threads:
        threads = f"{settings.intra_op_threads} intra-op threads per session (--intra-op-threads)"
    else:
        threads = f"about {max(1, cores // settings.workers)} cores each for intra-op threads"
    logger.info("%d workers on %d cores: %s", settings.workers, cores, threads)
    supervisor = _Supervisor(settings)
    previous = {sig: signal.signal(sig, supervisor.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
