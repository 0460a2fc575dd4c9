"""The in-process ceiling of an FP32 model and its INT8 quantization, and the gate read from metadata.json."""

from __future__ import annotations

from pathlib import Path

from benchmarking.ceiling import batch_figures, best_batch, measure_ceiling
from benchmarking.models import ensure_models, model_facts
from benchmarking.plan import Plan
from benchmarking.targets import gate_verdict


def plan(repeats: int) -> Plan:
    return Plan(
        quick=True,
        repeats=repeats,
        concurrency=(1,),
        duration={"tiny": 0.3, "tiny_int8": 0.3},
        warmup=0.0,
        ceiling_batches=(1, 8),
        ceiling_seconds=0.05,
        perf_analyzer_interval_ms=1000,
    )


def test_the_ceiling_measures_every_batch_in_every_repeat(tiny_repository: Path) -> None:
    for model, precision in (("tiny", "fp32"), ("tiny_int8", "int8")):
        ceiling = measure_ceiling(tiny_repository, model, plan(repeats=3))
        assert (ceiling["model"], ceiling["precision"], ceiling["input_shape"]) == (
            model,
            precision,
            [1, 8, 8],
        )
        assert ceiling["session_threads"] == 1  # the server's rule: a model this small gets one thread
        assert [b["batch"] for b in ceiling["batches"]] == [1, 8]
        for entry in ceiling["batches"]:
            assert len(entry["samples_per_s"]) == len(entry["p50_ms"]) == 3
            assert all(calls >= 3 for calls in entry["calls"])
        figures = batch_figures(ceiling)
        assert figures[1]["samples_per_s"].n == 3
        assert figures[8]["p50_ms"].median > 0
        best = best_batch(ceiling)
        assert best is not None
        assert best[1] == max((f["samples_per_s"] for f in figures.values()), key=lambda s: s.median)


def test_the_int8_gate_comes_from_the_published_metadata(tiny_repository: Path) -> None:
    facts = model_facts(tiny_repository, "tiny_int8")
    assert facts["precision"] == "int8" and facts["version"] == 1
    record = facts["quantization"]
    assert record["calibration_samples"] == 64
    passed, text = gate_verdict(facts)
    assert passed is record["gate"]["passed"]
    assert text.startswith("metadata.json of tiny_int8 version 1: test accuracy drop ")
    assert f"top-1 agreement with FP32 {record['top1_agreement']:.4f}" in text
    assert model_facts(tiny_repository, "tiny")["quantization"] is None


def test_present_models_need_no_export(tiny_repository: Path) -> None:
    skipped: list[str] = []
    assert ensure_models(tiny_repository, ["tiny", "absent", "tiny_int8"], (), skipped) == [
        "tiny",
        "tiny_int8",
    ]
    assert skipped == []
