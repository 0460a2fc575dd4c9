"""Fixtures for server tests: a real repository of tiny models and a real server on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from server_testlib import RGB_LABELS, Running, TinyModel, publish_tiny, start


@pytest.fixture
def repository(tmp_path: Path) -> tuple[Path, dict[str, TinyModel]]:
    repo = tmp_path / "repo"
    models = {
        "tiny": publish_tiny(repo, "tiny", seed=1),
        "tinyrgb": publish_tiny(repo, "tinyrgb", channels=3, labels=RGB_LABELS, seed=2),
    }
    return repo, models


@pytest.fixture
async def running(repository: tuple[Path, dict[str, TinyModel]]) -> AsyncIterator[Running]:
    repo, models = repository
    run = await start(repo, models, metrics_port=0)
    try:
        yield run
    finally:
        await run.channel.close(None)
        await run.server.stop(0)
