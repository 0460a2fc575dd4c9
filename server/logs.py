"""Logging set-up: plain text or one JSON object per line, both with the request id."""

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


def bind_request_id(given: str = "") -> str:
    """Set the current task's request id: the client's ``id`` when it sent one, else a fresh one."""
    rid = given or f"r{next(_counter)}"
    request_id.set(rid)
    return rid


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
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
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
