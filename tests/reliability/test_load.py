"""Soak (nothing lost, nothing wrong) and overload (fast refusals, bounded latency and memory)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from reliability_testlib import (
    Reference,
    ServerProcess,
    ServerThread,
    overload,
    pct,
    publish_slow,
    repo_args,
    settings_for,
    soak,
)
from server_testlib import TinyModel

from modelrepo import BatchingConfig

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "8"))


async def test_soak_every_request_accounted_for(fleet: tuple[Path, dict[str, TinyModel]]) -> None:
    """Under mixed concurrent load every answer equals ONNX Runtime's on that request's input, and every
    request is answered or refused with an explicit status.
    """
    repo, models = fleet
    # The server runs on its own loop (thread) so clients and server do not share one loop.
    server = ServerThread(settings_for(repo))
    try:
        shapes = {name: m.config.input.shape for name, m in models.items()}
        tally = await soak(server.address, Reference(repo), shapes, duration=SOAK_SECONDS, clients=12)
    finally:
        server.stop()
    assert tally.accounted
    assert tally.wrong == 0, tally.examples
    assert not tally.unexplained, tally.examples
    assert tally.correct > 100
    assert tally.sent == tally.correct + sum(tally.rejected.values())


async def test_overload_refuses_fast_and_recovers(tmp_path: Path) -> None:
    """Past the queue bound requests get RESOURCE_EXHAUSTED quickly, accepted ones are correct, and the
    server recovers.
    """
    repo = tmp_path / "repo"
    publish_slow(
        repo,
        "slow",
        layers=6,
        batching=BatchingConfig(max_batch_size=4, max_queue_delay_us=0, max_queue_size=4),
    )
    process = ServerProcess(repo_args(repo))
    try:
        report = await overload(
            process.address, "slow", (3, 32, 32), duration=4, clients=48, rss=process.rss_bytes
        )
    finally:
        process.terminate()
        code = process.wait(30)
    assert code == 0, process.log
    assert not report.other, report.other
    assert report.rejected > report.accepted > 0
    # Refusals are immediate, not queued behind the work.
    # (absolute times on 2 shared cores include the 48 clients' own event loop)
    assert pct(report.rejected_latency, 50) < pct(report.accepted_latency, 50) / 2
    # Accepted requests wait at most for the bounded queue ahead of them.
    baseline = pct(report.baseline_latency, 50)
    assert pct(report.accepted_latency, 99) < 30 * baseline + 1.0, (
        baseline,
        pct(report.accepted_latency, 99),
    )
    assert report.rss_peak - report.rss_before < 200 << 20
    assert report.recovery_ok == report.recovery_total
    assert float(np.median(report.recovery_latency)) < 5 * baseline + 0.05
