"""Bearer-token authentication as a grpc.aio server interceptor.

Installed only when a token is configured, so a server without one pays nothing
per call. Every RPC must carry the metadata ``authorization: Bearer <token>``,
except the health service: load balancers and orchestrators probe it without
credentials, and it reveals only whether the server (or a named model) is serving.
Reflection is *not* exempt: it lists the services, which is information an
unauthenticated caller does not need.

The token is compared with :func:`hmac.compare_digest` on the UTF-8 bytes, so the
time a rejection takes does not tell how much of a guess was right.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health

logger = logging.getLogger(__name__)

#: Method prefixes reachable without a token.
EXEMPT_PREFIXES = (f"/{health.SERVICE_NAME}/",)
_SCHEME = "bearer "


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every non-exempt RPC without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token is empty; expected a non-empty string")
        self._token = token.encode()

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
        if not values:
            return "missing 'authorization' metadata; expected 'authorization: Bearer <token>'"
        if len(values) > 1:
            return f"{len(values)} 'authorization' metadata entries; expected exactly one"
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if value[: len(_SCHEME)].lower() != _SCHEME:
            return "'authorization' metadata is not of the form 'Bearer <token>'"
        offered = value[len(_SCHEME) :].strip().encode("utf-8", errors="replace")
        if not hmac.compare_digest(offered, self._token):
            return "invalid bearer token"
        return None


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
