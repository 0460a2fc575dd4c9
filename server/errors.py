"""Errors the server answers with, each carrying its gRPC status code.

::

    ServerError                      INTERNAL (base; also any unexpected exception)
    ├── ModelNotFound                NOT_FOUND            unknown model or version
    ├── InvalidInput                 INVALID_ARGUMENT     wrong name, datatype, shape, byte count, image
    ├── QueueFull                    RESOURCE_EXHAUSTED   the model's bounded queue is full
    ├── DeadlineExceeded             DEADLINE_EXCEEDED    the request's deadline passed while queued
    ├── Unavailable                  UNAVAILABLE          model failed to load / unloaded / shutting down
    ├── LoadFailed                   FAILED_PRECONDITION  RepositoryModelLoad could not load the model
    ├── PermissionDenied             PERMISSION_DENIED    model control without --allow-model-control
    └── StartupError                 (never sent)         bad settings: the process refuses to start

:func:`abort_with` is the one place that turns them into ``context.abort``.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
import grpc.aio

logger = logging.getLogger(__name__)

#: What a client sees for an unexpected exception: nothing about the server's insides.
INTERNAL_MESSAGE = "internal server error; the server log has the details"


class ServerError(Exception):
    """Base class: an error with a gRPC status code and a message meant for the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        """Short metric label for the failure, e.g. ``invalid_argument``."""
        return str(self.code.name).lower()


class ModelNotFound(ServerError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidInput(ServerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFull(ServerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServerError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServerError):
    code = grpc.StatusCode.UNAVAILABLE


class LoadFailed(ServerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServerError):
    code = grpc.StatusCode.PERMISSION_DENIED


class StartupError(ServerError):
    """Settings the server cannot start with (e.g. ``--device cuda`` without a GPU)."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for any exception.

    Unexpected exceptions are logged with their traceback here and reduced to a
    generic INTERNAL message, so no traceback ever reaches a client.
    """
    if isinstance(exc, ServerError):
        return exc.code, exc.message
    logger.error("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort the RPC with the status that ``exc`` maps to."""
    code, message = status_of(exc)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
