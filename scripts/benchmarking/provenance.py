"""Where the figures came from: the commit, whether the tree was dirty, and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil


def source_state(root: Path, written: Sequence[Path] = ()) -> dict[str, Any]:
    """The checkout's commit and every changed or untracked path, except what this run writes.

    ``written`` lists the files and directories the run itself (re)writes (the document,
    its JSON, plots and raw data): a tree that differs from its commit only there is clean.
    Outside a git checkout, or without git, ``commit`` and ``dirty`` are None.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        # -z: one NUL-terminated entry per path, names unquoted; a rename adds its old name.
        status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all")
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "changed": []}
    ignored = [_relative(Path(p).resolve(), top) for p in written]
    changed = []
    entries = iter(status.split("\0"))
    for entry in entries:
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if "R" in code or "C" in code:
            next(entries, None)  # the old name of a rename or copy
        if not any(_under(path, i) for i in ignored if i is not None):
            changed.append(path)
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def _relative(path: Path, top: Path) -> str | None:
    try:
        return path.relative_to(top.resolve()).as_posix()
    except ValueError:
        return None  # written outside the checkout: it cannot make the tree dirty


def _under(path: str, ignored: str) -> bool:
    return path == ignored or path.startswith(ignored.rstrip("/") + "/")


def machine_info() -> dict[str, Any]:
    """The CPU, the cores this process may use, the software versions, the load at the start."""
    import onnxruntime

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        # The cores this process may run on (a taskset or container limit), not all of the host.
        "cores": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }
