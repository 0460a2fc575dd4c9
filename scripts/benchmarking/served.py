"""The served configurations, each driven by ``python -m clients.bench`` (a subprocess).

The configurations of one group are measured interleaved: all their servers start
together, then each repeat runs every configuration once in turn (A, B, C, A, B, C, ...),
so that a slow spell on this shared machine lowers all of them alike rather than
whichever ran during it. Verdicts are judged on the default single-process
configurations; the others are shown beside them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarking.commands import PYTHON, log, run_command, shown
from benchmarking.plan import Plan
from benchmarking.processes import BareServer, Server, ServerProcess
from benchmarking.stats import LevelSummary, summarize_levels

#: Load-generator connections for a --workers server: the kernel spreads connections, not requests.
WORKER_CONNECTIONS = 16


@dataclass(frozen=True)
class ServedConfig:
    """One way of serving a model under load."""

    #: Names the configuration in lookups, file names and the JSON.
    key: str
    model: str
    #: How the document and plots name it.
    label: str
    #: Configurations of one group run interleaved.
    group: str
    #: "cnnserve" (``python -m server``) or "bare" (``scripts/bare_server.py``).
    server: str = "cnnserve"
    server_flags: tuple[str, ...] = ()
    bench_flags: tuple[str, ...] = ()
    workers: int = 1
    #: The default single-process configuration: the one the targets judge.
    default: bool = False

    @property
    def server_key(self) -> tuple[Any, ...]:
        """Configurations that differ only in how the load is sent share one server."""
        return (self.server, self.model, self.server_flags, self.workers)


CONFIGS = (
    ServedConfig("lenet", "lenet", "our server, unary", "lenet", default=True),
    ServedConfig("lenet-bare", "lenet", "bare handler, unary", "lenet", server="bare"),
    ServedConfig(
        "lenet-stream",
        "lenet",
        "our server, ModelStreamInfer",
        "lenet",
        bench_flags=("--stream",),
        default=True,
    ),
    ServedConfig(
        "lenet-batching-off",
        "lenet",
        "our server, batching off",
        "lenet",
        server_flags=("--max-batch-size", "1"),
    ),
    ServedConfig(
        "lenet-workers-2",
        "lenet",
        "our server, --workers 2",
        "lenet",
        bench_flags=("--connections", str(WORKER_CONNECTIONS)),
        workers=2,
    ),
    ServedConfig("resnet18", "resnet18", "our server, FP32", "resnet18", default=True),
    ServedConfig("resnet18_int8", "resnet18_int8", "our server, INT8", "resnet18", default=True),
)


@dataclass
class ServerRun:
    """One configuration's repeats: the clients.bench levels of each, and the server's RSS after it."""

    config: ServedConfig
    server_command: str
    #: The first repeat's load command (the others differ only in the JSON file they write).
    bench_command: str
    repeats: list[list[dict[str, Any]]] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)

    def summary(self) -> dict[int, LevelSummary]:
        return summarize_levels(self.repeats)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "server_command": self.server_command,
            "bench_command": self.bench_command,
            "repeats": self.repeats,
            "rss_bytes": self.rss_bytes,
            "summary": [s.to_json() for s in self.summary().values()],
        }


def bench_command(server: ServerProcess, config: ServedConfig, plan: Plan, out: Path) -> list[str]:
    """``python -m clients.bench`` for one repeat of ``config`` against ``server``, writing ``out``."""
    command = [
        PYTHON,
        "-m",
        "clients.bench",
        "--server",
        server.address,
        "--model",
        config.model,
        "--concurrency",
        ",".join(str(c) for c in plan.concurrency),
        "--duration",
        str(plan.duration[config.model]),
        "--warmup",
        str(plan.warmup),
        "--server-pid",
        str(server.pid),
        "--json",
        str(out),
        "--no-progress",
    ]
    if server.metrics_url:
        command += ["--metrics-url", server.metrics_url]
    return [*command, *config.bench_flags]


def make_server(config: ServedConfig, repository: Path, facts: dict[str, Any], threads: int) -> ServerProcess:
    """The server ``config`` runs against (not yet started)."""
    if config.server == "bare":
        return BareServer(Path(facts["model_file"]), config.model, threads)
    return Server(repository, [config.model], config.server_flags, workers=config.workers)


def measure_group(
    configs: Sequence[ServedConfig],
    repository: Path,
    plan: Plan,
    work: Path,
    facts: dict[str, dict[str, Any]],
    threads: dict[str, int],
) -> list[ServerRun]:
    """Every configuration of one group, ``plan.repeats`` times, interleaved; one run per configuration.

    ``facts`` are the models' :func:`~benchmarking.models.model_facts` (the bare handler
    serves the model file directly); ``threads`` the intra-op threads our server gives each
    model, which the bare handler is given too.
    """
    servers: dict[tuple[Any, ...], ServerProcess] = {}
    for config in configs:
        if config.server_key not in servers:
            servers[config.server_key] = make_server(
                config, repository, facts[config.model], threads.get(config.model, 1)
            )
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.enter_context(server)
        runs = {c.key: ServerRun(c, servers[c.server_key].shown_command(), "") for c in configs}
        for repeat in range(plan.repeats):
            for config in configs:
                server = servers[config.server_key]
                out = work / f"{config.key}-repeat-{repeat + 1}.json"
                command = bench_command(server, config, plan, out)
                log(f"{config.key}: repeat {repeat + 1} of {plan.repeats}")
                run_command(command, timeout=3600)
                run = runs[config.key]
                run.bench_command = run.bench_command or shown(command)
                run.repeats.append(json.loads(out.read_text())["levels"])
                run.rss_bytes.append(server.rss_bytes())
        return list(runs.values())
