"""Where the checkout is, how commands are shown to a reader, and the run's progress log."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def shown(command: Sequence[str]) -> str:
    """A command as a reader would type it: ``python`` and paths relative to the checkout."""
    parts = ["python" if c == PYTHON else c.replace(str(ROOT) + "/", "") for c in command]
    return shlex.join(parts)


def log(message: str) -> None:
    """One line of progress on stderr (the document and the JSON carry the results)."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_command(command: Sequence[str], timeout: float) -> None:
    """Run ``command`` in the checkout, showing it first; a failure raises CalledProcessError."""
    log("$ " + shown(command))
    subprocess.run(list(command), cwd=ROOT, check=True, timeout=timeout)
