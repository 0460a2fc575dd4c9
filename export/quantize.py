"""INT8 variants of exported models: static quantization with ONNX Runtime, and its gate.

The FP32 ONNX file is quantized in ONNX Runtime's QDQ format: weights per output
channel as signed 8-bit, activations as unsigned 8-bit (U8S8, the pair that ONNX
Runtime's x86 kernels run fastest: on this project's AVX512-VNNI machine one ResNet-18
graph ran at 1.15x its FP32 speed with S8 activations, 3.6x with U8). Activation
ranges come from running the FP32 graph on training images (min-max calibration).
Inputs and outputs stay FP32, so the quantized model is served and called exactly as
its FP32 reference is.

A quantized model is published only if it passes its gate against the FP32 ONNX model
on the test split: the test accuracy drops by at most :data:`MAX_ACCURACY_DROP` and the
two agree on the top-1 class of at least :data:`MIN_TOP1_AGREEMENT` of the images.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The precisions ``--quantize`` can add, and the suffix of the model each one publishes.
QUANTIZED_SUFFIX = {"int8": "_int8"}
MAX_ACCURACY_DROP = 0.01
MIN_TOP1_AGREEMENT = 0.99
#: Training images run through the FP32 graph to find activation ranges (all of them if fewer).
DEFAULT_CALIBRATION_SAMPLES = 512
CALIBRATION_BATCH = 32


class QuantizationGateError(RuntimeError):
    """The quantized model lost more accuracy or agreement than the gate allows."""

    def __init__(self, report: QuantizationReport) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class QuantizationReport:
    """How the quantized model compares with its FP32 reference on the test split."""

    precision: str
    method: str
    calibration_samples: int
    test_samples: int
    fp32_test_accuracy: float
    quantized_test_accuracy: float
    top1_agreement: float
    top1_disagreements: int
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    min_top1_agreement: float = MIN_TOP1_AGREEMENT

    @property
    def accuracy_drop(self) -> float:
        """FP32 test accuracy minus the quantized model's (negative when quantization helped)."""
        return self.fp32_test_accuracy - self.quantized_test_accuracy

    @property
    def passed(self) -> bool:
        # The slack only absorbs float rounding: a drop of exactly the limit passes.
        return (
            self.accuracy_drop <= self.max_accuracy_drop + 1e-9
            and self.top1_agreement >= self.min_top1_agreement - 1e-9
        )

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.precision} gate {verdict}: test accuracy {self.quantized_test_accuracy:.4f} vs FP32 "
            f"{self.fp32_test_accuracy:.4f} (drop {self.accuracy_drop * 100:.2f} points, at most "
            f"{self.max_accuracy_drop * 100:.2f} allowed), top-1 agreement {self.top1_agreement:.4f} "
            f"({self.top1_disagreements} of {self.test_samples} test images differ; at least "
            f"{self.min_top1_agreement:.4f} required); calibrated on {self.calibration_samples} "
            "training images"
        )

    def to_dict(self) -> dict[str, Any]:
        """The metadata's ``quantization`` record: the figures, and the gate with its limits."""
        record = asdict(self)
        gate = {
            "max_accuracy_drop": record.pop("max_accuracy_drop"),
            "min_top1_agreement": record.pop("min_top1_agreement"),
            "passed": self.passed,
        }
        return {**record, "accuracy_drop": self.accuracy_drop, "gate": gate}


class _Batches:
    """Calibration images for ONNX Runtime's calibrator, in batches.

    ONNX Runtime's ``CalibrationDataReader`` accepts any class with ``get_next`` as its
    subclass, so this module need not import ONNX Runtime (or torch) until it quantizes:
    ``python -m export --help`` quotes the constants above and stays instant.
    """

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> None:
        self._input_name = input_name
        self._batches: Iterator[np.ndarray] = (
            np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)
            for i in range(0, len(images), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def quantize_int8(fp32_path: Path, out_path: Path, calibration_images: np.ndarray) -> str:
    """Write the INT8 QDQ model of ``fp32_path`` to ``out_path``; returns the method, in words.

    ``calibration_images`` (NCHW float32, preprocessed as served) set the activation ranges.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.onnx_export import INPUT_NAME

    if len(calibration_images) == 0:
        raise ValueError("no calibration images; expected at least one training image")
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph clean-up first, as ONNX Runtime's quantization guide asks.
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(INPUT_NAME, calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return (
        "ONNX Runtime static quantization, QDQ, per-channel S8 weights, U8 activations, min-max calibration"
    )


def compare(
    precision: str,
    method: str,
    fp32_logits: np.ndarray,
    quantized_logits: np.ndarray,
    labels: np.ndarray,
    calibration_samples: int,
) -> QuantizationReport:
    """The gate's report for ``quantized_logits`` against ``fp32_logits`` on ``labels``."""
    fp32, quantized = fp32_logits.argmax(1), quantized_logits.argmax(1)
    total = max(len(labels), 1)
    disagreements = int((fp32 != quantized).sum())
    report = QuantizationReport(
        precision=precision,
        method=method,
        calibration_samples=calibration_samples,
        test_samples=len(labels),
        fp32_test_accuracy=float((fp32 == labels).sum() / total),
        quantized_test_accuracy=float((quantized == labels).sum() / total),
        top1_agreement=1.0 - disagreements / total,
        top1_disagreements=disagreements,
    )
    (logger.info if report.passed else logger.error)("%s", report.summary())
    return report


def require_gate(report: QuantizationReport) -> QuantizationReport:
    """Return ``report`` if the quantized model passed, else raise :class:`QuantizationGateError`."""
    if not report.passed:
        raise QuantizationGateError(report)
    return report
