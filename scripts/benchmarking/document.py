"""The Markdown document: a template filled only with values computed from a results object.

Nothing here measures or judges; every number is formatted from
:class:`~benchmarking.results.Results` or the :class:`~benchmarking.targets.Target`
verdicts, so that every sentence in the document is computed by the run that wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarking import perf
from benchmarking.ceiling import batch_figures, best_batch
from benchmarking.plan import FULL_REPEATS
from benchmarking.results import Results
from benchmarking.served import CONFIGS, ServerRun
from benchmarking.stats import Spread, spread
from benchmarking.targets import Target

MiB = 2**20
#: Changed paths named in the header; benchmarks.json lists them all.
SHOWN_CHANGES = 10
#: The per-level table of one configuration: column header, figure name, format.
LEVEL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("requests/s", "requests_per_s", ".1f"),
    ("p50 ms", "p50_ms", ".2f"),
    ("p90 ms", "p90_ms", ".2f"),
    ("p99 ms", "p99_ms", ".2f"),
    ("max ms", "max_ms", ".2f"),
    ("server mean batch", "mean_batch", ".2f"),
    ("server CPU µs/request", "server_us_per_request", ".0f"),
    ("generator CPU (cores)", "generator_cores", ".2f"),
    ("server CPU (cores)", "server_cores", ".2f"),
    ("machine CPU (cores)", "machine_cores", ".2f"),
)
#: Where the server's CPU per request is compared, for LeNet, and the figures shown there.
CPU_CONCURRENCY = (16, 64)
CPU_COLUMNS = (("requests_per_s", ".0f"), ("server_us_per_request", ".0f"), ("mean_batch", ".2f"))


def _cell(value: Spread | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else value.format(spec, scale)


def _verdict(target: Target) -> str:
    return "not measured" if target.met is None else ("met" if target.met else "**MISSED**")


def header_lines(results: Results) -> list[str]:
    """Who wrote the document from which commit, on what machine, with how many repeats."""
    m, plan, source = results.machine, results.plan, results.source
    if source.get("commit") is None:
        origin = "an unknown commit (no git checkout)"
    else:
        origin = f"commit `{source['commit']}`"
        if source["dirty"]:
            changed = source["changed"]
            origin += " with uncommitted changes in " + ", ".join(f"`{p}`" for p in changed[:SHOWN_CHANGES])
            if len(changed) > SHOWN_CHANGES:
                origin += f" and {len(changed) - SHOWN_CHANGES} more paths (all listed in benchmarks.json)"
        else:
            origin += ", tree clean"
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{results.command}` on {results.started}, from {origin}. Every number and figure "
        "below comes from that one run; do not edit them by hand, run the script again.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB, Python "
        f"{m['python']}, ONNX Runtime {m['onnxruntime']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. The load generator and the servers "
        "share these cores.",
        "",
        (
            f"Each figure is the median of {plan.repeats} repeats, with the lowest and highest in brackets"
            if plan.repeats > 1
            else "Each figure is from a single repeat"
        )
        + f". Served levels: concurrency {', '.join(map(str, plan.concurrency))}; "
        + ", ".join(f"{model} {seconds:g} s" for model, seconds in plan.duration.items())
        + f" measured per level after {plan.warmup:g} s of warm-up. The configurations of one model "
        "run interleaved: every repeat runs each of them once in turn.",
        "",
    ]
    if plan.repeats < FULL_REPEATS:
        lines += [
            f"**{plan.repeats} repeat{'s' if plan.repeats != 1 else ''} only, fewer than the "
            f"{FULL_REPEATS} the targets are judged on"
            + (
                " (a `--quick` smoke-test run: durations are too short for the numbers to mean much)"
                if plan.quick
                else ""
            )
            + ".**",
            "",
        ]
    elif plan.quick:
        lines += ["**A `--quick` smoke-test run: durations are too short for the numbers to mean much.**", ""]
    lines += [f"- Not measured: {note}" for note in results.skipped]
    return lines + ([""] if results.skipped else [])


def target_lines(targets: Sequence[Target]) -> list[str]:
    lines = [
        "## Targets",
        "",
        "Every verdict compares medians of the default single-process configuration (`python -m "
        "server` as configured); the other configurations are shown beside it and never turn a verdict.",
        "",
        "| target | issue | goal | measured | result |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {t.name} | {t.issue} | {t.goal} | {t.measured} | {_verdict(t)} |" for t in targets]
    lines += ["", "### What each verdict rests on", ""]
    lines += [f"- **{t.name}** ({_verdict(t)}): {t.why}" for t in targets]
    return [*lines, ""]


def ceiling_lines(results: Results) -> list[str]:
    lines = [
        "## Ceiling: ONNX Runtime in-process, no RPC",
        "",
        "Measured in the benchmark script's own process (`benchmarking/ceiling.py`): one "
        "`onnxruntime.InferenceSession` opened exactly as the server opens a model instance "
        "(`server.runtime.open_session`), random inputs, "
        f"{results.plan.ceiling_seconds:g} s per batch size and repeat.",
        "",
    ]
    for model, ceiling in results.ceilings.items():
        figures = batch_figures(ceiling)
        best = best_batch(ceiling)
        summary = (
            f"**{model}** (version {ceiling['version']}, precision {ceiling['precision'] or 'not recorded'}"
        )
        summary += f", input {'x'.join(map(str, ceiling['input_shape']))})"
        if best is not None:
            summary += f": best {best[1].format('.1f')} samples/s at batch {best[0]}"
        if 1 in figures:
            summary += f", batch-1 p50 {figures[1]['p50_ms'].format('.3f')} ms"
        summary += f"; {ceiling['session_threads']} intra-op thread(s), as the server uses."
        lines += [summary, "", "| batch | samples/s | p50 per call (ms) |", "|---:|---:|---:|"]
        lines += [
            f"| {b} | {f['samples_per_s'].format('.1f')} | {f['p50_ms'].format('.3f')} |"
            for b, f in figures.items()
        ]
        lines.append("")
    return lines


def _groups(results: Results) -> dict[str, list[ServerRun]]:
    groups: dict[str, list[ServerRun]] = {}
    for run in results.runs:
        groups.setdefault(run.config.group, []).append(run)
    return groups


def side_by_side_lines(runs: Sequence[ServerRun]) -> list[str]:
    """Requests/s of every configuration of a group at each concurrency, in one table."""
    summaries = [run.summary() for run in runs]
    concurrency = sorted({c for s in summaries for c in s})
    lines = [
        "| concurrency | " + " | ".join(run.config.label for run in runs) + " |",
        "|---:|" + "---:|" * len(runs),
    ]
    for c in concurrency:
        cells = [_cell(s[c].get("requests_per_s") if c in s else None, ".0f") for s in summaries]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def run_lines(run: ServerRun) -> list[str]:
    """One configuration: its server and load commands, and every level over the repeats."""
    config = run.config
    samples = {lvl["batch_size"] for levels in run.repeats for lvl in levels}
    rss = spread(run.rss_bytes)
    lines = [
        f"#### {config.label}" + (" (default configuration: the targets judge it)" if config.default else ""),
        "",
        f"Server: `{run.server_command}`",
        "",
        f"Load (repeat 1): `{run.bench_command}`",
        "",
        f"Samples per request: {', '.join(map(str, sorted(samples)))}.",
        "",
        "| concurrency | " + " | ".join(c[0] for c in LEVEL_COLUMNS) + " | failed |",
        "|---:|" + "---:|" * len(LEVEL_COLUMNS) + "---|",
    ]
    for c, level in run.summary().items():
        cells = [_cell(level.get(name), spec) for _, name, spec in LEVEL_COLUMNS]
        failed = ", ".join(f"{k} {v}" for k, v in level.failed.items()) or "0"
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {failed} |")
    if rss is not None:
        lines += ["", f"Server RSS after each repeat: {rss.format('.0f', 1 / MiB)} MiB."]
    return [*lines, ""]


def served_lines(results: Results) -> list[str]:
    lines = ["## Served", ""]
    for group, runs in _groups(results).items():
        lines += [
            f"### {group}",
            "",
            f"![{group}](benchmark_{group}.png)",
            "",
            "Requests/s side by side:",
            "",
        ]
        lines += side_by_side_lines(runs)
        for run in runs:
            lines += run_lines(run)
    return lines


def cpu_lines(results: Results) -> list[str]:
    """The server's CPU per request in each LeNet configuration, against the model's own time."""
    keys = [c.key for c in CONFIGS if c.model == "lenet" and results.run(c.key) is not None]
    if not keys:
        return []
    lines = [
        "## Where the time goes",
        "",
        "Server CPU per answered request (its CPU in cores over its requests/s), and the mean batch it "
        "executed:",
        "",
        "| configuration | concurrency | requests/s | server CPU µs/request | server mean batch |",
        "|---|---:|---:|---:|---:|",
    ]
    for key in keys:
        run = results.run(key)
        assert run is not None
        for c in CPU_CONCURRENCY:
            level = results.level(key, c)
            if level is None:
                continue
            cells = [
                _cell(level.get(name), spec)
                for name, spec in (
                    ("requests_per_s", ".0f"),
                    ("server_us_per_request", ".0f"),
                    ("mean_batch", ".2f"),
                )
            ]
            lines.append(f"| {run.config.label} | {c} | " + " | ".join(cells) + " |")
    ceiling = results.ceilings.get("lenet")
    at_1 = batch_figures(ceiling).get(1) if ceiling else None
    unary = results.figure("lenet", CPU_CONCURRENCY[0], "server_us_per_request")
    if at_1 is not None and unary is not None:
        model_us = at_1["p50_ms"].median * 1e3
        lines += [
            "",
            f"In-process, one LeNet call of batch 1 takes {model_us:.0f} µs (p50): "
            f"{model_us / unary.median:.0%} of the {unary.median:.0f} µs of server CPU per unary request at "
            f"concurrency {CPU_CONCURRENCY[0]}; the rest is the serving stack's work per request.",
        ]
    return [*lines, ""]


def memory_lines(results: Results) -> list[str]:
    lines = []
    for label, title in (("default", "default models"), ("zoo", "whole zoo")):
        memory = results.memory.get(label)
        resident = spread(memory["rss_bytes"]) if memory else None
        idle = spread(memory["rss_idle_bytes"]) if memory else None
        if memory is None or resident is None or idle is None:
            continue
        lines.append(
            f"- **{title}** ({', '.join(memory['models'])}): RSS {resident.format('.0f', 1 / MiB)} MiB after "
            f"one request to each model ({idle.format('.0f', 1 / MiB)} MiB before); a fresh server per "
            f"repeat. Server: `{memory['command']}`"
        )
    return ["## Memory", "", *lines, ""] if lines else []


def perf_analyzer_lines(results: Results) -> list[str]:
    """perf_analyzer's figures, beside our generator's for the same model and server configuration."""
    pa = results.perf_analyzer
    if not pa:
        return []
    lines = ["## Triton's perf_analyzer", ""]
    if "skipped" in pa:
        return [*lines, f"Not measured: {pa['skipped']}", ""]
    summary = perf.summarize(pa)
    lines += [
        f"{pa['version']}, `-i grpc`, {pa['model']}, batch 1, random inputs, each concurrency a run of its "
        f"own with {pa['measurement_interval_ms']} ms windows until three agree within "
        f"{pa['stability_percentage']}%, {len(pa['repeats'])} repeat(s); figures from its `-f` latency "
        "report. perf_analyzer reads ModelStatistics around every window, so the server-side columns are "
        "our statistics as Triton's tools read them. Our own generator's figures (default configuration, "
        "unary) are beside them.",
        "",
        f"Server: `{pa['server_command']}`",
        "",
    ]
    if summary:
        c, first = next(iter(summary.items()))
        lines += [
            f"perf_analyzer, at each concurrency C: `{first['command'].replace(f'{c}:{c}:1', 'C:C:1')}`",
            "",
        ]
    lines += [
        "| concurrency | infer/s | avg ms | p50 ms | p99 ms | server queue / input / infer / output µs "
        "| failed runs | clients.bench requests/s | clients.bench p50 ms | clients.bench p99 ms |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for c, level in summary.items():
        f = level["figures"]
        server = " / ".join(_cell(f[k], ".0f") for k in perf.FIGURES[4:])
        latency = " | ".join(_cell(f[k], ".3f", 1e-3) for k in ("avg_latency_us", "p50_us", "p99_us"))
        ours = " | ".join(
            _cell(results.figure("lenet", c, name), spec)
            for name, spec in (("requests_per_s", ".1f"), ("p50_ms", ".2f"), ("p99_ms", ".2f"))
        )
        throughput = _cell(f["throughput_infer_per_s"], ".1f")
        lines.append(f"| {c} | {throughput} | {latency} | {server} | {len(level['errors'])} | {ours} |")
    failures = [(c, e) for c, level in summary.items() for e in level["errors"]]
    if failures:
        lines += ["", "Failed perf_analyzer runs (the end of their output):", ""]
        lines += [f"- concurrency {c}: {e.splitlines()[-1][:300]}" for c, e in failures]
    return [*lines, ""]


READING_LINES = [
    "## How to read this",
    "",
    "- *generator CPU* is the CPU time `clients.bench` itself used, in cores, over the level's wall time; "
    "*server CPU* is the server's process tree (all threads, every `--workers` process), read with psutil. "
    "When their sum reaches the core count, the machine, not the server alone, is the limit. *machine "
    "CPU* is every process on the machine: what it has beyond generator + server is other work sharing "
    "the cores during the run.",
    "- *server mean batch* is the change in `cnnserve_inference_count_total` over "
    "`cnnserve_execution_count_total` during the level, read from the server's metrics endpoint with "
    "prometheus_client's parser; the bare handler has no metrics.",
    "- The bare handler (`scripts/bare_server.py`) is one grpc.aio handler around one ONNX Runtime "
    "session with the intra-op threads our server gives the model, one `run` per request: what serving "
    "costs without batching, validation, metrics or health.",
    "- Latency is per successful request, measured by the generator from send to answer.",
    "- The raw results are in `benchmarks.json` and `benchmark_data/` beside this file.",
    "",
]


def render(results: Results, targets: Sequence[Target]) -> str:
    """The whole document."""
    lines: list[Any] = [
        *header_lines(results),
        *target_lines(targets),
        *ceiling_lines(results),
        *served_lines(results),
        *cpu_lines(results),
        *memory_lines(results),
        *perf_analyzer_lines(results),
        *READING_LINES,
    ]
    return "\n".join(lines)
