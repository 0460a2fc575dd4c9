"""``python -m server`` as a process: settings from flags and environment, start-up errors, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_testlib import infer_request, make_settings, publish_tiny

from modelrepo import BatchingConfig
from protocol import grpc_service_pb2_grpc as pb_grpc
from server import create_server
from server.errors import StartupError
from server.runtime import cuda_device_count
from server.settings import ModelSelection, settings_from_args

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_settings_from_environment_and_flags() -> None:
    env = {
        "CNNSERVE_PORT": "9001",
        "CNNSERVE_DEVICE": "cpu",
        "CNNSERVE_MAX_BATCH_SIZE": "8",
        "CNNSERVE_MODELS": "a,b:2",
    }
    settings = settings_from_args(["--port", "9100", "--log-format", "json"], env)
    assert settings.port == 9100  # the flag wins over the environment
    assert settings.device == "cpu"
    assert settings.max_batch_size == 8
    assert settings.models == (ModelSelection("a"), ModelSelection("b", 2))
    assert settings.log_format == "json"
    assert settings.metrics_port == 8002
    assert settings.max_message_bytes >= 64 * 3 * 224 * 224 * 4


def test_bad_settings_are_refused() -> None:
    with pytest.raises(SystemExit):
        settings_from_args(["--max-batch-size", "0"], {})
    with pytest.raises(SystemExit):
        settings_from_args([], {"CNNSERVE_PORT": "eighty"})


NO_GPU = pytest.mark.skipif(cuda_device_count()[0] > 0, reason="this machine has a CUDA GPU")


@NO_GPU
async def test_device_cuda_without_gpu_is_a_startup_error(tmp_path: Path) -> None:
    publish_tiny(tmp_path, "tiny")
    with pytest.raises(StartupError, match=r"device 'cuda' was requested but no usable CUDA GPU 0 exists"):
        await create_server(make_settings(tmp_path, device="cuda"))
    with pytest.raises(StartupError, match="device 'tpu' is not valid"):
        await create_server(make_settings(tmp_path, device="tpu"))


async def _read_port(stream: asyncio.StreamReader, lines: list[str]) -> int:
    while True:
        line = (await asyncio.wait_for(stream.readline(), 60)).decode()
        if not line:
            raise AssertionError("server exited before it was ready:\n" + "".join(lines))
        lines.append(line)
        match = re.search(r"ready on port (\d+)", line)
        if match:
            return int(match.group(1))


async def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    # A long queue delay keeps the requests queued while SIGTERM arrives (with greedy batching
    # off, so that even a request that arrives alone waits it out).
    model = publish_tiny(
        tmp_path, "tiny", batching=BatchingConfig(max_batch_size=64, max_queue_delay_us=1_500_000)
    )
    env = {**os.environ, "CNNSERVE_REPOSITORY": str(tmp_path), "CNNSERVE_GRACE_PERIOD": "10"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "-1",
        "--device",
        "auto",
        "--greedy-batching",
        "0",
        cwd=REPO_ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        port = await _read_port(process.stderr, lines)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            inputs = [np.full((1, 1, 8, 8), float(i), np.float32) for i in range(5)]
            in_flight = [asyncio.ensure_future(stub.ModelInfer(infer_request("tiny", x))) for x in inputs]
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(infer_request("tiny", inputs[0]))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (info.value.details() or "")
            responses = await asyncio.gather(*in_flight)
        for x, response in zip(inputs, responses, strict=True):
            got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, -1)
            np.testing.assert_allclose(got, model.expected(x), rtol=1e-4, atol=1e-4)
        remaining = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = "".join(lines) + remaining
    # On a machine without a GPU, --device auto logs nothing at error level.
    assert " ERROR " not in log and "[E:" not in log, log


@NO_GPU
async def test_cli_cuda_without_gpu_exits_with_error(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--repository",
        str(tmp_path),
        "--port",
        "0",
        "--http-port",
        "0",
        "--device",
        "cuda",
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "cannot start: device 'cuda' was requested but no usable CUDA GPU" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_workers_share_the_port_and_both_serve(tmp_path: Path) -> None:
    """--workers 2: two processes on one port; connections are spread over both; SIGTERM stops all."""
    model = publish_tiny(tmp_path, "tiny")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--repository",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        "--device",
        "cpu",
        "--workers",
        "2",
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        while not any("(2 workers)" in line for line in lines):
            await _read_port(process.stderr, lines)
        workers = [
            re.search(r"worker (\d) \(pid (\d+)\) serving on port (\d+), metrics on (\d+)", line)
            for line in lines
        ]
        found = [m for m in workers if m]
        assert len(found) == 2, "".join(lines)
        assert len({m.group(2) for m in found}) == 2  # two processes...
        assert len({m.group(3) for m in found}) == 1  # ...on one port
        port = int(found[0].group(3))
        x = np.ones((1, 1, 8, 8), np.float32)
        # Sixteen connections (a local subchannel pool each): all on one worker has odds 2**-15.
        for _ in range(16):
            async with aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    infer_request("tiny", x)
                )
                got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, -1)
                np.testing.assert_allclose(got, model.expected(x), rtol=1e-4, atol=1e-4)
        served = []
        for match in found:
            metrics = await asyncio.to_thread(
                lambda m=match: (
                    urllib.request.urlopen(f"http://127.0.0.1:{m.group(4)}/metrics", timeout=10)
                    .read()
                    .decode()
                )
            )
            count = re.search(r'cnnserve_request_success_total\{model="tiny"\} (\S+)', metrics)
            served.append(float(count.group(1)) if count else 0.0)
        assert sum(served) == 16 and min(served) > 0, served
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
