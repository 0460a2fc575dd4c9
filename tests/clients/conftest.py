"""A real server on 127.0.0.1:0, serving tiny ONNX models built with onnx.helper.

The server runs on its own event loop in a background thread for the whole test
session, so synchronous tests, asyncio tests (on pytest's loop) and subprocesses
(the CLIs) all talk to the same server over real gRPC.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clienttest_support import RunningServer, publish_tiny

from modelrepo import BatchingConfig


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server with two tiny models: ``tiny`` (batching) and ``slow`` (2 s queue delay)."""
    from server import Settings, create_server

    root = tmp_path_factory.mktemp("clients-repo")
    repository = root / "repository"
    publish_tiny(repository, root, "tiny", BatchingConfig(max_batch_size=16, max_queue_delay_us=200))
    # A request alone in the queue waits the full delay for company: a reliable slow call
    # that costs no CPU, for deadline tests.
    publish_tiny(repository, root, "slow", BatchingConfig(max_batch_size=8, max_queue_delay_us=2_000_000))
    settings = Settings(
        repository=repository,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        device="cpu",
        default_model="tiny",
        intra_op_threads=1,
        # 'slow' relies on a lone request waiting out the queue delay, which greedy batching skips.
        greedy_batching=False,
        grace_period=1.0,
        log_level="WARNING",
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        try:
            instance, port = await create_server(settings)
        except BaseException as exc:
            holder["error"] = exc
            started.set()
            return
        holder["server"], holder["port"] = instance, port
        stop = asyncio.Event()
        holder["stop"] = stop
        started.set()
        await stop.wait()
        await instance.stop(0.5)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60), "server did not start within 60 s"
    if "error" in holder:
        raise RuntimeError(f"server failed to start: {holder['error']!r}")
    instance = holder["server"]
    metrics_port = getattr(instance, "metrics_port", None)
    try:
        yield RunningServer(
            address=f"127.0.0.1:{holder['port']}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            repository=repository,
        )
    finally:
        stop_event = holder["stop"]
        assert isinstance(stop_event, asyncio.Event)
        loop.call_soon_threadsafe(stop_event.set)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A white and a black PNG (different sizes: the server resizes)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    white = root / "white.png"
    black = root / "black.png"
    Image.new("L", (20, 12), 255).save(white)
    Image.new("RGB", (8, 8), (0, 0, 0)).save(black)
    return {"white": white, "black": black}
