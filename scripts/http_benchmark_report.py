"""The report of ``scripts/http_benchmark.py``: its summary, its verdicts, its document and chart.

Three parts, kept apart: :func:`summarize` turns the raw rounds into medians and spreads;
:func:`check_targets` compares them with :data:`TARGETS` (data); :func:`render` and
:func:`plot` only format what the first two computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarking.stats import Spread, spread
from benchmarking.targets import Target

#: Fewer rounds than this and no verdict is given (the machine moves by +-20% between rounds).
MIN_ROUNDS = 3
#: Changed paths named in the document's first line; the JSON lists them all.
SHOWN_CHANGES = 5

#: What each series is, for the tables and the chart.
LABELS = {
    "perf_analyzer/grpc": "gRPC unary (perf_analyzer -i grpc)",
    "perf_analyzer/http": "HTTP, binary tensors (perf_analyzer -i http)",
    "tritonclient/binary": "HTTP, binary tensors (tritonclient.http.aio)",
    "tritonclient/json": "HTTP, JSON tensors (tritonclient.http.aio)",
}


@dataclass(frozen=True)
class Ratio:
    """``numerator`` over ``denominator``: of their medians, and each round's own ratio."""

    name: str
    numerator: str
    denominator: str
    #: The target (at least this ratio of medians); None: shown, not judged.
    at_least: float | None
    issue: str = ""


#: The targets and the comparisons shown beside them, as data.
TARGETS = (
    Ratio(
        "HTTP (binary) vs gRPC, same load generator",
        "perf_analyzer/http",
        "perf_analyzer/grpc",
        0.6,
        "issue 13",
    ),
)
COMPARISONS = (
    Ratio("JSON vs binary tensors, same Python client", "tritonclient/json", "tritonclient/binary", None),
    Ratio(
        "Python client vs perf_analyzer, both HTTP binary", "tritonclient/binary", "perf_analyzer/http", None
    ),
)


@dataclass(frozen=True)
class SeriesSummary:
    """One series over the rounds it finished."""

    name: str
    rounds: int
    errors: list[str]
    requests_per_s: Spread | None
    p50_ms: Spread | None
    p99_ms: Spread | None
    #: The server's CPU time per answered request.
    server_us_per_request: Spread | None
    #: CPU cores used on average during the measurement: the load generator, the server, the machine.
    generator_cores: Spread | None
    server_cores: Spread | None
    machine_cores: Spread | None
    commands: list[str]
    #: perf_analyzer's split of its average latency (µs, :data:`LATENCY_PARTS`); empty for other drivers.
    latency_parts: dict[str, Spread | None]
    #: Per round, the share of that latency outside the server's queue and compute, and inside them.
    network_share: Spread | None
    server_share: Spread | None
    #: Per round, concurrency over the average latency: the rate that latency allows (Little's law).
    latency_bound_rps: Spread | None


#: perf_analyzer's latency columns (scripts/perf_analyzer.py's names) as the document shows them.
LATENCY_PARTS = {
    "avg_latency_us": "average",
    "client_send_us": "client send",
    "network_us": "network + server send/recv",
    "server_queue_us": "server queue",
    "server_compute_us": "server compute (input + infer + output)",
    "client_recv_us": "client recv",
}
_COMPUTE = ("server_compute_input_us", "server_compute_infer_us", "server_compute_output_us")


def _share(row: Mapping[str, Any], *names: str) -> float:
    return sum(_latency_part(row, n) for n in names) / float(row["avg_latency_us"])


def _latency_part(row: Mapping[str, Any], name: str) -> float:
    if name == "server_compute_us":
        return float(sum(row[k] for k in _COMPUTE))
    return float(row[name])


@dataclass(frozen=True)
class RatioSummary:
    ratio: Ratio
    #: Of the medians; None when either side has no figure.
    of_medians: float | None
    #: Each round's own ratio (rounds where both sides have a figure).
    per_round: Spread | None


@dataclass(frozen=True)
class Summary:
    series: dict[str, SeriesSummary]
    ratios: dict[str, RatioSummary]
    rounds: int


def _per_round(rounds: Sequence[Mapping[str, Any]], series: str) -> list[Mapping[str, Any]]:
    return [r["series"][series] for r in rounds if series in r["series"]]


def _series(rounds: Sequence[Mapping[str, Any]], name: str) -> SeriesSummary:
    entries = _per_round(rounds, name)
    done = [e for e in entries if "error" not in e and e.get("requests_per_s")]
    rows = [e["perf_analyzer"] for e in done if "perf_analyzer" in e]
    # perf_analyzer's own start and its reads of config and metadata fall inside wall_s: the
    # cores are averages over the whole run of the generator, not over its windows alone.
    return SeriesSummary(
        name=name,
        rounds=len(done),
        errors=[e["error"] for e in entries if "error" in e],
        requests_per_s=spread(e["requests_per_s"] for e in done),
        p50_ms=spread(e["p50_ms"] for e in done),
        p99_ms=spread(e["p99_ms"] for e in done),
        server_us_per_request=spread(_server_us_per_request(e) for e in done),
        generator_cores=spread(e["generator_cpu_s"] / e["wall_s"] for e in done),
        server_cores=spread(e["server_cpu_s"] / e["wall_s"] for e in done),
        machine_cores=spread(e["machine_busy_cpu_s"] / e["wall_s"] for e in done),
        commands=list(dict.fromkeys(e["command"] for e in entries if "command" in e)),
        latency_parts={name: spread(_latency_part(row, name) for row in rows) for name in LATENCY_PARTS},
        network_share=spread(_share(row, "network_us") for row in rows),
        server_share=spread(_share(row, "server_queue_us", "server_compute_us") for row in rows),
        latency_bound_rps=spread(row["concurrency"] / (row["avg_latency_us"] / 1e6) for row in rows),
    )


def _server_us_per_request(entry: Mapping[str, Any]) -> float | None:
    """The server's CPU time over the requests answered meanwhile.

    For the Python client both are exact (its warm-up requests counted too); for perf_analyzer
    the requests are those of its windows while the CPU time spans its whole run, so the
    figure is an upper bound.
    """
    requests = int(entry.get("requests") or 0) + int(entry.get("warmup_requests") or 0)
    if not requests:
        return None
    return float(entry["server_cpu_s"]) / requests * 1e6


def summarize(run: Mapping[str, Any]) -> Summary:
    """Every series and every ratio of :data:`TARGETS` and :data:`COMPARISONS`, over the rounds."""
    rounds = run["rounds"]
    series = {name: _series(rounds, name) for name in run["series"]}
    ratios = {}
    for ratio in (*TARGETS, *COMPARISONS):
        top, bottom = series[ratio.numerator].requests_per_s, series[ratio.denominator].requests_per_s
        pairs = [
            (r["series"][ratio.numerator], r["series"][ratio.denominator])
            for r in rounds
            if ratio.numerator in r["series"] and ratio.denominator in r["series"]
        ]
        ratios[ratio.name] = RatioSummary(
            ratio,
            None if top is None or bottom is None else top.median / bottom.median,
            spread(
                a["requests_per_s"] / b["requests_per_s"]
                for a, b in pairs
                if a.get("requests_per_s") and b.get("requests_per_s")
            ),
        )
    return Summary(series, ratios, len(rounds))


# -- verdicts ---------------------------------------------------------------------------------------


def check_targets(summary: Summary) -> list[Target]:
    """Each of :data:`TARGETS` judged on the medians of at least :data:`MIN_ROUNDS` rounds."""
    targets = []
    for ratio in TARGETS:
        assert ratio.at_least is not None
        result = summary.ratios[ratio.name]
        top, bottom = summary.series[ratio.numerator], summary.series[ratio.denominator]
        goal = f">= {ratio.at_least:g} x {LABELS[ratio.denominator].split(' (')[0]}"
        rounds = min(top.rounds, bottom.rounds)
        if result.of_medians is None or rounds < MIN_ROUNDS:
            why = f"Both series finished {_rounds(rounds)}; a verdict needs {MIN_ROUNDS}."
            targets.append(Target(ratio.name, ratio.issue, goal, "-", None, why))
            continue
        assert top.requests_per_s is not None and bottom.requests_per_s is not None
        measured = (
            f"{top.requests_per_s.format('.0f')} vs {bottom.requests_per_s.format('.0f')} requests/s "
            f"= {result.of_medians:.2f}x"
        )
        why = (
            f"The medians of {rounds} interleaved rounds give {result.of_medians:.2f}x"
            + (
                f"; round by round the ratio ranged {result.per_round.format('.2f')}"
                if result.per_round
                else ""
            )
            + "."
        )
        targets.append(
            Target(ratio.name, ratio.issue, goal, measured, result.of_medians >= ratio.at_least, why)
        )
    return targets


# -- rendering --------------------------------------------------------------------------------------


def _cell(value: Spread | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else value.format(spec, scale)


def _verdict(target: Target) -> str:
    return "not judged" if target.met is None else ("met" if target.met else "**MISSED**")


def _rounds(n: int) -> str:
    return f"{n} round" + ("" if n == 1 else "s")


def _loads(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _origin(source: Mapping[str, Any]) -> str:
    if source.get("commit") is None:
        return "an unknown commit (no git checkout)"
    origin = f"commit `{source['commit']}`"
    if not source["dirty"]:
        return origin + ", tree clean"
    changed = source["changed"]
    origin += " with uncommitted changes in " + ", ".join(f"`{p}`" for p in changed[:SHOWN_CHANGES])
    if len(changed) > SHOWN_CHANGES:
        origin += f" and {len(changed) - SHOWN_CHANGES} more paths (all listed in the raw JSON)"
    return origin


def render(
    run: Mapping[str, Any], summary: Summary, targets: Sequence[Target], *, chart: str, raw: str
) -> str:
    """The Markdown document: every sentence filled from the run, its summary and its verdicts."""
    m, plan = run["machine"], run["plan"]
    round_loads = [r["load_average"][0] for r in run["rounds"]]
    lines = [
        "# HTTP against gRPC",
        "",
        f"Written by `{run['command']}` on {run['started']}, from {_origin(run['source'])}. Every number "
        "below comes from that one run; do not edit them by hand, run the script again.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores usable (os.cpu_count() {run['cpu_count']}), "
        f"{m['memory_bytes'] / 2**30:.1f} GiB, Python {m['python']}, ONNX Runtime {m['onnxruntime']}. "
        f"Load average at start {_loads(m['load_average_at_start'])}, at the end "
        f"{_loads(run['load_average_at_end'])}; the 1-minute load at the start of each round: "
        f"{_loads(round_loads)}. The server, the load generators and whatever else runs on the machine "
        "share these cores.",
        "",
        f"One server, `{run['server_command']}`, served {run['model']} over loopback for the whole run "
        f"({run['duration_s']:.0f} s). {_rounds(summary.rounds)} ran the four series below one after "
        f"another, in the order of the table, each at concurrency {plan['concurrency']} with batch 1; "
        "each figure is the median over the rounds, with the lowest and highest in brackets.",
        "",
        f"- perf_analyzer: {run['perf_analyzer_version']}, {plan['windows']} time windows of "
        f"{plan['window_ms']} ms per round, merged into one figure per round.",
        f"- Python client: {run['tritonclient']}.",
    ]
    if run.get("stopped_early"):
        lines += [f"- The run {run['stopped_early']}."]
    if summary.rounds < MIN_ROUNDS:
        lines += [f"- **{_rounds(summary.rounds)} only: no verdict below {MIN_ROUNDS}.**"]
    lines += ["", "## Target", "", "| target | issue | goal | measured | result |", "|---|---|---|---|---|"]
    lines += [f"| {t.name} | {t.issue} | {t.goal} | {t.measured} | {_verdict(t)} |" for t in targets]
    lines += [""] + [f"- **{t.name}** ({_verdict(t)}): {t.why}" for t in targets]
    lines += [
        "",
        "## Every series",
        "",
        f"![requests/s per series: median, min-max bars]({chart})",
        "",
        "| series | rounds | requests/s | p50 ms | p99 ms | server CPU µs/request "
        "| cores: generator / server / machine |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in summary.series.items():
        cores = " / ".join(
            "-" if v is None else f"{v.median:.2f}"
            for v in (s.generator_cores, s.server_cores, s.machine_cores)
        )
        lines.append(
            f"| {LABELS.get(name, name)} | {s.rounds} | {_cell(s.requests_per_s, '.0f')} | "
            f"{_cell(s.p50_ms, '.2f')} | {_cell(s.p99_ms, '.2f')} | "
            f"{_cell(s.server_us_per_request, '.0f')} | {cores} |"
        )
    lines += [
        "",
        "Server CPU per request is the server process's CPU time over the requests answered while it was "
        "measured; for perf_analyzer the time includes its start and its metadata reads, so it is an upper "
        "bound. The cores are averages over each measurement's wall time; the machine's include every "
        "other process on it.",
        "",
        "## Comparisons",
        "",
    ]
    lines += comparison_lines(summary)
    lines += latency_lines(summary)
    lines += failure_lines(run, summary)
    lines += ["", "## Commands", ""]
    for name, s in summary.series.items():
        lines += [f"- {LABELS.get(name, name)}: `{c}`" for c in s.commands]
    lines += [
        "",
        f"The raw figures of every round (each series' requests/s, latency, CPU times and the "
        f"perf_analyzer CSV row) are in [{raw}]({raw}).",
        "",
    ]
    return "\n".join(lines)


def comparison_lines(summary: Summary) -> list[str]:
    lines = []
    for result in summary.ratios.values():
        ratio = result.ratio
        if result.of_medians is None:
            lines.append(f"- {ratio.name}: not measured (a series has no figure).")
            continue
        lines.append(
            f"- {ratio.name}: {LABELS[ratio.numerator]} over {LABELS[ratio.denominator]} = "
            f"{result.of_medians:.2f}x of the medians"
            + (f", {result.per_round.format('.2f')} round by round" if result.per_round else "")
            + "."
        )
    return lines


def latency_lines(summary: Summary) -> list[str]:
    """perf_analyzer's split of its average latency, per protocol, and the share outside the server."""
    measured = {n: s for n, s in summary.series.items() if s.latency_parts.get("avg_latency_us")}
    if not measured:
        return []
    lines = [
        "",
        "## Where perf_analyzer's latency goes",
        "",
        "perf_analyzer splits its average latency with the server's statistics extension: the server "
        "queue and compute are what the server reports; the rest of the time outside the client is "
        "network + server send/recv. Milliseconds, medians over the rounds:",
        "",
        "| series | " + " | ".join(LATENCY_PARTS.values()) + " |",
        "|---|" + "---:|" * len(LATENCY_PARTS),
    ]
    for name, s in measured.items():
        cells = [_cell(s.latency_parts[k], ".2f", 1e-3) for k in LATENCY_PARTS]
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, s in measured.items():
        total, rate = s.latency_parts["avg_latency_us"], s.requests_per_s
        if total is None or s.network_share is None or s.server_share is None:
            continue
        line = (
            f"- {LABELS.get(name, name)}: network + server send/recv took {s.network_share.format('.0%')} of "
            f"the average latency {total.format('.2f', 1e-3)} ms, the server's queue and compute "
            f"{s.server_share.format('.0%')}."
        )
        if s.latency_bound_rps is not None and rate is not None:
            line += (
                f" Concurrency over average latency allows {s.latency_bound_rps.format('.0f')} requests/s; "
                f"it answered {rate.format('.0f')}."
            )
        lines.append(line)
    return lines


def failure_lines(run: Mapping[str, Any], summary: Summary) -> list[str]:
    failures = [(name, e) for name, s in summary.series.items() for e in s.errors]
    failed_requests = {
        name: sum(
            sum(r["series"][name].get("failed", {}).values()) for r in run["rounds"] if name in r["series"]
        )
        for name in summary.series
    }
    lines = ["", "## Failures", ""]
    if not failures and not any(failed_requests.values()):
        lines.append("None: every measurement finished and every request was answered.")
    for name, error in failures:
        lines.append(f"- {name}: {error.splitlines()[-1] if error.strip() else error}")
    lines += [f"- {name}: {n} failed requests" for name, n in failed_requests.items() if n]
    return lines


def plot(summary: Summary, path: Path) -> None:
    """Requests/s per series: the median as a bar, min-max as its error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, s in summary.series.items() if s.requests_per_s is not None]
    fig, axis = plt.subplots(figsize=(9, 4))
    for i, name in enumerate(names):
        s = summary.series[name].requests_per_s
        assert s is not None
        axis.bar(
            i,
            s.median,
            color=f"C{i}",
            yerr=[[s.median - s.low], [s.high - s.median]],
            capsize=6,
        )
        axis.annotate(f"{s.median:.0f}", (i, s.high), textcoords="offset points", xytext=(0, 4), ha="center")
    for ratio in TARGETS:
        bottom = summary.series[ratio.denominator].requests_per_s
        if bottom is not None and ratio.at_least is not None and ratio.denominator in names:
            axis.axhline(
                bottom.median * ratio.at_least,
                color="gray",
                linestyle=":",
                label=f"target: {ratio.at_least:g} x gRPC median",
            )
    axis.set_xticks(range(len(names)), [LABELS.get(n, n).replace(" (", "\n(") for n in names], fontsize=7)
    axis.set_ylim(0, axis.get_ylim()[1] * 1.1)  # room for the figures above the bars
    axis.set_ylabel("requests/s")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(
        f"LeNet, concurrency 16, batch 1: median of {summary.rounds} rounds, min-max bars", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
