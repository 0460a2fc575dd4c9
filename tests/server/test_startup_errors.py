"""Bad settings stop ``python -m server`` with one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from server_testlib import publish_tiny

REPO_ROOT = Path(__file__).resolve().parents[2]

#: (flag, bad value, what the error line must say after "FLAG VALUE: ").
BAD_VALUES = [
    ("--models", "../x", "model name '../x' is not valid; expected"),
    ("--models", "tiny:0", "has version '0'; expected a positive integer"),
    ("--default-model", "../x", "model name '../x' is not valid; expected"),
    ("--log-level", "verbose", "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("--log-format", "xml", "expected text or json"),
    ("--workers", "0", "expected an integer >= 1"),
    ("--port", "99999", "expected an integer from 0 to 65535"),
    ("--port", "-5", "expected an integer from 0 to 65535"),
    ("--port", "eighty", "expected an integer from 0 to 65535"),
    ("--metrics-port", "70000", "expected an integer <= 65535"),
    ("--max-batch-size", "-1", "expected an integer >= 1"),
    ("--max-queue-delay-us", "-1", "expected an integer >= 0"),
    ("--max-queue-size", "0", "expected an integer >= 1"),
    ("--instances", "0", "expected an integer >= 1"),
    ("--intra-op-threads", "-1", "expected an integer >= 0"),
    ("--grace-period", "-1", "expected a number of seconds >= 0"),
    ("--grace-period", "nan", "expected a number of seconds >= 0"),
    ("--max-message-bytes", "1000", "expected an integer >= 1048576"),
    ("--max-image-pixels", "0", "expected an integer >= 1"),
    ("--greedy-batching", "maybe", "expected a boolean"),
    ("--allow-model-control", "maybe", "expected a boolean"),
    ("--max-concurrent-streams", "0", "expected an integer >= 1"),
    ("--max-concurrent-rpcs", "-1", "expected an integer >= 0"),
    ("--max-stream-inflight", "0", "expected an integer >= 1"),
    ("--auth-token-file", "/nonexistent/token", "expected a readable file holding the token"),
]


def _run_server(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_usage_and_one_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert lines == ["usage: python -m server [options]", f"python -m server: error: {expected}"], lines


@pytest.mark.parametrize(("flag", "value", "expected"), BAD_VALUES)
def test_bad_flag_is_one_line_and_exit_2(tmp_path: Path, flag: str, value: str, expected: str) -> None:
    result = _run_server(["--repository", str(tmp_path), flag, value])
    error = result.stderr.splitlines()[-1] if result.stderr else ""
    assert error.startswith(f"python -m server: error: {flag} {value}: "), result.stderr
    _assert_usage_and_one_error(result, error.removeprefix("python -m server: error: "))
    assert expected in error


@pytest.mark.parametrize(("flag", "value", "expected"), BAD_VALUES)
def test_bad_variable_is_one_line_naming_it(tmp_path: Path, flag: str, value: str, expected: str) -> None:
    key = "CNNSERVE_" + flag.removeprefix("--").replace("-", "_").upper()
    result = _run_server(["--repository", str(tmp_path)], {key: value})
    error = result.stderr.splitlines()[-1] if result.stderr else ""
    assert error.startswith(f"python -m server: error: {key}={value}: "), result.stderr
    _assert_usage_and_one_error(result, error.removeprefix("python -m server: error: "))
    assert expected in error


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--device", "tpu"], "cannot start: device 'tpu' is not valid; expected auto, cpu, cuda or cuda:N"),
        (["--default-model", "nosuch"], "cannot start: --default-model 'nosuch' is not loaded"),
    ],
)
def test_startup_error_is_one_line_and_exit_2_with_and_without_workers(
    tmp_path: Path, workers: str, args: list[str], expected: str
) -> None:
    """Errors found while starting (StartupError) read the same from one process and from workers."""
    publish_tiny(tmp_path, "tiny")
    common = [
        "--repository",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "-1",
    ]
    result = _run_server([*common, "--workers", workers, "--log-level", "WARNING", *args])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
