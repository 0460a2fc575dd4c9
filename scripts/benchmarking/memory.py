"""The server's resident memory with a set of models loaded, after one request to each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarking.commands import log
from benchmarking.processes import Server
from clients import InferenceClient


def measure_memory(repository: Path, models: Sequence[str], repeats: int, label: str) -> dict[str, Any]:
    """RSS of a fresh server per repeat with ``models`` (all of the repository when empty) loaded.

    Read once the server is ready (``rss_idle_bytes``) and again after one batch-1 request
    to every loaded model (``rss_bytes``): the first request sizes ONNX Runtime's arenas.
    """
    idle: list[int] = []
    served: list[int] = []
    loaded: list[str] = []
    command = ""
    for repeat in range(repeats):
        with Server(repository, models) as server, InferenceClient(server.address, timeout=120) as client:
            command = server.shown_command()
            loaded = [m.name for m in client.list_models(ready=True)]
            idle.append(server.rss_bytes())
            for name in loaded:
                metadata = client.model_metadata(name)
                shape = (1, *metadata.inputs[0].shape[1:])
                client.infer(name, np.zeros(shape, dtype=np.float32))
            served.append(server.rss_bytes())
        log(f"memory {label}, repeat {repeat + 1}: {len(loaded)} models, RSS {served[-1] / 2**20:.0f} MiB")
    return {"command": command, "models": loaded, "rss_idle_bytes": idle, "rss_bytes": served}
