"""The bearer-token check both edges use (gRPC metadata, HTTP headers).

The token is compared with :func:`hmac.compare_digest` on the UTF-8 bytes, so the
time a rejection takes does not tell how much of a guess was right. Problems are
worded without ever echoing the offered value.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

_SCHEME = "bearer "


class BearerToken:
    """The configured token, and the check of an ``authorization`` value against it."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token is empty; expected a non-empty string")
        self._token = token.encode()

    def problem(self, values: Sequence[str | bytes], where: str) -> str | None:
        """None when ``values`` (every ``authorization`` entry) is exactly the token, else why not.

        ``where`` names what carried them: ``metadata`` (gRPC) or ``header`` (HTTP).
        """
        if not values:
            return f"missing 'authorization' {where}; expected 'authorization: Bearer <token>'"
        if len(values) > 1:
            return f"{len(values)} 'authorization' {where} entries; expected exactly one"
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if value[: len(_SCHEME)].lower() != _SCHEME:
            return f"'authorization' {where} is not of the form 'Bearer <token>'"
        offered = value[len(_SCHEME) :].strip().encode("utf-8", errors="replace")
        if not hmac.compare_digest(offered, self._token):
            return "invalid bearer token"
        return None
