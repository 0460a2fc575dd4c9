"""Target verdicts computed from a results object: medians of the default configuration decide."""

from __future__ import annotations

from typing import Any

import pytest
from benchmark_testlib import (
    CONFIG,
    GATE,
    MiB,
    int8_facts,
    level,
    passing,
    set_repeats,
    three_repeats,
    verdicts,
)
from benchmarking.plan import Plan
from benchmarking.results import Results
from benchmarking.served import ServerRun
from benchmarking.targets import check_targets, gate_verdict

INT8 = "resnet18_int8 served at concurrency 8"
VS_BARE_16 = "LeNet unary at concurrency 16 vs the bare handler"
VS_BARE_64 = "LeNet unary at concurrency 64 vs the bare handler"
HOLDS = "LeNet unary at concurrency 64 holds the concurrency-16 throughput"
TAIL = "LeNet unary p99 at concurrency 64"
P50 = "LeNet unary p50 at concurrency 1"
STREAM = "LeNet ModelStreamInfer at concurrency 64 vs unary"
RSS = "Server RSS with the default models"


def test_every_target_is_met_in_a_passing_run() -> None:
    targets = check_targets(passing())
    assert [t.name for t in targets if t.met is not True] == []
    assert {t.issue for t in targets} == {"issue 12", "issue 4"}
    by_name = {t.name: t for t in targets}
    # The explanation is computed from the figures: 3000 / 2000 requests/s at concurrency 16.
    assert "3000" in by_name[VS_BARE_16].why and "(1.50x)" in by_name[VS_BARE_16].why
    assert by_name[INT8].measured.startswith("140.0 (138.6–141.4) samples/s = 2.69x")
    assert "gate passed" in by_name[INT8].why


def test_the_median_of_the_repeats_decides_not_the_best_or_the_mean() -> None:
    results = passing()
    # One lucky repeat far above the rest: the median is 2190, 1.095x the bare handler's 2000.
    set_repeats(results, "lenet", 16, "throughput_rps", [2150.0, 50000.0, 2190.0])
    set_repeats(results, "lenet-bare", 16, "throughput_rps", [2000.0, 2000.0, 2000.0])
    missed = verdicts(results)[VS_BARE_16]
    assert missed.met is False and "1.09x" in missed.measured
    set_repeats(results, "lenet", 16, "throughput_rps", [2150.0, 50000.0, 2200.0])
    assert verdicts(results)[VS_BARE_16].met is True  # exactly 1.1x


def test_other_configurations_never_turn_a_verdict() -> None:
    results = passing()
    set_repeats(results, "lenet", 16, "throughput_rps", [2100.0, 2100.0, 2100.0])
    fast = three_repeats(level(16, 90000.0), level(64, 90000.0))
    for key in ("lenet-workers-2", "lenet-batching-off"):
        results.runs.append(ServerRun(CONFIG[key], "server", "bench", fast, [100 * MiB] * 3))
    assert verdicts(results)[VS_BARE_16].met is False


@pytest.mark.parametrize(
    ("speed", "quantization", "met", "says"),
    [
        (140.0, {}, True, "gate passed"),
        (130.0, {}, True, "2.50x"),  # exactly 2.5x the FP32 ceiling's best, 52 samples/s
        (129.0, {}, False, "2.48x"),
        (140.0, {"gate": {**GATE, "passed": False}}, False, "gate failed"),
        # The record says passed, but its own figures are outside its limits.
        (140.0, {"accuracy_drop": 0.02}, False, "outside its limits"),
        (140.0, {"top1_agreement": 0.98}, False, "outside its limits"),
    ],
)
def test_int8_is_judged_on_speed_and_on_its_recorded_gate(
    speed: float, quantization: dict[str, Any], met: bool, says: str
) -> None:
    results = passing()
    set_repeats(results, "resnet18_int8", 8, "samples_per_s", [speed] * 3)
    results.models["resnet18_int8"] = int8_facts(**quantization)
    target = verdicts(results)[INT8]
    assert target.met is met
    assert says in target.why or says in target.measured


def test_int8_without_a_gate_record_is_not_met() -> None:
    facts = int8_facts()
    del facts["quantization"]
    assert gate_verdict(facts) == (
        False,
        "metadata.json of resnet18_int8 version 2 records no quantization gate",
    )
    incomplete = int8_facts()
    del incomplete["quantization"]["top1_agreement"]
    passed, text = gate_verdict(incomplete)
    assert not passed and "incomplete quantization record" in text and "top1_agreement" in text
    results = passing()
    results.models["resnet18_int8"] = facts
    assert verdicts(results)[INT8].met is False


def test_lenet_latency_and_throughput_bounds() -> None:
    results = passing()
    set_repeats(results, "lenet", 1, "p50", [0.81, 0.81, 0.81])
    set_repeats(results, "lenet", 64, "p99", [40.4, 40.4, 40.4])  # p50 is 20.0 (median)
    set_repeats(results, "lenet", 64, "throughput_rps", [2900.0, 2950.0, 2990.0])  # < 3000 at 16
    found = verdicts(results)
    assert found[P50].met is False and found[P50].measured.startswith("0.810")
    assert found[TAIL].met is False and "2.02x" in found[TAIL].measured
    assert found[HOLDS].met is False
    assert found[VS_BARE_64].met is True  # 2950 >= 1.0 x 2000
    set_repeats(results, "lenet-stream", 64, "throughput_rps", [5899.0] * 3)  # 2950 x 2 = 5900
    assert verdicts(results)[STREAM].met is False


def test_rss_target_is_the_median_of_fresh_servers() -> None:
    results = passing()
    assert verdicts(results)[RSS].measured == "210 (205–290) MiB"
    results.memory["default"]["rss_bytes"] = [301 * MiB, 290 * MiB, 320 * MiB]
    assert verdicts(results)[RSS].met is False


def test_nothing_measured_is_no_verdict() -> None:
    results = Results(
        "cmd", "now", {"commit": None, "dirty": None, "changed": []}, {"cores": 2}, Plan.make(True)
    )
    targets = check_targets(results)
    assert {t.met for t in targets} == {None}
    assert all(t.why.startswith("Not measured in this run:") for t in targets)
