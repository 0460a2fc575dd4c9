"""Tiny ONNX models for the client tests, built with onnx.helper (no torch, nothing downloaded)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec, publish

SIDE = 8
LABELS = ("bright", "dark", "neutral")


def tiny_weights() -> tuple[np.ndarray, np.ndarray]:
    """logits = flatten(x) @ W + b: class 0 grows with brightness, class 1 with darkness."""
    weights = np.zeros((SIDE * SIDE, len(LABELS)), dtype=np.float32)
    weights[:, 0] = 4.0 / (SIDE * SIDE)
    weights[:, 1] = -4.0 / (SIDE * SIDE)
    bias = np.array([0.0, 0.0, 0.5], dtype=np.float32)
    return weights, bias


def tiny_logits(batch: np.ndarray) -> np.ndarray:
    """What the tiny model computes, in numpy, for checking the server's answers."""
    weights, bias = tiny_weights()
    result: np.ndarray = batch.reshape(len(batch), -1) @ weights + bias
    return result


def _tiny_onnx(path: Path) -> None:
    weights, bias = tiny_weights()
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(LABELS)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def publish_tiny(repository: Path, scratch: Path, name: str, batching: BatchingConfig) -> None:
    model_file = scratch / f"{name}.onnx"
    _tiny_onnx(model_file)
    config = ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", (1, SIDE, SIDE)),
        output=TensorSpec("logits", "FP32", (len(LABELS),)),
        labels=LABELS,
        preprocessing=Preprocessing(height=SIDE, width=SIDE, channels=1, mean=(0.5,), std=(0.5,)),
        batching=batching,
    )
    publish(repository, config, model_file, {"source": "tests/clients"})


@dataclass(frozen=True)
class RunningServer:
    """Where the test server listens."""

    address: str
    metrics_url: str
    repository: Path


@contextmanager
def server_in_thread(settings: Any) -> Iterator[tuple[str, Any]]:
    """Run ``create_server(settings)`` on its own event loop in a thread; yield (address, server).

    Synchronous tests, asyncio tests on pytest's loop and subprocesses (the CLIs) can all
    reach it over real gRPC. The server is stopped, and the thread joined, on exit.
    """
    from server import create_server

    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        try:
            instance, port = await create_server(settings)
        except BaseException as exc:
            holder["error"] = exc
            started.set()
            return
        stop = asyncio.Event()
        holder.update(server=instance, port=port, stop=stop)
        started.set()
        await stop.wait()
        await instance.stop(0.5)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60), "server did not start within 60 s"
    if "error" in holder:
        raise RuntimeError(f"server failed to start: {holder['error']!r}")
    try:
        yield f"127.0.0.1:{holder['port']}", holder["server"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        loop.close()


def publish_version(
    repository: Path,
    scratch: Path,
    name: str,
    *,
    side: int,
    labels: tuple[str, ...],
    input_name: str = "input",
    output_name: str = "logits",
) -> np.ndarray:
    """Publish the next version of ``name``: logits = flatten(x) @ W, with W returned.

    For the model swap tests, where a new version takes another input shape or name, or
    returns other classes.
    """
    weights = np.random.default_rng(len(labels) * 100 + side).standard_normal((side * side, len(labels)))
    weights = weights.astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [input_name], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], [output_name]),
        ],
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 1, side, side])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", len(labels)])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_file = scratch / f"{name}-{side}-{len(labels)}-{input_name}.onnx"
    onnx.save(model, str(model_file))
    config = ModelConfig(
        name=name,
        input=TensorSpec(input_name, "FP32", (1, side, side)),
        output=TensorSpec(output_name, "FP32", (len(labels),)),
        labels=labels,
        preprocessing=Preprocessing(height=side, width=side, channels=1, mean=(0.5,), std=(0.5,)),
        batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=100),
    )
    publish(repository, config, model_file, {"source": "tests/clients"})
    return weights
