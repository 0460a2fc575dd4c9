"""CPU and memory of a process tree and of the whole machine, read with psutil.

A server may be several processes (``--workers``: a supervisor and its workers), so every
figure here covers a process and all of its descendants, found afresh at each reading.
The machine's busy time covers every process on every core: what it holds beyond the
generator and the server is other work sharing the cores during a measurement.
"""

from __future__ import annotations

import psutil


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and every process below it; empty when ``pid`` does not exist."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its descendants (all threads), or None if it is gone.

    A descendant that exits between listing and reading is left out: its time can no longer
    be read from outside.
    """
    tree = process_tree(pid)
    if not tree:
        return None
    total = 0.0
    for member in tree:
        try:
            times = member.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            if member.pid == pid:
                return None
            continue
        total += times.user + times.system
    return total


def tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` and its descendants added up, or None if it is gone.

    Pages shared between a supervisor and its forked workers count once per process, as
    each process's RSS counts them; for one process this is exactly its RSS.
    """
    tree = process_tree(pid)
    if not tree:
        return None
    total = 0
    for member in tree:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            if member.pid == pid:
                return None
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, all processes).

    Busy is everything but idle and I/O wait; guest time is already part of user time.
    """
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0) - _guest(times))


def _guest(times: object) -> float:
    # Linux reports guest and guest_nice both on their own and inside user and nice.
    return float(getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0))
