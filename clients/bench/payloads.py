"""The requests a run sends: a few pre-built, serialized payloads that fit the model's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clients import convert
from clients.sync import InferenceClient

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY_METHOD = "/cnnserve.v1.ImageClassification/Classify"
#: Distinct pre-built requests per run: different payloads, built once.
REQUEST_VARIANTS = 8


def build_requests(
    client: InferenceClient, model: str, version: str, mode: str, batch_size: int, image: Path | None
) -> tuple[str, list[bytes]]:
    """The method and a few serialized requests (different random payloads) for the model."""
    metadata = client.model_metadata(model, version)
    if len(metadata.inputs) != 1:
        raise ValueError(f"model {model!r} has {len(metadata.inputs)} inputs; the generator supports one")
    spec = metadata.inputs[0]
    sample_shape = tuple(spec.shape[1:])
    if any(d < 0 for d in sample_shape):
        raise ValueError(f"model {model!r} input {spec.name!r} has variable dimensions {list(spec.shape)}")
    rng = np.random.default_rng(0)
    requests: list[bytes] = []
    if mode == "tensor":
        dtype = convert.DATATYPES[spec.datatype].dtype
        for _ in range(REQUEST_VARIANTS):
            batch = rng.standard_normal((batch_size, *sample_shape)).astype(dtype)
            checked = convert.check_inputs(metadata, {spec.name: batch})
            requests.append(convert.infer_request(model, checked, version=version).SerializeToString())
        return INFER_METHOD, requests
    if len(sample_shape) != 3:
        raise ValueError(f"image mode needs a CHW input; model {model!r} takes {list(spec.shape)}")
    channels, height, width = sample_shape
    for _ in range(REQUEST_VARIANTS):
        if image is not None:
            encoded = image.read_bytes()
        else:
            shape = (height, width) if channels == 1 else (height, width, 3)
            encoded = convert.encode_image(rng.integers(0, 256, size=shape, dtype=np.uint8))
        request = convert.classify_request([encoded] * batch_size, model, 1, version)
        requests.append(request.SerializeToString())
    return CLASSIFY_METHOD, requests
