"""The clients' ``token`` option against a real server that requires a bearer token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from clienttest_support import publish_tiny, server_in_thread, tiny_logits

from clients import AsyncInferenceClient, InferenceClient, InferenceServerError
from modelrepo import BatchingConfig

TOKEN = "client-token-0123456789abcdef"
SIDE = 8


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server that requires ``TOKEN`` on every RPC but health."""
    from server import Settings

    root = tmp_path_factory.mktemp("auth-repo")
    repository = root / "repository"
    publish_tiny(repository, root, "tiny", BatchingConfig(max_batch_size=4, max_queue_delay_us=0))
    settings = Settings(
        repository=repository,
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=-1,
        device="cpu",
        intra_op_threads=1,
        grace_period=0.5,
        log_level="WARNING",
        auth_token=TOKEN,
    )
    with server_in_thread(settings) as (address, _):
        yield address, root


def _batch() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(2, 1, SIDE, SIDE)).astype(np.float32)


def test_sync_client_sends_the_token(token_server: tuple[str, Path]) -> None:
    address, _ = token_server
    with InferenceClient(address, timeout=10, token=TOKEN) as client:
        batch = _batch()
        (output,) = client.infer("tiny", batch).values()
        np.testing.assert_allclose(output, tiny_logits(batch), rtol=1e-5, atol=1e-5)
    with InferenceClient(address, timeout=10) as client, pytest.raises(InferenceServerError) as info:
        client.list_models()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in info.value.message


async def test_async_client_sends_the_token(token_server: tuple[str, Path]) -> None:
    address, _ = token_server
    async with AsyncInferenceClient(address, timeout=10, token=TOKEN) as client:
        assert [entry.name for entry in await client.list_models()] == ["tiny"]
    async with AsyncInferenceClient(address, timeout=10, token="wrong-token-wrong-token") as client:
        with pytest.raises(InferenceServerError) as info:
            await client.list_models()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_classify_cli_reads_the_token_from_the_environment(token_server: tuple[str, Path]) -> None:
    address, root = token_server
    from PIL import Image

    image = root / "digit.png"
    Image.new("L", (SIDE, SIDE), 200).save(image)
    command = [sys.executable, "-m", "clients.classify", "--server", address, "--model", "tiny", str(image)]
    env = {k: v for k, v in os.environ.items() if k != "CNNSERVE_AUTH_TOKEN"}
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    accepted = subprocess.run(
        command, capture_output=True, text=True, env={**env, "CNNSERVE_AUTH_TOKEN": TOKEN}, timeout=60
    )
    assert accepted.returncode == 0, accepted.stderr
