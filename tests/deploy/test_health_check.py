"""``python -m clients.health``, the container health check, against real gRPC health services."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from deploytools import ROOT
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clients.health import HealthCheckError, check, default_target, main
from server.app import _server_credentials
from server.settings import Settings

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


# -- TLS: the check follows the server's own CNNSERVE_TLS_* settings --------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS health server: its certificate, key, and a CA with a client under it."""

    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, chain: bool) -> TlsFiles:
    """A server certificate for localhost / 127.0.0.1, self-signed or with its CA chain appended.

    Either way the server's certificate file alone verifies it, as the check's default roots.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(
        cn: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
        *,
        ca: bool,
        usage: list[x509.ObjectIdentifier],
        sans: list[x509.GeneralName],
    ) -> x509.Certificate:
        issuer_name, issuer_key = issuer if issuer is not None else (name(cn), key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem(c: x509.Certificate) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def new_key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    server_sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    ca_key, server_key, client_key = new_key(), new_key(), new_key()
    ca = cert("health test CA", ca_key, None, ca=True, usage=[], sans=[])
    if chain:
        server = cert(
            "localhost",
            server_key,
            (ca.subject, ca_key),
            ca=False,
            usage=[ExtendedKeyUsageOID.SERVER_AUTH],
            sans=server_sans,
        )
        server_pem = pem(server) + pem(ca)
    else:
        server = cert(
            "localhost", server_key, None, ca=False, usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=server_sans
        )
        server_pem = pem(server)
    client = cert(
        "health", client_key, (ca.subject, ca_key), ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH], sans=[]
    )
    files = TlsFiles(
        *(directory / f"{n}.pem" for n in ("server", "server-key", "ca", "client", "client-key"))
    )
    files.server_cert.write_bytes(server_pem)
    files.server_key.write_bytes(pem_key(server_key))
    files.client_ca.write_bytes(pem(ca))
    files.client_cert.write_bytes(pem(client))
    files.client_key.write_bytes(pem_key(client_key))
    return files


@contextlib.contextmanager
def tls_health_server(settings: Settings) -> Iterator[int]:
    """A gRPC health server on 127.0.0.1:0 with the TLS credentials cnnserve builds from ``settings``."""
    credentials = _server_credentials(settings)
    assert credentials is not None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    servicer.set("", SERVING)
    try:
        yield port
    finally:
        server.stop(None)


def run_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m clients.health ARGS`` as the container runs it: only the given environment."""
    return subprocess.run(
        [sys.executable, "-m", "clients.health", "--timeout", "2", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_reason(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unhealthy: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("chain", [False, True], ids=["self-signed", "cert-with-chain"])
def test_tls_server_is_checked_over_tls_from_its_own_settings(tmp_path: Path, chain: bool) -> None:
    files = make_tls_files(tmp_path, chain=chain)
    with tls_health_server(Settings(tls_cert=files.server_cert, tls_key=files.server_key)) as port:
        env = {
            "CNNSERVE_TLS_CERT": str(files.server_cert),
            "CNNSERVE_TLS_KEY": str(files.server_key),
            "CNNSERVE_PORT": str(port),
        }
        result = run_check(env)
        assert result.returncode == 0, result.stderr
        assert "SERVING" in result.stdout, result.stdout

        reason = one_line_reason(run_check(env, "--plaintext"))
        assert f"127.0.0.1:{port}" in reason and "plaintext" in reason, reason


def test_tls_roots_and_server_name_can_be_given(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path, chain=True)
    with tls_health_server(Settings(tls_cert=files.server_cert, tls_key=files.server_key)) as port:
        env = {"CNNSERVE_TLS_CERT": str(files.server_cert), "CNNSERVE_PORT": str(port)}
        # The CA alone verifies the chain; 127.0.0.1 is in the certificate too.
        ok = run_check(env, "--tls-ca", str(files.client_ca), "--tls-server-name", "127.0.0.1")
        assert ok.returncode == 0, ok.stderr
        via_env = {
            **env,
            "CNNSERVE_HEALTH_TLS_CA": str(files.client_ca),
            "CNNSERVE_HEALTH_TLS_SERVER_NAME": "localhost",
        }
        assert run_check(via_env).returncode == 0
        # A name the certificate does not carry fails the check, and the reason says which name.
        reason = one_line_reason(run_check(env, "--tls-server-name", "cnnserve.example"))
        assert "'cnnserve.example'" in reason, reason
        # Roots that did not sign the server certificate fail it too.
        reason = one_line_reason(run_check(env, "--tls-ca", str(files.client_cert)))
        assert "TLS" in reason, reason
        reason = one_line_reason(run_check(env, "--tls-ca", str(tmp_path / "missing.pem")))
        assert "missing.pem" in reason, reason


def test_mutual_tls_needs_a_client_certificate(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path, chain=False)
    settings = Settings(tls_cert=files.server_cert, tls_key=files.server_key, tls_client_ca=files.client_ca)
    with tls_health_server(settings) as port:
        env = {
            "CNNSERVE_TLS_CERT": str(files.server_cert),
            "CNNSERVE_TLS_KEY": str(files.server_key),
            "CNNSERVE_TLS_CLIENT_CA": str(files.client_ca),
            "CNNSERVE_PORT": str(port),
        }
        reason = one_line_reason(run_check(env))
        assert "client certificate" in reason and "--tls-client-cert" in reason, reason
        reason = one_line_reason(run_check(env, "--tls-client-cert", str(files.client_cert)))
        assert "--tls-client-key" in reason, reason

        ok = run_check(
            env, "--tls-client-cert", str(files.client_cert), "--tls-client-key", str(files.client_key)
        )
        assert ok.returncode == 0, ok.stderr
        assert "SERVING" in ok.stdout
        via_env = {
            **env,
            "CNNSERVE_HEALTH_TLS_CLIENT_CERT": str(files.client_cert),
            "CNNSERVE_HEALTH_TLS_CLIENT_KEY": str(files.client_key),
        }
        assert run_check(via_env).returncode == 0


def test_plaintext_stays_the_default_without_tls_settings(
    health_server: tuple[health.HealthServicer, str],
) -> None:
    _, target = health_server
    assert run_check({"CNNSERVE_PORT": target.rsplit(":", 1)[1]}).returncode == 0
    # An empty CNNSERVE_TLS_CERT names no certificate: still plaintext.
    assert run_check({"CNNSERVE_PORT": target.rsplit(":", 1)[1], "CNNSERVE_TLS_CERT": ""}).returncode == 0
