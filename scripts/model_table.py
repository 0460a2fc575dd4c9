#!/usr/bin/env python3
"""Print the docs table of exported models from a model repository's published metadata.

Usage: ``python scripts/model_table.py [REPOSITORY]`` (default ``model_repository``).
Reads the latest version of each model; needs only the standard library and modelrepo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modelrepo  # after the path set-up, for runs from a plain checkout

#: The issue's targets on the digits: test accuracy (ONNX) and the time of one default export.
ACCURACY_TARGETS = {"resnet18": 0.97}
DEFAULT_ACCURACY_TARGET = 0.95
TIME_LIMIT_MINUTES = 10.0


def _verdict(name: str, accuracy: float, minutes: float) -> str:
    target = ACCURACY_TARGETS.get(name, DEFAULT_ACCURACY_TARGET)
    misses = []
    if accuracy < target:
        misses.append(f"accuracy < {target:.0%}")
    if minutes > TIME_LIMIT_MINUTES:
        misses.append(f"time > {TIME_LIMIT_MINUTES:.0f} min")
    return "**missed: " + ", ".join(misses) + "**" if misses else f"yes (>= {target:.0%})"


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


def table(repository: Path) -> str:
    """A Markdown table with one row per model in ``repository`` (its latest version)."""
    rows = [
        "| model | source | weights | parameters | input | epochs | export time | test acc. (ONNX) "
        "| max abs parity diff | top-1 agreement | target met |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in modelrepo.list_models(repository):
        version = modelrepo.read_version(repository, name, modelrepo.latest_version(repository, name) or 0)
        meta, shape = version.metadata, version.config.input.shape
        source, weights = _provenance(meta)
        accuracy, minutes = meta["test_accuracy"]["onnx"], meta["export_seconds"] / 60
        rows.append(
            f"| `{name}` | {source} | {weights} | {meta.get('parameters', 0):,} "
            f"| {'x'.join(map(str, shape))} | {meta['training']['epochs_run']} "
            f"| {minutes:.1f} min | {accuracy * 100:.2f}% "
            f"| {meta['parity']['max_abs_diff']:.1e} | {meta['parity']['top1_agreement'] * 100:.0f}% "
            f"| {_verdict(name, accuracy, minutes)} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", nargs="?", type=Path, default=Path("model_repository"))
    args = parser.parse_args()
    if not modelrepo.list_models(args.repository):
        parser.error(f"no models in {args.repository}")
    print(table(args.repository))
    return 0


if __name__ == "__main__":
    sys.exit(main())
