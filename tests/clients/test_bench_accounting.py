"""Process accounting with psutil, on a real tree of processes: a parent and a child that burns CPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from clients.bench.accounting import machine_busy_seconds, process_tree, tree_cpu_seconds, tree_rss_bytes

MiB = 2**20
#: The child holds this much memory, touched so that it is resident, and burns this much CPU.
HELD_BYTES = 96 * MiB
BURN_SECONDS = 0.6

CHILD = textwrap.dedent(
    f"""
    import os, sys, time
    block = bytearray({HELD_BYTES})
    for i in range(0, len(block), 4096):
        block[i] = 1
    end = time.process_time() + {BURN_SECONDS}
    while time.process_time() < end:
        pass
    print(os.getpid(), flush=True)
    time.sleep(120)
    """
)
PARENT = textwrap.dedent(
    f"""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdout=subprocess.PIPE, text=True)
    print(child.stdout.readline().strip(), flush=True)
    child.wait()
    """
)


#: (the parent process, its child's pid, the machine's busy seconds before the child started)
Tree = tuple[subprocess.Popen[str], int, float]


@pytest.fixture
def tree() -> Iterator[Tree]:
    """A parent process whose child holds memory and has burned CPU, killed afterwards."""
    busy_before = machine_busy_seconds()
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        yield parent, child, busy_before
    finally:
        for process in process_tree(parent.pid)[::-1]:
            process.kill()
        parent.wait(30)


def test_the_tree_holds_the_parent_and_its_child(tree: Tree) -> None:
    parent, child, _ = tree
    assert [p.pid for p in process_tree(parent.pid)] == [parent.pid, child]
    assert [p.pid for p in process_tree(child)] == [child]


def test_cpu_and_memory_of_the_child_count_for_the_parent(
    tree: tuple[subprocess.Popen[str], int, float],
) -> None:
    parent, child, busy_before = tree
    parent_cpu = tree_cpu_seconds(parent.pid)
    assert parent_cpu is not None and parent_cpu >= BURN_SECONDS
    child_cpu = tree_cpu_seconds(child)
    assert child_cpu is not None and child_cpu >= BURN_SECONDS
    # The child's resident block counts for the tree; the parent alone holds far less.
    total, alone = tree_rss_bytes(parent.pid), tree_rss_bytes(child)
    assert total is not None and alone is not None
    assert alone >= HELD_BYTES and total >= alone + 4 * MiB
    # Everything the tree burned, the machine was busy for (and other work besides).
    assert machine_busy_seconds() - busy_before >= 0.9 * parent_cpu


def test_a_process_that_is_gone_has_no_figures() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert process_tree(gone.pid) == []
    assert tree_cpu_seconds(gone.pid) is None
    assert tree_rss_bytes(gone.pid) is None
