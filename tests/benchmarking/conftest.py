"""Fixtures for the benchmark's pieces (``scripts/benchmarking``): a repository of tiny real models.

``tiny`` is a small convolutional classifier built with onnx.helper; ``tiny_int8`` is the same
graph quantized with ONNX Runtime's ``quantize_static`` (QDQ, U8 activations, S8 weights),
published with the metadata the INT8 target reads: its precision and its accuracy gate,
computed here from both real sessions on random images.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec, publish

ROOT = Path(__file__).resolve().parents[2]
# scripts/ is not a package: benchmark.py runs with it as sys.path[0], the tests do the same.
sys.path.insert(0, str(ROOT / "scripts"))

SIDE = 8
CLASSES = 4
GATE = {"max_accuracy_drop": 0.01, "min_top1_agreement": 0.99}


def tiny_conv(path: Path) -> None:
    """[N,1,8,8] -> conv 3x3 (4 channels) -> relu -> flatten -> matmul -> [N,4]."""
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    dense = rng.standard_normal((4 * (SIDE - 2) ** 2, CLASSES)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "conv"], ["features"]),
            helper.make_node("Relu", ["features"], ["active"]),
            helper.make_node("Flatten", ["active"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[numpy_helper.from_array(conv, "conv"), numpy_helper.from_array(dense, "dense")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize(fp32: Path, int8: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(int8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def gate_record(fp32: Path, int8: Path, images: np.ndarray, calibration_samples: int) -> dict[str, Any]:
    """The quantization record, with the FP32 model's own answers standing in for labels."""
    import onnxruntime as ort

    def top1(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        result: np.ndarray = session.run(None, {"input": images})[0].argmax(axis=1)
        return result

    reference, quantized = top1(fp32), top1(int8)
    agreement = float((reference == quantized).mean())
    return {
        "calibration_samples": calibration_samples,
        "fp32_test_accuracy": 1.0,
        "int8_test_accuracy": agreement,
        "accuracy_drop": 1.0 - agreement,
        "top1_agreement": agreement,
        "gate": {"passed": 1.0 - agreement <= GATE["max_accuracy_drop"] and agreement >= 0.99, **GATE},
    }


def _config(name: str) -> ModelConfig:
    return ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", (1, SIDE, SIDE)),
        output=TensorSpec("logits", "FP32", (CLASSES,)),
        labels=tuple(str(i) for i in range(CLASSES)),
        preprocessing=Preprocessing(height=SIDE, width=SIDE, channels=1, mean=(0.5,), std=(0.5,)),
        batching=BatchingConfig(max_batch_size=16, max_queue_delay_us=200),
    )


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A repository with ``tiny`` (FP32) and ``tiny_int8`` (its static INT8 quantization)."""
    scratch = tmp_path_factory.mktemp("tiny-models")
    repository = scratch / "repository"
    fp32, int8 = scratch / "tiny.onnx", scratch / "tiny_int8.onnx"
    tiny_conv(fp32)
    rng = np.random.default_rng(1)
    calibration = rng.random((64, 1, SIDE, SIDE), dtype=np.float32)
    quantize(fp32, int8, calibration)
    images = rng.random((200, 1, SIDE, SIDE), dtype=np.float32)
    publish(repository, _config("tiny"), fp32, {"source": "tests/benchmarking", "precision": "fp32"})
    record = gate_record(fp32, int8, images, len(calibration))
    metadata = {"source": "tests/benchmarking", "precision": "int8", "quantization": record}
    publish(repository, _config("tiny_int8"), int8, metadata)
    yield repository
