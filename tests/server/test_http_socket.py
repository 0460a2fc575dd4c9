"""The HTTP port's connections send at once (TCP_NODELAY), as gRPC's do.

uvicorn writes an answer's headers and body separately; with Nagle's algorithm on, the body
waits for the client's delayed ACK of the headers, about 40 ms per answer on Linux.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from server_testlib import TinyModel, start


async def test_accepted_http_connections_have_tcp_nodelay(
    repository: tuple[Path, dict[str, TinyModel]],
) -> None:
    repo, models = repository
    run = await start(repo, models, http_port=0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.server.http_port)
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        assert run.server.http is not None
        (connection,) = run.server.http.connections()
        sock = connection.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        writer.close()
    finally:
        await run.channel.close(None)
        await run.server.stop(0)
