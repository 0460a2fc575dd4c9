"""A server with no loaded model: both protocols say so with UNAVAILABLE / 503, and the page renders."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from server_testlib import start

from protocol import image_classification_pb2 as img_pb

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c6360000000020001e221bc330000000049454e44ae426082"
)


def _http(url: str, body: bytes | None = None, content_type: str = "image/png") -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": content_type} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_no_loaded_model_is_unavailable_on_both_protocols(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    run = await start(tmp_path / "repo", {}, http_port=0)
    base = f"http://127.0.0.1:{run.server.http_port}"
    try:
        assert await asyncio.to_thread(_http, f"{base}/v2/health/ready") == (503, {"ready": False})
        status, answer = await asyncio.to_thread(_http, f"{base}/v2/classify", PNG)
        assert status == 503 and "no model is loaded" in answer["error"], answer
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await run.images.Classify(img_pb.ClassifyRequest(images=[PNG]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == answer["error"]
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{base}/", timeout=10).read())
        assert b"cnnserve" in page
    finally:
        await run.channel.close(None)
        await run.server.stop(0)
