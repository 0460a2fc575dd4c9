"""A real server on 127.0.0.1:0, serving tiny ONNX models built with onnx.helper.

The server runs on its own event loop in a background thread for the whole test
session, so synchronous tests, asyncio tests (on pytest's loop) and subprocesses
(the CLIs) all talk to the same server over real gRPC.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clienttest_support import RunningServer, publish_tiny, server_in_thread

from modelrepo import BatchingConfig


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server with two tiny models: ``tiny`` (batching) and ``slow`` (2 s queue delay)."""
    from server import Settings

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
        http_port=0,
        metrics_port=0,
        device="cpu",
        default_model="tiny",
        intra_op_threads=1,
        # 'slow' relies on a lone request waiting out the queue delay, which greedy batching skips.
        greedy_batching=False,
        grace_period=1.0,
        log_level="WARNING",
    )
    with server_in_thread(settings) as (address, instance):
        yield RunningServer(
            address=address,
            metrics_url=f"http://127.0.0.1:{instance.metrics_port}/metrics",
            repository=repository,
        )


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
