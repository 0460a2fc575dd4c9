"""Fixtures for the reliability suite: a repository of small models and a server on port 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_testlib import ServerThread, bad_input_settings, publish_fleet
from server_testlib import TinyModel


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, dict[str, TinyModel]]:
    repo = tmp_path / "repo"
    return repo, publish_fleet(repo)


@pytest.fixture(scope="module")
def bad_input_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for the whole bad-input table and the fuzzing (they must not disturb it)."""
    repo = tmp_path_factory.mktemp("badinput") / "repo"
    publish_fleet(repo)
    server = ServerThread(bad_input_settings(repo))
    try:
        yield server
    finally:
        server.stop()
