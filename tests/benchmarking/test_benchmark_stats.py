"""The median and min-max of repeated figures, and the plan's repeats."""

from __future__ import annotations

import pytest
from benchmarking.plan import Plan
from benchmarking.stats import Spread, spread, summarize_levels


def test_spread_is_the_median_with_min_and_max() -> None:
    assert spread([3.0, 1.0, 2.0]) == Spread(median=2.0, low=1.0, high=3.0, n=3)
    # An even count: the mean of the two middle values, not either of them.
    assert spread([4.0, 1.0, 2.0, 10.0]) == Spread(median=3.0, low=1.0, high=10.0, n=4)
    # Unmeasured repeats (None) are left out, and nothing measured is no figure.
    assert spread([None, 5.0, None]) == Spread(5.0, 5.0, 5.0, 1)
    assert spread([None]) is None and spread([]) is None


def test_spread_format_shows_the_range_only_for_several_repeats() -> None:
    assert Spread(2.0, 1.0, 3.5, 3).format(".1f") == "2.0 (1.0–3.5)"
    assert Spread(2.0, 2.0, 2.0, 1).format(".1f") == "2.0"
    assert Spread(2 * 2**20, 2**20, 3 * 2**20, 3).format(".0f", 1 / 2**20) == "2 (1–3)"


def _level(concurrency: int, rps: float, p50: float, server_cores: float | None, **extra: object) -> dict:
    return {
        "concurrency": concurrency,
        "throughput_rps": rps,
        "samples_per_s": rps,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p50 * 2, "max": p50 * 3, "mean": p50},
        "server_mean_batch": 2.0,
        "client_cpu_cores": 0.5,
        "server_cpu_cores": server_cores,
        "machine_cpu_cores": 1.5,
        "failed": {},
        **extra,
    }


def test_summarize_levels_takes_each_figure_over_the_repeats() -> None:
    repeats = [
        [_level(1, 100.0, 1.0, 0.5), _level(16, 1000.0, 8.0, 1.0, failed={"UNAVAILABLE": 2})],
        [_level(1, 300.0, 3.0, 0.5), _level(16, 4000.0, 2.0, 1.0)],
        [_level(1, 200.0, 2.0, None), _level(16, 2000.0, 4.0, 1.0, failed={"UNAVAILABLE": 1})],
    ]
    summary = summarize_levels(repeats)
    assert list(summary) == [1, 16]
    one, sixteen = summary[1], summary[16]
    assert one.repeats == 3
    assert one.get("requests_per_s") == Spread(200.0, 100.0, 300.0, 3)
    assert one.get("p50_ms") == Spread(2.0, 1.0, 3.0, 3)
    assert one.get("p99_ms") == Spread(4.0, 2.0, 6.0, 3)
    # The server's CPU per request, per repeat (cores / requests/s), then over the repeats that had it.
    per_request = one.get("server_us_per_request")
    assert per_request is not None and per_request.n == 2
    assert (per_request.low, per_request.median, per_request.high) == pytest.approx((1e6 / 600, 1e4 / 3, 5e3))
    assert sixteen.get("requests_per_s") == Spread(2000.0, 1000.0, 4000.0, 3)
    assert sixteen.failed == {"UNAVAILABLE": 3}
    with pytest.raises(KeyError, match="'p42_ms' is not one of"):
        one.get("p42_ms")


def test_plan_repeats_three_times_unless_quick_or_told() -> None:
    assert Plan.make(quick=False).repeats == 3
    assert Plan.make(quick=True).repeats == 1
    assert Plan.make(quick=True, repeats=3).repeats == 3
    with pytest.raises(ValueError, match="--repeats is 0; expected >= 1"):
        Plan.make(quick=False, repeats=0)
