"""The targets of issue 12 as data, and their verdicts computed from a :class:`~gpucheck.results.Results`.

Each verdict is a :class:`benchmarking.targets.Target`, the benchmark's own verdict type:
its name is the check, its goal the target, and its measured text comes from this run.
"""

from __future__ import annotations

from typing import Any

from benchmarking.targets import Target

from gpucheck.plan import MODEL
from gpucheck.results import ModelResult, Results
from server.runtime import CPU, CUDA

#: The issue that set these targets.
ISSUE = "12"
#: Served throughput over the in-process best batch that issue 12 asks for.
TARGET_SERVED_RATIO = 0.8
#: The operators that hold a CNN's arithmetic: on the GPU run none of them may be left to the CPU.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
#: Below this gain I/O binding is reported as making no difference (run-to-run noise is a few %).
IOBINDING_HELPS = 1.05


def best_level(result: ModelResult) -> dict[str, Any]:
    """The served load level with the highest samples/s."""
    return max(result.levels, key=lambda lvl: lvl.get("samples_per_s") or 0.0)


def verdicts(results: Results) -> list[Target]:
    """The targets of issue 12 compared with what the run measured."""
    device = str(results.plan.device)
    provider = CPU if results.plan.dry_run else CUDA
    rows = []
    for r in results.models:
        nodes = r.placement["nodes"]
        heavy_on_cpu = {op: n for op, n in r.placement["cpu_op_types"].items() if op in COMPUTE_OPS}
        rows.append(
            Target(
                f"{r.name} nodes on {provider} (in process)",
                ISSUE,
                f"every {'/'.join(COMPUTE_OPS)} node on {provider}",
                f"{nodes.get(provider, 0)} of {sum(nodes.values())} nodes on {provider}"
                + (f"; on {CPU}: {r.placement['cpu_op_types']}" if provider != CPU and heavy_on_cpu else ""),
                nodes.get(provider, 0) > 0 and (provider == CPU or not heavy_on_cpu),
            )
        )
        sd = r.served_device
        groups = ", ".join(
            f"{g['kind']} gpus {g['gpus']}" if g["gpus"] else g["kind"] for g in sd["instance_groups"]
        )
        rows.append(
            Target(
                f"{r.name} served on {device}",
                ISSUE,
                f"ModelConfig instance group and the server's log both name {device}",
                f"instance group {groups}; log: ready on {sd['log_device']}",
                bool(sd["confirmed"]),
            )
        )
        lvl = best_level(r)
        ratio = (lvl.get("samples_per_s") or 0.0) / r.plain["best_samples_per_s"]
        rows.append(
            Target(
                f"{r.name} served / in-process best batch",
                ISSUE,
                f">= {TARGET_SERVED_RATIO:.1f}x",
                f"{ratio:.2f}x ({lvl['samples_per_s']:.0f} samples/s at c={lvl['concurrency']} vs "
                f"{r.plain['best_samples_per_s']:.0f} at batch {r.plain['best_batch']})",
                ratio >= TARGET_SERVED_RATIO,
            )
        )
        if r.agreement is not None:
            a = r.agreement
            rows.append(
                Target(
                    f"{r.name} agrees with {MODEL}",
                    ISSUE,
                    f"max |diff| <= {a['tolerance']:.0%} of max |logit|",
                    f"{a['relative_max_abs_diff']:.3%}; top-1 agreement {a['top1_agreement']:.4f} "
                    f"({a['disagreements']} flips, {a['disagreements_at_near_ties']} at near ties)",
                    bool(a["within_tolerance"]),
                )
            )
    trt = results.tensorrt
    if trt.get("status") == "measured":
        engines = "; ".join(
            f"{e['precision']} {e['best_samples_per_s']:.0f} samples/s" for e in trt["engines"]
        )
        rows.append(Target("TensorRT EP", ISSUE, "measured when available", engines, True))
    else:
        rows.append(
            Target("TensorRT EP", ISSUE, "measured when available", f"{trt['status']}: {trt['reason']}", None)
        )
    return rows


def verdict_word(target: Target) -> str:
    """How the document words a verdict: met, **missed** or not measured."""
    return "not measured" if target.met is None else ("met" if target.met else "**missed**")
