"""``--quantize int8``: one training run publishes the FP32 model and its INT8 variant, gated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_testlib import ROOT, run_export
from torch import nn

import modelrepo
from export.__main__ import get_args_parser, main
from export.data import load_dataset
from export.models import ModelSpec, TrainingDefaults
from export.models import _api as registry
from export.parity import ort_predict, ort_session
from export.quantize import MAX_ACCURACY_DROP, MIN_TOP1_AGREEMENT, compare

LABELS = np.repeat(np.arange(10), 10)  # 100 test images, 10 of each class


def _logits(predicted: np.ndarray) -> np.ndarray:
    """Logits whose top-1 class is ``predicted``."""
    logits = np.zeros((len(predicted), 10), np.float32)
    logits[np.arange(len(predicted)), predicted] = 1.0
    return logits


def _flip(predicted: np.ndarray, indices: list[int]) -> np.ndarray:
    flipped = predicted.copy()
    flipped[indices] = (flipped[indices] + 1) % 10
    return flipped


def test_gate_allows_exactly_its_limits_and_no_more() -> None:
    """A drop of exactly 1 point with 99% agreement passes; one more wrong image fails either way."""
    fp32 = _flip(LABELS, [0])  # 99 of 100 right
    reference = _logits(fp32)
    at_limit = compare("int8", "m", reference, _logits(_flip(fp32, [1])), LABELS, 7)
    assert (at_limit.accuracy_drop, at_limit.top1_agreement) == (pytest.approx(MAX_ACCURACY_DROP), 0.99)
    assert at_limit.passed and at_limit.top1_disagreements == 1 and at_limit.calibration_samples == 7

    past_drop = compare("int8", "m", reference, _logits(_flip(fp32, [1, 2])), LABELS, 7)
    assert past_drop.accuracy_drop == pytest.approx(0.02) and not past_drop.passed
    # Disagreeing on an image both get wrong costs no accuracy but still counts against agreement.
    wrong_differently = compare("int8", "m", reference, _logits(_flip(fp32, [0])), LABELS, 7)
    assert wrong_differently.accuracy_drop == 0 and wrong_differently.passed
    past_agreement = compare("int8", "m", reference, _logits(_flip(fp32, [0, 1])), LABELS, 7)
    assert past_agreement.top1_agreement == 0.98 < MIN_TOP1_AGREEMENT and not past_agreement.passed
    assert "FAILED" in past_agreement.summary() and "2 of 100 test images differ" in past_agreement.summary()
    # Quantization that happens to gain accuracy is no drop.
    better = compare("int8", "m", reference, _logits(LABELS), LABELS, 7)
    assert better.accuracy_drop == pytest.approx(-0.01) and better.passed


def test_lenet_int8_is_published_beside_fp32_with_its_evidence(tmp_path: Path) -> None:
    """Both models from one run; the INT8 metadata's accuracy and agreement are what its file does."""
    repository = tmp_path / "repo"
    result = run_export("lenet", "--quantize", "int8", "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    assert "lenet: published version 1" in result.stdout
    assert "lenet_int8: published version 1" in result.stdout
    fp32 = modelrepo.read_version(repository, "lenet", 1)
    int8 = modelrepo.read_version(repository, "lenet_int8", 1)
    assert sorted(p.name for p in int8.path.iterdir()) == sorted(p.name for p in fp32.path.iterdir())

    # Served exactly as the FP32 model is: same input, output, labels and preprocessing.
    assert int8.config.name == "lenet_int8"
    assert (int8.config.input, int8.config.output) == (fp32.config.input, fp32.config.output)
    assert (int8.config.labels, int8.config.preprocessing) == (fp32.config.labels, fp32.config.preprocessing)
    graph = onnx.load(str(int8.model_path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert onnx.TensorProto.INT8 in {tensor.data_type for tensor in graph.initializer}

    meta, quantization = int8.metadata, int8.metadata["quantization"]
    assert (fp32.metadata["precision"], meta["precision"]) == ("fp32", "int8")
    assert "parity" not in meta and meta["model_sha256"] == modelrepo.file_sha256(int8.model_path)
    assert quantization["reference"] == {"model": "lenet", "version": 1}
    assert quantization["gate"] == {
        "max_accuracy_drop": MAX_ACCURACY_DROP, "min_top1_agreement": MIN_TOP1_AGREEMENT, "passed": True,
    }  # fmt: skip
    assert quantization["calibration_samples"] == 512
    assert quantization["accuracy_drop"] == pytest.approx(
        quantization["fp32_test_accuracy"] - quantization["quantized_test_accuracy"]
    )
    assert quantization["fp32_test_accuracy"] == fp32.metadata["test_accuracy"]["onnx"]
    assert meta["test_accuracy"]["onnx"] == quantization["quantized_test_accuracy"]
    speed = fp32.metadata["speed"]["images_per_second"]
    assert set(speed) == {"fp32", "int8"} and min(speed.values()) > 0
    assert meta["speed"] == fp32.metadata["speed"]

    # The evidence is recomputed from the published files, not taken on trust.
    config = fp32.config.preprocessing
    data = load_dataset("digits", config)
    fp32_top1 = ort_predict(ort_session(fp32.model_path), data.test.x).argmax(1)
    int8_top1 = ort_predict(ort_session(int8.model_path), data.test.x).argmax(1)
    assert quantization["test_samples"] == len(data.test) == 360
    assert float((int8_top1 == data.test.y).mean()) == pytest.approx(meta["test_accuracy"]["onnx"])
    assert float((int8_top1 == fp32_top1).mean()) == pytest.approx(quantization["top1_agreement"])
    assert quantization["top1_agreement"] >= MIN_TOP1_AGREEMENT

    # The docs' INT8 table, as the docs say to make it, shows these figures.
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "model_table.py"), str(repository), "--int8"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    [row] = [line for line in table if line.startswith("| `lenet` |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:5] == [
        f"{quantization['fp32_test_accuracy'] * 100:.2f}%",
        f"{quantization['quantized_test_accuracy'] * 100:.2f}%",
        f"{quantization['top1_agreement'] * 100:.1f}%",
        "512",
    ]
    assert cells[7] == f"{speed['int8'] / speed['fp32']:.2f}x"


class _OutlierChannel(nn.Module):
    """Puts a constant channel of 10,000 beside the features, then drops it again.

    In FP32 this changes nothing. INT8 gives the joined tensor one scale for 0..10,000, in
    steps of about 40, so the real features (a few units) all round to zero: the classic way
    an outlier activation ruins per-tensor quantization.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(x[:, :1], 1e4), x], dim=1)[:, 1:]


def _outlier_cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        _OutlierChannel(),
        nn.Flatten(),
        nn.Linear(16 * image_size * image_size, num_classes),
    )


@pytest.fixture
def outlier_cnn(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered model that trains well and cannot survive INT8 (removed after the test)."""
    spec = ModelSpec(
        name="outlier_cnn",
        builder=_outlier_cnn,
        source="seed architecture",
        description="a CNN with an outlier activation channel (test only)",
        image_size=8,
        channels=1,
        mean=(0.5,),
        std=(0.5,),
        min_image_size=1,
        training=TrainingDefaults(epochs=8, patience=8),
    )
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    return spec.name


def test_a_model_that_fails_the_gate_publishes_nothing(
    outlier_cnn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Exit status 1 and an empty repository: not the INT8 model, and not its FP32 reference either."""
    repository = tmp_path / "repo"
    parser = get_args_parser()
    args = parser.parse_args(
        ["--no-progress", outlier_cnn, "--quantize", "int8", "--repository", str(repository)]
    )
    assert main(args, parser) == 1
    assert modelrepo.list_models(repository) == []
    [message] = [r.getMessage() for r in caplog.records if "export failed" in r.getMessage()]
    assert "int8 gate FAILED" in message and "top-1 agreement" in message, message
    # The same model without --quantize is fine: the gate, not the model, refused it.
    args = parser.parse_args(["--no-progress", outlier_cnn, "--repository", str(repository)])
    assert main(args, parser) == 0
    meta = json.loads((repository / outlier_cnn / "1" / "metadata.json").read_text())
    assert meta["test_accuracy"]["onnx"] > 0.8 and set(meta["speed"]["images_per_second"]) == {"fp32"}
