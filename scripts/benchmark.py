"""Measure the server against the in-process ceiling and the bare handler, and write ``docs/benchmarks.md``.

::

    python scripts/benchmark.py            # the full run (about 20 minutes on 2 cores), 3 repeats
    python scripts/benchmark.py --quick    # a smoke test of the whole pipeline (1 repeat)
    python scripts/benchmark.py --quick --out /tmp/bench    # ... written elsewhere

In one run on one machine it measures, for LeNet (1x28x28) and ResNet-18 (3x224x224, FP32 and INT8):

1. the ceiling: ONNX Runtime in this process, no RPC, at batch sizes 1..64;
2. the real server (``python -m server`` as a subprocess) in its default single-process
   configuration, driven by ``python -m clients.bench`` (a subprocess) at each concurrency,
   beside other configurations: for LeNet the bare baseline handler
   (``scripts/bare_server.py``), ModelStreamInfer streams, batching off and ``--workers 2``,
   all interleaved repeat by repeat;
3. Triton's perf_analyzer against the same server, a second independent load generator;
4. the server's memory (RSS) with the default models, and with every model of the zoo
   repository loaded.

It then judges the targets (``scripts/benchmarking/targets.py``) and writes the tables, plots,
the command behind every figure, the commit it ran from and whether the tree was dirty.
Every number in the document comes from this run: never edit it by hand, run it again.
Missing models are exported first into the benchmark repository (``python -m export ...``;
ResNet-18 with ``--quantize int8``, which publishes ``resnet18_int8`` beside it).
The pieces live in ``scripts/benchmarking/`` (see its ``__init__``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ itself is sys.path[0], for `benchmarking`

from benchmarking.ceiling import measure_ceiling  # noqa: E402
from benchmarking.commands import log  # noqa: E402
from benchmarking.document import render  # noqa: E402
from benchmarking.memory import measure_memory  # noqa: E402
from benchmarking.models import ensure_models, model_facts  # noqa: E402
from benchmarking.perf import PERF_ANALYZER_MODEL, measure_perf_analyzer  # noqa: E402
from benchmarking.plan import DEFAULT_MODELS, MODELS, Plan  # noqa: E402
from benchmarking.plots import plot_group  # noqa: E402
from benchmarking.provenance import machine_info, source_state  # noqa: E402
from benchmarking.results import Results  # noqa: E402
from benchmarking.served import CONFIGS, measure_group  # noqa: E402
from benchmarking.targets import check_targets  # noqa: E402

from modelrepo import list_models  # noqa: E402

#: What --quick may export (seconds); the ResNet-18 models are used then only if already there.
QUICK_EXPORTS = ("lenet",)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="short smoke-test run; writes to runs/benchmark-quick"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats of every figure, the median reported (default 3; --quick: 1)",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=ROOT / "runs" / "benchmark_repository",
        help="repository of the benchmarked models (missing ones are exported into it)",
    )
    p.add_argument(
        "--zoo-repository",
        type=Path,
        default=ROOT / "model_repository",
        help="repository whose every model is loaded for the whole-zoo memory figure",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output directory (default docs/, quick: runs/benchmark-quick)"
    )
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated subset of {','.join(MODELS)} (default all; --quick exports only lenet)",
    )
    return p


def written_paths(out: Path) -> list[Path]:
    """What a run (re)writes: these never make the tree count as dirty."""
    groups = dict.fromkeys(c.group for c in CONFIGS)
    return [
        out / "benchmarks.md",
        out / "benchmarks.json",
        out / "benchmark_data",
        *(out / f"benchmark_{g}.png" for g in groups),
    ]


def measure(results: Results, repository: Path, zoo: Path, wanted: Sequence[str], work: Path) -> None:
    """Every measurement of the plan, into ``results``."""
    plan = results.plan
    exportable = QUICK_EXPORTS if plan.quick else MODELS
    available = ensure_models(repository, wanted, exportable, results.skipped)
    for model in wanted:
        if model not in available:
            how = "--quick does not export it" if model not in exportable else "its export did not publish it"
            results.skipped.append(f"{model} (not in {repository}; {how})")
    results.models = {m: model_facts(repository, m) for m in available}
    for model in available:
        results.ceilings[model] = measure_ceiling(repository, model, plan)
    threads = {m: int(c["session_threads"]) for m, c in results.ceilings.items()}
    configs = [c for c in CONFIGS if c.model in available]
    for group in dict.fromkeys(c.group for c in configs):
        members = [c for c in configs if c.group == group]
        results.runs += measure_group(members, repository, plan, work, results.models, threads)
    if PERF_ANALYZER_MODEL in available:
        results.perf_analyzer = measure_perf_analyzer(repository, plan)
    defaults = [m for m in DEFAULT_MODELS if m in available]
    if defaults:
        results.memory["default"] = measure_memory(repository, defaults, plan.repeats, "default models")
    if len(defaults) < len(DEFAULT_MODELS):
        missing = sorted(set(DEFAULT_MODELS) - set(defaults))
        results.skipped.append(f"memory with every default model ({', '.join(missing)} not available)")
    if list_models(zoo):
        results.memory["zoo"] = measure_memory(zoo, [], plan.repeats, "whole zoo")
    else:
        results.skipped.append(f"whole-zoo memory (no models in {zoo})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        plan = Plan.make(args.quick, args.repeats)
    except ValueError as exc:
        parser.error(str(exc))
    wanted = [m for m in args.models.split(",") if m]
    unknown = sorted(set(wanted) - set(MODELS))
    if unknown:
        parser.error(f"--models has {unknown}; expected a subset of {list(MODELS)}")
    out = args.out or (ROOT / "runs" / "benchmark-quick" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    # The generator's own JSON per run and repeat is kept beside the document.
    work = out / "benchmark_data"
    work.mkdir(exist_ok=True)
    args.repository.mkdir(parents=True, exist_ok=True)
    results = Results(
        command=command,
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        source=source_state(ROOT, written_paths(out)),
        machine=machine_info(),
        plan=plan,
    )
    measure(results, args.repository, args.zoo_repository, wanted, work)

    targets = check_targets(results)
    for group in dict.fromkeys(run.config.group for run in results.runs):
        plot_group(results, group, out / f"benchmark_{group}.png")
    (out / "benchmarks.json").write_text(json.dumps(results.to_json(targets), indent=2) + "\n")
    path = out / "benchmarks.md"
    path.write_text(render(results, targets))
    log(f"wrote {path}")
    for t in targets:
        verdict = "not measured" if t.met is None else ("met" if t.met else "MISSED")
        print(f"{t.name:62s} {t.goal:48s} {verdict:12s} {t.measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
