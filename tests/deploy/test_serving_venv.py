"""The serving image's dependency set, installed alone, runs the server: no torch needed.

A fresh virtual environment gets exactly what docker/Dockerfile.server installs for its CPU flavour
(requirements/serve-cpu.txt, hash-checked, with --no-deps, then the project without extras), then
serves a tiny published model configured the way docker-compose.yml configures it (CNNSERVE_* variables),
and the container health check command, run from the same environment, judges it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from deploytools import ROOT
from onnx import TensorProto, helper, numpy_helper

import modelrepo

MODEL = "tiny"
#: What the Dockerfiles copy into the wheel build (and .dockerignore lets through).
CONTEXT = ("pyproject.toml", "README.md", "modelrepo", "protocol", "server", "clients", "export")
pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def serving_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Python of a new venv holding the serving dependency set and the project, nothing else."""
    venv = tmp_path_factory.mktemp("serving") / "venv"
    # --without-pip and pip's --python: no ensurepip run, and pip is not part of the set.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-compile", "--quiet"]
    run([*pip, "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements" / "serve-cpu.txt")])
    # A regular (not editable) install from what the image's build context holds, built in a
    # copy so the shared checkout gets no build/ or egg-info; --no-deps because the set is
    # complete, which `pip check` then proves against the project's declared dependencies.
    source = venv.parent / "context"
    for name in CONTEXT:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    run([*pip, "--no-deps", str(source)], cwd=venv.parent)
    run([sys.executable, "-m", "pip", "--python", str(python), "check"])
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_model(path: Path) -> None:
    """[N,1,4,4] -> [N,3]: flatten and one matrix product; enough for a real ORT session."""
    weight = numpy_helper.from_array(np.linspace(-1, 1, 48, dtype=np.float32).reshape(16, 3), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    tiny_model(root / "tiny.onnx")
    config = modelrepo.ModelConfig(
        name=MODEL,
        input=modelrepo.TensorSpec("input", "FP32", (1, 4, 4)),
        output=modelrepo.TensorSpec("logits", "FP32", (3,)),
        labels=("a", "b", "c"),
        preprocessing=modelrepo.Preprocessing(4, 4, 1, (0.5,), (0.5,)),
    )
    repo = root / "models"
    modelrepo.publish(repo, config, root / "tiny.onnx", {"source": "tests/deploy"})
    return repo


def health(python: Path, target: str, *args: str, timeout: float = 2) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "clients.health", "--server", target, "--timeout", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=python.parent,
    )


@pytest.fixture(scope="module")
def server(serving_python: Path, repository: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    port, metrics_port = free_port(), free_port()
    # Configured like the compose service: environment only, no flags.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CNNSERVE_")},
        "CNNSERVE_REPOSITORY": str(repository),
        "CNNSERVE_HOST": "127.0.0.1",
        "CNNSERVE_PORT": str(port),
        "CNNSERVE_METRICS_PORT": str(metrics_port),
        "CNNSERVE_DEVICE": "cpu",
        "CNNSERVE_GRACE_PERIOD": "5",
        "CNNSERVE_LOG_FORMAT": "json",
    }
    env.pop("PYTHONPATH", None)
    # cwd outside the checkout: the server must run from the installed package alone.
    process = subprocess.Popen(
        [str(serving_python), "-m", "server"],
        env=env,
        cwd=serving_python.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited {process.returncode}:\n{process.communicate()[0][-3000:]}")
            if health(serving_python, f"127.0.0.1:{port}", timeout=1).returncode == 0:
                break
            assert time.monotonic() < deadline, "server did not report SERVING within 60 s"
            time.sleep(0.2)
        yield process, port, metrics_port
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serving_set_has_no_torch(serving_python: Path) -> None:
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ['torch', 'torchvision', 'onnx', 'onnxruntime', 'grpc', 'server', 'clients']}))"
    )
    found = json.loads(run([str(serving_python), "-c", probe], cwd=serving_python.parent).stdout)
    assert found == {
        "torch": False,
        "torchvision": False,
        "onnx": False,
        "onnxruntime": True,
        "grpc": True,
        "server": True,
        "clients": True,
    }


def test_installed_project_has_every_package_of_the_tree(serving_python: Path) -> None:
    # A regular install, unlike the editable one of the development venv, holds only what
    # pyproject.toml's package list names: a subpackage left out fails only in the images.
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run([str(serving_python), "-c", purelib]).stdout.strip())
    tree = {p.parent.relative_to(ROOT) for name in CONTEXT for p in (ROOT / name).glob("**/__init__.py")}
    missing = sorted(str(package) for package in tree if not (site / package / "__init__.py").exists())
    assert tree and not missing, f"the installed project lacks the packages {missing}"


def test_server_from_serving_set_loads_the_model_and_exports_metrics(
    serving_python: Path, server: tuple[subprocess.Popen[str], int, int]
) -> None:
    _, port, metrics_port = server
    result = health(serving_python, f"127.0.0.1:{port}", "--service", MODEL)
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert "cnnserve_" in body, "the metrics port Prometheus scrapes serves no cnnserve metrics"


def test_health_check_fails_for_unknown_service_and_dead_port(
    serving_python: Path, server: tuple[subprocess.Popen[str], int, int]
) -> None:
    _, port, _ = server
    unknown = health(serving_python, f"127.0.0.1:{port}", "--service", "no-such-model")
    assert unknown.returncode == 1 and "unknown service" in unknown.stderr, unknown
    dead = health(serving_python, f"127.0.0.1:{free_port()}", timeout=0.5)
    assert dead.returncode == 1 and "unreachable" in dead.stderr, dead
    assert len(dead.stderr.strip().splitlines()) == 1, "the reason must be one line"


def test_sigterm_drains_and_exits_zero(
    serving_python: Path, server: tuple[subprocess.Popen[str], int, int]
) -> None:
    # What `docker stop` and a rolling restart do: SIGTERM, then wait for exit 0.
    process, port, _ = server
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, f"server exited {process.returncode} on SIGTERM:\n{output[-3000:]}"
    after = health(serving_python, f"127.0.0.1:{port}", timeout=0.5)
    assert after.returncode == 1
