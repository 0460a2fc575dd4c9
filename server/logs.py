"""Logging set-up: plain text or one JSON object per line, both with the request id.

The request id is the client's ``ModelInferRequest.id`` when it sent one, so it is untrusted text:
both formats cap its length at :data:`MAX_REQUEST_ID_CHARS`, and the text format escapes every
character that is not printable (newlines, carriage returns, ANSI escapes, bidi controls) and
backslashes, so that one record stays one line and a client cannot forge records. JSON needs no
escaping of its own: :func:`json.dumps` writes control characters as ``\\uXXXX``.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import sys
import time

#: The id of the request being served in this task ("-" outside requests).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_counter = itertools.count(1)

#: How much of a client's request id the logs keep; the rest is replaced by a count.
MAX_REQUEST_ID_CHARS = 128

#: Escapes for the common control characters; others become ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``.
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def bind_request_id(given: str = "") -> str:
    """Set the current task's request id: the client's ``id`` when it sent one, else a fresh one."""
    rid = given or f"r{next(_counter)}"
    request_id.set(rid)
    return rid


def capped(rid: str) -> str:
    """``rid`` cut to :data:`MAX_REQUEST_ID_CHARS`, saying how many characters were dropped."""
    if len(rid) <= MAX_REQUEST_ID_CHARS:
        return rid
    return f"{rid[:MAX_REQUEST_ID_CHARS]}...(+{len(rid) - MAX_REQUEST_ID_CHARS} chars)"


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(rid: str) -> str:
    """``rid`` capped and escaped for one line of a text log: no newline can start a forged record."""
    return "".join(_escape_char(ch) for ch in capped(rid))


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message``, the request id escaped by :func:`printable`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(printable_request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.printable_request_id = printable(getattr(record, "request_id", "-"))
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            # json.dumps escapes control characters; only the length needs a cap.
            "request_id": capped(getattr(record, "request_id", "-")),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger for ``python -m server``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
