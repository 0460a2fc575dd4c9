"""Helpers for server tests: tiny ONNX classifiers in a real repository, a real server on port 0.

A uniquely named module (not ``conftest``) so test files can import it by name.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from grpc import aio
from onnx import TensorProto, helper, numpy_helper

import modelrepo
from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec
from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc
from protocol import image_classification_pb2_grpc as img_grpc
from server import InferenceServer, Settings, create_server

GRAY_LABELS = ("zero", "one", "two", "three")
RGB_LABELS = ("red", "green", "blue")


def linear_weights(in_features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((classes, in_features)).astype(np.float32),
        rng.standard_normal(classes).astype(np.float32),
    )


def build_classifier(
    path: Path, shape: Sequence[int], classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``logits = flatten(input) @ W.T + b`` as an ONNX model; return (W, b)."""
    features = int(np.prod(shape))
    weight, bias = linear_weights(features, classes, seed)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weight, bias


@dataclass(frozen=True)
class TinyModel:
    name: str
    config: ModelConfig
    weight: np.ndarray
    bias: np.ndarray

    def expected(self, batch: np.ndarray) -> np.ndarray:
        """Reference logits computed in numpy."""
        flat = batch.reshape(len(batch), -1).astype(np.float64)
        return (flat @ self.weight.T.astype(np.float64) + self.bias).astype(np.float32)


def publish_tiny(
    repository: Path,
    name: str,
    *,
    channels: int = 1,
    size: int = 8,
    labels: Sequence[str] = GRAY_LABELS,
    seed: int = 0,
    batching: BatchingConfig | None = None,
) -> TinyModel:
    """Publish a tiny linear classifier as the next version of ``name``."""
    shape = (channels, size, size)
    config = ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", shape),
        output=TensorSpec("logits", "FP32", (len(labels),)),
        labels=tuple(labels),
        preprocessing=Preprocessing(size, size, channels, (0.5,) * channels, (0.25,) * channels),
        batching=batching or BatchingConfig(max_batch_size=16, max_queue_delay_us=2000, max_queue_size=256),
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.onnx"
        weight, bias = build_classifier(model_file, shape, len(labels), seed)
        modelrepo.publish(repository, config, model_file, {"source": "test"})
    return TinyModel(name, config, weight, bias)


def ort_reference(repository: Path, name: str, version: int, batch: np.ndarray) -> np.ndarray:
    """What ONNX Runtime itself computes for ``batch`` on that version (no server involved)."""
    session = ort.InferenceSession(
        str(repository / name / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    out: np.ndarray = session.run(None, {"input": batch})[0]
    return out


def infer_request(
    model: str, batch: np.ndarray, *, raw: bool = True, version: str = "", request_id: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    if raw:
        request.raw_input_contents.append(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
    else:
        tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    return request


def output_array(response: pb.ModelInferResponse, index: int = 0) -> np.ndarray:
    tensor = response.outputs[index]
    assert tensor.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(tuple(tensor.shape))


@dataclass
class Running:
    """A started server and stubs on one channel to it."""

    server: InferenceServer
    port: int
    channel: aio.Channel
    infer: pb_grpc.GRPCInferenceServiceStub
    images: img_grpc.ImageClassificationStub
    repository: Path
    models: dict[str, TinyModel]


def make_settings(repository: Path, **overrides: object) -> Settings:
    base = Settings(
        repository=repository,
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=-1,
        device="cpu",
        grace_period=5.0,
        intra_op_threads=1,
        # The lifecycle tests load and unload models; tests/reliability covers the flag being off.
        allow_model_control=True,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


async def start(repo: Path, models: dict[str, TinyModel], **overrides: object) -> Running:
    server, port = await create_server(make_settings(repo, **overrides))
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    return Running(
        server,
        port,
        channel,
        pb_grpc.GRPCInferenceServiceStub(channel),
        img_grpc.ImageClassificationStub(channel),
        repo,
        models,
    )


REPO_ROOT = Path(__file__).resolve().parents[2]


def export_lenet(repository: Path, *training: str, timeout: float = 300) -> Path:
    """A real LeNet published into ``repository`` by ``python -m export`` (``training``: its flags)."""
    subprocess.run(
        [sys.executable, "-m", "export", "lenet", *training, "--repository", str(repository)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    return repository
