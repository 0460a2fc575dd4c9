"""``python -m clients.health``, the container health check, against real gRPC health services."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from deploytools import ROOT
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clients.health import HealthCheckError, check, default_target, main

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, str]]:
    """A real gRPC server with only the standard health service, on 127.0.0.1:0."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", SERVING)
    servicer.set("lenet", SERVING)
    servicer.set("draining", NOT_SERVING)
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def dead_target() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_serving_exits_zero(
    health_server: tuple[health.HealthServicer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, target = health_server
    assert main(["--server", target]) == 0
    assert main(["--server", target, "--service", "lenet"]) == 0
    assert "SERVING" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("service", "reason"),
    [("draining", "is NOT_SERVING"), ("no-such-model", "unknown service 'no-such-model'")],
)
def test_not_serving_or_unknown_exits_one_with_a_reason(
    health_server: tuple[health.HealthServicer, str],
    capsys: pytest.CaptureFixture[str],
    service: str,
    reason: str,
) -> None:
    _, target = health_server
    assert main(["--server", target, "--service", service]) == 1
    err = capsys.readouterr().err
    assert reason in err and len(err.strip().splitlines()) == 1, err


def test_overall_status_follows_a_graceful_shutdown(health_server: tuple[health.HealthServicer, str]) -> None:
    # What the server does first on SIGTERM; a load balancer must see it before the port closes.
    servicer, target = health_server
    assert check(target) == "SERVING"
    servicer.enter_graceful_shutdown()
    assert check(target) == "NOT_SERVING"
    assert main(["--server", target]) == 1


def test_unreachable_exits_one_within_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", dead_target(), "--timeout", "0.3"]) == 1
    assert "unreachable within 0.3 s" in capsys.readouterr().err


def test_server_without_health_service_is_unhealthy() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(HealthCheckError, match="no gRPC health service"):
            check(f"127.0.0.1:{port}", timeout=2)
    finally:
        server.stop(None)


def test_default_target_reads_cnnserve_port() -> None:
    assert default_target({}) == "127.0.0.1:8001"
    assert default_target({"CNNSERVE_PORT": "9100"}) == "127.0.0.1:9100"
    with pytest.raises(HealthCheckError, match="CNNSERVE_PORT is 'http'"):
        default_target({"CNNSERVE_PORT": "http"})
    with pytest.raises(HealthCheckError, match="timeout is 0"):
        check("127.0.0.1:1", timeout=0)


def test_module_uses_cnnserve_port_and_imports_no_runtime(
    health_server: tuple[health.HealthServicer, str],
) -> None:
    # As the Dockerfile's HEALTHCHECK runs it: no --server, the port from the environment.
    _, target = health_server
    env = {"CNNSERVE_PORT": target.rsplit(":", 1)[1], "PATH": "/usr/bin:/bin"}
    probe = (
        "import runpy, sys; sys.argv = ['clients.health']; "
        "code = 0\n"
        "try:\n    runpy.run_module('clients.health', run_name='__main__')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted({'onnxruntime', 'torch', 'torchvision'} & set(sys.modules))\n"
        "print('heavy', heavy)\nsys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "heavy []" in result.stdout, result.stdout
