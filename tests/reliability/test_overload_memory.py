"""Server memory under overload with large requests: the per-model byte budget holds it.

Queue bounds that count requests let a model hold ``max_queue_size`` large batches (1024
batches of 8 x 3x224x224 FP32 are 4.6 GiB); ``--max-queue-bytes`` bounds the input bytes
queued per model instead. Streams keep many requests outstanding per connection, so only
the byte budget stands between them and the server's memory.
"""

from __future__ import annotations

from pathlib import Path

from reliability_testlib import (
    LARGE_REQUEST_BYTES,
    MiB,
    large_overload_rss_bound,
    large_request_overload,
)

BUDGET = 64 * MiB
STREAMS = 4
DEPTH = 64


async def test_rss_under_overload_with_large_requests(tmp_path: Path) -> None:
    """RESOURCE_EXHAUSTED naming --max-queue-bytes; RSS growth within the budget's bound; then OK."""
    bound = large_overload_rss_bound(BUDGET, STREAMS)
    report = await large_request_overload(
        tmp_path / "repo",
        duration=4.0,
        max_queue_bytes=BUDGET,
        streams=STREAMS,
        depth=DEPTH,
        # Without the budget the server grows by GiBs: stop the clients well past the bound.
        rss_limit=3 << 30,
    )
    summary = report.summary()
    assert report.byte_limited > 0 and report.accepted > 0, summary
    assert not report.other and report.count_limited == 0, summary
    assert report.byte_limit_message.startswith("model 'large' queue holds "), report.byte_limit_message
    assert f"this request's {LARGE_REQUEST_BYTES} would pass the limit of {BUDGET} (--max-queue-bytes)" in (
        report.byte_limit_message
    )
    assert report.rss_growth <= bound, f"{summary}; bound {bound >> 20} MiB over the baseline"
    assert report.recovery_ok == report.recovery_total == 5, summary
    # The server's own account: it answered what the clients were answered (3 warm-up and 5
    # recovery requests besides), computed nothing else, and counted every refusal.
    assert report.server is not None
    answered = report.accepted + 3 + report.recovery_ok
    assert (report.server.answered, report.server.failed) == (answered, report.byte_limited), summary
    assert report.server.samples == 8 * answered, report.server
