"""Served configurations measured for real: our server and the bare handler as subprocesses,
driven by ``python -m clients.bench``, repeats interleaved."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from benchmarking.models import model_facts
from benchmarking.plan import Plan
from benchmarking.processes import BareServer
from benchmarking.served import ServedConfig, measure_group

from clients import InferenceClient

CONFIGS = [
    ServedConfig("tiny", "tiny", "our server, unary", "tiny", default=True),
    ServedConfig("tiny-bare", "tiny", "bare handler, unary", "tiny", server="bare"),
    ServedConfig("tiny-stream", "tiny", "our server, streams", "tiny", bench_flags=("--stream",)),
]
PLAN = Plan(
    quick=True,
    repeats=2,
    concurrency=(1, 4),
    duration={"tiny": 0.3},
    warmup=0.0,
    ceiling_batches=(1,),
    ceiling_seconds=0.05,
    perf_analyzer_interval_ms=1000,
)


def _flag(command: str, name: str) -> str:
    words = shlex.split(command)
    return words[words.index(name) + 1]


def test_configurations_run_interleaved_against_real_servers(tiny_repository: Path, tmp_path: Path) -> None:
    facts = {"tiny": model_facts(tiny_repository, "tiny")}
    runs = measure_group(CONFIGS, tiny_repository, PLAN, tmp_path, facts, {"tiny": 1})
    assert [run.config.key for run in runs] == ["tiny", "tiny-bare", "tiny-stream"]

    # A, B, C, A, B, C: each repeat ran every configuration once, in turn.
    written = sorted(tmp_path.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert [p.name for p in written] == [
        f"{key}-repeat-{r}.json" for r in (1, 2) for key in ("tiny", "tiny-bare", "tiny-stream")
    ]
    for run in runs:
        assert len(run.repeats) == PLAN.repeats == len(run.rss_bytes)
        assert all(rss > 10 * 2**20 for rss in run.rss_bytes)
        for levels in run.repeats:
            assert [lvl["concurrency"] for lvl in levels] == [1, 4]
            for lvl in levels:
                assert lvl["failed"] == {} and lvl["succeeded"] > 0
                assert lvl["server_cpu_cores"] is not None
        summary = run.summary()
        throughput = summary[4].get("requests_per_s")
        assert throughput is not None and throughput.n == 2

    ours, bare, stream = runs
    # The bare handler has no metrics endpoint; our server's batches are counted.
    assert all(lvl["server_mean_batch"] is None for lvl in bare.repeats[0])
    assert all(lvl["server_mean_batch"] >= 1 for lvl in ours.repeats[0])
    assert bare.server_command.startswith("python scripts/bare_server.py --model-file ")
    assert _flag(bare.server_command, "--threads") == "1"
    # Streams and unary calls went to one and the same server process.
    assert ours.server_command == stream.server_command
    assert _flag(ours.bench_command, "--server-pid") == _flag(stream.bench_command, "--server-pid")
    assert "--stream" in shlex.split(stream.bench_command)
    assert json.loads((tmp_path / "tiny-stream-repeat-2.json").read_text())["levels"][0]["api"] == "stream"


def test_a_server_that_never_becomes_ready_is_stopped(tiny_repository: Path) -> None:
    """The start-up wait raising (here: the readiness probe) must not leave the server running."""

    class NeverReady(BareServer):
        def ready(self, client: InferenceClient) -> bool:
            raise RuntimeError("never ready")

    server = NeverReady(tiny_repository / "tiny" / "1" / "model.onnx", "tiny", threads=1)
    with pytest.raises(RuntimeError, match="never ready"), server:
        pass
    assert server.proc is not None and server.proc.poll() is not None  # stopped, not left running
    assert server.log_file.closed
