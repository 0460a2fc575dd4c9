"""ONNX Runtime in this process, no RPC: where the nodes run, the ceiling, and the TensorRT EP.

Sessions are opened as the server opens one instance (``server.runtime.open_session``), so
the ceiling and the served figures differ only by serving. The ceiling is measured twice:
with plain ``run`` (the input copied from and the output to host memory, as the server does)
and with I/O binding (both on the device), which shows what the copies cost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from benchmarking.ceiling import MIN_CALLS, WARM_UP_CALLS
from benchmarking.commands import log

import modelrepo
from gpucheck.plan import Plan
from gpucheck.preflight import PROVIDER_LIBRARIES, TENSORRT, missing_libraries, ort_distribution
from modelrepo.datatypes import DATATYPES
from server.runtime import CPU, Device, open_session


def session_for(path: Path, device: Device, config: modelrepo.ModelConfig) -> ort.InferenceSession:
    """A session opened exactly as the server opens one instance (``server.runtime.open_session``).

    With an explicit CUDA device it raises instead of falling back to the CPU.
    """
    spec = config.input
    session, _device, _threads = open_session(
        path,
        device,
        intra_op_threads=0,
        instances=1,
        input_name=spec.name,
        sample_shape=spec.shape,
        dtype=DATATYPES[spec.datatype].dtype.name,
    )
    return session


def node_placement(path: Path, device: Device) -> dict[str, Any]:
    """How many graph nodes each execution provider runs, with the server's providers and optimisations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    session = ort.InferenceSession(str(path), sess_options=options, providers=device.providers)
    nodes: Counter[str] = Counter()
    cpu_ops: Counter[str] = Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        for node in subgraph.get_nodes():
            nodes[subgraph.ep_name] += 1
            if subgraph.ep_name == CPU:
                cpu_ops[node.op_type] += 1
    return {"providers": session.get_providers(), "nodes": dict(nodes), "cpu_op_types": dict(cpu_ops)}


def measure_ceiling(
    session: ort.InferenceSession,
    device: Device,
    batches: Sequence[int],
    seconds: float,
    *,
    io_binding: bool,
) -> dict[str, Any]:
    """Samples/s per batch size of ``session`` in this process on random inputs.

    Plain ``run`` takes the input from and returns the output to host memory, as the server
    does; with ``io_binding`` both stay on ``device`` (an OrtValue there, bound once), which
    shows what the copies cost.
    """
    shape = tuple(int(d) for d in session.get_inputs()[0].shape[1:])
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        call = _runner(session, device, x, io_binding)
        for _ in range(WARM_UP_CALLS):  # first calls at a new shape pick kernels and allocate
            call()
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < MIN_CALLS:
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        rows.append(
            {
                "batch": batch,
                "calls": len(times),
                "samples_per_s": batch * len(times) / sum(times),
                "p50_ms": float(np.percentile(times, 50) * 1e3),
            }
        )
    best = max(rows, key=lambda r: r["samples_per_s"])
    return {
        "io_binding": io_binding,
        "providers": session.get_providers(),
        "batches": rows,
        "best_batch": best["batch"],
        "best_samples_per_s": best["samples_per_s"],
    }


def _runner(
    session: ort.InferenceSession, device: Device, x: np.ndarray, io_binding: bool
) -> Callable[[], object]:
    """One inference call on ``x``: plain ``run``, or ``run_with_iobinding`` with both ends on ``device``."""
    spec, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    if not io_binding:
        feed = {spec: x}
        return lambda: session.run([output], feed)
    binding = session.io_binding()
    binding.bind_ortvalue_input(spec, ort.OrtValue.ortvalue_from_numpy(x, device.kind, device.index))
    binding.bind_output(output, device.kind, device.index)
    return lambda: session.run_with_iobinding(binding)


def try_tensorrt(path: Path, plan: Plan, batch: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """The TensorRT EP's best-batch figures (FP32 and FP16 engines), or why it was not measured."""
    if plan.dry_run:
        return {"status": "not tried", "reason": "a CPU dry run does not try TensorRT"}
    if TENSORRT not in ort.get_available_providers():
        return {
            "status": "absent",
            "reason": f"{ort_distribution()} lists no {TENSORRT} "
            f"(providers: {', '.join(ort.get_available_providers())})",
        }
    missing = missing_libraries(PROVIDER_LIBRARIES[TENSORRT], env)
    results: dict[str, Any] = {"status": "measured", "missing_libraries": missing, "engines": []}
    for fp16 in (False, True):
        options = {
            "device_id": str(plan.device.index),
            "trt_fp16_enable": str(fp16),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(work / "trt-cache"),
        }
        providers = [(TENSORRT, options), *plan.device.providers]
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # ORT raises several unrelated types when a provider cannot start
            return {
                **results,
                "status": "unusable",
                "reason": f"session creation failed: {exc}".splitlines()[0],
            }
        if TENSORRT not in session.get_providers():
            lacking = f"; its library cannot find {', '.join(missing)}" if missing else ""
            return {
                **results,
                "status": "unusable",
                "reason": f"{TENSORRT} is listed, but ONNX Runtime could not start it "
                f"(session providers: {', '.join(session.get_providers())}){lacking}",
            }
        log(f"TensorRT ({'FP16' if fp16 else 'FP32'} engine) at batch {batch}")
        figures = measure_ceiling(session, plan.device, [batch], plan.ceiling_seconds, io_binding=False)
        results["engines"].append({"precision": "FP16" if fp16 else "FP32", **figures})
    return results
