"""The asyncio client against a real server: the same behaviour as the synchronous one."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from clienttest_support import SIDE, RunningServer, tiny_logits

from clients import AsyncInferenceClient, InferenceServerError


async def test_async_client_end_to_end(server: RunningServer, image_files: dict) -> None:
    async with AsyncInferenceClient(server.address, timeout=10) as client:
        assert await client.server_live()
        assert await client.server_ready()
        assert await client.model_ready("tiny")
        assert await client.health("tiny") == "SERVING"
        assert {m.name for m in await client.list_models(ready=True)} == {"tiny", "slow"}
        assert (await client.model_metadata("tiny")).inputs[0].shape == (-1, 1, SIDE, SIDE)
        assert (await client.model_config("tiny")).max_batch_size == 16

        batch = np.random.default_rng(1).standard_normal((3, 1, SIDE, SIDE)).astype(np.float32)
        outputs = await client.infer("tiny", batch)
        np.testing.assert_allclose(outputs["logits"], tiny_logits(batch), rtol=1e-5, atol=1e-5)

        results = await client.classify(
            [image_files["white"], image_files["black"], np.zeros((1, SIDE, SIDE), np.float32) - 1],
            model="tiny",
            top_k=2,
        )
        assert [r.label for r in results] == ["bright", "dark", "dark"]

        # Concurrent calls share the one channel.
        many = await asyncio.gather(*(client.infer("tiny", batch[i : i + 1]) for i in range(3)))
        np.testing.assert_allclose(
            np.concatenate([m["logits"] for m in many]), tiny_logits(batch), rtol=1e-5, atol=1e-5
        )


async def test_async_errors_and_timeouts(server: RunningServer) -> None:
    async with AsyncInferenceClient(server.address, timeout=10) as client:
        with pytest.raises(InferenceServerError) as info:
            await client.infer("missing", np.zeros((1, 1, SIDE, SIDE), np.float32))
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert "missing" in info.value.message

        with pytest.raises(InferenceServerError) as info:
            await client.infer("tiny", np.zeros((1, 2, SIDE, SIDE), np.float32))
        assert info.value.local and info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "expects [N,1,8,8]" in info.value.message

        with pytest.raises(InferenceServerError) as info:
            await client.infer("slow", np.zeros((1, 1, SIDE, SIDE), np.float32), timeout=0.3)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_async_client_made_before_the_loop_runs(server: RunningServer) -> None:
    """A client built outside any event loop works inside the loop that later uses it."""
    client = AsyncInferenceClient(server.address, timeout=10)

    async def use() -> bool:
        async with client:
            return await client.server_ready()

    assert asyncio.run(use())
