"""``python scripts/benchmark.py`` refuses bad flags before it measures anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_bad_repeats_and_models_are_named(tmp_path: Path) -> None:
    done = _run("--repeats", "0", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "--repeats is 0; expected >= 1" in done.stderr
    done = _run("--models", "lenet,vgg", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "--models has ['vgg']; expected a subset of ['lenet', 'resnet18', 'resnet18_int8']" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
