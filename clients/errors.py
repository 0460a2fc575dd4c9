"""The one exception type the clients raise.

::

    InferenceServerError        any failed call: the gRPC status code and the server's message

A failed RPC becomes an :class:`InferenceServerError` raised ``from None``, so the
traceback shows the call the user made and the server's message, not grpc's
internals. Inputs the client checks before sending (against the model's metadata)
fail with the same type and the status code the server would have answered with
(``INVALID_ARGUMENT``), so callers handle one exception whichever side noticed.
"""

from __future__ import annotations

from typing import NoReturn

import grpc


class InferenceServerError(Exception):
    """A call that failed, with its gRPC status code and the server's message.

    ``local`` is True when the client refused to send the request because it could
    not succeed (its inputs do not match the model's metadata).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, local: bool = False) -> None:
        super().__init__(f"[{code.name}] {message}")
        self.code = code
        self.message = message
        self.local = local

    @property
    def status(self) -> str:
        """The status code's name, e.g. ``"NOT_FOUND"``."""
        return str(self.code.name)


def raise_error(error: grpc.RpcError) -> NoReturn:
    """Re-raise a grpc error as :class:`InferenceServerError`, without grpc's traceback."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    raise InferenceServerError(code or grpc.StatusCode.UNKNOWN, details or "") from None


def invalid_argument(message: str) -> InferenceServerError:
    """The error for inputs the client refuses to send."""
    return InferenceServerError(grpc.StatusCode.INVALID_ARGUMENT, message, local=True)
