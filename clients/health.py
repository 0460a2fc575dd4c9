"""Ask a server's gRPC health service whether it is serving; the container health check.

    python -m clients.health [--server HOST:PORT] [--service NAME] [--timeout S]

Exits 0 if and only if the service is SERVING, otherwise 1 with a one-line reason on stderr:
unreachable, NOT_SERVING (e.g. draining during a graceful shutdown), or unknown service. Docker
reads exit 1 as unhealthy (and reserves 2), so every failure uses 1. ``--server`` defaults to
``127.0.0.1:$CNNSERVE_PORT`` (8001), so inside the server's container the check follows the
port the server was configured with.

Only grpcio and the grpc_health stubs are imported: no numpy, onnxruntime or torch, so a check
every few seconds costs little.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 8001
DEFAULT_TIMEOUT_S = 3.0
#: The overall server health in the gRPC health protocol.
OVERALL = ""


class HealthCheckError(Exception):
    """The health status could not be read: the reason is the message."""


def default_target(environ: Mapping[str, str] | None = None) -> str:
    """``127.0.0.1:<CNNSERVE_PORT>``, or port 8001 when the variable is unset."""
    env = os.environ if environ is None else environ
    port = env.get("CNNSERVE_PORT", "").strip() or str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise HealthCheckError(f"CNNSERVE_PORT is {port!r}; expected a port number 1-65535")
    return f"127.0.0.1:{port}"


def check(target: str, service: str = OVERALL, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Return the serving status name (``"SERVING"``, ``"NOT_SERVING"``, ...) of ``service``.

    Raises :class:`HealthCheckError` if the server cannot be reached within ``timeout``
    seconds, does not know ``service``, or fails the call.
    """
    if timeout <= 0:
        raise HealthCheckError(f"timeout is {timeout}; expected a positive number of seconds")
    # A proxy configured for outbound traffic (http_proxy) must not capture a local check.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # wait_for_ready: a server that is still binding gets the whole timeout, not one try.
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise HealthCheckError(f"{target}: unknown service {service!r}") from None
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise HealthCheckError(f"{target}: unreachable within {timeout:g} s") from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise HealthCheckError(f"{target}: has no gRPC health service") from None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "error"
            raise HealthCheckError(f"{target}: health check failed with {name}: {details}") from None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m clients.health``."""
    parser = argparse.ArgumentParser(
        prog="python -m clients.health",
        description="Exit 0 if the server's gRPC health service reports SERVING, else 1.",
    )
    parser.add_argument(
        "--server",
        default=None,
        help=f"HOST:PORT of the server (default: 127.0.0.1:$CNNSERVE_PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--service",
        default=OVERALL,
        help="service to ask about: '' (the default) for the whole server, "
        "'inference.GRPCInferenceService', or a model name",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; print the status (exit 0) or one line saying why not (exit 1)."""
    args = get_args_parser().parse_args(argv)
    try:
        target = args.server or default_target()
        status = check(target, args.service, args.timeout)
    except HealthCheckError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    label = f"service {args.service!r}" if args.service else "server"
    if status != "SERVING":
        print(f"unhealthy: {target}: {label} is {status}", file=sys.stderr)
        return 1
    print(f"healthy: {target}: {label} is SERVING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
