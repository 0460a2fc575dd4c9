"""Every failure a caller can cause is an InferenceServerError: bad paths, types, arrays, TLS files.

Each case runs on the synchronous and the asyncio client against the real test server,
and the CLI gets the same treatment for the files it is given.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from clienttest_support import SIDE, RunningServer
from PIL import Image

from clients import AsyncInferenceClient, InferenceClient, InferenceServerError
from clients.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parents[2]
FP32 = np.zeros((1, 1, SIDE, SIDE), np.float32)
PIXELS = np.zeros((4, 4), np.uint8)


def _truncated_png(directory: Path) -> Image.Image:
    path = directory / "truncated.png"
    Image.new("L", (50, 50), 3).save(path)
    path.write_bytes(path.read_bytes()[:60])
    return Image.open(path)  # PIL reads the header now, the pixels only when encoding


#: (id, the call, words the message must hold). ``tmp`` is a directory holding ``sub/``.
CASES: list[tuple[str, Callable[[Any, Path], Any], str]] = [
    ("missing path", lambda c, tmp: c.classify(tmp / "nope.png", model="tiny"), "nope.png') cannot be read"),
    (
        "directory",
        lambda c, tmp: c.classify(tmp / "sub", model="tiny"),
        "sub') cannot be read: Is a directory",
    ),
    ("str path", lambda c, tmp: c.classify([FP32[0], str(tmp / "x.jpg")], model="tiny"), "image 1 ("),
    ("CMYK image", lambda c, tmp: c.classify(Image.new("CMYK", (4, 4)), model="tiny"), "mode CMYK"),
    ("truncated", lambda c, tmp: c.classify(_truncated_png(tmp), model="tiny"), "image file is truncated"),
    ("int image", lambda c, tmp: c.classify(3, model="tiny"), "image 0 is 3 (int)"),
    ("list image", lambda c, tmp: c.classify([[1, 2]], model="tiny"), "image 0 is [1, 2] (list)"),
    ("int32 pixels", lambda c, tmp: c.classify(PIXELS.astype(np.int32), model="tiny"), "dtype int32"),
    ("object pixels", lambda c, tmp: c.classify(np.array([None]), model="tiny"), "dtype object"),
    (
        "ragged tensors",
        lambda c, tmp: c.classify([FP32[0], np.zeros((1, 4, 4), np.float32)], model="tiny"),
        "image 0: [1,8,8], image 1: [1,4,4]",
    ),
    ("tensor, no model", lambda c, tmp: c.classify(FP32[0]), "needs model=NAME"),
    ("top_k str", lambda c, tmp: c.classify(PIXELS, model="tiny", top_k="3"), "top_k is '3' (str)"),
    ("top_k float", lambda c, tmp: c.classify(PIXELS, model="tiny", top_k=2.5), "top_k is 2.5 (float)"),
    ("top_k 0", lambda c, tmp: c.classify(PIXELS, model="tiny", top_k=0), "top_k is 0; expected >= 1"),
    ("model int", lambda c, tmp: c.classify(PIXELS, model=3), "model is 3 (int)"),
    ("version int", lambda c, tmp: c.infer("tiny", FP32, version=1), "version is 1 (int)"),
    ("inputs list", lambda c, tmp: c.infer("tiny", [[1.0]]), "inputs is [[1.0]] (list)"),
    ("inputs None", lambda c, tmp: c.infer("tiny", None), "inputs is None"),
    (
        "ragged value",
        lambda c, tmp: c.infer("tiny", {"input": [[1.0], [1.0, 2.0]]}),
        "input 'input' is [[1.0]",
    ),
    ("object array", lambda c, tmp: c.infer("tiny", FP32.astype(object)), "datatype 'object'"),
    ("3-d array", lambda c, tmp: c.infer("tiny", FP32[0]), "has shape [1,8,8]"),
    ("output int", lambda c, tmp: c.infer("tiny", FP32, outputs=[0]), "output name 0 (int)"),
    ("timeout str", lambda c, tmp: c.infer("tiny", FP32, timeout="5"), "timeout is '5' (str)"),
    ("metadata name", lambda c, tmp: c.model_metadata(None), "model is None"),
]


def _assert_refused(error: BaseException, words: str) -> None:
    assert isinstance(error, InvalidArgumentError) and isinstance(error, InferenceServerError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.local
    assert words in error.message
    # Nothing chained: the traceback ends at the caller's line, as for server errors.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    return tmp_path


@pytest.mark.parametrize(("call", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sync_client_refuses_with_a_named_value(
    server: RunningServer, scratch: Path, call: Callable[[Any, Path], Any], words: str
) -> None:
    with InferenceClient(server.address, timeout=10) as client, pytest.raises(Exception) as info:
        call(client, scratch)
    _assert_refused(info.value, words)


@pytest.mark.parametrize(("call", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_async_client_refuses_with_a_named_value(
    server: RunningServer, scratch: Path, call: Callable[[Any, Path], Any], words: str
) -> None:
    async with AsyncInferenceClient(server.address, timeout=10) as client:
        with pytest.raises(Exception) as info:
            result = call(client, scratch)
            assert inspect.isawaitable(result)
            await result
    _assert_refused(info.value, words)


def test_refusals_are_still_value_and_type_errors(server: RunningServer) -> None:
    """Code written against the old ValueError / TypeError keeps working."""
    with InferenceClient(server.address, timeout=10) as client:
        with pytest.raises(ValueError, match="top_k is 0"):
            client.classify(PIXELS, model="tiny", top_k=0)
        with pytest.raises(TypeError, match="image 0 is 3"):
            client.classify(3, model="tiny")


TLS_CASES = [
    (
        {"root_certificates": "/nonexistent/ca.pem"},
        "root_certificates file '/nonexistent/ca.pem' cannot be read",
    ),
    ({"root_certificates": 123}, "root_certificates is 123 (int)"),
    (
        {"private_key": "/nonexistent/key.pem", "certificate_chain": b"chain"},
        "private_key file '/nonexistent/key.pem' cannot be read: No such file or directory",
    ),
    ({"private_key": b"key"}, "private_key and certificate_chain must be given together"),
    ({"timeout": -1}, "timeout is -1 (int); expected seconds > 0"),
]


@pytest.mark.parametrize(("options", "words"), TLS_CASES)
def test_bad_client_options_are_refused(server: RunningServer, options: dict[str, Any], words: str) -> None:
    with pytest.raises(Exception) as info:
        InferenceClient(server.address, **options)
    _assert_refused(info.value, words)
    with pytest.raises(Exception) as info:
        AsyncInferenceClient(server.address, **options)
    _assert_refused(info.value, words)


def test_connection_refused_is_an_inference_server_error() -> None:
    async def aio() -> None:
        async with AsyncInferenceClient("127.0.0.1:1", timeout=2) as client:
            await client.infer("tiny", FP32)

    with pytest.raises(InferenceServerError) as info:
        asyncio.run(aio())
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert not info.value.local


def _classify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients.classify", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_missing_tls_file_is_a_bad_argument(server: RunningServer, image_files: dict[str, Path]) -> None:
    done = _classify_cli(
        "--server", server.address, "--root-certificates", "/nonexistent/ca.pem", str(image_files["white"])
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: root_certificates file '/nonexistent/ca.pem' cannot be read: No such file or directory; "
        "expected a PEM file\n"
    )


def test_cli_bad_timeout_is_a_bad_argument(server: RunningServer, image_files: dict[str, Path]) -> None:
    done = _classify_cli("--server", server.address, "--timeout", "0", str(image_files["white"]))
    assert done.returncode == 2
    assert done.stderr == "error: timeout is 0.0 (float); expected seconds > 0, or None\n"
