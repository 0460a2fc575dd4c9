"""The exceptions the clients raise: one type, and one subclass for calls refused before sending.

::

    InferenceServerError        any failed call: the gRPC status code and a message
    └── InvalidArgumentError    refused by the client (INVALID_ARGUMENT, ``local``): inputs that do
                                not match the model's metadata, unreadable image files or images
                                that cannot be encoded, arguments of the wrong type, unreadable
                                TLS files; also a ValueError and a TypeError

A failed RPC becomes an :class:`InferenceServerError` raised ``from None``, so the
traceback shows the call the user made and the server's message, not grpc's
internals. Inputs the client checks before sending fail with
:class:`InvalidArgumentError` and the status code the server would have answered with
(``INVALID_ARGUMENT``), so callers handle one exception whichever side noticed.
:class:`InvalidArgumentError` is also a :class:`ValueError` and a :class:`TypeError`,
which is what these checks raised before they had a type of their own.
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


class InvalidArgumentError(InferenceServerError, ValueError, TypeError):
    """Arguments the client refuses to send: INVALID_ARGUMENT, ``local`` True."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message, local=True)


def raise_error(error: grpc.RpcError) -> NoReturn:
    """Re-raise a grpc error as :class:`InferenceServerError`, without grpc's traceback."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    raise InferenceServerError(code or grpc.StatusCode.UNKNOWN, details or "") from None


def described(value: object) -> str:
    """``value`` for a message: its repr, cut short, and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def invalid_argument(message: str) -> InvalidArgumentError:
    """The error for inputs the client refuses to send."""
    return InvalidArgumentError(message)


def unreadable_answer(message: str) -> InferenceServerError:
    """The error for an answer the client cannot read (UNKNOWN: the server broke the protocol)."""
    return InferenceServerError(grpc.StatusCode.UNKNOWN, message)
