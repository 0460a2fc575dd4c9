"""The benchmarked models: exported into the benchmark's repository when missing, and what each
one's ``metadata.json`` records (its precision and, for a quantized model, its accuracy gate)."""

from __future__ import annotations

import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from benchmarking.commands import PYTHON, log, run_command
from benchmarking.plan import EXPORT_ARGS, EXPORTED_BY
from modelrepo import latest_version, list_models, read_version


def ensure_models(
    repository: Path, models: Sequence[str], exportable: Collection[str], skipped: list[str]
) -> list[str]:
    """Export the ``exportable`` models the repository lacks; return the ``models`` it holds afterwards.

    An export that fails is noted in ``skipped`` (the run goes on without its models).
    """
    present = set(list_models(repository))
    exports = dict.fromkeys(EXPORTED_BY[m] for m in models if m not in present and m in exportable)
    for name in exports:
        command = [PYTHON, "-m", "export", name, "--repository", str(repository), *EXPORT_ARGS[name]]
        try:
            run_command(command, timeout=3600)
        except subprocess.CalledProcessError as exc:
            log(f"export of {name} failed with exit status {exc.returncode}")
            skipped.append(f"`python -m export {name}` exited with status {exc.returncode}")
    present = set(list_models(repository))
    return [m for m in models if m in present]


def model_facts(repository: Path, model: str) -> dict[str, Any]:
    """The latest version of ``model``: its number, input shape, model file, precision, quantization.

    ``precision`` and ``quantization`` are what ``metadata.json`` says (None where it says
    nothing); the INT8 target reads its accuracy gate from ``quantization``.
    """
    version = read_version(repository, model, latest_version(repository, model) or 1)
    return {
        "model": model,
        "version": version.version,
        "input_shape": list(version.config.input.shape),
        "model_file": str(version.model_path),
        "precision": version.metadata.get("precision"),
        "quantization": version.metadata.get("quantization"),
    }
