"""uvicorn in the server's own event loop, on a socket bound here.

Binding the socket ourselves gives the real port for ``--http-port 0`` and lets
``--workers N`` processes share the port (SO_REUSEPORT) as they share the gRPC one.
uvicorn's ``serve()`` is not used: it would install its own signal handlers over
``python -m server``'s; startup, the tick loop and shutdown are called instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from server.errors import StartupError
from server.settings import Settings

logger = logging.getLogger(__name__)

#: The most bytes a request line and its headers may take (httptools alone buffers any amount).
MAX_HEAD_BYTES = 64 * 1024


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on the request head: 431 past :data:`MAX_HEAD_BYTES`.

    httptools collects a header until its end, so one endless header line would take all
    memory. The bytes received while a request's head is incomplete are counted from the
    chunk after the one it began in (a chunk may end the previous request's body), so a
    head is refused within ``MAX_HEAD_BYTES`` plus two reads.
    """

    _in_head = False
    _head_bytes = -1

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = -1  # the chunk this head began in is not counted

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes = 0 if self._head_bytes < 0 else self._head_bytes + len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._in_head = False
            message = (
                f"the request line and headers exceed {MAX_HEAD_BYTES} bytes, the most this server reads"
            )
            body = ('{"error":"' + message + '"}').encode()
            logger.debug("refused a request head over %d bytes from %s", MAX_HEAD_BYTES, self.client)
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[431],
                        b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
            self.transport.close()


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says TCP. Without it uvicorn's two writes (headers, then body) meet Nagle's algorithm
    # and the client's delayed ACK: 40 ms per answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind the HTTP port {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """One uvicorn server; :meth:`start` binds and serves, :meth:`stop` closes and drains."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.settings = settings
        config = uvicorn.Config(
            app,
            http=BoundedHttpTools,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            # Connections over the cap are answered 503 by uvicorn itself.
            limit_concurrency=settings.max_concurrent_rpcs or None,
            timeout_graceful_shutdown=1,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            ssl_ca_certs=settings.tls_client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
        )
        config.load()
        # uvicorn's own INFO lines ("Shutting down", ...) repeat what server.app logs.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._socket: socket.socket | None = None
        self._ticks: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind the settings' host and HTTP port and serve; return the port."""
        s = self.settings
        self._socket = _bind(s.host, s.http_port, reuse_port=s.workers > 1)
        await self._server.startup(sockets=[self._socket])
        if self._server.should_exit:
            raise StartupError(f"the HTTP server on port {s.http_port} did not start")
        # The tick loop refreshes the Date header once a second.
        self._ticks = asyncio.create_task(self._server.main_loop())
        port: int = self._socket.getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (1 s at most), close the connections."""
        self._server.should_exit = True
        if self._ticks is not None:
            await self._ticks
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)

    def connections(self) -> list[asyncio.BaseTransport]:
        """The transports of the open connections (their sockets' options are tested)."""
        return [c.transport for c in self._server.server_state.connections]
