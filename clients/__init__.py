"""Clients for the cnnserve gRPC server (KServe v2 + the image classification service).

::

    from clients import InferenceClient

    with InferenceClient("127.0.0.1:8001") as client:
        best = client.classify("digit.png", model="lenet", top_k=3)[0]
        print(best.label, best.score)
        logits = client.infer("lenet", batch)["logits"]

:class:`AsyncInferenceClient` has the same methods as coroutines. Every failure is
an :class:`InferenceServerError` carrying the gRPC status code and the server's
message. ``retry=RetryPolicy()`` lets gRPC send again the calls that are safe to repeat
when a replica or proxy refuses them with UNAVAILABLE (off by default; :mod:`clients.retry`).
Importing this package never imports onnxruntime or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.aio import AsyncInferenceClient
    from clients.errors import InferenceServerError
    from clients.retry import RetryPolicy
    from clients.sync import InferenceClient
    from clients.types import Classification, ClassScore, ModelIndexEntry, ModelMetadata, TensorMetadata

# Imported on first use, so that `python -m clients.health` (the container health check,
# run every few seconds) loads grpc alone, not numpy and Pillow.
_EXPORTS = {
    "AsyncInferenceClient": "clients.aio",
    "ClassScore": "clients.types",
    "Classification": "clients.types",
    "InferenceClient": "clients.sync",
    "InferenceServerError": "clients.errors",
    "ModelIndexEntry": "clients.types",
    "ModelMetadata": "clients.types",
    "RetryPolicy": "clients.retry",
    "TensorMetadata": "clients.types",
}

__all__ = [
    "AsyncInferenceClient",
    "ClassScore",
    "Classification",
    "InferenceClient",
    "InferenceServerError",
    "ModelIndexEntry",
    "ModelMetadata",
    "RetryPolicy",
    "TensorMetadata",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
