"""The gRPC inference server: KServe v2 over ONNX Runtime with dynamic batching.

``create_server(settings)`` is the factory tests and ``python -m server`` use.
"""

from __future__ import annotations

from server.app import InferenceServer, create_server
from server.settings import Settings

__all__ = ["InferenceServer", "Settings", "create_server"]
