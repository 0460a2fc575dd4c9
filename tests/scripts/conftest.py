"""Fixtures for the tests of ``scripts/``: one real CPU dry run of ``scripts/gpu_check.py``."""

from __future__ import annotations

import sys

import pytest
from gpu_check_testlib import ROOT, DryRun, dry_run_in

# scripts/ is not a package: gpu_check.py runs with it as sys.path[0], the tests do the same.
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="session")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    """``scripts/gpu_check.py --device cpu``: export, FP16 conversion, in-process ceilings, two real
    server subprocesses and the load generator. The slow part of these tests, so they share it."""
    return dry_run_in(tmp_path_factory.mktemp("gpu-check"))
