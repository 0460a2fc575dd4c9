"""The commit and dirty state a run records, read from a real git checkout made for the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarking.provenance import source_state


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def checkout(root: Path) -> str:
    """A repository with one commit of two files; returns the commit."""
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "test")
    (root / "code.py").write_text("x = 1\n")
    (root / "docs").mkdir()
    (root / "docs" / "benchmarks.md").write_text("old\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    return git(root, "rev-parse", "HEAD").strip()


def test_a_clean_tree_is_its_commit(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    commit = checkout(root)
    assert source_state(root) == {"commit": commit, "dirty": False, "changed": []}


def test_what_the_run_writes_does_not_make_the_tree_dirty(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    commit = checkout(root)
    docs = root / "docs"
    (docs / "benchmarks.md").write_text("new\n")  # tracked, rewritten
    (docs / "benchmark_data").mkdir()
    (docs / "benchmark_data" / "lenet-repeat-1.json").write_text("{}")  # untracked, in a written folder
    (docs / "benchmark_lenet.png").write_bytes(b"png")
    written = [docs / "benchmarks.md", docs / "benchmark_data", docs / "benchmark_lenet.png"]
    assert source_state(root, written) == {"commit": commit, "dirty": False, "changed": []}
    # Without being told, the same changes are dirty, each path named.
    state = source_state(root)
    assert state["dirty"] is True
    assert sorted(state["changed"]) == [
        "docs/benchmark_data/lenet-repeat-1.json",
        "docs/benchmark_lenet.png",
        "docs/benchmarks.md",
    ]


def test_changed_untracked_and_renamed_code_is_dirty(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    checkout(root)
    written = [root / "docs" / "benchmarks.md"]
    (root / "code.py").write_text("x = 2\n")
    assert source_state(root, written)["changed"] == ["code.py"]
    (root / "new module.py").write_text("")  # untracked, with a space: -z keeps the name whole
    git(root, "mv", "docs/benchmarks.md", "docs/moved.md")  # a rename lists its old name too
    state = source_state(root, written)
    assert state["dirty"] is True
    assert sorted(state["changed"]) == ["code.py", "docs/moved.md", "new module.py"]


def test_outside_a_checkout_the_commit_is_unknown(tmp_path: Path) -> None:
    assert source_state(tmp_path) == {"commit": None, "dirty": None, "changed": []}
