"""Bearer-token authentication on the gRPC edge, as a grpc.aio server interceptor.

Installed only when a token is configured, so a server without one pays nothing
per call. Every RPC must carry the metadata ``authorization: Bearer <token>``,
except the health service: load balancers and orchestrators probe it without
credentials, and it reveals only whether the server (or a named model) is serving.
Reflection is *not* exempt: it lists the services, which is information an
unauthenticated caller does not need.

The check itself is :class:`server.auth.BearerToken`, shared with the HTTP edge.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health

from server.auth import BearerToken

logger = logging.getLogger(__name__)

#: Method prefixes reachable without a token.
EXEMPT_PREFIXES = (f"/{health.SERVICE_NAME}/",)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every non-exempt RPC without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._token = BearerToken(token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        problem = self._check(handler_call_details.invocation_metadata or ())
        if problem is None:
            return handler
        # DEBUG, not WARNING: a hostile client could otherwise flood the log.
        logger.debug("refused %s: %s", method, problem)
        return _refusal(handler, problem)

    def _check(self, metadata: Any) -> str | None:
        """None when the metadata carries the token, else what is wrong (never echoing the value)."""
        values = [value for key, value in metadata if key == "authorization"]
        return self._token.problem(values, "metadata")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler that aborts with UNAUTHENTICATED before reading, let alone parsing, the request.

    It takes the request as a stream whatever the method's shape (the client cannot tell),
    so grpc does not wait for the request message before calling it, and it has no request
    deserializer: an unauthenticated caller costs no protobuf parsing, and bytes that are
    not a valid message still get UNAUTHENTICATED.
    """

    async def abort(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_streaming(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    serializer = handler.response_serializer
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_streaming, None, serializer)
    return grpc.stream_unary_rpc_method_handler(abort, None, serializer)
