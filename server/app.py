"""The server factory: models, the gRPC services, the HTTP edge, health, reflection and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from protocol import grpc_service_pb2, image_classification_pb2
from server.dataplane import DataPlane
from server.errors import StartupError
from server.grpc.auth import TokenAuthInterceptor
from server.grpc.servicers import add_services
from server.metrics import Metrics
from server.models import ModelManager
from server.rest.app import create_app
from server.rest.serving import HttpServer
from server.runtime import resolve_device
from server.settings import Settings

logger = logging.getLogger(__name__)

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
IMAGE_SERVICE = image_classification_pb2.DESCRIPTOR.services_by_name["ImageClassification"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class InferenceServer:
    """A running server; :meth:`stop` shuts it down gracefully."""

    def __init__(
        self,
        settings: Settings,
        grpc_server: grpc.aio.Server,
        plane: DataPlane,
        manager: ModelManager,
        health_servicer: HealthServicer,
        metrics: Metrics,
        port: int,
        metrics_port: int | None,
        http: HttpServer | None = None,
        http_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.grpc_server = grpc_server
        self.plane = plane
        self.manager = manager
        self.health = health_servicer
        self.metrics = metrics
        self.port = port
        self.metrics_port = metrics_port
        self.http = http
        #: The HTTP/REST port, None when HTTP is disabled (a negative --http-port).
        self.http_port = http_port
        self._stop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """No-op: :func:`create_server` returns a started server (kept for grpc.aio symmetry)."""

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown; safe to call more than once.

        Health and ServerReady turn NOT_SERVING at once; requests are still served for the
        settings' shutdown delay (0 by default), so that load balancers stop sending first;
        then new requests are refused with UNAVAILABLE, and queued and running ones get up
        to ``grace`` seconds (default: the settings' grace period) to finish; then sessions
        and ports are released.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(
                self._stop(self.settings.grace_period if grace is None else grace)
            )
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        started = time.monotonic()
        self.plane.leaving = True
        await self.health.enter_graceful_shutdown()
        delay = self.settings.shutdown_delay
        if delay > 0:
            logger.info("shutting down: serving %.1fs more while health says NOT_SERVING", delay)
            await asyncio.sleep(delay)
        logger.info("shutting down: finishing admitted requests (grace %.1fs)", grace)
        draining = time.monotonic()
        await self.plane.shutdown(grace)
        # Admitted inference is done; whatever is left (open streams, metadata calls) gets a short grace.
        left = max(0.0, min(1.0, grace - (time.monotonic() - draining)))
        if self.http is not None:
            await asyncio.gather(self.grpc_server.stop(left), self.http.stop())
        else:
            await self.grpc_server.stop(left)
        for model in self.manager.loaded():
            s = model.stats
            # What this process computed, for operators and for tests that check it against clients.
            logger.info(
                "final statistics: model %s version %d: %d requests answered, %d failed, "
                "%d samples computed in %d batches",
                model.name,
                model.version,
                s.success.count,
                s.fail.count,
                s.inference_count,
                s.execution_count,
            )
        await self.manager.close()
        self.metrics.close()
        logger.info("stopped after %.2fs", time.monotonic() - started)


#: The health services that follow the server's readiness (ServerReady); each model's own
#: service (its name) follows that model's state.
SERVER_HEALTH_SERVICES = ("", INFERENCE_SERVICE, IMAGE_SERVICE)


async def _set_server_health(health_servicer: HealthServicer, ready: bool) -> None:
    """Health says what ServerReady says: SERVING while at least one model is ready."""
    for service in SERVER_HEALTH_SERVICES:
        await health_servicer.set(service, SERVING if ready else NOT_SERVING)


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise StartupError(f"the {what} {str(path)!r} is not PEM (no '-----BEGIN' line)")
    return data


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files, or None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    cert = _read_pem(settings.tls_cert, "TLS certificate (--tls-cert)")
    key = _read_pem(settings.tls_key, "TLS private key (--tls-key)")
    client_ca = None
    if settings.tls_client_ca is not None:
        client_ca = _read_pem(settings.tls_client_ca, "client CA (--tls-client-ca)")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def create_server(settings: Settings) -> tuple[InferenceServer, int]:
    """Load the models, bind the port and start serving; return the server and its gRPC port.

    Raises StartupError for settings the server cannot honour (e.g. ``--device cuda``
    without a GPU, or a port that cannot be bound). A model that fails to load does not
    stop the server: it is reported UNAVAILABLE with its reason.
    """
    device = resolve_device(settings.device)
    logger.info("device: %s", device)
    metrics = Metrics()
    health_servicer = HealthServicer()

    started = False

    async def on_model_state(name: str, serving: bool) -> None:
        await health_servicer.set(name, SERVING if serving else NOT_SERVING)
        if started:
            await _set_server_health(health_servicer, plane.ready)

    manager = ModelManager(settings, device, metrics, on_model_state)
    plane = DataPlane(settings, manager)
    credentials = _server_credentials(settings)
    # No interceptor at all without a token: nothing on the hot path.
    interceptors = [TokenAuthInterceptor(settings.auth_token)] if settings.auth_token else []
    grpc_server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            # Two servers on one port would silently share the traffic, unless that is the point:
            # --workers N processes share it on purpose (server/workers.py).
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    add_services(grpc_server, plane)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (INFERENCE_SERVICE, IMAGE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )
    try:
        address = _address(settings.host, settings.port)
        if credentials is None:
            port = grpc_server.add_insecure_port(address)
        else:
            port = grpc_server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise StartupError(f"cannot bind {_address(settings.host, settings.port)}: {exc}") from None
    if port == 0:
        raise StartupError(f"cannot bind {_address(settings.host, settings.port)}")

    await manager.load_initial()
    if settings.default_model and settings.default_model not in {m.name for m in manager.loaded()}:
        entry = {e.name: e for e in await manager.entries()}.get(settings.default_model)
        why = (
            f"it is {entry.state}: {entry.reason}" if entry is not None else "no such model in the repository"
        )
        loaded = [m.name for m in manager.loaded()]
        await manager.close()
        raise StartupError(
            f"--default-model {settings.default_model!r} is not loaded ({why}); loaded models: {loaded}"
        )
    metrics_port = None
    if settings.metrics_port >= 0:
        try:
            metrics_port = metrics.serve(settings.host, settings.metrics_port)
        except OSError as exc:
            await manager.close()
            raise StartupError(f"cannot bind the metrics port {settings.metrics_port}: {exc}") from None
    http: HttpServer | None = None
    http_port: int | None = None
    if settings.http_port >= 0:
        http = HttpServer(create_app(plane, settings), settings)
        try:
            http_port = await http.start()
        except StartupError:
            await manager.close()
            metrics.close()
            raise
    await grpc_server.start()
    started = True
    await _set_server_health(health_servicer, plane.ready)
    if not plane.ready:
        logger.error("no model is ready: health answers NOT_SERVING until one is loaded")
    logger.info(
        "serving %s on %s (metrics on %s; HTTP on %s; %s; %s; model control %s)",
        [m.name for m in manager.loaded()],
        _address(settings.host, port),
        metrics_port if metrics_port is not None else "-",
        http_port if http_port is not None else "-",
        ("mutual TLS" if settings.tls_client_ca else "TLS") if settings.tls else "plaintext",
        "bearer token required" if settings.auth_token else "no authentication",
        "enabled" if settings.allow_model_control else "disabled",
    )
    server = InferenceServer(
        settings, grpc_server, plane, manager, health_servicer, metrics, port, metrics_port, http, http_port
    )
    return server, port
