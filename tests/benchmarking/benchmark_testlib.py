"""A results object built by hand, for judging targets and rendering the document without a run."""

from __future__ import annotations

import copy
from typing import Any

from benchmarking.plan import Plan
from benchmarking.results import Results
from benchmarking.served import CONFIGS, ServerRun
from benchmarking.targets import Target, check_targets

MiB = 2**20
CONFIG = {c.key: c for c in CONFIGS}
GATE = {"passed": True, "max_accuracy_drop": 0.01, "min_top1_agreement": 0.99}


def level(
    c: int, rps: float, p50: float = 1.0, p99: float | None = None, batch: float = 1.0
) -> dict[str, Any]:
    """One clients.bench JSON level (batch-1 requests)."""
    return {
        "concurrency": c,
        "batch_size": 1,
        "throughput_rps": rps,
        "samples_per_s": rps,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p99 or p50 * 1.5, "max": p50 * 3, "mean": p50},
        "server_mean_batch": batch,
        "client_cpu_cores": 0.4,
        "server_cpu_cores": 1.0,
        "machine_cpu_cores": 1.6,
        "failed": {},
    }


def three_repeats(*levels: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Three repeats around each level: 1% lower, as given, 1% higher, so the median is as given."""
    repeats = []
    for factor in (0.99, 1.0, 1.01):
        repeat = []
        for lvl in levels:
            moved = copy.deepcopy(lvl)
            moved["throughput_rps"] *= factor
            moved["samples_per_s"] *= factor
            moved["latency_ms"] = {k: v * factor for k, v in lvl["latency_ms"].items()}
            repeat.append(moved)
        repeats.append(repeat)
    return repeats


def ceiling(model: str, samples_per_s: dict[int, float], p50_ms: dict[int, float]) -> dict[str, Any]:
    return {
        "model": model,
        "version": 1,
        "precision": "int8" if model.endswith("_int8") else "fp32",
        "input_shape": [3, 224, 224],
        "session_threads": 2,
        "instances": 1,
        "seconds_per_measurement": 1.0,
        "batches": [
            {"batch": b, "samples_per_s": [v] * 3, "p50_ms": [p50_ms.get(b, 1.0)] * 3, "calls": [10] * 3}
            for b, v in samples_per_s.items()
        ],
    }


def int8_facts(**quantization: Any) -> dict[str, Any]:
    record = {
        "calibration_samples": 512,
        "fp32_test_accuracy": 0.95,
        "int8_test_accuracy": 0.945,
        "accuracy_drop": 0.005,
        "top1_agreement": 0.995,
        "gate": dict(GATE),
        **quantization,
    }
    return {"model": "resnet18_int8", "version": 2, "precision": "int8", "quantization": record}


def passing() -> Results:
    """A run in which every target is met."""
    results = Results(
        command="python scripts/benchmark.py",
        started="2026-01-01 00:00 UTC",
        source={"commit": "abc", "dirty": False, "changed": []},
        machine={
            "cpu": "Test CPU",
            "cores": 2,
            "memory_bytes": 8 * 2**30,
            "load_average_at_start": [0.5, 0.4, 0.3],
            "python": "3.11.7",
            "onnxruntime": "1.31.1",
            "platform": "Linux",
        },
        plan=Plan.make(quick=False),
    )
    levels: dict[str, list[dict[str, Any]]] = {
        "lenet": [level(1, 1500, p50=0.7), level(16, 3000, p50=5.0), level(64, 3100, p50=20.0, p99=30.0)],
        "lenet-bare": [level(1, 1600, p50=0.6), level(16, 2000, p50=8.0), level(64, 2000, p50=32.0)],
        "lenet-stream": [level(16, 5000, batch=9.0), level(64, 7000, batch=28.0)],
        "resnet18": [level(1, 44, p50=22.0), level(8, 48, batch=7.6)],
        "resnet18_int8": [level(1, 140, p50=7.0), level(8, 140, batch=7.9)],
    }
    for key, lvls in levels.items():
        results.runs.append(ServerRun(CONFIG[key], "server", "bench", three_repeats(*lvls), [100 * MiB] * 3))
    results.ceilings["lenet"] = ceiling("lenet", {1: 23000.0, 64: 44000.0}, {1: 0.041})
    results.ceilings["resnet18"] = ceiling("resnet18", {1: 48.0, 64: 52.0}, {1: 20.5})
    results.ceilings["resnet18_int8"] = ceiling("resnet18_int8", {1: 150.0, 64: 170.0}, {1: 6.5})
    results.models["resnet18_int8"] = int8_facts()
    results.memory["default"] = {
        "command": "server",
        "models": ["lenet", "resnet18"],
        "rss_idle_bytes": [200 * MiB] * 3,
        "rss_bytes": [205 * MiB, 210 * MiB, 290 * MiB],
    }
    return results


def verdicts(results: Results) -> dict[str, Target]:
    return {t.name: t for t in check_targets(results)}


def set_repeats(results: Results, key: str, concurrency: int, field: str, values: list[float]) -> None:
    """Give one figure of one level these values, one per repeat."""
    run = results.run(key)
    assert run is not None
    for repeat, value in zip(run.repeats, values, strict=True):
        for lvl in repeat:
            if lvl["concurrency"] == concurrency:
                if field in ("p50", "p99"):
                    lvl["latency_ms"][field] = value
                else:
                    lvl[field] = value
