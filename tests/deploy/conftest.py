"""Fixtures for the deployment tests: the parsed compose file and Dockerfiles."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploytools import (
    COMPOSE_FILE,
    EXPORT_DOCKERFILE,
    SERVER_DOCKERFILE,
    Dockerfile,
    parse_dockerfile,
    resolve_defaults,
)


@pytest.fixture(scope="session")
def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), f"{COMPOSE_FILE} must hold a mapping"
    return data


@pytest.fixture(scope="session")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file as ``docker compose`` would see it with no .env file."""
    resolved = resolve_defaults(compose_raw)
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="session")
def server_dockerfile() -> Dockerfile:
    return parse_dockerfile(SERVER_DOCKERFILE)


@pytest.fixture(scope="session")
def export_dockerfile() -> Dockerfile:
    return parse_dockerfile(EXPORT_DOCKERFILE)
