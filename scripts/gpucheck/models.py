"""The models the run measures: ResNet-18 exported in FP32, and its FP16 conversion published beside it.

The FP16 copy keeps FP32 input and output (the server, the clients and the config keep
speaking FP32) and is published with how it was made and how far its logits are from
FP32's on the export's test images.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from benchmarking.commands import PYTHON, log, run_command, shown

import modelrepo
from gpucheck.measure import session_for
from gpucheck.plan import EXPORT_TRAINING, FP16_MODEL, MODEL
from server.runtime import Device

#: FP16 logits may differ from FP32 by this fraction of the largest FP32 logit (in magnitude).
FP16_TOLERANCE = 0.01


def export_fp32(repository: Path, image_size: int) -> tuple[modelrepo.ModelVersion, str]:
    """``python -m export resnet18`` into ``repository``; returns the new version and the command."""
    command = [
        PYTHON, "-m", "export", MODEL, "--image-size", str(image_size), *EXPORT_TRAINING,
        "--repository", str(repository), "--no-progress", "--log-level", "WARNING",
    ]  # fmt: skip
    run_command(command, timeout=3600)
    version = modelrepo.latest_version(repository, MODEL)
    if version is None:
        raise RuntimeError(f"python -m export published no {MODEL} in {repository}")
    return modelrepo.read_version(repository, MODEL, version), shown(command)


def convert_fp16(source: Path, target: Path) -> dict[str, Any]:
    """Write an FP16 copy of ``source`` that still takes and returns FP32; returns how it was made."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types: the server, the clients and the config keep speaking FP32; the casts run on the device.
    converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(converted, str(target))
    return {
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
    }


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How far ``candidate`` logits are from ``reference`` ones, and whether within FP16_TOLERANCE.

    A top-1 disagreement counts as a near tie when the reference's two best logits are within
    twice the tolerance of each other: differences the tolerance allows could swap them.
    """
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    max_abs = float(diff.max())
    scale = float(np.abs(reference).max()) or 1.0
    disagree = np.flatnonzero(reference.argmax(1) != candidate.argmax(1))
    best_two = np.sort(reference, axis=1)[:, -2:]
    margins = best_two[:, 1] - best_two[:, 0]
    near_ties = int(np.count_nonzero(margins[disagree] <= 2 * FP16_TOLERANCE * scale))
    relative = max_abs / scale
    return {
        "samples": len(reference),
        "max_abs_diff": max_abs,
        "max_abs_logit": scale,
        "relative_max_abs_diff": relative,
        "top1_agreement": 1.0 - len(disagree) / len(reference),
        "disagreements": len(disagree),
        "disagreements_at_near_ties": near_ties,
        "tolerance": FP16_TOLERANCE,
        # Differences within the tolerance can only flip near ties, so this one bound decides.
        "within_tolerance": relative <= FP16_TOLERANCE,
    }


def logits(session: ort.InferenceSession, config: modelrepo.ModelConfig, x: np.ndarray) -> np.ndarray:
    """The model's output for every row of ``x``, run in batches the config allows."""
    batch = config.batching.max_batch_size
    parts = [
        session.run([config.output.name], {config.input.name: x[i : i + batch]})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(parts)


def digits_test_images(config: modelrepo.ModelConfig) -> tuple[np.ndarray, str]:
    """The export's test split, preprocessed for ``config``, and a phrase naming it."""
    from export.data import load_dataset

    data = load_dataset("digits", config.preprocessing)
    size = f"{config.preprocessing.height}x{config.preprocessing.width}"
    return data.test.x, f"the {len(data.test)} test images of the digits data set at {size}"


def publish_fp16(
    repository: Path, fp32: modelrepo.ModelVersion, device: Device, work: Path
) -> modelrepo.ModelVersion:
    """Convert the FP32 version, compare it with FP32 on the test images on ``device``, publish it."""
    target = work / f"{FP16_MODEL}.onnx"
    conversion = convert_fp16(fp32.model_path, target)
    config = dataclasses.replace(fp32.config, name=FP16_MODEL)
    x, images = digits_test_images(fp32.config)
    reference = logits(session_for(fp32.model_path, device, fp32.config), fp32.config, x)
    candidate = logits(session_for(target, device, config), config, x)
    agreement = {**compare_logits(reference, candidate), "images": images, "device": str(device)}
    metadata = {
        "model": FP16_MODEL,
        "description": f"{MODEL} with FP16 weights and arithmetic; FP32 input and output",
        "derived_from": {"model": MODEL, "version": fp32.version, "model_sha256": fp32.expected_sha256},
        "conversion": conversion,
        "agreement_with_fp32": agreement,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    version = modelrepo.publish(repository, config, target, metadata)
    log(
        f"{FP16_MODEL}: top-1 agreement {agreement['top1_agreement']:.4f}, "
        f"max abs diff {agreement['max_abs_diff']:.3g} "
        f"({agreement['relative_max_abs_diff']:.2%} of max |logit|)"
    )
    return version
