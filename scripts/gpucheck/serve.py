"""``python -m server --device D`` as a subprocess, where it says it serves a model, and the load on it.

The subprocess handling (free port, start, wait until ready, SIGTERM) is
:class:`benchmarking.processes.ServerProcess`; what is added here is the device, the
environment that lets the server load the NVIDIA wheels' CUDA libraries, and a JSON log
kept in the work directory, whose "ready on" line says where each model runs.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
from benchmarking.commands import PYTHON, run_command, shown
from benchmarking.processes import ServerProcess, free_port

from clients import InferenceClient
from gpucheck.plan import Plan
from protocol import model_config_pb2
from server.runtime import Device

#: The line the server logs once a model is loaded, naming the device it runs on.
READY_LINE = re.compile(r"^model (?P<model>\S+) version (?P<version>\d+) ready on (?P<device>\S+) in ")


def shown_with_env(command: Sequence[str], env: dict[str, str]) -> str:
    """:func:`benchmarking.commands.shown` with ``env``'s variables set before it, site-packages named so."""
    site = str(Path(ort.__file__).resolve().parents[1])
    prefix = [f"{name}={value.replace(site, '<site-packages>')}" for name, value in env.items()]
    return shlex.join(prefix) + (" " if prefix else "") + shown(command)


class GpuServer(ServerProcess):
    """``python -m server --device D`` on one model, with ``env`` set, logging JSON to ``log_path``."""

    metrics_url: str

    def __init__(self, repository: Path, model: str, device: Device, env: dict[str, str], log_path: Path):
        self.env = env
        self.metrics_port = free_port()
        port = free_port()
        self.server_command = [
            PYTHON, "-m", "server", "--repository", str(repository), "--models", model,
            "--device", str(device), "--host", "127.0.0.1", "--port", str(port), "--http-port", "-1",
            "--metrics-port", str(self.metrics_port), "--log-format", "json", "--log-level", "INFO",
        ]  # fmt: skip
        # ServerProcess starts its command in this process's environment: `env` sets the variables
        # for the server alone (and execs it, so the process id is the server's).
        launcher = ["env", *(f"{name}={value}" for name, value in env.items())] if env else []
        super().__init__([*launcher, *self.server_command], port)
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        # The log stays in the work directory (the base class would keep it in a temporary file).
        # Opened for appending: the server shares this file's offset, and appends wherever this
        # process seeks to read it.
        self.log_file.close()
        log_path.unlink(missing_ok=True)
        self.log_file = log_path.open("a+b")

    def shown_command(self) -> str:
        return shown_with_env(self.server_command, self.env)

    def ready(self, client: InferenceClient) -> bool:
        return client.server_ready()

    def __enter__(self) -> GpuServer:
        try:
            super().__enter__()
        except BaseException:
            self.__exit__()  # a server that never became ready is stopped, not left running
            raise
        return self

    def log_messages(self) -> list[str]:
        """The messages of the server's log so far, in order (lines that are no JSON record as they are)."""
        self.log_file.seek(0)
        messages = []
        for line in self.log_file.read().decode(errors="replace").splitlines():
            try:
                messages.append(str(json.loads(line)["message"]))
            except (ValueError, KeyError, TypeError):
                messages.append(line)  # not a log record: a traceback or a library's own output
        return messages


def served_device(server: GpuServer, model: str, device: Device) -> dict[str, Any]:
    """Where the server says it runs ``model``: its ModelConfig instance groups and its ready log line.

    ``confirmed`` only when both name ``device`` (KIND_GPU on its index for CUDA, KIND_CPU for the CPU).
    """
    with InferenceClient(server.address, timeout=30) as client:
        config = client.model_config(model)
    kind_name = model_config_pb2.ModelInstanceGroup.Kind.Name
    groups = [
        {"kind": kind_name(g.kind), "count": g.count, "gpus": list(g.gpus)} for g in config.instance_group
    ]
    ready = [m for m in map(READY_LINE.match, server.log_messages()) if m and m["model"] == model]
    logged = ready[-1]["device"] if ready else None
    expected = {"kind": "KIND_GPU", "gpus": [device.index]} if device.kind == "cuda" else {"kind": "KIND_CPU"}
    groups_agree = bool(groups) and all(all(g[k] == v for k, v in expected.items()) for g in groups)
    return {
        "instance_groups": groups,
        "log_device": logged,
        "expected": str(device),
        "confirmed": groups_agree and logged == str(device),
    }


def run_bench(server: GpuServer, model: str, plan: Plan, out: Path) -> tuple[str, list[dict[str, Any]]]:
    """``python -m clients.bench`` at the plan's concurrency levels; returns its command and JSON levels."""
    command = [
        PYTHON, "-m", "clients.bench", "--server", server.address, "--model", model,
        "--concurrency", ",".join(map(str, plan.concurrency)), "--duration", str(plan.duration),
        "--warmup", str(plan.warmup), "--processes", str(plan.bench_processes),
        "--metrics-url", server.metrics_url, "--server-pid", str(server.pid),
        "--json", str(out), "--no-progress",
    ]  # fmt: skip
    run_command(command, timeout=len(plan.concurrency) * (plan.duration + plan.warmup) + 300)
    return shown(command), list(json.loads(out.read_text())["levels"])
