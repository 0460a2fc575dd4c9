"""End to end: a model produced by ``python -m export`` served by the server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from server_testlib import Running, export_lenet, infer_request, ort_reference, output_array, start

from modelrepo import preprocess_image, read_version
from protocol import grpc_service_pb2 as pb
from protocol import image_classification_pb2 as img_pb
from server.tensors import softmax

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_lenet(tmp_path_factory.mktemp("exported"), "--epochs", "1", "--max-train-samples", "300")


@pytest.fixture
async def lenet(exported: Path) -> AsyncIterator[Running]:
    run = await start(exported, {})
    try:
        yield run
    finally:
        await run.channel.close(None)
        await run.server.stop(0)


@pytest.mark.slow
async def test_exported_lenet_is_served(lenet: Running, exported: Path) -> None:
    version = read_version(exported, "lenet", 1)
    meta = await lenet.infer.ModelMetadata(pb.ModelMetadataRequest(name="lenet"))
    assert [list(t.shape) for t in meta.inputs] == [[-1, 1, 28, 28]]

    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((n, 1, 28, 28)).astype(np.float32) for n in (1, 3, 8, 1, 2)]
    responses = await asyncio.gather(*(lenet.infer.ModelInfer(infer_request("lenet", x)) for x in inputs))
    for x, response in zip(inputs, responses, strict=True):
        np.testing.assert_allclose(
            output_array(response), ort_reference(exported, "lenet", 1, x), rtol=1e-4, atol=1e-5
        )

    image = Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    reply = await lenet.images.Classify(
        img_pb.ClassifyRequest(model_name="lenet", images=[buffer.getvalue()], top_k=3)
    )
    x = preprocess_image(Image.open(io.BytesIO(buffer.getvalue())), version.config.preprocessing)[None]
    probabilities = softmax(ort_reference(exported, "lenet", 1, x))[0]
    best = np.argsort(-probabilities, kind="stable")[:3]
    assert [c.index for c in reply.results[0].classes] == best.tolist()
    assert [c.label for c in reply.results[0].classes] == [version.config.labels[i] for i in best]
