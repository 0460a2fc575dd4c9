"""Fixtures for the export tests: small real data, no downloads, and one real export shared by many tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from export_testlib import E2E_TRAIN_SAMPLES, Exported, run_export

from export.data import Dataset, load_dataset
from modelrepo import Preprocessing


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread during each export test, restoring the setting afterwards.

    The models here are tiny, so a second intra-op thread gains nothing; on a CPU shared
    with other jobs it costs a lot, since every operator then waits at a barrier for a
    thread that may be descheduled.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_gray16() -> Dataset:
    """The real digits at 16x16, one channel."""
    return load_dataset("digits", Preprocessing(16, 16, 1, (0.5,), (0.5,)))


@pytest.fixture(scope="session")
def lenet_export(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """One real ``python -m export lenet`` subprocess run (one epoch on a small training subset).

    Exporting is the slow part of these tests, so the tests that inspect what an export
    publishes share this one; a test that publishes more works on a copy of the repository.
    """
    repository = tmp_path_factory.mktemp("e2e") / "repo"
    result = run_export(
        "lenet",
        "--epochs",
        "1",
        "--max-train-samples",
        str(E2E_TRAIN_SAMPLES),
        "--repository",
        str(repository),
    )
    return Exported(result, repository)
