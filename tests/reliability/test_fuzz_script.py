"""The short CI run of ``scripts/fuzz.py`` (coverage-guided fuzzing with atheris), and its self-test.

The fuzzer runs in a subprocess, as a developer runs it: every target must execute inputs,
measure coverage and find nothing; with ``--plant-bug`` (input_batch without its byte-count
check) it must find the planted bug and save an input that reproduces it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fuzz.py"

pytest.importorskip("atheris", reason="atheris (the dev extra) is needed to fuzz")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def fuzz(tmp_path: Path, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "fuzz.json"
    command = [sys.executable, str(SCRIPT), "--json", str(out), "--crashes", str(tmp_path / "crashes"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_short_run_covers_every_target_and_finds_nothing(tmp_path: Path) -> None:
    done, figures = fuzz(tmp_path, "--seconds", "18")
    reports = {r["target"]: r for r in figures["targets"]}
    assert set(reports) == {"tensor", "image", "wire"}
    for target, r in reports.items():
        assert r["executions"] > 100, (target, r)
        assert r["coverage"] > 0 and r["features"] > 0, (target, r)
        assert r["corpus_seeds"] > 0, (target, r)
    findings = [f"{f['signature']}\n{f['traceback']}" for r in reports.values() for f in r["findings"]]
    assert not findings, "\n\n".join(findings)
    assert done.returncode == 0, done.stdout[-3000:]


def test_planted_bug_is_found_and_reproduced(tmp_path: Path) -> None:
    done, figures = fuzz(tmp_path, "--seconds", "12", "--target", "tensor", "--plant-bug")
    (report,) = figures["targets"]
    assert done.returncode == 1
    assert report["findings"], report
    finding = report["findings"][0]
    # Without its byte-count check the decoder either raises numpy's ValueError or returns a batch
    # the invariants refuse, whichever input libFuzzer meets first.
    kind = finding["signature"].split()[0]
    assert kind in ("ValueError", "InvariantViolation"), finding
    saved = Path(finding["path"])
    saved = saved if saved.is_absolute() else ROOT / saved
    # The saved input fails the planted decoder and is refused cleanly by the real one.
    command = [sys.executable, str(SCRIPT), "--target", "tensor", "--reproduce", str(saved)]
    planted = subprocess.run(
        [*command, "--plant-bug"], capture_output=True, text=True, timeout=60, check=False
    )
    assert planted.returncode == 1 and kind in planted.stderr, planted.stderr[-2000:]
    real = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert real.returncode == 0 and "InvalidInput (no finding)" in real.stdout, real.stderr[-2000:]


def test_invariant_checks_reject_wrong_shapes() -> None:
    fuzz_script = load_script()
    from protocol import grpc_service_pb2 as pb

    class Model:
        sample_shape = (1, 4, 4)
        dtype = np.dtype(np.float32)
        max_batch_size = 4

    request = pb.ModelInferRequest()
    request.inputs.add(name="input", datatype="FP32", shape=[2, 1, 4, 4])
    fuzz_script.check_batch(request, Model, np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(fuzz_script.InvariantViolation, match=r"shape \(2, 16\)"):
        fuzz_script.check_batch(request, Model, np.zeros((2, 16), np.float32))
    with pytest.raises(fuzz_script.InvariantViolation, match="dtype float64"):
        fuzz_script.check_batch(request, Model, np.zeros((2, 1, 4, 4), np.float64))


def test_every_saved_finding_is_fixed() -> None:
    """Every input the fuzzer found a bug with (tests/fuzz_corpus/crashes) is now answered cleanly."""
    fuzz_script = load_script()
    fixture = fuzz_script.make_fixture()
    try:
        harness = fuzz_script.Harness(fixture)
        saved = sorted((ROOT / "tests" / "fuzz_corpus" / "crashes").iterdir())
        assert saved
        for path in saved:
            target = path.name.split("-")[0]
            assert fuzz_script.failure_of(harness.targets[target], path.read_bytes()) is None, path.name
    finally:
        fixture.close()
