"""The Markdown documents: templates filled only with values computed from the run that writes them.

Nothing here measures or judges: :func:`render_document` formats a
:class:`~gpucheck.results.Results` and its verdicts, :func:`render_not_measured` the preflight
of a machine without a usable GPU.
"""

from __future__ import annotations

from typing import Any

from benchmarking.targets import Target

from gpucheck.plan import EXIT_NO_GPU, MODEL
from gpucheck.preflight import Preflight
from gpucheck.results import Results
from gpucheck.verdicts import IOBINDING_HELPS, verdict_word

TITLE = "# GPU serving check"


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: object, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def origin(source: dict[str, Any], listed_in: str | None = None) -> str:
    """The commit a run came from and whether the tree was dirty (``benchmarking.provenance.source_state``).

    ``listed_in`` names the file that lists the changed paths, if the run writes one.
    """
    if source.get("commit") is None:
        return "an unknown commit (no git checkout)"
    if not source["dirty"]:
        return f"commit `{source['commit']}`, tree clean"
    changed = len(source["changed"])
    where = f", all listed in `{listed_in}`" if listed_in else ""
    return f"commit `{source['commit']}` with uncommitted changes in {changed} path(s){where}"


def preflight_table(p: Preflight) -> list[str]:
    rows = [
        ("nvidia-smi", p.nvidia_smi),
        ("CUDA driver (libcuda, as `server.runtime` asks it)",
         f"{p.driver_devices} device(s)" + (f": {p.driver_reason}" if p.driver_reason else "")
         + (f"; supports CUDA {p.driver_cuda_version}" if p.driver_cuda_version else "")),
        ("ONNX Runtime", f"{p.onnxruntime}" + (f", built for CUDA {p.cuda_build}" if p.cuda_build else "")),
        ("execution providers it lists", ", ".join(p.providers)),
        ("CUDA libraries (pip wheels)", "; ".join(f"{k}: {v}" for k, v in p.wheels.items())),
        *((f"libraries {provider} cannot find (ldd, wheel directories on LD_LIBRARY_PATH)",
           ", ".join(missing) or "none") for provider, missing in p.unresolved.items()
          if provider in p.providers),
    ]  # fmt: skip
    return ["| check | finding |", "| --- | --- |", *(f"| {a} | {_md(b)} |" for a, b in rows)]


def render_not_measured(
    p: Preflight, command: str, machine: dict[str, Any], started: str, source: dict[str, Any]
) -> str:
    """The document of a machine without a usable GPU: what the preflight found, and no figure."""
    lines = [
        TITLE,
        "",
        f"**Not measured.** `{command}` ran on {started}, from {origin(source)}, on a machine without a "
        f"usable NVIDIA GPU ({machine['cpu']}, {machine['cores']} cores), so it measured nothing: no export, "
        "no session, no server and no figure. Why: " + p.why_not_measured() + ".",
        "",
        "## What the preflight found",
        "",
        *preflight_table(p),
        "",
        f"The script exited with status {EXIT_NO_GPU} (no usable GPU). On a machine with an NVIDIA GPU, "
        f"`python scripts/gpu_check.py` measures and rewrites this document.",
        "",
    ]
    return "\n".join(lines)


def render_document(results: Results, rows: list[Target], json_name: str) -> str:
    """The document of a measured run (on the GPU, or the CPU dry run, which it says it is)."""
    return "\n".join(
        [
            *_header_lines(results, json_name),
            *_verdict_lines(rows),
            *_model_lines(results),
            *_ceiling_lines(results),
            *_served_lines(results),
            *_tensorrt_lines(results),
            "## Machine",
            "",
            *preflight_table(results.preflight),
            "",
            *_command_lines(results, json_name),
        ]
    )


def _header_lines(results: Results, json_name: str) -> list[str]:
    plan, p = results.plan, results.preflight
    gpu = "; ".join(
        f"{g.get('name')} ({g.get('memory.total')}, driver {g.get('driver_version')})" for g in p.gpus
    )
    out = [TITLE, ""]
    if plan.dry_run:
        out += [
            f"**CPU dry run, not GPU figures.** This run used the CPU execution provider "
            f"(`--device cpu`) at {plan.image_size}x{plan.image_size} with {plan.duration:g}-second levels: "
            "it shows that the pipeline runs end to end; none of its numbers describes a GPU.",
            "",
        ]
    return [
        *out,
        f"Measured by `{results.command}` on {results.started}, from "
        f"{origin(results.source, json_name)}: "
        + (f"{gpu}; " if gpu else "")
        + f"{p.onnxruntime}"
        + (f" built for CUDA {p.cuda_build}" if p.cuda_build else "")
        + (f", the driver supporting CUDA {p.driver_cuda_version}" if p.driver_cuda_version else "")
        + f"; {results.machine['cpu']}, {results.machine['cores']} cores. "
        f"Models at {plan.image_size}x{plan.image_size}; sessions on {plan.device}.",
        "",
    ]


def _verdict_lines(rows: list[Target]) -> list[str]:
    out = ["## Verdicts", "", "| check | target | measured | verdict |", "| --- | --- | --- | --- |"]
    out += [f"| {_md(v.name)} | {_md(v.goal)} | {_md(v.measured)} | {verdict_word(v)} |" for v in rows]
    return [*out, ""]


def _model_lines(results: Results) -> list[str]:
    out = ["## Models", "", "| model | version | made by | ONNX size | nodes per execution provider |"]
    out.append("| --- | --- | --- | --- | --- |")
    for r in results.models:
        nodes = ", ".join(f"{ep}: {n}" for ep, n in r.placement["nodes"].items())
        out.append(
            f"| {r.name} | {r.version} | {_md(r.made_by)} | {r.size_bytes / 2**20:.1f} MiB | {nodes} |"
        )
    for r in results.models:
        if r.agreement is not None:
            a = r.agreement
            out += [
                "",
                f"{r.name} against {MODEL} on {a['images']} ({a['device']}): top-1 agreement "
                f"{a['top1_agreement']:.4f} ({a['disagreements']} of {a['samples']} differ, "
                f"{a['disagreements_at_near_ties']} of them where the FP32 top two logits are within "
                f"{2 * a['tolerance']:.0%} of the largest logit); "
                f"largest logit difference {a['max_abs_diff']:.3g}, "
                f"{a['relative_max_abs_diff']:.3%} of the largest FP32 logit ({a['max_abs_logit']:.3g}).",
            ]
    return [*out, ""]


def _ceiling_lines(results: Results) -> list[str]:
    out = [
        "## In-process ceiling (ONNX Runtime, no RPC)",
        "",
        "Sessions opened as the server opens them (`server.runtime.open_session`). *Plain*: `run` with the "
        "input in host memory and the output returned there, as the server does; *I/O binding*: input "
        "and output on the device.",
        "",
        "| model | batch | plain samples/s | plain p50 ms | I/O binding samples/s | I/O binding p50 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results.models:
        for plain, bound in zip(r.plain["batches"], r.iobinding["batches"], strict=True):
            out.append(
                f"| {r.name} | {plain['batch']} | {plain['samples_per_s']:.1f} | {plain['p50_ms']:.2f} | "
                f"{bound['samples_per_s']:.1f} | {bound['p50_ms']:.2f} |"
            )
    out.append("")
    for r in results.models:
        gain = r.iobinding["best_samples_per_s"] / r.plain["best_samples_per_s"]
        effect = (
            f"raises it to {r.iobinding['best_samples_per_s']:.1f} (x{gain:.2f}): "
            "the host copies cost that much"
            if gain >= IOBINDING_HELPS
            else f"gives {r.iobinding['best_samples_per_s']:.1f} (x{gain:.2f}), no gain beyond "
            f"{IOBINDING_HELPS - 1:.0%}"
        )
        out.append(
            f"- {r.name}: best plain {r.plain['best_samples_per_s']:.1f} samples/s at batch "
            f"{r.plain['best_batch']}; I/O binding {effect}."
        )
    return [*out, ""]


def _served_lines(results: Results) -> list[str]:
    plan = results.plan
    out = [
        "## Served",
        "",
        f"`python -m server --device {plan.device}`, one model per server, driven by "
        "`python -m clients.bench` "
        f"({plan.bench_processes} load process(es), {plan.duration:g} s per level after {plan.warmup:g} s "
        "of warm-up). Ratios: served samples/s over the in-process best batch, plain and with I/O binding.",
        "",
        "| model | concurrency | samples/s | p50 ms | p99 ms | failed | server mean batch | server CPU cores "
        "| / plain ceiling | / I/O-binding ceiling |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results.models:
        for lvl in r.levels:
            rate = lvl.get("samples_per_s") or 0.0
            latency = lvl.get("latency_ms") or {}
            out.append(
                f"| {r.name} | {lvl['concurrency']} | {rate:.1f} | {_num(latency.get('p50'), '.2f')} | "
                f"{_num(latency.get('p99'), '.2f')} | {sum((lvl.get('failed') or {}).values())} | "
                f"{_num(lvl.get('server_mean_batch'), '.1f')} | {_num(lvl.get('server_cpu_cores'), '.2f')} | "
                f"{rate / r.plain['best_samples_per_s']:.2f} | "
                f"{rate / r.iobinding['best_samples_per_s']:.2f} |"
            )
    return [*out, ""]


def _tensorrt_lines(results: Results) -> list[str]:
    trt = results.tensorrt
    out = ["## TensorRT execution provider", ""]
    if trt.get("status") == "measured":
        for e in trt["engines"]:
            row = e["batches"][0]
            out.append(
                f"- {MODEL}, {e['precision']} engine, batch {row['batch']}: "
                f"{row['samples_per_s']:.1f} samples/s "
                f"(p50 {row['p50_ms']:.2f} ms); session providers {', '.join(e['providers'])}."
            )
    else:
        out.append(f"Not measured ({trt['status']}): {_md(trt['reason'])}.")
    return [*out, ""]


def _command_lines(results: Results, json_name: str) -> list[str]:
    out = ["## Commands", ""]
    if results.library_env:
        out += [
            "The server runs with `LD_LIBRARY_PATH` naming the NVIDIA wheels' library directories, "
            "where the CUDA execution provider finds its libraries; this process preloads them "
            "(`onnxruntime.preload_dlls`).",
            "",
        ]
    out.append(f"- export: `{results.export_command}`")
    for r in results.models:
        out += [f"- serve {r.name}: `{r.server_command}`", f"- load {r.name}: `{r.bench_command}`"]
    return [
        *out,
        "",
        f"Every figure, with the load generator's own levels, is in `{json_name}` beside this file.",
        "",
    ]
