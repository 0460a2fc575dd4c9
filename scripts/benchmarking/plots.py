"""One PNG per group of served configurations: throughput and latency against concurrency."""

from __future__ import annotations

from pathlib import Path

from benchmarking.ceiling import batch_figures, best_batch
from benchmarking.results import Results


def plot_group(results: Results, group: str, path: Path) -> None:
    """Samples/s (left) and p50/p99 (right) per configuration: medians, with min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [run for run in results.runs if run.config.group == group]
    for n, run in enumerate(runs):
        color = f"C{n}"
        levels = list(run.summary().values())
        for axis, name, marker, style, label in (
            (left, "samples_per_s", "o", "-", run.config.label),
            (right, "p50_ms", "o", "-", f"p50, {run.config.label}"),
            (right, "p99_ms", "s", "--", f"p99, {run.config.label}"),
        ):
            points = [(lvl.concurrency, lvl.get(name)) for lvl in levels]
            shown = [(c, s) for c, s in points if s is not None]
            if not shown:
                continue
            xs = [c for c, _ in shown]
            ys = [s.median for _, s in shown]
            errors = [[s.median - s.low for _, s in shown], [s.high - s.median for _, s in shown]]
            axis.errorbar(
                xs, ys, yerr=errors, marker=marker, linestyle=style, color=color, label=label, capsize=3
            )
    for n, model in enumerate(dict.fromkeys(run.config.model for run in runs if run.config.default)):
        ceiling = results.ceilings.get(model)
        best = best_batch(ceiling) if ceiling else None
        if ceiling is None or best is None:
            continue
        dots = (0, (1, 1 + n))  # one dotted pattern per model
        left.axhline(best[1].median, color="gray", linestyle=dots, label=f"in-process ceiling, {model}")
        at_1 = batch_figures(ceiling).get(1)
        if at_1 is not None:
            label = f"in-process batch-1 p50, {model}"
            right.axhline(at_1["p50_ms"].median, color="gray", linestyle=dots, label=label)
    left.set_ylabel("samples/s")
    right.set_ylabel("latency (ms)")
    concurrency = sorted({c for run in runs for c in run.summary()})
    for axis in (left, right):
        axis.set_xlabel("concurrency")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=6)
    fig.suptitle(f"{group}: served throughput and latency vs concurrency (median, min-max bars)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
