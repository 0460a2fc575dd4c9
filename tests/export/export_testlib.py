"""Helpers shared by the export tests: running ``python -m export`` the way users do."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Training samples for the shared end-to-end export: a few of every class, quick to train on.
E2E_TRAIN_SAMPLES = 100


@dataclass(frozen=True)
class Exported:
    """A finished ``python -m export`` subprocess and the repository it published to."""

    result: subprocess.CompletedProcess[str]
    repository: Path


def run_export(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m export`` as a subprocess, the way users run it (torch on one thread, see conftest)."""
    return subprocess.run(
        [sys.executable, "-m", "export", "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
