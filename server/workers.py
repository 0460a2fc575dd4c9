"""``--workers N``: N server processes sharing one gRPC port with SO_REUSEPORT.

One Python process serves RPCs on one core at most: grpc.aio's Python layer and the
event loop hold the GIL. Several processes each bind the same port with
``SO_REUSEPORT`` and the kernel spreads incoming *connections* (not requests) over
them, so a client needs several connections to use several workers.

The process started by ``python -m server`` becomes a supervisor: it starts worker
0, learns its port (which matters for ``--port 0``), starts the other workers on that
port, and on SIGTERM or SIGINT passes the signal on and waits for every worker to
drain. If a worker exits on its own, the supervisor stops the others and exits with
that worker's status. Each worker loads its own copy of the models and serves its
own metrics: worker ``i`` on ``--metrics-port`` + ``i`` (with ``--metrics-port 0``,
each on a free port, logged at start).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from server.app import create_server
from server.errors import StartupError
from server.logs import setup_logging
from server.settings import Settings

logger = logging.getLogger("server")

#: How long the supervisor waits for a worker to load its models and bind.
START_TIMEOUT_S = 600.0


def worker_settings(settings: Settings, index: int, port: int) -> Settings:
    """Worker ``index``'s settings: the shared port and its own metrics port."""
    metrics_port = settings.metrics_port
    if metrics_port > 0:
        metrics_port += index
    return replace(settings, port=port, metrics_port=metrics_port)


async def _serve_worker(settings: Settings, index: int, conn: Connection) -> int:
    try:
        server, port = await create_server(settings)
    except StartupError as exc:
        logger.error("worker %d cannot start: %s", index, exc.message)
        conn.send(None)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger.info(
        "worker %d (pid %d) serving on port %d, metrics on %s",
        index,
        os.getpid(),
        port,
        server.metrics_port if server.metrics_port is not None else "-",
    )
    conn.send(port)
    await stop.wait()
    await server.stop()
    return 0


def _worker_main(settings: Settings, index: int, conn: Connection) -> None:
    setup_logging(settings.log_level, settings.log_format)
    code = asyncio.run(_serve_worker(settings, index, conn))
    conn.close()
    raise SystemExit(code)


def _start(settings: Settings, index: int) -> tuple[BaseProcess, int | None]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(
        target=_worker_main, args=(settings, index, child), name=f"cnnserve-worker-{index}"
    )
    process.start()
    child.close()
    port: int | None = None
    deadline = time.monotonic() + START_TIMEOUT_S
    while process.is_alive() and time.monotonic() < deadline:
        if parent.poll(0.2):
            try:
                port = parent.recv()
            except EOFError:
                port = None
            break
    parent.close()
    return process, port


def _stop_all(processes: list[BaseProcess], grace: float) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 10
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            logger.error("worker %s did not stop within the grace period; killing it", process.name)
            process.kill()
            process.join()


def run_workers(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until SIGTERM/SIGINT; return the exit code."""
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes: list[BaseProcess] = []
    try:
        first, port = _start(worker_settings(settings, 0, settings.port), 0)
        processes.append(first)
        if port is None:
            _stop_all(processes, settings.grace_period)
            return first.exitcode or 2
        for index in range(1, settings.workers):
            process, worker_port = _start(worker_settings(settings, index, port), index)
            processes.append(process)
            if worker_port is None:
                _stop_all(processes, settings.grace_period)
                return process.exitcode or 2
        logger.info("ready on port %d (%d workers)", port, settings.workers)
        while not stop_requested:
            exited = next((p for p in processes if not p.is_alive()), None)
            if exited is not None:
                logger.error("worker %s exited with %s; stopping the others", exited.name, exited.exitcode)
                _stop_all(processes, settings.grace_period)
                return exited.exitcode or 1
            time.sleep(0.2)
        logger.info("stop signal received; stopping %d workers", len(processes))
        _stop_all(processes, settings.grace_period)
        return max((p.exitcode or 0) for p in processes)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
