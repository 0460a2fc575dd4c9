"""Cached model metadata after the server swaps in a real second version (RepositoryModelLoad)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from clienttest_support import publish_version, server_in_thread

from clients import AsyncInferenceClient, InferenceClient, InferenceServerError
from protocol import grpc_service_pb2, grpc_service_pb2_grpc

V1_LABELS = ("a", "b", "c")
V2_LABELS = ("p", "q", "r", "s")


@dataclass(frozen=True)
class SwapServer:
    address: str
    repository: Path
    scratch: Path

    def publish_and_load(self, **version: object) -> np.ndarray:
        """Publish the next version of ``swap`` and have the server load it; return its weights."""
        weights = publish_version(self.repository, self.scratch, "swap", **version)  # type: ignore[arg-type]
        with grpc.insecure_channel(self.address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.RepositoryModelLoad(
                grpc_service_pb2.RepositoryModelLoadRequest(model_name="swap"), timeout=30
            )
        return weights


@pytest.fixture
def swap(tmp_path: Path) -> Iterator[SwapServer]:
    """A server of its own (the swaps must not reach other tests), with model control on."""
    from server import Settings

    repository, scratch = tmp_path / "repository", tmp_path
    publish_version(repository, scratch, "swap", side=8, labels=V1_LABELS)
    settings = Settings(
        repository=repository,
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=-1,
        device="cpu",
        intra_op_threads=1,
        grace_period=1.0,
        log_level="WARNING",
        allow_model_control=True,
    )
    with server_in_thread(settings) as (address, _):
        yield SwapServer(address, repository, scratch)


def _batch(side: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(side).standard_normal((n, 1, side, side)).astype(np.float32)


def test_new_input_shape_is_used_after_the_swap(swap: SwapServer) -> None:
    with InferenceClient(swap.address, timeout=10) as client:
        client.infer("swap", _batch(8))  # caches version 1's metadata
        assert client.model_metadata("swap").versions == ("1",)
        weights = swap.publish_and_load(side=4, labels=V2_LABELS)

        # Stale metadata says [N,1,8,8]; the client checks again before refusing the new shape.
        batch = _batch(4)
        logits = client.infer("swap", batch)["logits"]
        np.testing.assert_allclose(logits, batch.reshape(2, -1) @ weights, rtol=1e-4, atol=1e-4)
        metadata = client.model_metadata("swap")
        assert metadata.versions == ("2",) and metadata.inputs[0].shape == (-1, 1, 4, 4)

        # The old shape is now refused, in version 2's words.
        with pytest.raises(InferenceServerError) as info:
            client.infer("swap", _batch(8))
        assert info.value.local and "expects [N,1,4,4]" in info.value.message

        [result] = client.classify(_batch(4, 1)[0], model="swap", top_k=4)
        assert result.version == "2" and {c.label for c in result.classes} == set(V2_LABELS)


def test_renamed_input_and_output_are_retried_once(swap: SwapServer) -> None:
    """Stale names pass the client's check; the server's INVALID_ARGUMENT makes it refresh and retry."""
    with InferenceClient(swap.address, timeout=10) as client:
        client.infer("swap", _batch(8))
        weights = swap.publish_and_load(side=8, labels=V2_LABELS, input_name="pixels", output_name="scores")
        batch = _batch(8)
        outputs = client.infer("swap", batch)
        assert set(outputs) == {"scores"}
        np.testing.assert_allclose(outputs["scores"], batch.reshape(2, -1) @ weights, rtol=1e-4, atol=1e-4)

        swap.publish_and_load(side=8, labels=V1_LABELS, input_name="image", output_name="out")
        # The tensor route of classify asks for the output by its cached name.
        [result] = client.classify(batch[0], model="swap", top_k=3)
        assert result.version == "3" and {c.label for c in result.classes} == set(V1_LABELS)

        # An error stale metadata does not explain is not retried: the server's own words.
        with pytest.raises(InferenceServerError) as info:
            client.infer("swap", batch, outputs=["nope"])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and not info.value.local
        assert "output 'nope' is not an output of model 'swap'" in info.value.message


def test_an_answer_from_a_new_version_drops_the_cache(swap: SwapServer) -> None:
    """Same inputs, more classes: nothing fails, but the answer's version shows the swap."""
    with InferenceClient(swap.address, timeout=10) as client:
        assert client.model_metadata("swap").outputs[0].shape == (-1, len(V1_LABELS))
        swap.publish_and_load(side=8, labels=V2_LABELS)
        assert client.infer("swap", _batch(8))["logits"].shape == (2, len(V2_LABELS))
        metadata = client.model_metadata("swap")
        assert metadata.versions == ("2",) and metadata.outputs[0].shape == (-1, len(V2_LABELS))

        # A pinned version that is gone stays NOT_FOUND (refreshing cannot help; no loop).
        with pytest.raises(InferenceServerError) as info:
            client.infer("swap", _batch(8), version="1")
        assert info.value.code == grpc.StatusCode.NOT_FOUND and "version '1'" in info.value.message


async def test_async_client_follows_the_swap(swap: SwapServer) -> None:
    async with AsyncInferenceClient(swap.address, timeout=10) as client:
        await client.infer("swap", _batch(8))
        weights = swap.publish_and_load(side=4, labels=V2_LABELS, input_name="pixels")
        batch = _batch(4)
        logits = (await client.infer("swap", batch))["logits"]
        np.testing.assert_allclose(logits, batch.reshape(2, -1) @ weights, rtol=1e-4, atol=1e-4)
        assert (await client.model_metadata("swap")).inputs[0].name == "pixels"

        swap.publish_and_load(side=4, labels=V1_LABELS, input_name="image")
        assert (await client.infer("swap", batch))["logits"].shape == (2, len(V1_LABELS))
        [result] = await client.classify(batch[0], model="swap", top_k=3)
        assert result.version == "3" and {c.label for c in result.classes} == set(V1_LABELS)
