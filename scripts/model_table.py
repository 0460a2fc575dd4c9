#!/usr/bin/env python3
"""Print the docs table of exported models from a model repository's published metadata.

Usage: ``python scripts/model_table.py [REPOSITORY] [--int8]`` (default ``model_repository``;
``--int8``: the INT8 models' gate and speed against their FP32 references).
Reads the latest version of each model; needs only the standard library and modelrepo.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modelrepo  # after the path set-up, for runs from a plain checkout

#: The issue's targets on the digits: test accuracy (ONNX) and the time of one default export.
ACCURACY_TARGETS = {"resnet18": 0.97}
DEFAULT_ACCURACY_TARGET = 0.95
TIME_LIMIT_MINUTES = 10.0


def _reference(name: str, meta: dict[str, Any]) -> str:
    """The FP32 model an INT8 variant was quantized from (itself for an FP32 model)."""
    return str(meta.get("quantization", {}).get("reference", {}).get("model", name))


def _verdict(name: str, meta: dict[str, Any], accuracy: float, minutes: float) -> str:
    target = ACCURACY_TARGETS.get(_reference(name, meta), DEFAULT_ACCURACY_TARGET)
    misses = []
    if accuracy < target:
        misses.append(f"accuracy < {target:.0%}")
    if minutes > TIME_LIMIT_MINUTES:
        misses.append(f"time > {TIME_LIMIT_MINUTES:.0f} min")
    return "**missed: " + ", ".join(misses) + "**" if misses else f"yes (>= {target:.0%})"


def _evidence(meta: dict[str, Any]) -> str:
    """FP32: parity with PyTorch. INT8: its gate against the FP32 model."""
    quantization = meta.get("quantization")
    if quantization is not None:
        change = -quantization["accuracy_drop"] * 100 or 0.0  # never "-0.00"
        return f"vs FP32: {change:+.2f} pt accuracy, top-1 agreement {quantization['top1_agreement']:.1%}"
    parity = meta["parity"]
    return (
        f"parity: max abs diff {parity['max_abs_diff']:.1e}, top-1 agreement {parity['top1_agreement']:.0%}"
    )


def _speed(meta: dict[str, Any]) -> str:
    """This model's images per second in the export's own measurement (batch 32, median)."""
    speed = meta.get("speed")
    if not speed:
        return "-"
    return f"{speed['images_per_second'][meta.get('precision', 'fp32')]:,.0f}"


def _provenance(meta: dict[str, Any]) -> tuple[str, str]:
    """The architecture's source and what the weights started from, as ``metadata.json`` says.

    Metadata written before the ``weights`` field said ``"source": "torchvision pretrained"``
    even when the weights were random; its ``init`` tells what really happened.
    """
    source = str(meta.get("source", "?"))
    if source == "torchvision pretrained":
        source = "torchvision architecture"
    if "weights" in meta:
        return source, str(meta["weights"])
    init = str(meta.get("init", "?"))
    if init.startswith("pretrained"):
        return source, "pretrained (fine-tuned)"
    return source, "random initialisation" if init.startswith("random") else init


def _latest_versions(repository: Path) -> Iterator[modelrepo.ModelVersion]:
    """The latest version of each model in ``repository``, by name."""
    for name in modelrepo.list_models(repository):
        yield modelrepo.read_version(repository, name, modelrepo.latest_version(repository, name) or 0)


def table(repository: Path) -> str:
    """A Markdown table with one row per model in ``repository`` (its latest version)."""
    rows = [
        "| model | source | weights | precision | parameters | input | epochs | export time "
        "| test acc. (ONNX) | evidence | images/s (batch 32) | target met |",
        "|---|---|---|---|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for version in _latest_versions(repository):
        name, meta, shape = version.name, version.metadata, version.config.input.shape
        source, weights = _provenance(meta)
        accuracy, minutes = meta["test_accuracy"]["onnx"], meta["export_seconds"] / 60
        rows.append(
            f"| `{name}` | {source} | {weights} | {meta.get('precision', 'fp32')} "
            f"| {meta.get('parameters', 0):,} | {'x'.join(map(str, shape))} "
            f"| {meta['training']['epochs_run']} | {minutes:.1f} min | {accuracy * 100:.2f}% "
            f"| {_evidence(meta)} | {_speed(meta)} | {_verdict(name, meta, accuracy, minutes)} |"
        )
    return "\n".join(rows)


def int8_table(repository: Path) -> str:
    """One row per INT8 model in ``repository``: its gate figures and speed beside its FP32 reference's."""
    rows = [
        "| model | FP32 test acc. | INT8 test acc. | top-1 agreement | calibration images "
        "| FP32 images/s | INT8 images/s | INT8 / FP32 speed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for version in _latest_versions(repository):
        meta = version.metadata
        quantization = meta.get("quantization")
        if quantization is None:
            continue
        speed = meta.get("speed", {}).get("images_per_second", {})
        fp32, int8 = speed.get("fp32"), speed.get(meta.get("precision", "int8"))
        ratio = f"{int8 / fp32:.2f}x" if fp32 and int8 else "-"
        rows.append(
            f"| `{quantization['reference']['model']}` | {quantization['fp32_test_accuracy'] * 100:.2f}% "
            f"| {quantization['quantized_test_accuracy'] * 100:.2f}% "
            f"| {quantization['top1_agreement'] * 100:.1f}% | {quantization['calibration_samples']} "
            f"| {fp32 or 0:,.0f} | {int8 or 0:,.0f} | {ratio} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", nargs="?", type=Path, default=Path("model_repository"))
    parser.add_argument("--int8", action="store_true", help="the INT8 models against their FP32 references")
    args = parser.parse_args()
    if not modelrepo.list_models(args.repository):
        parser.error(f"no models in {args.repository}")
    print(int8_table(args.repository) if args.int8 else table(args.repository))
    return 0


if __name__ == "__main__":
    sys.exit(main())
