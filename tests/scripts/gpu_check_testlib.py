"""Shared parts of the ``scripts/gpu_check.py`` tests: where the script is, and one run's results."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "scripts" / "gpu_check.py"


def run_gpu_check(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The script as a developer runs it, in a subprocess from the checkout."""
    command = [sys.executable, str(GPU_CHECK), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


@dataclass(frozen=True)
class DryRun:
    """One ``--device cpu`` run of the script: its process, document, JSON and work directory."""

    done: subprocess.CompletedProcess[str]
    document: str
    figures: dict[str, Any]
    work: Path


def dry_run_in(root: Path) -> DryRun:
    """Run the whole pipeline on the CPU provider (tiny image, short levels), writing under ``root``."""
    out, work = root / "gpu.md", root / "work"
    done = run_gpu_check(
        "--device", "cpu", "--image-size", "32", "--duration", "0.5", "--warmup", "0.2",
        "--out", str(out), "--work", str(work), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return DryRun(done, out.read_text(), json.loads(out.with_suffix(".json").read_text()), work)
