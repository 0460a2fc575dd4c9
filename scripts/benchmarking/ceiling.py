"""The ceiling: ONNX Runtime in this process, no RPC, at each batch size; the server is held to it.

The session is opened exactly as the server opens one instance of the model
(``server.runtime.open_session`` with the server's default settings: the same intra-op
thread count, no spinning thread pools, the same graph optimisations), so the ceiling
and the served figures differ only by serving. Each repeat measures every batch size
once, so the repeats of one batch size are spread over the whole measurement.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarking.commands import log
from benchmarking.models import model_facts
from benchmarking.plan import Plan
from benchmarking.stats import Spread, spread

#: Unmeasured calls at each batch size before its first measurement.
WARM_UP_CALLS = 3
#: A measurement lasts the planned seconds, and at least this many calls.
MIN_CALLS = 3


def measure_ceiling(repository: Path, model: str, plan: Plan) -> dict[str, Any]:
    """Samples/s and the p50 time per call at each planned batch size, per repeat, on random inputs."""
    from modelrepo import latest_version, read_version
    from modelrepo.datatypes import DATATYPES
    from server.runtime import Device, open_session

    version = read_version(repository, model, latest_version(repository, model) or 1)
    name = version.config.input.name
    shape = version.config.input.shape
    dtype = DATATYPES[version.config.input.datatype].dtype.name
    instances = version.config.batching.instances
    session, _device, threads = open_session(
        version.model_path,
        Device("cpu"),
        intra_op_threads=0,
        instances=instances,
        input_name=name,
        sample_shape=shape,
        dtype=dtype,
    )
    rng = np.random.default_rng(0)
    feeds = {b: {name: rng.standard_normal((b, *shape)).astype(dtype)} for b in plan.ceiling_batches}
    for feed in feeds.values():
        for _ in range(WARM_UP_CALLS):
            session.run(None, feed)
    batches: dict[int, dict[str, list[float]]] = {
        b: {"samples_per_s": [], "p50_ms": [], "calls": []} for b in plan.ceiling_batches
    }
    for repeat in range(plan.repeats):
        for batch, feed in feeds.items():
            times: list[float] = []
            end = time.perf_counter() + plan.ceiling_seconds
            while time.perf_counter() < end or len(times) < MIN_CALLS:
                t0 = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - t0)
            figures = batches[batch]
            figures["samples_per_s"].append(batch * len(times) / sum(times))
            figures["p50_ms"].append(float(np.percentile(times, 50) * 1e3))
            figures["calls"].append(len(times))
            log(
                f"ceiling {model} batch {batch} repeat {repeat + 1}/{plan.repeats}: "
                f"{figures['samples_per_s'][-1]:.1f} samples/s"
            )
    facts = model_facts(repository, model)
    return {
        "model": model,
        "version": facts["version"],
        "precision": facts["precision"],
        "input_shape": facts["input_shape"],
        "session_threads": threads,
        "instances": instances,
        "seconds_per_measurement": plan.ceiling_seconds,
        "batches": [{"batch": b, **figures} for b, figures in batches.items()],
    }


def batch_figures(ceiling: dict[str, Any]) -> dict[int, dict[str, Spread]]:
    """Per batch size: the spread of samples/s and of the p50 time per call over the repeats."""
    result = {}
    for entry in ceiling["batches"]:
        throughput, p50 = spread(entry["samples_per_s"]), spread(entry["p50_ms"])
        if throughput is not None and p50 is not None:
            result[int(entry["batch"])] = {"samples_per_s": throughput, "p50_ms": p50}
    return result


def best_batch(ceiling: dict[str, Any]) -> tuple[int, Spread] | None:
    """The batch size with the highest median samples/s, and that figure; None if nothing was measured."""
    figures = batch_figures(ceiling)
    if not figures:
        return None
    batch = max(figures, key=lambda b: figures[b]["samples_per_s"].median)
    return batch, figures[batch]["samples_per_s"]
