"""Numerical parity between the PyTorch model and its ONNX export under ONNX Runtime (CPU).

The export is traced at one batch size and checked at others, on real held-out images
and on random inputs. Any top-1 disagreement, or any logit outside
``atol + rtol * |reference|``, fails the check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from torch import nn

from export.onnx_export import INPUT_NAME, OUTPUT_NAME, TRACE_BATCH
from export.train import predict

logger = logging.getLogger(__name__)

#: Batch sizes checked; none equals the traced batch size.
PARITY_BATCH_SIZES: tuple[int, ...] = (1, 5, 32)
ATOL = 1e-4
RTOL = 1e-3


class ParityError(RuntimeError):
    """The ONNX model's outputs differ from PyTorch's beyond the tolerance."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class ParityReport:
    """How closely ONNX Runtime reproduces PyTorch's logits."""

    batch_sizes: tuple[int, ...]
    traced_batch_size: int
    real_samples: int
    random_samples: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    top1_disagreements: int
    atol: float
    rtol: float
    within_tolerance: bool

    @property
    def passed(self) -> bool:
        return self.within_tolerance and self.top1_disagreements == 0

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"parity {verdict}: max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g}, "
            f"top-1 agreement {self.top1_agreement:.4f} ({self.top1_disagreements} disagreements) over "
            f"{self.real_samples} real and {self.random_samples} random inputs at batch sizes "
            f"{list(self.batch_sizes)} (traced at {self.traced_batch_size}; tolerance atol {self.atol:g}, "
            f"rtol {self.rtol:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def ort_session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU provider for the model file at ``path``."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Idle threads would otherwise busy-wait between runs; on a shared CPU (exports run beside
    # training jobs and tests) that spinning steals the cores the check itself needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_predict(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits from ONNX Runtime for ``x``, run in chunks of ``batch_size``."""
    outputs = [
        np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0])
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    real_inputs: np.ndarray,
    *,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    traced_batch_size: int = TRACE_BATCH,
    max_real_samples: int = 96,
    random_samples: int = 8,
    atol: float = ATOL,
    rtol: float = RTOL,
    seed: int = 0,
) -> ParityReport:
    """Compare PyTorch and ONNX Runtime logits; return the report (check ``passed``).

    Each batch size in ``batch_sizes`` runs over up to ``max_real_samples`` real inputs
    and ``random_samples`` standard-normal inputs, in chunks of that size.
    """
    if traced_batch_size in batch_sizes:
        raise ValueError(
            f"parity batch sizes {list(batch_sizes)} include the traced size {traced_batch_size}; "
            "expected only other sizes"
        )
    session = ort_session(onnx_path)
    real = np.ascontiguousarray(real_inputs[:max_real_samples], dtype=np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((random_samples, *real.shape[1:])).astype(np.float32)
    inputs = np.concatenate([real, noise])
    max_abs = max_rel = 0.0
    compared = disagreements = 0
    within = True
    for batch_size in batch_sizes:
        expected = predict(model, inputs, batch_size=batch_size)
        actual = ort_predict(session, inputs, batch_size=batch_size)
        if actual.shape != expected.shape:
            raise ValueError(
                f"ONNX output shape {list(actual.shape)} differs from PyTorch's {list(expected.shape)}"
            )
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        scale = np.abs(expected.astype(np.float64))
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        max_rel = max(max_rel, float((diff / np.maximum(scale, 1e-12)).max(initial=0.0)))
        within = within and bool(np.all(diff <= atol + rtol * scale))
        disagreements += int((actual.argmax(1) != expected.argmax(1)).sum())
        compared += len(inputs)
    report = ParityReport(
        batch_sizes=tuple(batch_sizes),
        traced_batch_size=traced_batch_size,
        real_samples=len(real),
        random_samples=random_samples,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        top1_agreement=1.0 - disagreements / max(compared, 1),
        top1_disagreements=disagreements,
        atol=atol,
        rtol=rtol,
        within_tolerance=within,
    )
    (logger.info if report.passed else logger.error)("%s", report.summary())
    return report


def require_parity(report: ParityReport) -> ParityReport:
    """Return ``report`` if it passed, else raise :class:`ParityError`."""
    if not report.passed:
        raise ParityError(report)
    return report
