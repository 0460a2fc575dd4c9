"""``--workers N``: each worker's share of the cores, restarts, giving up, SIGTERM while loading."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import numpy as np
import onnx
import pytest
from grpc import aio
from onnx import TensorProto, helper, numpy_helper
from server_testlib import infer_request, publish_tiny

import modelrepo
from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec
from protocol import grpc_service_pb2_grpc as pb_grpc
from server import workers
from server.runtime import intra_op_threads_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving on port (\d+), metrics on \S+, HTTP on (\d+)")


def test_intra_op_threads_share_the_cores_between_workers() -> None:
    assert intra_op_threads_for(16, 1) == 4  # one process: capped at 4
    assert intra_op_threads_for(16, 1, 8) == 2
    assert intra_op_threads_for(16, 2, 4) == 2
    assert intra_op_threads_for(4, 1, 2) == 2
    assert intra_op_threads_for(2, 1, 2) == 1
    assert intra_op_threads_for(2, 3, 4) == 1  # never 0
    assert intra_op_threads_for(1, 1, 1) == 1


def test_exit_descriptions_never_hide_a_signal() -> None:
    assert workers.describe_exit(-9) == "was killed by SIGKILL"
    assert workers.describe_exit(3) == "exited with status 3"


def publish_conv(repository: Path, name: str, layers: int = 1) -> None:
    """A model whose batch of one takes well over a millisecond: ``layers`` 3x3 convs, 256 channels
    on 32x32 (the same weights each time, so more layers cost time, not memory).

    Automatic threads then follow the cores (tiny models get 1 thread whatever the cores),
    and many instances of a deep one take seconds to load (each runs a warm-up batch).
    """
    rng = np.random.default_rng(0)
    first = rng.standard_normal((256, 3, 3, 3)).astype(np.float32)
    second = rng.standard_normal((256, 256, 3, 3)).astype(np.float32) / 50
    head = rng.standard_normal((4, 256)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "W1"], ["c1"], pads=[1, 1, 1, 1]),
            *(
                helper.make_node("Conv", [f"c{i}", "W2"], [f"c{i + 1}"], pads=[1, 1, 1, 1])
                for i in range(1, layers + 1)
            ),
            helper.make_node("GlobalAveragePool", [f"c{layers + 1}"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "H", "b"], ["logits"], transB=1),
        ],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(first, "W1"),
            numpy_helper.from_array(second, "W2"),
            numpy_helper.from_array(head, "H"),
            numpy_helper.from_array(np.zeros(4, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    config = ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", (3, 32, 32)),
        output=TensorSpec("logits", "FP32", (4,)),
        labels=("a", "b", "c", "d"),
        preprocessing=Preprocessing(32, 32, 3, (0.5,) * 3, (0.25,) * 3),
        batching=BatchingConfig(max_batch_size=4, max_queue_delay_us=1000, max_queue_size=64),
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.onnx"
        onnx.save(model, str(model_file))
        modelrepo.publish(repository, config, model_file, {"source": "test"})


class Supervisor:
    """A running ``python -m server --workers N`` whose stderr lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode())
            self._changed.set()
        self._changed.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def wait_for(self, pattern: str, start: int = 0, timeout: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` in the lines from ``start`` on, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if match := re.search(pattern, line):
                    return match
            if self._reader.done():
                raise AssertionError(f"server exited without logging {pattern!r}:\n{self.log}")
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.log}")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def exit_code(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait_for(self._reader, 10)
        return code


@asynccontextmanager
async def supervisor(
    repository: Path, *args: str, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[Supervisor]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "-1",
        "--device",
        "cpu",
        *args,
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    running = Supervisor(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()  # its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG)...
        # ...and if they did not, no worker outlives the test holding the port and stderr.
        for pid in {int(m) for m in re.findall(r"worker \d+ \(pid (\d+)\)", running.log)}:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 30)
        running._reader.cancel()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _answers(port: int) -> None:
    """A fresh connection (its own subchannel) gets a right answer."""
    async with aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as ch:
        response = await pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
            infer_request("tiny", np.ones((1, 1, 8, 8), np.float32)), timeout=10
        )
    assert response.outputs[0].shape == [1, 4]


def _answers_http(port: int) -> None:
    """The shared HTTP port answers an inference (a fresh connection)."""
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1.0] * 64}]}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/tiny/infer", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read())["outputs"][0]["shape"] == [1, 4]


async def test_each_worker_gets_its_share_of_the_cores(tmp_path: Path) -> None:
    """2 workers on C cores: each session gets C // 2 automatic intra-op threads, not C each."""
    cores = sorted(os.sched_getaffinity(0))[:4]
    if len(cores) < 2:
        pytest.skip("needs at least 2 cores")
    publish_conv(tmp_path, "conv")
    async with supervisor(
        tmp_path, "--workers", "2", preexec_fn=lambda: os.sched_setaffinity(0, cores)
    ) as server:
        await server.wait_for(r"ready on port \d+ \(2 workers\)")
        threads = [
            int(m) for m in re.findall(r"model conv version 1 ready .* intra-op threads (\d+)", server.log)
        ]
        assert threads == [len(cores) // 2] * 2, server.log
        assert f"2 workers on {len(cores)} cores" in server.log
        server.process.send_signal(signal.SIGTERM)
        assert await server.exit_code(30) == 0


async def test_a_killed_worker_is_restarted_on_the_same_port(tmp_path: Path) -> None:
    publish_tiny(tmp_path, "tiny")
    async with supervisor(tmp_path, "--workers", "2") as server:
        await server.wait_for(r"ready on port \d+ \(2 workers\)")
        found = {m.group(1): m for m in map(SERVING.search, server.lines) if m}
        port, http_port = int(found["0"].group(3)), int(found["0"].group(4))
        assert int(found["1"].group(4)) == http_port, "the workers do not share the HTTP port"
        old_pid = int(found["1"].group(2))
        seen = len(server.lines)
        os.kill(old_pid, signal.SIGKILL)
        await server.wait_for(rf"worker 1 \(pid {old_pid}\) was killed by SIGKILL", seen)
        restarted = await server.wait_for(r"worker 1 \(pid (\d+)\) serving on port (\d+)", seen)
        assert int(restarted.group(1)) != old_pid and int(restarted.group(2)) == port
        assert server.process.returncode is None
        # With worker 0 gone too, only the restarted worker 1 can answer.
        os.kill(int(found["0"].group(2)), signal.SIGKILL)
        await server.wait_for(r"worker 0 \(pid \d+\) was killed", seen)
        await _answers(port)
        await asyncio.to_thread(_answers_http, http_port)
        await server.wait_for(r"worker 0 \(pid \d+\) serving", seen)
        assert server.process.returncode is None
        server.process.send_signal(signal.SIGTERM)
        assert await server.exit_code(30) == 0


async def test_workers_that_keep_dying_make_the_supervisor_exit_1(tmp_path: Path) -> None:
    """Every worker is killed as soon as it serves: after RESTART_LIMIT restarts the supervisor gives up."""
    publish_tiny(tmp_path, "tiny")
    async with supervisor(tmp_path, "--workers", "2") as server:
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while server.process.returncode is None and time.monotonic() < deadline:
            for match in map(SERVING.search, server.lines):
                if match and int(match.group(2)) not in killed:
                    killed.add(int(match.group(2)))
                    os.kill(int(match.group(2)), signal.SIGKILL)
            await asyncio.sleep(0.05)
        assert await server.exit_code(30) == 1
        # The last death ends it; the other worker may just have served (and been killed) too.
        assert workers.RESTART_LIMIT + 1 <= len(killed) <= workers.RESTART_LIMIT + 2, server.log
        assert "workers keep dying" in server.log
        assert not [pid for pid in killed if _alive(pid)]


async def test_sigterm_while_workers_load_stops_at_once_with_0(tmp_path: Path) -> None:
    """SIGTERM in the middle of a slow start-up: no waiting for the loads to finish."""
    publish_conv(tmp_path, "conv", layers=20)
    async with supervisor(
        tmp_path, "--workers", "2", "--instances", "40", "--intra-op-threads", "1"
    ) as server:
        await server.wait_for(r"device: cpu")  # worker 0 is loading its models now
        await asyncio.sleep(0.5)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert await server.exit_code(60) == 0
        took = time.monotonic() - sent
        assert "serving on port" not in server.log, server.log
        assert took < 3.0, f"took {took:.1f}s to stop\n{server.log}"
        pids = {int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\)", server.log)}
        assert pids and not [pid for pid in pids if _alive(pid)], server.log
