"""Logs keep one record on one line, whatever request id a client sends."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import numpy as np
import pytest
from server_testlib import Running, infer_request

from server.logs import MAX_REQUEST_ID_CHARS, bind_request_id, setup_logging

FORGED = "abc\n2026-01-01 00:00:00,000 ERROR server.app [r1] forged"
TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ \[")


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def _infer_with_id(running: Running, request_id: str) -> None:
    batch = np.zeros((1, 1, 8, 8), dtype=np.float32)
    response = await running.infer.ModelInfer(infer_request("tiny", batch, request_id=request_id))
    # The response still carries the client's id verbatim: only the logs escape it.
    assert response.id == request_id


@pytest.mark.usefixtures("restore_root_logger")
async def test_text_log_escapes_a_forged_line(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", "text")
    await _infer_with_id(running, FORGED)
    lines = capsys.readouterr().err.splitlines()
    done = [line for line in lines if "infer tiny v1 batch 1 done" in line]
    assert len(done) == 1, lines
    assert "[abc\\n2026-01-01 00:00:00,000 ERROR server.app [r1] forged]" in done[0]
    assert [line for line in lines if "forged" in line] == done
    assert all(TEXT_RECORD.match(line) for line in lines if "2026-01-01" in line), lines


@pytest.mark.usefixtures("restore_root_logger")
async def test_text_log_escapes_control_characters_and_caps_the_length(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("INFO", "text")
    bind_request_id("a\rb\x1b[2K\u2028c\\n" + "x" * 500)
    logging.getLogger("server.test").info("hello")
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        "[a\\rb\\x1b[2K\\u2028c\\\\n" + "x" * (MAX_REQUEST_ID_CHARS - 11) + "...(+383 chars)] hello" in line
    )


@pytest.mark.usefixtures("restore_root_logger")
async def test_json_log_keeps_the_id_in_one_object(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("DEBUG", "json")
    await _infer_with_id(running, FORGED)
    await _infer_with_id(running, "y" * 100_000)
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one whole JSON object
    done = [r for r in records if r["message"] == "infer tiny v1 batch 1 done"]
    long_id = "y" * MAX_REQUEST_ID_CHARS + f"...(+{100_000 - MAX_REQUEST_ID_CHARS} chars)"
    assert [r["request_id"] for r in done] == [FORGED, long_id]
    assert [line for line in lines if "forged" in line] == [json.dumps(done[0])]
