"""Errors the server answers with, each carrying its status in both protocols.

::

    ServerError                      INTERNAL             500  (base; also any unexpected exception)
    ├── ModelNotFound                NOT_FOUND            404  unknown model or version
    ├── InvalidInput                 INVALID_ARGUMENT     400  wrong name, datatype, shape, byte count, image
    ├── QueueFull                    RESOURCE_EXHAUSTED   429  the model's bounded queue is full
    ├── DeadlineExceeded             DEADLINE_EXCEEDED    504  the request's deadline passed while queued
    ├── Unavailable                  UNAVAILABLE          503  model failed to load / unloaded / shutting down
    ├── LoadFailed                   FAILED_PRECONDITION  400  a repository load could not load the model
    ├── PermissionDenied             PERMISSION_DENIED    403  model control without --allow-model-control
    ├── Unauthenticated              UNAUTHENTICATED      401  no or a wrong bearer token
    └── StartupError                 (never sent)              bad settings: the process refuses to start

:data:`STATUSES` is the one table of status names and their HTTP codes; each edge maps a
:class:`Status` to its own code (``grpc.StatusCode[status.name]``, ``status.http``).
"""

from __future__ import annotations

import enum
import logging

logger = logging.getLogger(__name__)

#: What a client sees for an unexpected exception: nothing about the server's insides.
INTERNAL_MESSAGE = "internal server error; the server log has the details"


class Status(enum.Enum):
    """A protocol-neutral status: its name is the gRPC code's, its value the HTTP status."""

    OK = 200
    INVALID_ARGUMENT = 400
    FAILED_PRECONDITION = 4000  # HTTP 400 as well (an enum needs distinct values)
    UNAUTHENTICATED = 401
    PERMISSION_DENIED = 403
    NOT_FOUND = 404
    RESOURCE_EXHAUSTED = 429
    INTERNAL = 500
    UNAVAILABLE = 503
    DEADLINE_EXCEEDED = 504

    @property
    def http(self) -> int:
        """The HTTP status code this status is answered with."""
        return 400 if self is Status.FAILED_PRECONDITION else self.value


class ServerError(Exception):
    """Base class: an error with a status and a message meant for the client."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        """Short metric label for the failure, e.g. ``invalid_argument``."""
        return self.status.name.lower()


class ModelNotFound(ServerError):
    status = Status.NOT_FOUND


class InvalidInput(ServerError):
    status = Status.INVALID_ARGUMENT


class QueueFull(ServerError):
    status = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServerError):
    status = Status.DEADLINE_EXCEEDED


class Unavailable(ServerError):
    status = Status.UNAVAILABLE


class LoadFailed(ServerError):
    status = Status.FAILED_PRECONDITION


class PermissionDenied(ServerError):
    status = Status.PERMISSION_DENIED


class Unauthenticated(ServerError):
    status = Status.UNAUTHENTICATED


class StartupError(ServerError):
    """Settings the server cannot start with (e.g. ``--device cuda`` without a GPU)."""


def status_of(exc: BaseException) -> tuple[Status, str]:
    """The status and client-safe message for any exception.

    Unexpected exceptions are logged with their traceback here and reduced to a
    generic INTERNAL message, so no traceback ever reaches a client.
    """
    if isinstance(exc, ServerError):
        return exc.status, exc.message
    logger.error("unexpected error while serving a request", exc_info=exc)
    return Status.INTERNAL, INTERNAL_MESSAGE
