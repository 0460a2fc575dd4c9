"""``scripts/gpu_check.py`` on a machine without a GPU: the "not measured" document, and the CPU dry run.

The GPU figures themselves need an NVIDIA GPU; here the same pipeline runs on the CPU
provider (``--device cpu``) with real parts: a real export, real ONNX Runtime sessions,
two real server subprocesses and the real load generator.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gpu_check_testlib import ROOT, DryRun, run_gpu_check
from gpucheck.document import render_not_measured
from gpucheck.measure import try_tensorrt
from gpucheck.models import FP16_TOLERANCE, compare_logits, convert_fp16, digits_test_images
from gpucheck.plan import Plan
from gpucheck.preflight import Preflight, library_environment
from gpucheck.serve import GpuServer, served_device

from modelrepo import read_version
from server.runtime import CPU, Device, cuda_device_count

TENSORRT = "TensorrtExecutionProvider"

pytestmark = pytest.mark.slow


def test_without_a_gpu_it_writes_the_not_measured_document_and_exits_3(tmp_path: Path) -> None:
    count, why = cuda_device_count()
    if count:
        pytest.skip("this machine has a CUDA GPU: the script would measure it")
    out = tmp_path / "gpu.md"
    done = run_gpu_check("--out", str(out))
    assert done.returncode == 3, done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# GPU serving check\n")
    assert "**Not measured.**" in text
    # The reason is the preflight's own finding, as the server's device check words it.
    assert f"this machine's CUDA driver reports 0 devices: {why}" in text
    assert "exited with status 3" in text
    assert "samples/s" not in text and "## Served" not in text
    assert not out.with_suffix(".json").exists(), "nothing measured, so no figures file"


def test_not_measured_says_when_the_build_has_no_cuda_provider() -> None:
    found = Preflight(
        nvidia_smi="nvidia-smi lists 1 GPU(s): GPU 0: X (1 MiB)",
        gpus=({"index": "0", "name": "X"},),
        driver_devices=1,
        driver_reason="",
        driver_cuda_version="13.0",
        onnxruntime="onnxruntime 1.31.1",
        providers=(CPU,),
        cuda_build=None,
        wheels={},
        unresolved={},
    )
    assert not found.usable
    assert found.why_not_measured() == (
        "onnxruntime 1.31.1 offers no CUDAExecutionProvider (providers: CPUExecutionProvider)"
    )
    text = render_not_measured(
        found, "python scripts/gpu_check.py", {"cpu": "c", "cores": 2}, "now", {"commit": None}
    )
    assert "offers no CUDAExecutionProvider" in text


def test_bad_flags_are_refused_with_the_value_and_what_was_expected(tmp_path: Path) -> None:
    out = str(tmp_path / "gpu.md")  # a script that failed to refuse must not write into docs/
    done = run_gpu_check("--image-size", "8", "--out", out)
    assert done.returncode == 2
    assert "--image-size is 8; expected at least 32" in done.stderr
    done = run_gpu_check("--duration", "0", "--out", out)
    assert done.returncode == 2
    assert "--duration is 0.0; expected seconds in (0, 3600]" in done.stderr


def test_cpu_dry_run_goes_end_to_end(dry_run: DryRun) -> None:
    text, figures = dry_run.document, dry_run.figures
    assert "**CPU dry run, not GPU figures.**" in text
    assert figures["plan"]["device"] == "cpu"
    models = {m["name"]: m for m in figures["models"]}
    assert list(models) == ["resnet18", "resnet18_fp16"]
    for name, m in models.items():
        # Served where asked, as the server itself reports it from outside.
        assert m["served_device"]["confirmed"], m["served_device"]
        assert m["served_device"]["log_device"] == "cpu"
        assert [g["kind"] for g in m["served_device"]["instance_groups"]] == ["KIND_CPU"]
        assert [lvl["concurrency"] for lvl in m["levels"]] == [1, 8, 32]
        for lvl in m["levels"]:
            assert lvl["succeeded"] > 0 and not lvl["failed"], lvl
            # Every served figure in the document is the load generator's own.
            row = f"| {name} | {lvl['concurrency']} | {lvl['samples_per_s']:.1f} |"
            assert row in text, row
        for mode in ("plain", "iobinding"):
            assert [b["batch"] for b in m[mode]["batches"]] == [1, 8, 32]
            assert m[mode]["providers"] == [CPU]
        assert m["placement"]["nodes"].get(CPU, 0) > 0
        assert m["server_command"] in text and m["bench_command"] in text
    assert figures["tensorrt"]["status"] == "not tried"
    assert "TensorRT EP | measured when available | not tried" in text


def test_dry_run_verdicts_come_from_its_figures(dry_run: DryRun) -> None:
    for m in dry_run.figures["models"]:
        best = max(m["levels"], key=lambda lvl: lvl["samples_per_s"])
        ratio = best["samples_per_s"] / m["plain"]["best_samples_per_s"]
        verdict = "met" if ratio >= 0.8 else "**missed**"
        row = f"| {m['name']} served / in-process best batch | >= 0.8x | {ratio:.2f}x "
        assert row in dry_run.document, row
        line = next(line for line in dry_run.document.splitlines() if line.startswith(row))
        assert line.endswith(f"| {verdict} |"), line


def test_fp16_variant_is_published_with_how_it_was_made(dry_run: DryRun) -> None:
    repository = dry_run.work / "repository"
    fp32 = read_version(repository, "resnet18", 1)
    fp16 = read_version(repository, "resnet18_fp16", 1)
    assert fp16.config.input == fp32.config.input and fp16.config.labels == fp32.config.labels
    meta = fp16.metadata
    assert meta["derived_from"] == {"model": "resnet18", "version": 1, "model_sha256": fp32.expected_sha256}
    assert meta["conversion"]["tool"] == "onnxruntime.transformers.float16.convert_float_to_float16"
    assert meta["conversion"]["keep_io_types"] is True
    agreement = meta["agreement_with_fp32"]
    assert agreement["samples"] == 360 and agreement["within_tolerance"], agreement
    assert "test images of the digits data set at 32x32" in agreement["images"]


def test_fp16_conversion_agrees_with_fp32_on_cpu(dry_run: DryRun, tmp_path: Path) -> None:
    """The FP16 copy has FP16 weights, FP32 input and output, and logits within 1% of FP32's scale."""
    assert FP16_TOLERANCE == 0.01
    fp32 = read_version(dry_run.work / "repository", "resnet18", 1)
    target = tmp_path / "fp16.onnx"
    convert_fp16(fp32.model_path, target)
    model = onnx.load(str(target))
    weights = [
        t.data_type
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    assert weights and set(weights) == {onnx.TensorProto.FLOAT16}, "the weights must be FP16"
    reference = ort.InferenceSession(str(fp32.model_path), providers=[CPU])
    candidate = ort.InferenceSession(str(target), providers=[CPU])
    assert [i.type for i in candidate.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in candidate.get_outputs()] == ["tensor(float)"]
    images, _ = digits_test_images(fp32.config)
    noise = np.random.default_rng(1).standard_normal((16, *fp32.config.input.shape)).astype(np.float32)
    for x in (images, noise):
        a = reference.run(None, {"input": x})[0]
        b = candidate.run(None, {"input": x})[0]
        report = compare_logits(a, b)
        assert report["relative_max_abs_diff"] <= 0.01, report
        assert report["within_tolerance"], report


def test_compare_logits_fails_a_real_flip_and_a_large_error() -> None:
    reference = np.array([[5.0, 4.96, 0.0], [0.0, 4.0, 0.0]], dtype=np.float32)
    assert compare_logits(reference, reference + np.float32(0.001))["within_tolerance"]
    # FP32's top two are 0.04 apart (under 2% of 5): a flip there is a near tie, and allowed.
    near_tie = reference.copy()
    near_tie[0] = [4.96, 5.0, 0.0]
    report = compare_logits(reference, near_tie)
    assert report["disagreements"] == 1 and report["disagreements_at_near_ties"] == 1
    assert report["within_tolerance"], report
    # The second row's top two are 4 apart: flipping it is a real disagreement, even if small.
    flipped = reference.copy()
    flipped[1] = [0.0, 4.0, 4.04]
    report = compare_logits(reference, flipped)
    assert report["disagreements"] == 1 and report["disagreements_at_near_ties"] == 0
    assert not report["within_tolerance"], report
    wrong = reference.copy()
    wrong[1, 1] = 3.0  # 20% of the largest logit, no flip
    report = compare_logits(reference, wrong)
    assert report["disagreements"] == 0 and not report["within_tolerance"]


def test_tensorrt_listed_but_unusable_is_reported_not_measured(dry_run: DryRun) -> None:
    """This onnxruntime-gpu build lists TensorRT; without its libraries (and a GPU) ONNX Runtime falls
    back to other providers, and the script must say so instead of timing the fall-back."""
    if TENSORRT not in ort.get_available_providers() or cuda_device_count()[0]:
        pytest.skip("needs a build that lists TensorRT, on a machine where it cannot start")
    plan = Plan.make("cuda", 32, 0.5, 0.1)
    fp32 = read_version(dry_run.work / "repository", "resnet18", 1)
    found = try_tensorrt(fp32.model_path, plan, 8, dry_run.work, library_environment())
    assert found["status"] == "unusable", found
    assert found["engines"] == []
    assert f"{TENSORRT} is listed, but ONNX Runtime could not start it" in found["reason"]


def test_documents_name_the_commit_and_whether_the_tree_was_dirty(tmp_path: Path) -> None:
    """Both documents say which commit wrote them, as ``benchmarking.provenance.source_state`` found it."""
    found = Preflight("nvidia-smi is not on PATH", (), 0, "no driver", None, "ort 1", (CPU,), None, {}, {})
    machine = {"cpu": "c", "cores": 2}
    dirty = {"commit": "abc123", "dirty": True, "changed": ["a.py", "b/c.py"]}
    text = render_not_measured(found, "python scripts/gpu_check.py", machine, "now", dirty)
    assert "ran on now, from commit `abc123` with uncommitted changes in 2 path(s), on a machine" in text
    clean = {"commit": "abc123", "dirty": False, "changed": []}
    text = render_not_measured(found, "python scripts/gpu_check.py", machine, "now", clean)
    assert "from commit `abc123`, tree clean, on a machine" in text
    if cuda_device_count()[0]:
        return  # the script would measure: the dry run's test below covers the measured document
    out = tmp_path / "gpu.md"
    assert run_gpu_check("--out", str(out)).returncode == 3
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False)
    if head.returncode == 0:
        assert f"from commit `{head.stdout.strip()}`" in out.read_text()


def test_dry_run_records_its_commit_in_the_json_and_the_header(dry_run: DryRun) -> None:
    source = dry_run.figures["source"]
    assert set(source) == {"commit", "dirty", "changed"}
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False)
    if head.returncode != 0:
        assert source["commit"] is None and "an unknown commit (no git checkout)" in dry_run.document
        return
    assert source["commit"] == head.stdout.strip()
    origin = f"from commit `{source['commit']}`" + (
        f" with uncommitted changes in {len(source['changed'])} path(s), all listed in `gpu.json`"
        if source["dirty"]
        else ", tree clean"
    )
    assert origin in dry_run.document


def test_the_server_gets_the_library_environment_and_keeps_its_log(dry_run: DryRun, tmp_path: Path) -> None:
    """The variables reach the server process itself (its pid is the server's, not a launcher's)."""
    value = f"{Path(ort.__file__).resolve()}:set"
    log_path = tmp_path / "server.log"
    cpu = Device("cpu", explicit=True)
    server = GpuServer(dry_run.work / "repository", "resnet18", cpu, {"GPU_CHECK_TEST": value}, log_path)
    with server:
        proc = Path("/proc") / str(server.pid)
        assert f"GPU_CHECK_TEST={value}".encode() in (proc / "environ").read_bytes().split(b"\0")
        assert (proc / "cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"server"]
        shown = shlex.split(server.shown_command())
        assert shown[0] == "GPU_CHECK_TEST=<site-packages>/onnxruntime/__init__.py:set"
        assert shown[1:4] == ["python", "-m", "server"]
        assert served_device(server, "resnet18", cpu)["confirmed"]
    assert server.proc is not None and server.proc.returncode is not None, "stopped on exit"
    assert "ready on cpu" in log_path.read_text()
