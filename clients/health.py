"""Ask a server's gRPC health service whether it is serving; the container health check.

    python -m clients.health [--server HOST:PORT] [--service NAME] [--timeout S]
                             [--plaintext] [--tls-ca PEM] [--tls-server-name NAME]
                             [--tls-client-cert PEM --tls-client-key PEM]

Exits 0 if and only if the service is SERVING, otherwise 1 with a one-line reason on stderr:
unreachable, a failed TLS handshake, NOT_SERVING (e.g. draining during a graceful shutdown), or
unknown service. Docker reads exit 1 as unhealthy (and reserves 2), so every failure uses 1.
``--server`` defaults to ``127.0.0.1:$CNNSERVE_PORT`` (8001), so inside the server's container
the check follows the port the server was configured with.

TLS follows the server's own settings in the same way: when ``CNNSERVE_TLS_CERT`` is set, the
check speaks TLS, trusting that certificate file itself (a self-signed certificate, or one that
carries its chain up to the root) unless ``--tls-ca`` names other roots, and expecting the
certificate to name ``localhost`` unless ``--tls-server-name`` says otherwise (the check dials
127.0.0.1, which certificates rarely name). When ``CNNSERVE_TLS_CLIENT_CA`` is set too (mutual
TLS) it needs ``--tls-client-cert`` and ``--tls-client-key``. Each ``--tls-*`` option can also
come from ``CNNSERVE_HEALTH_TLS_*`` (``--tls-ca`` from ``CNNSERVE_HEALTH_TLS_CA``, ...), so a
deployment configures the check without changing its command; a flag wins over the variable.
``--tls-ca`` turns TLS on by itself too; ``--plaintext`` forces plaintext.

Only grpcio and the grpc_health stubs are imported: no numpy, onnxruntime or torch, so a check
every few seconds costs little.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

if __name__ == "__main__":
    # gRPC's own log lines (a failed handshake, a name mismatch) would break the one-line reason;
    # the reason carries gRPC's last error instead. Read once, when grpc is imported.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 8001
DEFAULT_TIMEOUT_S = 3.0
#: The name the server certificate is expected to carry when no --tls-server-name is given.
DEFAULT_TLS_SERVER_NAME = "localhost"
#: The overall server health in the gRPC health protocol.
OVERALL = ""
#: Pause between connection attempts while the channel reports a failure.
_RETRY_S = 0.1


class HealthCheckError(Exception):
    """The health status could not be read: the reason is the message."""


@dataclass(frozen=True)
class TlsOptions:
    """What a TLS health check trusts, expects and presents (PEM bytes, with their file names)."""

    roots: bytes
    roots_file: str
    server_name: str = DEFAULT_TLS_SERVER_NAME
    client_cert: bytes | None = None
    client_key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.roots, private_key=self.client_key, certificate_chain=self.client_cert
        )


def _env(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's value, with unset and empty (compose's ``${VAR:-}``) alike: None."""
    value = environ.get(name, "").strip()
    return value or None


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file, or a :class:`HealthCheckError` saying why not."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise HealthCheckError(f"cannot read the {what} {path!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise HealthCheckError(f"the {what} {path!r} is not PEM (no '-----BEGIN' line)")
    return data


def tls_options(
    *,
    plaintext: bool = False,
    ca: str | None = None,
    server_name: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TlsOptions | None:
    """The TLS the check should use, or None for plaintext; arguments win over the environment.

    TLS is on when the server's ``CNNSERVE_TLS_CERT`` is set or roots are given (``ca`` or
    ``CNNSERVE_HEALTH_TLS_CA``), unless ``plaintext``. Raises :class:`HealthCheckError` when a
    file cannot be read, or mutual TLS (``CNNSERVE_TLS_CLIENT_CA``) has no client certificate.
    """
    env = os.environ if environ is None else environ
    if plaintext:
        return None
    server_cert = _env(env, "CNNSERVE_TLS_CERT")
    ca = ca or _env(env, "CNNSERVE_HEALTH_TLS_CA")
    roots_file = ca or server_cert
    if roots_file is None:
        return None
    what = "TLS CA (--tls-ca)" if ca else "server certificate (CNNSERVE_TLS_CERT, the default --tls-ca)"
    roots = read_pem(roots_file, what)
    server_name = server_name or _env(env, "CNNSERVE_HEALTH_TLS_SERVER_NAME") or DEFAULT_TLS_SERVER_NAME
    client_cert = client_cert or _env(env, "CNNSERVE_HEALTH_TLS_CLIENT_CERT")
    client_key = client_key or _env(env, "CNNSERVE_HEALTH_TLS_CLIENT_KEY")
    if client_cert is not None and client_key is None:
        raise HealthCheckError(
            "--tls-client-cert needs --tls-client-key too (or CNNSERVE_HEALTH_TLS_CLIENT_KEY)"
        )
    if client_key is not None and client_cert is None:
        raise HealthCheckError(
            "--tls-client-key needs --tls-client-cert too (or CNNSERVE_HEALTH_TLS_CLIENT_CERT)"
        )
    if client_cert is None and _env(env, "CNNSERVE_TLS_CLIENT_CA") is not None:
        raise HealthCheckError(
            "the server requires a client certificate (CNNSERVE_TLS_CLIENT_CA is set); give "
            "--tls-client-cert and --tls-client-key (or CNNSERVE_HEALTH_TLS_CLIENT_CERT and "
            "CNNSERVE_HEALTH_TLS_CLIENT_KEY)"
        )
    cert_pem = key_pem = None
    if client_cert is not None and client_key is not None:
        cert_pem = read_pem(client_cert, "client certificate (--tls-client-cert)")
        key_pem = read_pem(client_key, "client key (--tls-client-key)")
    return TlsOptions(roots, roots_file, server_name, cert_pem, key_pem)


def default_target(environ: Mapping[str, str] | None = None) -> str:
    """``127.0.0.1:<CNNSERVE_PORT>``, or port 8001 when the variable is unset."""
    env = os.environ if environ is None else environ
    port = env.get("CNNSERVE_PORT", "").strip() or str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise HealthCheckError(f"CNNSERVE_PORT is {port!r}; expected a port number 1-65535")
    return f"127.0.0.1:{port}"


def _unreachable(target: str, timeout: float, tls: TlsOptions | None, last_error: str | None) -> str:
    """The reason for a check that never got an answer, from gRPC's last connection error."""
    last = " ".join((last_error or "").split())
    last = last.removeprefix("failed to connect to all addresses; last error: ")
    if tls is not None and "Hostname Verification" in last:
        return (
            f"{target}: the server's TLS certificate does not name {tls.server_name!r} "
            "(set --tls-server-name or CNNSERVE_HEALTH_TLS_SERVER_NAME)"
        )
    if tls is not None and "CERTIFICATE_VERIFY_FAILED" in last:
        return (
            f"{target}: the server's TLS certificate is not trusted by {tls.roots_file!r} "
            f"(set --tls-ca or CNNSERVE_HEALTH_TLS_CA): {last}"
        )
    transport = "TLS" if tls is not None else "plaintext"
    reason = f"{target}: unreachable within {timeout:g} s over {transport}"
    return f"{reason} (last error: {last})" if last else reason


def check(
    target: str, service: str = OVERALL, timeout: float = DEFAULT_TIMEOUT_S, tls: TlsOptions | None = None
) -> str:
    """Return the serving status name (``"SERVING"``, ``"NOT_SERVING"``, ...) of ``service``.

    Speaks TLS as ``tls`` says, or plaintext when it is None. Raises :class:`HealthCheckError`
    if the server cannot be reached (or its TLS handshake fails) within ``timeout`` seconds,
    does not know ``service``, or fails the call.
    """
    if timeout <= 0:
        raise HealthCheckError(f"timeout is {timeout}; expected a positive number of seconds")
    # A proxy configured for outbound traffic (http_proxy) must not capture a local check.
    options: list[tuple[str, str | int]] = [("grpc.enable_http_proxy", 0)]
    if tls is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(target, tls.credentials(), options=options)
    deadline = time.monotonic() + timeout
    last_error: str | None = None
    response: health_pb2.HealthCheckResponse | None = None
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        # A server that is still binding gets the whole timeout, not one try. Without
        # wait_for_ready, each failed connection attempt ends the call with gRPC's reason (a
        # refused connection, a failed handshake), which the one-line answer then carries.
        while response is None and (remaining := deadline - time.monotonic()) > 0:
            try:
                response = stub.Check(request, timeout=remaining)
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code == grpc.StatusCode.UNAVAILABLE:
                    last_error = details
                    time.sleep(max(0.0, min(_RETRY_S, deadline - time.monotonic())))
                    continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
                if code == grpc.StatusCode.NOT_FOUND:
                    raise HealthCheckError(f"{target}: unknown service {service!r}") from None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    raise HealthCheckError(f"{target}: has no gRPC health service") from None
                name = code.name if code is not None else "error"
                raise HealthCheckError(f"{target}: health check failed with {name}: {details}") from None
    if response is None:
        raise HealthCheckError(_unreachable(target, timeout, tls, last_error))
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
    tls = parser.add_argument_group(
        "TLS",
        "TLS is on when the server's CNNSERVE_TLS_CERT is set or --tls-ca is given; "
        "each option defaults to its CNNSERVE_HEALTH_TLS_* variable",
    )
    tls.add_argument("--plaintext", action="store_true", help="never use TLS")
    tls.add_argument(
        "--tls-ca",
        default=None,
        metavar="PEM",
        help="roots to verify the server with (env CNNSERVE_HEALTH_TLS_CA; "
        "default: the server's own CNNSERVE_TLS_CERT file)",
    )
    tls.add_argument(
        "--tls-server-name",
        default=None,
        metavar="NAME",
        help="name the server certificate must carry (env CNNSERVE_HEALTH_TLS_SERVER_NAME; "
        f"default {DEFAULT_TLS_SERVER_NAME!r})",
    )
    tls.add_argument(
        "--tls-client-cert",
        default=None,
        metavar="PEM",
        help="client certificate for mutual TLS (env CNNSERVE_HEALTH_TLS_CLIENT_CERT); "
        "needed when CNNSERVE_TLS_CLIENT_CA is set",
    )
    tls.add_argument(
        "--tls-client-key",
        default=None,
        metavar="PEM",
        help="private key of --tls-client-cert (env CNNSERVE_HEALTH_TLS_CLIENT_KEY)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; print the status (exit 0) or one line saying why not (exit 1)."""
    args = get_args_parser().parse_args(argv)
    try:
        target = args.server or default_target()
        tls = tls_options(
            plaintext=args.plaintext,
            ca=args.tls_ca,
            server_name=args.tls_server_name,
            client_cert=args.tls_client_cert,
            client_key=args.tls_client_key,
        )
        status = check(target, args.service, args.timeout, tls)
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
