"""Check serving on an NVIDIA GPU and write ``docs/gpu.md`` (and ``docs/gpu.json``) from the run.

::

    python scripts/gpu_check.py                        # on a machine with an NVIDIA GPU (a few minutes)
    python scripts/gpu_check.py --device cpu --image-size 32 --duration 1 --out runs/gpu-dry-run.md
                                                       # the whole pipeline on the CPU provider

On a GPU it exports ResNet-18 (``python -m export``, tiny training: accuracy is irrelevant to
speed) into a work repository, converts it to FP16 (FP32 input and output) and publishes that
as ``resnet18_fp16`` with its top-1 agreement with FP32 on the test images; measures each in
this process on the CUDA execution provider at several batch sizes, with plain ``run`` (the
input copied from and the output to host memory, as the server does) and with I/O binding
(both on the device); serves each with ``python -m server --device cuda``, confirms from
outside that CUDA serves it (the ModelConfig instance group and the server's log), drives it
with ``python -m clients.bench`` at concurrency 1, 8 and 32, and compares served with in-process
throughput against the 0.8x target. The TensorRT execution provider is tried when this
onnxruntime build lists it. Every figure and sentence of the document comes from the run.

Without a usable GPU it measures nothing: it writes a document that says what the preflight
found and exits with status 3. ``--device cpu`` is a dry run of the same pipeline on the CPU
provider; its document says so and holds no GPU figures.

Exit status: 0 measured (the verdicts are in the document), 1 a step failed (no document is
written), 2 bad flags, 3 no usable GPU (the "not measured" document is written).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ itself is sys.path[0], for `gpucheck` and `benchmarking`

from benchmarking.commands import log  # noqa: E402
from benchmarking.provenance import machine_info, source_state  # noqa: E402
from gpucheck.document import render_document, render_not_measured  # noqa: E402
from gpucheck.measure import measure_ceiling, node_placement, session_for, try_tensorrt  # noqa: E402
from gpucheck.models import export_fp32, publish_fp16  # noqa: E402
from gpucheck.plan import (  # noqa: E402
    EXIT_FAILED,
    EXIT_MEASURED,
    EXIT_NO_GPU,
    MIN_IMAGE_SIZE,
    MODEL,
    Plan,
)
from gpucheck.preflight import library_environment, preflight  # noqa: E402
from gpucheck.results import ModelResult, Results  # noqa: E402
from gpucheck.serve import GpuServer, run_bench, served_device  # noqa: E402
from gpucheck.verdicts import verdicts  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "gpu.md"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="the document (default docs/gpu.md); JSON beside it"
    )
    p.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda (default); cpu: a dry run of the whole pipeline on the CPU provider, not GPU figures",
    )
    p.add_argument("--image-size", type=int, default=224, help="square input size of the exported ResNet-18")
    p.add_argument("--duration", type=float, default=None, help="seconds per load level (cuda 10, cpu 1)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each level")
    p.add_argument(
        "--work", type=Path, default=None, help="work directory kept after the run (default: temporary)"
    )
    return p


@contextmanager
def work_directory(given: Path | None) -> Iterator[Path]:
    """``given`` (created, and kept after the run), or a temporary directory removed afterwards."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        yield Path(tmp)


def measure(plan: Plan, work: Path, results: Results) -> None:
    """Export, convert, measure in process, serve and drive each model, filling ``results``."""
    repository = work / "repository"
    fp32, results.export_command = export_fp32(repository, plan.image_size)
    fp16 = publish_fp16(repository, fp32, plan.device, work)
    for version in (fp32, fp16):
        log(f"{version.name}: in-process ceiling on {plan.device}")
        session = session_for(version.model_path, plan.device, version.config)
        measured = {
            mode: measure_ceiling(
                session, plan.device, plan.ceiling_batches, plan.ceiling_seconds, io_binding=mode
            )
            for mode in (False, True)
        }
        made_by = (
            "python -m export (FP32)"
            if version is fp32
            else f"{version.metadata['conversion']['tool']} (keep_io_types) from {MODEL} v{fp32.version}"
        )
        results.models.append(
            ModelResult(
                name=version.name,
                version=version.version,
                size_bytes=version.model_path.stat().st_size,
                made_by=made_by,
                agreement=version.metadata.get("agreement_with_fp32"),
                placement=node_placement(version.model_path, plan.device),
                plain=measured[False],
                iobinding=measured[True],
            )
        )
    best_batch = results.models[0].plain["best_batch"]
    results.tensorrt = try_tensorrt(fp32.model_path, plan, best_batch, work, results.library_env)
    for result in results.models:
        server = GpuServer(
            repository, result.name, plan.device, results.library_env, work / f"{result.name}.log"
        )
        with server:
            result.server_command = server.shown_command()
            result.served_device = served_device(server, result.name, plan.device)
            if not result.served_device["confirmed"]:
                raise RuntimeError(
                    f"{result.name} is not served on {plan.device}: {result.served_device}; no figure is kept"
                )
            result.bench_command, result.levels = run_bench(
                server, result.name, plan, work / f"{result.name}.json"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.image_size < MIN_IMAGE_SIZE:
        parser.error(f"--image-size is {args.image_size}; expected at least {MIN_IMAGE_SIZE}")
    if args.duration is not None and not 0 < args.duration <= 3600:
        parser.error(f"--duration is {args.duration}; expected seconds in (0, 3600]")
    if args.warmup is not None and not 0 <= args.warmup <= 3600:
        parser.error(f"--warmup is {args.warmup}; expected seconds in [0, 3600]")
    command = shlex.join(["python", "scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    plan = Plan.make(args.device, args.image_size, args.duration, args.warmup)
    out: Path = args.out
    json_path = out.with_suffix(".json")
    # What this run writes never makes the tree count as dirty.
    source = source_state(ROOT, [out, json_path, *([args.work] if args.work else [])])
    found = preflight()
    machine = machine_info()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not plan.dry_run and not found.usable:
        out.write_text(render_not_measured(found, command, machine, started, source))
        log(f"not measured: {found.why_not_measured()}; wrote {out}")
        return EXIT_NO_GPU
    # The CPU provider needs no CUDA library: a dry run leaves the environment as it is.
    env = {} if plan.dry_run else library_environment()
    if not plan.dry_run:
        ort.preload_dlls()  # this process's CUDA sessions: the wheels' libraries are not on its loader path
    results = Results(command, started, source, plan, found, machine, env)
    try:
        with work_directory(args.work) as work:
            measure(plan, work, results)
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    rows = verdicts(results)
    json_path.write_text(results.to_json())
    out.write_text(render_document(results, rows, json_path.name))
    log(f"wrote {out} and {json_path}")
    for v in rows:
        verdict = "not measured" if v.met is None else ("met" if v.met else "MISSED")
        print(f"{v.name:48s} {v.measured:70s} {verdict}")
    return EXIT_MEASURED


if __name__ == "__main__":
    sys.exit(main())
