"""The HTTP/REST edge against clients we did not write, and against bad input.

Triton's own client (``tritonclient.http``, sync and aio) drives every KServe v2 route
unchanged; aiohttp sends the image endpoint's multipart forms; ``http.client`` and raw
sockets send what a well-behaved library refuses to. Every answer is checked against the
ONNX reference or against the gRPC answer to the same request, and every bad request gets
a 4xx with a message naming the problem (never a 500, a traceback, or a file read outside
the repository) while the gRPC port keeps serving.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import io
import json
import logging
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from google.protobuf import json_format
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from server_testlib import RGB_LABELS, TinyModel, infer_request, make_settings, ort_reference, publish_tiny
from test_errors import ERROR_TABLE, _mutate
from tritonclient.utils import InferenceServerException

import modelrepo
from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec
from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc
from protocol import image_classification_pb2 as img_pb
from protocol import image_classification_pb2_grpc as img_grpc
from protocol import model_config_pb2 as mc
from server.errors import Status

sys.path.append(str(Path(__file__).resolve().parents[1] / "reliability"))
from reliability_testlib import Pki, ServerThread, make_pki

CAP = 1 << 20  # --max-message-bytes of the shared server: the smallest the settings allow
TOKEN = "http-token-0123456789abcdef"
JSON = {"Content-Type": "application/json"}


# -- models and servers ----------------------------------------------------------------------------


def publish_int(repository: Path, name: str) -> None:
    """An INT32-input model (``logits = flatten(float(x)) @ W.T``): JSON integers, not floats."""
    weight = np.arange(8, dtype=np.float32).reshape(2, 4)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["f"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        ],
        name,
        [helper.make_tensor_value_info("input", TensorProto.INT32, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(2, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    config = ModelConfig(
        name=name,
        input=TensorSpec("input", "INT32", (1, 2, 2)),
        output=TensorSpec("logits", "FP32", (2,)),
        labels=("a", "b"),
        preprocessing=Preprocessing(2, 2, 1, (0.5,), (0.25,)),
        batching=BatchingConfig(max_batch_size=4, max_queue_delay_us=100, max_queue_size=16),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        modelrepo.publish(repository, config, path, {"source": "test"})


@dataclass
class Served:
    """A server on its own loop (sync clients block), its HTTP port, and a gRPC channel to it."""

    thread: ServerThread
    repository: Path
    models: dict[str, TinyModel]
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.thread.port}")

    @property
    def http_port(self) -> int:
        port = self.thread.server.http_port
        assert port is not None
        return port

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def infer(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel)

    @property
    def images(self) -> img_grpc.ImageClassificationStub:
        return img_grpc.ImageClassificationStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.thread.stop()


def _serve(repository: Path, models: dict[str, TinyModel], **overrides: object) -> Served:
    return Served(ServerThread(make_settings(repository, **overrides)), repository, models)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module: conftest's two tiny models (same seeds) and an INT32 one."""
    repo = tmp_path_factory.mktemp("http") / "repo"
    models = {
        "tiny": publish_tiny(repo, "tiny", seed=1),
        "tinyrgb": publish_tiny(repo, "tinyrgb", channels=3, labels=RGB_LABELS, seed=2),
    }
    publish_int(repo, "tinyint")
    # A valid model beside the repository: the target of the path-traversal requests.
    publish_tiny(repo.parent / "outside", "evil", seed=9)
    run = _serve(repo, models, max_message_bytes=CAP)
    try:
        yield run
    finally:
        run.close()


@pytest.fixture
def fresh(repository: tuple[Path, dict[str, TinyModel]]) -> Iterator[Callable[..., Served]]:
    """Servers of conftest's repository with settings of the test's choosing."""
    started: list[Served] = []

    def start(**overrides: object) -> Served:
        repo, models = repository
        started.append(_serve(repo, models, **overrides))
        return started[-1]

    try:
        yield start
    finally:
        for run in started:
            run.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- plain HTTP ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        assert self.headers.get("content-type") == "application/json", (self.status, self.body[:200])
        document = self.json()
        assert isinstance(document, dict) and set(document) == {"error"}, document
        message: str = document["error"]
        return message


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """One request on a fresh connection; ``chunked`` sends the body in 64 KiB chunks."""
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        if chunked and body is not None:
            data = body
            parts = (data[i : i + 65536] for i in range(0, len(data), 65536))
            connection.request(method, path, body=parts, headers=headers or {}, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def raw_exchange(port: int, data: bytes, wait: float = 5.0, until: bytes | None = None) -> bytes:
    """Bytes straight onto a socket; what comes back until one whole answer (or ``until``) is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        # The server may answer and close before taking it all: its answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if until is not None and until in received:
                    break
                if until is None and b"\r\n\r\n" in received and _complete(received):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def _complete(received: bytes) -> bool:
    head, _, rest = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(rest) >= int(line.split(b":")[1])
    return False


# -- tensors, images, the reference ------------------------------------------------------------------


def _batch(n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, channels, 8, 8)).astype(np.float32)


def _input(batch: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def _png(seed: int, size: tuple[int, int] = (20, 14), fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _bytes_tensor(raw: bytes) -> list[str]:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    return items


def _grpc_classes(response: img_pb.ClassifyResponse) -> list[list[tuple[int, str, float]]]:
    return [[(c.index, c.label, c.score) for c in r.classes] for r in response.results]


def _http_classes(document: dict[str, Any]) -> list[list[tuple[int, str, float]]]:
    return [[(c["index"], c["label"], c["score"]) for c in r["classes"]] for r in document["results"]]


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "cnnserve-test") -> bytes:
    """A multipart/form-data body by hand: (field name, file name or None for a plain field, data)."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = {"Content-Type": "multipart/form-data; boundary=cnnserve-test"}


# -- the KServe v2 routes with tritonclient.http --------------------------------------------------------


def test_health_metadata_config_and_index_match_grpc(served: Served) -> None:
    client = triton.InferenceServerClient(served.url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
        assert not client.is_model_ready("tiny", "7")
        assert not client.is_model_ready("nope")

        meta = served.infer.ServerMetadata(pb.ServerMetadataRequest())
        assert client.get_server_metadata() == {
            "name": meta.name,
            "version": meta.version,
            "extensions": list(meta.extensions),
        }
        for name in ("tiny", "tinyrgb"):
            http_meta = client.get_model_metadata(name)
            grpc_meta = served.infer.ModelMetadata(pb.ModelMetadataRequest(name=name))
            assert json_format.ParseDict(http_meta, pb.ModelMetadataResponse()) == grpc_meta
            http_config = client.get_model_config(name)
            grpc_config = served.infer.ModelConfig(pb.ModelConfigRequest(name=name)).config
            assert json_format.ParseDict(http_config, mc.ModelConfig()) == grpc_config
            assert http_config["input"][0]["data_type"] == "TYPE_FP32"
        assert client.get_model_metadata("tiny", "1")["versions"] == ["1"]

        index = client.get_model_repository_index()
        grpc_index = served.infer.RepositoryIndex(pb.RepositoryIndexRequest())
        assert json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse()) == grpc_index
        assert [(m["name"], m["state"]) for m in index] == [
            ("tiny", "READY"),
            ("tinyint", "READY"),
            ("tinyrgb", "READY"),
        ]
    finally:
        client.close()


def test_unknown_model_errors_carry_the_grpc_status_and_message(served: Served) -> None:
    client = triton.InferenceServerClient(served.url)
    try:
        for http_call, grpc_call, request in (
            (client.get_model_metadata, served.infer.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
            (client.get_model_config, served.infer.ModelConfig, pb.ModelConfigRequest(name="nope")),
            (
                client.get_inference_statistics,
                served.infer.ModelStatistics,
                pb.ModelStatisticsRequest(name="nope"),
            ),
        ):
            with pytest.raises(grpc.RpcError) as grpc_error:
                grpc_call(request)
            with pytest.raises(InferenceServerException) as http_error:
                http_call("nope")
            assert http_error.value.status() == "404", http_call
            assert http_error.value.message() == grpc_error.value.details()
    finally:
        client.close()


def test_statistics_match_grpc(served: Served) -> None:
    client = triton.InferenceServerClient(served.url)
    try:
        client.infer("tiny", [_input(_batch(2), True)])
        for name in ("tiny", ""):
            http_stats = client.get_inference_statistics(name)
            grpc_stats = served.infer.ModelStatistics(pb.ModelStatisticsRequest(name=name))
            assert json_format.ParseDict(http_stats, pb.ModelStatisticsResponse()) == grpc_stats
        tiny = client.get_inference_statistics("tiny", "1")["model_stats"][0]
        assert tiny["inference_stats"]["success"]["count"] >= 1 and tiny["inference_count"] >= 2
    finally:
        client.close()


@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
def test_infer_matches_onnx_reference(served: Served, binary_in: bool, binary_out: bool) -> None:
    batch = _batch(3, seed=int(binary_in) * 2 + int(binary_out))
    reference = ort_reference(served.repository, "tiny", 1, batch)
    client = triton.InferenceServerClient(served.url)
    try:
        result = client.infer(
            "tiny",
            [_input(batch, binary_in)],
            outputs=[triton.InferRequestedOutput("logits", binary_data=binary_out)],
            request_id=f"req-{binary_in}-{binary_out}",
        )
    finally:
        client.close()
    response = result.get_response()
    assert response["id"] == f"req-{binary_in}-{binary_out}"
    assert (response["model_name"], response["model_version"]) == ("tiny", "1")
    assert ("parameters" in response["outputs"][0]) == binary_out
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32 and logits.shape == (3, 4)
    if binary_out:
        # The bytes themselves: what ONNX Runtime computed and what gRPC answers.
        np.testing.assert_array_equal(logits, reference)
        grpc_answer = served.infer.ModelInfer(infer_request("tiny", batch))
        assert logits.tobytes() == grpc_answer.raw_output_contents[0]
    else:
        assert np.allclose(logits, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
def test_classification_matches_grpc(served: Served, binary_out: bool) -> None:
    batch = _batch(4, seed=11)
    request = infer_request("tiny", batch)
    request.outputs.add(name="logits").parameters["classification"].int64_param = 3
    grpc_answer = served.infer.ModelInfer(request)
    expected = _bytes_tensor(grpc_answer.raw_output_contents[0])
    client = triton.InferenceServerClient(served.url)
    try:
        result = client.infer(
            "tiny",
            [_input(batch, True)],
            outputs=[triton.InferRequestedOutput("logits", binary_data=binary_out, class_count=3)],
        )
    finally:
        client.close()
    output = result.get_output("logits")
    assert (output["datatype"], output["shape"]) == ("BYTES", [4, 3])
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("logits").reshape(-1)]
    assert got == expected
    best = np.argmax(ort_reference(served.repository, "tiny", 1, batch), axis=1)
    assert [int(row.split(":")[1]) for row in got[::3]] == best.tolist()


@pytest.mark.parametrize("response_algorithm", [None, "gzip", "deflate"])
@pytest.mark.parametrize("request_algorithm", ["gzip", "deflate"])
def test_compressed_requests(served: Served, request_algorithm: str, response_algorithm: str | None) -> None:
    batch = _batch(5, seed=3)
    client = triton.InferenceServerClient(served.url)
    try:
        for binary in (True, False):
            result = client.infer(
                "tiny",
                [_input(batch, binary)],
                outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
                request_id="squeezed",
                request_compression_algorithm=request_algorithm,
                response_compression_algorithm=response_algorithm,
            )
            assert result.get_response()["id"] == "squeezed"
            np.testing.assert_array_equal(
                result.as_numpy("logits"), ort_reference(served.repository, "tiny", 1, batch)
            )
    finally:
        client.close()


def test_gzip_of_several_members_is_read_whole(served: Served) -> None:
    """RFC 1952: a gzip body may be several members back to back (pigz, appended logs); all count."""
    batch = _batch(1, seed=4)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 1, 8, 8],
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    ).encode()
    body = header + batch.tobytes()
    members = gzip.compress(body[:100]) + gzip.compress(body[100:])
    answer = call(
        served.http_port,
        "POST",
        "/v2/models/tiny/infer",
        members,
        {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status == 200, answer.body
    got = answer.json()["outputs"][0]["data"]
    assert np.allclose(got, ort_reference(served.repository, "tiny", 1, batch).reshape(-1))


def test_int32_model_takes_json_integers(served: Served) -> None:
    x = np.array([[[[1, -2], [3, 2**31 - 1]]]], dtype=np.int32)
    tensor = triton.InferInput("input", [1, 1, 2, 2], "INT32")
    tensor.set_data_from_numpy(x, binary_data=False)
    client = triton.InferenceServerClient(served.url)
    try:
        result = client.infer("tinyint", [tensor])
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("logits"), ort_reference(served.repository, "tinyint", 1, x))


async def test_aio_client(served: Served) -> None:
    client = triton_aio.InferenceServerClient(served.url)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("tinyrgb") and not await client.is_model_ready("nope")
        assert (await client.get_server_metadata())["name"] == "cnnserve"
        assert (await client.get_model_metadata("tinyrgb"))["inputs"][0]["shape"] == [-1, 3, 8, 8]
        assert (await client.get_model_config("tinyrgb"))["max_batch_size"] == 16
        assert [m["name"] for m in await client.get_model_repository_index()] == [
            "tiny",
            "tinyint",
            "tinyrgb",
        ]
        batch = _batch(2, channels=3, seed=8)
        reference = ort_reference(served.repository, "tinyrgb", 1, batch)
        for binary, algorithm in ((True, None), (False, None), (True, "gzip"), (False, "deflate")):
            result = await client.infer(
                "tinyrgb",
                [_input(batch, binary)],
                outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
                request_id="aio",
                request_compression_algorithm=algorithm,
                response_compression_algorithm=algorithm,
            )
            assert result.get_response()["id"] == "aio"
            np.testing.assert_array_equal(result.as_numpy("logits"), reference)
        stats = await client.get_inference_statistics("tinyrgb")
        assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 4
        with pytest.raises(InferenceServerException) as info:
            await client.infer("nope", [_input(batch, True)])
        assert info.value.status() == "404" and "unknown model 'nope'" in (info.value.message() or "")
    finally:
        await client.close()


def test_load_and_unload_with_model_control(fresh: Callable[..., Served]) -> None:
    run = fresh(allow_model_control=True)
    client = triton.InferenceServerClient(run.url)
    try:
        client.unload_model("tinyrgb")
        assert not client.is_model_ready("tinyrgb") and client.is_model_ready("tiny")
        states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert states == {"tiny": "READY", "tinyrgb": "UNAVAILABLE"}
        with pytest.raises(InferenceServerException) as info:
            client.infer("tinyrgb", [_input(_batch(1, channels=3), True)])
        assert info.value.status() == "503"
        client.load_model("tinyrgb")
        assert client.is_model_ready("tinyrgb")
        batch = _batch(1, channels=3, seed=5)
        np.testing.assert_array_equal(
            client.infer("tinyrgb", [_input(batch, True)]).as_numpy("logits"),
            ort_reference(run.repository, "tinyrgb", 1, batch),
        )
        with pytest.raises(InferenceServerException) as info:
            client.load_model("nope")
        assert info.value.status() == "404"
    finally:
        client.close()


async def test_load_and_unload_with_the_aio_client(fresh: Callable[..., Served]) -> None:
    """aiohttp sends these bodies as application/octet-stream and text/plain: both are JSON here."""
    run = fresh(allow_model_control=True)
    client = triton_aio.InferenceServerClient(run.url)
    try:
        await client.unload_model("tiny")
        assert not await client.is_model_ready("tiny")
        assert {m["name"]: m["state"] for m in await client.get_model_repository_index()}[
            "tiny"
        ] == "UNAVAILABLE"
        await client.load_model("tiny")
        assert await client.is_model_ready("tiny")
    finally:
        await client.close()


def test_model_control_off_is_403_with_the_grpc_message(fresh: Callable[..., Served]) -> None:
    run = fresh(allow_model_control=False)
    client = triton.InferenceServerClient(run.url)
    try:
        for http_call, grpc_call, request in (
            (
                client.load_model,
                run.infer.RepositoryModelLoad,
                pb.RepositoryModelLoadRequest(model_name="tiny"),
            ),
            (
                client.unload_model,
                run.infer.RepositoryModelUnload,
                pb.RepositoryModelUnloadRequest(model_name="tiny"),
            ),
        ):
            with pytest.raises(grpc.RpcError) as grpc_error:
                grpc_call(request)
            assert grpc_error.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(InferenceServerException) as http_error:
                http_call("tiny")
            assert http_error.value.status() == "403"
            assert http_error.value.message() == grpc_error.value.details()
        assert client.is_model_ready("tiny")
    finally:
        client.close()


# -- the image endpoint ------------------------------------------------------------------------------


def test_image_endpoint_raw_body_matches_grpc(served: Served) -> None:
    for fmt, content_type in (
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("PNG", "application/octet-stream"),
    ):
        image = _png(21, fmt=fmt)
        answer = call(
            served.http_port,
            "POST",
            "/v2/models/tinyrgb/classify?top_k=2",
            image,
            {"Content-Type": content_type},
        )
        assert answer.status == 200, answer.body
        document = answer.json()
        assert (document["model_name"], document["model_version"]) == ("tinyrgb", "1")
        grpc_answer = served.images.Classify(
            img_pb.ClassifyRequest(model_name="tinyrgb", images=[image], top_k=2)
        )
        assert _http_classes(document) == _grpc_classes(grpc_answer)
    # /v2/classify: the server's default model, as gRPC without a model name.
    image = _png(22)
    answer = call(served.http_port, "POST", "/v2/classify", image, {"Content-Type": "image/png"})
    grpc_answer = served.images.Classify(img_pb.ClassifyRequest(images=[image]))
    assert answer.json()["model_name"] == grpc_answer.model_name
    assert _http_classes(answer.json()) == _grpc_classes(grpc_answer)


async def test_image_endpoint_multipart_one_result_per_image_in_order(served: Served) -> None:
    images = [_png(seed, size=(12 + seed, 9)) for seed in range(5)]
    form = aiohttp.FormData()
    for i, image in enumerate(images):
        form.add_field("image", image, filename=f"{i}.png", content_type="image/png")
    form.add_field("note", "plain fields are not images")
    async with aiohttp.ClientSession() as session:
        url = f"http://{served.url}/v2/models/tinyrgb/versions/1/classify?top_k=3"
        async with session.post(url, data=form) as response:
            assert response.status == 200, await response.text()
            document = await response.json()
    assert len(document["results"]) == len(images)
    grpc_answer = served.images.Classify(img_pb.ClassifyRequest(model_name="tinyrgb", images=images, top_k=3))
    assert _http_classes(document) == _grpc_classes(grpc_answer)
    # Order is the images' own: each alone gets the same classes as in the batch.
    for image, result in zip(images, _http_classes(document), strict=True):
        alone = served.images.Classify(img_pb.ClassifyRequest(model_name="tinyrgb", images=[image], top_k=3))
        assert [(i, label) for i, label, _ in result] == [
            (i, label) for i, label, _ in _grpc_classes(alone)[0]
        ]


def test_image_endpoint_multipart_compressed_and_chunked(served: Served) -> None:
    images = [_png(31), _png(32)]
    body = _multipart([("image", "a.png", images[0]), ("image", "b.png", images[1])])
    expected = _grpc_classes(
        served.images.Classify(img_pb.ClassifyRequest(model_name="tinyrgb", images=images))
    )
    for headers, chunked, data in (
        ({**MULTIPART, "Content-Encoding": "gzip"}, False, gzip.compress(body)),
        (MULTIPART, True, body),
    ):
        answer = call(served.http_port, "POST", "/v2/models/tinyrgb/classify", data, headers, chunked=chunked)
        assert answer.status == 200, answer.body
        assert _http_classes(answer.json()) == expected


# -- the gRPC error table, over HTTP ----------------------------------------------------------------------


def _parameter(value: pb.InferParameter) -> object:
    return getattr(value, value.WhichOneof("parameter_choice"))


def http_infer(request: pb.ModelInferRequest) -> tuple[str, bytes, dict[str, str]]:
    """The HTTP form of a gRPC ModelInferRequest: raw contents as binary data, typed ones as JSON."""
    inputs, raw = [], []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if index < len(request.raw_input_contents):
            raw.append(request.raw_input_contents[index])
            entry["parameters"] = {"binary_data_size": len(raw[-1])}
        else:
            fields = tensor.contents.ListFields()
            entry["data"] = list(fields[0][1]) if fields else []
        inputs.append(entry)
    document: dict[str, Any] = {"inputs": inputs}
    if request.outputs:
        document["outputs"] = [
            {"name": o.name, "parameters": {k: _parameter(v) for k, v in o.parameters.items()}}
            for o in request.outputs
        ]
    header = json.dumps(document).encode()
    version = f"/versions/{request.model_version}" if request.model_version else ""
    path = f"/v2/models/{request.model_name}{version}/infer"
    if not raw:
        return path, header, JSON
    return path, header + b"".join(raw), {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("change", [row[0] for row in ERROR_TABLE])
def test_grpc_error_table_over_http(served: Served, change: str) -> None:
    request = _mutate(change)
    with pytest.raises(grpc.RpcError) as info:
        served.infer.ModelInfer(request)
    code, details = info.value.code(), info.value.details() or ""
    path, body, headers = http_infer(request)
    answer = call(served.http_port, "POST", path, body, headers)
    assert answer.status == Status[code.name].http
    # The same message; only where typed values come from is named after each protocol's field.
    assert answer.error == details.replace("contents.fp32_contents", "data")


def test_repository_errors_over_http_match_grpc(served: Served) -> None:
    for path, grpc_call, request in (
        (
            "/v2/repository/models/nope/load",
            served.infer.RepositoryModelLoad,
            pb.RepositoryModelLoadRequest(model_name="nope"),
        ),
        (
            "/v2/repository/models/nope/unload",
            served.infer.RepositoryModelUnload,
            pb.RepositoryModelUnloadRequest(model_name="nope"),
        ),
        (
            "/v2/repository/models/%2E%2E/load",
            served.infer.RepositoryModelLoad,
            pb.RepositoryModelLoadRequest(model_name=".."),
        ),
        (
            "/v2/repository/models/.x/load",
            served.infer.RepositoryModelLoad,
            pb.RepositoryModelLoadRequest(model_name=".x"),
        ),
    ):
        with pytest.raises(grpc.RpcError) as info:
            grpc_call(request)
        answer = call(served.http_port, "POST", path)
        assert answer.status == Status[info.value.code().name].http, path
        assert answer.error == info.value.details()


# -- bad input -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad request and what it must get: a status and a fragment of the message."""

    id: str
    status: int
    message: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/v2/models/tiny/infer"
    method: str = "POST"
    chunked: bool = False


def _doc(**changes: Any) -> bytes:
    """A good JSON inference request with some of its fields changed (None: removed)."""
    tensor: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}
    request: dict[str, Any] = {"inputs": [tensor]}
    for key, value in changes.items():
        target = tensor if key.startswith("input_") else request
        name = key.removeprefix("input_")
        if value is None:
            del target[name]
        else:
            target[name] = value
    return json.dumps(request).encode()


def _int(data: list[Any]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 1, 2, 2], "data": data}]}
    ).encode()


_X = _batch(1).tobytes()
_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 1, 8, 8],
                "parameters": {"binary_data_size": 256},
            }
        ]
    }
).encode()
_GOOD = _doc()
_GZ = gzip.compress(_GOOD)
_OUT = "logits"
_DEEP = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
_LONG = "a" * 5000
_TRAVERSAL_NAMES = (
    "..%2F..%2Fetc",
    "..%2Foutside%2Fevil",
    "%2E%2E%2Foutside%2Frepo%2F..%2Fevil",
    "evil%00",
    _LONG,
)

BAD: list[Bad] = [
    # The body is not a JSON object.
    Bad("malformed json", 400, "the inference request is not valid JSON: Expecting", b"{bad", JSON),
    Bad("json array", 400, "the inference request is an array; expected a JSON object", b"[1, 2]", JSON),
    Bad("json string", 400, 'the inference request is "x"; expected a JSON object', b'"x"', JSON),
    Bad("not utf-8", 400, "the inference request is not UTF-8 JSON", b'{"inputs": "\x80"}', JSON),
    Bad("nesting", 400, "the inference request nests too deeply", _DEEP, JSON),
    Bad("empty body", 400, "the inference request is not valid JSON", b"", JSON),
    Bad(
        "5000-digit integer",
        400,
        "holds an integer of more than 4300 digits",
        _doc(input_shape="S").replace(b'"S"', b"[1" + b"0" * 5000 + b"]"),
        JSON,
    ),
    # Wrong types, field by field.
    Bad("inputs missing", 400, "inputs is null; expected an array of input tensors", _doc(inputs=None), JSON),
    Bad(
        "inputs object", 400, "inputs is an object; expected an array of input tensors", _doc(inputs={}), JSON
    ),
    Bad("input not object", 400, "inputs[0] is 1; expected an object", _doc(inputs=[1]), JSON),
    Bad("name number", 400, "inputs[0].name is 3; expected the input's name", _doc(input_name=3), JSON),
    Bad("name missing", 400, "inputs[0].name is null", _doc(input_name=None), JSON),
    Bad(
        "shape string",
        400,
        "input 'input' shape is \"1,1,8,8\"; expected an array of dimensions",
        _doc(input_shape="1,1,8,8"),
        JSON,
    ),
    Bad(
        "shape strings",
        400,
        "input 'input' has shape [\"1\", 1, 8, 8]; expected non-negative integers",
        _doc(input_shape=["1", 1, 8, 8]),
        JSON,
    ),
    Bad(
        "shape negative",
        400,
        "has shape [-1, 1, 8, 8]; expected non-negative integers",
        _doc(input_shape=[-1, 1, 8, 8]),
        JSON,
    ),
    Bad(
        "shape float",
        400,
        "has shape [1.0, 1, 8, 8]; expected non-negative integers",
        _doc(input_shape=[1.0, 1, 8, 8]),
        JSON,
    ),
    Bad(
        "shape bool",
        400,
        "has shape [true, 1, 8, 8]; expected non-negative integers",
        _doc(input_shape=[True, 1, 8, 8]),
        JSON,
    ),
    Bad("shape missing", 400, "input 'input' shape is null", _doc(input_shape=None), JSON),
    Bad(
        "datatype number",
        400,
        "input 'input' datatype is 5; expected a datatype such as FP32",
        _doc(input_datatype=5),
        JSON,
    ),
    Bad(
        "datatype unknown",
        400,
        "input 'input' has datatype 'FLOAT'; model 'tiny' expects FP32",
        _doc(input_datatype="FLOAT"),
        JSON,
    ),
    Bad(
        "data string",
        400,
        "input 'input' data is \"0.5\"; expected an array of values",
        _doc(input_data="0.5"),
        JSON,
    ),
    Bad(
        "data object",
        400,
        "input 'input' data is an object; expected an array of values",
        _doc(input_data={"a": 1}),
        JSON,
    ),
    Bad(
        "data missing",
        400,
        "input 'input' has no data; expected data, or binary_data_size",
        _doc(input_data=None),
        JSON,
    ),
    Bad(
        "input parameters array",
        400,
        "input 'input' parameters is an array; expected an object",
        _doc(input_parameters=[]),
        JSON,
    ),
    Bad(
        "request parameters number",
        400,
        "request parameters is 3; expected an object",
        _doc(parameters=3),
        JSON,
    ),
    Bad(
        "binary_data_output string",
        400,
        'parameter binary_data_output is "yes"; expected true or false',
        _doc(parameters={"binary_data_output": "yes"}),
        JSON,
    ),
    Bad("id number", 400, "id is 5; expected a string", _doc(id=5), JSON),
    Bad("outputs string", 400, 'outputs is "logits"; expected an array', _doc(outputs="logits"), JSON),
    Bad("output not object", 400, "outputs[0] is 1; expected an object", _doc(outputs=[1]), JSON),
    Bad(
        "output name number",
        400,
        "outputs[0].name is 7; expected the output's name",
        _doc(outputs=[{"name": 7}]),
        JSON,
    ),
    Bad(
        "output unknown",
        400,
        "output 'probs' is not an output of model 'tiny'",
        _doc(outputs=[{"name": "probs"}]),
        JSON,
    ),
    Bad(
        "output parameters",
        400,
        "output 'logits' parameters is 1; expected an object",
        _doc(outputs=[{"name": _OUT, "parameters": 1}]),
        JSON,
    ),
    Bad(
        "binary_data string",
        400,
        "output 'logits' parameter binary_data is \"yes\"; expected true or false",
        _doc(outputs=[{"name": _OUT, "parameters": {"binary_data": "yes"}}]),
        JSON,
    ),
    Bad(
        "classification float",
        400,
        "output 'logits' has classification parameter 2.5; expected a positive integer",
        _doc(outputs=[{"name": _OUT, "parameters": {"classification": 2.5}}]),
        JSON,
    ),
    Bad(
        "classification bool",
        400,
        "has classification parameter True; expected a positive integer",
        _doc(outputs=[{"name": _OUT, "parameters": {"classification": True}}]),
        JSON,
    ),
    # Data that do not fit the shape or the datatype.
    Bad(
        "ragged",
        400,
        "data is a ragged or too deeply nested array",
        _doc(input_data=[[0.5] * 32, [0.5] * 31]),
        JSON,
    ),
    Bad(
        "nested mixed",
        400,
        "data is a ragged or too deeply nested array",
        _doc(input_data=[[0.5], 0.5]),
        JSON,
    ),
    Bad(
        "too deep for numpy",
        400,
        "data is a ragged or too deeply nested array",
        _doc(input_data=json.loads("[" * 80 + "0.5" + "]" * 80)),
        JSON,
    ),
    Bad(
        "count",
        400,
        "input 'input' has 63 values in data; shape [1,1,8,8] needs 64",
        _doc(input_data=[0.5] * 63),
        JSON,
    ),
    Bad(
        "strings for FP32",
        400,
        "input 'input' of datatype FP32 has data that are not numbers",
        _doc(input_data=["0.5"] * 64),
        JSON,
    ),
    Bad(
        "nulls for FP32",
        400,
        "of datatype FP32 has data that are not numbers",
        _doc(input_data=[None] * 64),
        JSON,
    ),
    Bad(
        "a bool among FP32",
        400,
        "of datatype FP32 has data that are not numbers",
        _doc(input_data=[0.5] * 63 + [True]),
        JSON,
    ),
    Bad(
        "objects for FP32",
        400,
        "of datatype FP32 has data that are not numbers",
        _doc(input_data=[{}] * 64),
        JSON,
    ),
    Bad(
        "integer beyond float",
        400,
        "input 'input' has values out of range for FP32",
        _doc(input_data=[10**400] * 64),
        JSON,
    ),
    Bad(
        "floats for INT32",
        400,
        "input 'input' of datatype INT32 has data that are not integers",
        _int([1.5, 2, 3, 4]),
        JSON,
        "/v2/models/tinyint/infer",
    ),
    Bad(
        "whole floats for INT32",
        400,
        "of datatype INT32 has data that are not integers",
        _int([1.0, 2.0, 3.0, 4.0]),
        JSON,
        "/v2/models/tinyint/infer",
    ),
    Bad(
        "a bool among INT32",
        400,
        "of datatype INT32 has data that are not integers",
        _int([True, 2, 3, 4]),
        JSON,
        "/v2/models/tinyint/infer",
    ),
    Bad(
        "strings for INT32",
        400,
        "of datatype INT32 has data that are not integers",
        _int(["1", 2, 3, 4]),
        JSON,
        "/v2/models/tinyint/infer",
    ),
    Bad(
        "INT32 too large",
        400,
        "input 'input' has values out of range for INT32",
        _int([2**31, 0, 0, 0]),
        JSON,
        "/v2/models/tinyint/infer",
    ),
    Bad(
        "INT32 too small",
        400,
        "input 'input' has values out of range for INT32",
        _int([-(2**31) - 1, 0, 0, 0]),
        JSON,
        "/v2/models/tinyint/infer",
    ),
    # Content types and encodings.
    Bad(
        "curl -d",
        415,
        "application/x-www-form-urlencoded is what curl -d sends unless told otherwise: "
        "send -H 'Content-Type: application/json'",
        _GOOD,
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Bad(
        "xml",
        415,
        "Content-Type is 'application/xml'; the inference request must be one of",
        _GOOD,
        {"Content-Type": "application/xml"},
    ),
    Bad("multipart to infer", 415, "the inference request must be one of", _GOOD, MULTIPART),
    Bad(
        "brotli",
        415,
        "Content-Encoding is 'br'; expected gzip, deflate or none (identity)",
        _GOOD,
        {**JSON, "Content-Encoding": "br"},
    ),
    Bad(
        "index as a form",
        415,
        "the repository index request must be one of",
        b"{}",
        {"Content-Type": "application/x-www-form-urlencoded"},
        "/v2/repository/index",
    ),
    Bad(
        "image as json",
        415,
        "Content-Type is 'application/json'; expected image/*",
        _png(1),
        JSON,
        "/v2/models/tinyrgb/classify",
    ),
    Bad(
        "image without type",
        415,
        "Content-Type is missing; expected image/*",
        _png(1),
        {},
        "/v2/models/tinyrgb/classify",
    ),
    # Sizes: the cap, declared or chunked, and what gzip inflates to.
    Bad(
        "over the cap",
        413,
        f"the body has {CAP + 1} bytes; this server accepts at most {CAP}",
        b" " * (CAP + 1),
        JSON,
    ),
    Bad("over the cap, chunked", 413, f"the body exceeds {CAP} bytes", b" " * (CAP + 1), JSON, chunked=True),
    Bad(
        "gzip bomb",
        413,
        f"the body inflates to more than {CAP} bytes",
        gzip.compress(b" " * (16 * CAP)),
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Bad(
        "deflate bomb",
        413,
        f"the body inflates to more than {CAP} bytes",
        zlib.compress(b" " * (16 * CAP)),
        {**JSON, "Content-Encoding": "deflate"},
    ),
    Bad(
        "gzip bomb in a second member",
        413,
        "inflates to more than",
        _GZ + gzip.compress(b" " * (2 * CAP)),
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Bad(
        "multipart over the cap, chunked",
        413,
        f"the body exceeds {CAP} bytes",
        _multipart([("image", "a.png", b"x" * CAP)]),
        MULTIPART,
        "/v2/models/tinyrgb/classify",
        chunked=True,
    ),
    Bad(
        "gzip of too many members",
        400,
        "the gzip body has more than 64 members",
        b"".join(gzip.compress(b" ") for _ in range(65)),
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Bad("gzip truncated", 400, "the gzip body is truncated", _GZ[:-12], {**JSON, "Content-Encoding": "gzip"}),
    Bad(
        "gzip corrupt",
        400,
        "the body is not valid gzip data",
        _GZ[:10] + b"\xff" * 8 + _GZ[18:],
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Bad(
        "gzip that is not",
        400,
        "the body is not valid gzip data",
        _GOOD,
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Bad(
        "gzip trailing garbage",
        400,
        "the gzip body has 7 bytes of trailing data",
        _GZ + b"garbage",
        {**JSON, "Content-Encoding": "gzip"},
    ),
    Bad(
        "deflate trailing",
        400,
        "the deflate body has 4 bytes of trailing data",
        zlib.compress(_GOOD) + b"junk",
        {**JSON, "Content-Encoding": "deflate"},
    ),
    # Triton's binary tensor extension, with sizes that disagree.
    Bad(
        "header length past the body",
        400,
        f"Inference-Header-Content-Length is {len(_HEADER) + 300}; "
        f"the body has only {len(_HEADER) + 256} bytes",
        _HEADER + _X,
        {"Inference-Header-Content-Length": str(len(_HEADER) + 300)},
    ),
    Bad(
        "header length not a number",
        400,
        "Inference-Header-Content-Length is 'abc'; expected the JSON header's length",
        _HEADER + _X,
        {"Inference-Header-Content-Length": "abc"},
    ),
    Bad(
        "header length negative",
        400,
        "Inference-Header-Content-Length is '-5'",
        _HEADER + _X,
        {"Inference-Header-Content-Length": "-5"},
    ),
    Bad(
        "header length of 5000 digits",
        400,
        "Inference-Header-Content-Length is 999999999999999999...; the body has only",
        _HEADER + _X,
        {"Inference-Header-Content-Length": "9" * 5000},
    ),
    Bad(
        "header length short",
        400,
        "the JSON header is not valid JSON",
        _HEADER + _X,
        {"Inference-Header-Content-Length": str(len(_HEADER) - 3)},
    ),
    Bad(
        "binary bytes left over",
        400,
        "the body has 260 bytes of binary data after the JSON header; "
        "the inputs' binary_data_size parameters add up to 256",
        _HEADER + _X + b"1234",
        {"Inference-Header-Content-Length": str(len(_HEADER))},
    ),
    Bad(
        "binary bytes missing",
        400,
        "input 'input' has binary_data_size 256; only 252 bytes of binary data remain",
        _HEADER + _X[:-4],
        {"Inference-Header-Content-Length": str(len(_HEADER))},
    ),
    Bad(
        "binary size a string",
        400,
        "input 'input' has binary_data_size \"256\"; expected a byte count >= 0",
        _HEADER.replace(b"256", b'"256"') + _X,
        {"Inference-Header-Content-Length": str(len(_HEADER) + 2)},
    ),
    Bad(
        "binary size and data",
        400,
        "input 'input' has both binary_data_size and data",
        _HEADER.replace(b"}}]", b'}, "data": [1]}]') + _X,
        {"Inference-Header-Content-Length": str(len(_HEADER) + 13)},
    ),
    Bad(
        "binary without the header",
        400,
        "not UTF-8 JSON; if it is a JSON header followed by binary tensor data, "
        "send the Inference-Header-Content-Length header",
        _HEADER + _X,
        {},
    ),
    Bad(
        "binary text without the header",
        400,
        f"Extra data at byte {len(_HEADER)}; if it is a JSON header followed by binary tensor data, "
        "send the Inference-Header-Content-Length header",
        _HEADER + b"1234",
        {},
    ),
    # Routes, methods, names and versions.
    Bad(
        "unknown route",
        404,
        "no route GET /v2/nope; the routes are in /v2/openapi.json",
        path="/v2/nope",
        method="GET",
    ),
    Bad(
        "unknown model route",
        404,
        "no route POST /v2/models/tiny/predict",
        b"{}",
        JSON,
        "/v2/models/tiny/predict",
    ),
    Bad("GET infer", 405, "GET is not allowed on /v2/models/tiny/infer; expected POST", method="GET"),
    Bad(
        "DELETE a model",
        405,
        "DELETE is not allowed on /v2/models/tiny; expected ",
        path="/v2/models/tiny",
        method="DELETE",
    ),
    Bad("PUT live", 405, "PUT is not allowed on /v2/health/live", path="/v2/health/live", method="PUT"),
    Bad("unknown model", 404, "unknown model 'nope'", _GOOD, JSON, "/v2/models/nope/infer"),
    Bad(
        "unknown version",
        404,
        "model 'tiny' version '9' is not loaded; loaded version: 1",
        _GOOD,
        JSON,
        "/v2/models/tiny/versions/9/infer",
    ),
    Bad(
        "version not a number",
        404,
        "model 'tiny' has no version 'x'; versions are integers",
        path="/v2/models/tiny/versions/x",
        method="GET",
    ),
    Bad(
        "version superscript",
        404,
        "model 'tiny' has no version '²'",
        path="/v2/models/tiny/versions/%C2%B2/config",
        method="GET",
    ),
    Bad(
        "version dot dot",
        404,
        "model 'tiny' has no version '..'",
        path="/v2/models/tiny/versions/../stats",
        method="GET",
    ),
    Bad(
        "version traversal",
        404,
        "no route GET /v2/models/tiny/versions/1/../..",
        path="/v2/models/tiny/versions/1%2F..%2F..",
        method="GET",
    ),
    Bad(
        "traversal ready",
        404,
        "no route GET /v2/models/../../etc/ready",
        path="/v2/models/..%2F..%2Fetc/ready",
        method="GET",
    ),
    Bad(
        "traversal metadata",
        404,
        "no route GET /v2/models/../outside/evil",
        path="/v2/models/..%2Foutside%2Fevil",
        method="GET",
    ),
    Bad(
        "traversal load",
        404,
        "no route POST /v2/repository/models/../x/load",
        path="/v2/repository/models/..%2Fx/load",
    ),
    Bad(
        "traversal unload",
        404,
        "no route POST /v2/repository/models/../x/unload",
        path="/v2/repository/models/..%2Fx/unload",
    ),
    Bad("dot dot load", 400, "model name '..' is not valid", path="/v2/repository/models/%2E%2E/load"),
    Bad("NUL metadata", 404, "unknown model 'tiny\\x00'", path="/v2/models/tiny%00", method="GET"),
    Bad("NUL load", 400, "model name 'tiny\\x00' is not valid", path="/v2/repository/models/tiny%00/load"),
    Bad("long name metadata", 404, "unknown model 'aaaa", path=f"/v2/models/{_LONG}/config", method="GET"),
    Bad(
        "long name load",
        400,
        "is not valid; expected 1-128 characters",
        path=f"/v2/repository/models/{_LONG}/load",
    ),
    Bad(
        "long unknown route",
        404,
        f"... ({len(_LONG) + 10} characters); the routes are in",
        path=f"/v2/{_LONG}/x/y/z",
        method="GET",
    ),
    # Repository bodies.
    Bad(
        "load version traversal",
        400,
        "load parameter version is '../1'; expected a positive integer",
        b'{"parameters": {"version": "../1"}}',
        JSON,
        "/v2/repository/models/tiny/load",
    ),
    Bad(
        "load version zero-padded",
        400,
        "load parameter version is '01'",
        b'{"parameters": {"version": "01"}}',
        JSON,
        "/v2/repository/models/tiny/load",
    ),
    Bad(
        "load unknown version",
        404,
        "model 'tiny' has no version 99",
        b'{"parameters": {"version": "99"}}',
        JSON,
        "/v2/repository/models/tiny/load",
    ),
    Bad(
        "load parameters array",
        400,
        "parameters is []; expected an object",
        b'{"parameters": []}',
        JSON,
        "/v2/repository/models/tiny/load",
    ),
    Bad(
        "load body array",
        400,
        "the load request is not a JSON object",
        b"[]",
        JSON,
        "/v2/repository/models/tiny/load",
    ),
    Bad(
        "index ready string",
        400,
        "ready is 'yes'; expected true or false",
        b'{"ready": "yes"}',
        JSON,
        "/v2/repository/index",
    ),
    Bad(
        "index malformed",
        400,
        "the repository index request is not valid JSON",
        b"{bad",
        JSON,
        "/v2/repository/index",
    ),
    # The image endpoint.
    Bad(
        "not an image",
        400,
        "image 0 (11 bytes) is not a recognised image format",
        b"hello world",
        {"Content-Type": "image/png"},
        "/v2/models/tinyrgb/classify",
    ),
    Bad("empty image", 400, "image 0 is empty", b"", {"Content-Type": "image/png"}, "/v2/classify"),
    Bad(
        "second image bad",
        400,
        "image 1 (4 bytes) is not a recognised image format",
        _multipart([("image", "a.png", _png(1)), ("image", "b.png", b"nope")]),
        MULTIPART,
        "/v2/models/tinyrgb/classify",
    ),
    Bad(
        "multipart without files",
        400,
        "the multipart form holds no file; expected one file part per image",
        _multipart([("note", None, b"x")]),
        MULTIPART,
        "/v2/models/tinyrgb/classify",
    ),
    Bad(
        "multipart empty",
        400,
        "the multipart form holds no file",
        b"--cnnserve-test--\r\n",
        MULTIPART,
        "/v2/models/tinyrgb/classify",
    ),
    Bad(
        "multipart without boundary",
        400,
        "the multipart body cannot be read: Missing boundary in multipart",
        _multipart([("image", "a.png", _png(1))]),
        {"Content-Type": "multipart/form-data"},
        "/v2/models/tinyrgb/classify",
    ),
    Bad(
        "multipart garbage",
        400,
        "the multipart body cannot be read: Invalid multipart data",
        b"garbage",
        MULTIPART,
        "/v2/models/tinyrgb/classify",
    ),
    Bad(
        "too many images",
        400,
        "the request holds 17 images; model 'tinyrgb' accepts at most 16",
        _multipart([("image", f"{i}.png", _png(i)) for i in range(17)]),
        MULTIPART,
        "/v2/models/tinyrgb/classify",
    ),
    Bad(
        "top_k zero",
        400,
        "top_k is '0'; expected an integer from 1 to 1000",
        _png(1),
        {"Content-Type": "image/png"},
        "/v2/models/tinyrgb/classify?top_k=0",
    ),
    Bad(
        "top_k twice",
        400,
        "top_k is given 2 times",
        _png(1),
        {"Content-Type": "image/png"},
        "/v2/models/tinyrgb/classify?top_k=1&top_k=2",
    ),
    Bad(
        "image to an INT32 model",
        400,
        "model 'tinyint' takes INT32 input; the image service needs a model with an FP32 image input",
        _png(1),
        {"Content-Type": "image/png"},
        "/v2/models/tinyint/classify",
    ),
]


def _send(served: Served, case: Bad) -> Answer:
    return call(served.http_port, case.method, case.path, case.body, case.headers, chunked=case.chunked)


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_input_is_a_4xx_naming_the_problem(served: Served, case: Bad) -> None:
    answer = _send(served, case)
    assert answer.status == case.status, (answer.status, answer.body[:300])
    assert case.message in answer.error
    assert "Traceback" not in answer.error
    # The edge's own messages show at most 200 characters of a value (the core's echo a long name).
    assert len(answer.error) < 600 or _LONG in case.path
    if case.status == 405:
        assert answer.headers["allow"]


def test_barrage_leaves_grpc_serving_and_logs_no_error(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Every bad request at once, twice, from 8 threads, while gRPC inference runs beside them."""
    caplog.set_level(logging.WARNING)
    batch = _batch(2, seed=5)
    reference = ort_reference(served.repository, "tiny", 1, batch)
    stop = threading.Event()
    grpc_answers: list[bytes] = []

    def grpc_loop() -> None:
        while not stop.is_set():
            grpc_answers.append(
                served.infer.ModelInfer(infer_request("tiny", batch), timeout=10).raw_output_contents[0]
            )

    worker = threading.Thread(target=grpc_loop)
    worker.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda case: (case, _send(served, case)), BAD * 2))
    finally:
        stop.set()
        worker.join(30)
    assert [(c.id, a.status) for c, a in answers if a.status != c.status] == []
    assert grpc_answers and all(a == reference.tobytes() for a in grpc_answers)
    # After the barrage, both protocols still answer.
    assert served.infer.ModelInfer(infer_request("tiny", batch)).raw_output_contents[0] == reference.tobytes()
    assert call(served.http_port, "GET", "/v2/health/ready").json() == {"ready": True}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_nothing_outside_the_repository_is_loaded(served: Served) -> None:
    """A real model beside the repository: no spelling of a path to it loads it or reads its metadata."""
    outside = served.repository.parent / "outside" / "evil" / "1" / "model.onnx"
    assert outside.is_file()
    for name in _TRAVERSAL_NAMES:
        for method, path in (
            ("POST", f"/v2/repository/models/{name}/load"),
            ("GET", f"/v2/models/{name}"),
            ("GET", f"/v2/models/{name}/ready"),
            ("GET", f"/v2/models/{name}/config"),
        ):
            answer = call(served.http_port, method, path)
            assert answer.status in (400, 404, 503), (path, answer.status)
            assert b"evil" not in answer.body or answer.status != 200
    names = [m["name"] for m in call(served.http_port, "POST", "/v2/repository/index").json()]
    assert names == ["tiny", "tinyint", "tinyrgb"]
    assert [m.name for m in served.thread.server.manager.loaded()] == ["tiny", "tinyint", "tinyrgb"]


def test_raw_socket_abuse_is_refused_cleanly(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """What no client library sends: lies about the length, a body cut off, a broken chunk, garbage."""
    caplog.set_level(logging.WARNING)
    port = served.http_port
    # Declares far more than the cap, sends a little: refused at once, without waiting for the rest.
    reply = raw_exchange(
        port, b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{"
    )
    assert reply.startswith(b"HTTP/1.1 413 ") and b"this server accepts at most" in reply
    # A body cut off by the client hanging up: nothing to answer, and no server error logged.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b'POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"inp')
    # A broken chunked body and request-line garbage: uvicorn's own 400.
    for data in (
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /v2/models/tiny\x00/ready HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        assert raw_exchange(port, data).startswith(b"HTTP/1.1 400 ")
    # Headers without end: refused before they fill the memory; 40 kB of them (a big cookie) are fine.
    endless = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    reply = raw_exchange(port, endless)
    assert reply.startswith(b"HTTP/1.1 431 ") and b"the request line and headers exceed 65536 bytes" in reply
    many = b"".join(b"X-Header-%d: v\r\n" % i for i in range(100_000))
    assert raw_exchange(port, b"GET /v2/health/live HTTP/1.1\r\n" + many + b"\r\n").startswith(
        b"HTTP/1.1 431 "
    )
    cookie = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nCookie: c=" + b"a" * 40_000 + b"\r\n\r\n"
    assert raw_exchange(port, cookie).startswith(b"HTTP/1.1 200 ")
    # A non-ASCII digit in the binary header: named, not a crash.
    reply = raw_exchange(
        port,
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Inference-Header-Content-Length: \xef\xbc\x91\r\n\r\n{}",
    )
    assert reply.startswith(b"HTTP/1.1 400 ") and b"Inference-Header-Content-Length is" in reply
    # A bad request and a good one pipelined on one connection: both answered, in order.
    reply = raw_exchange(
        port,
        b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{bad}"
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        until=b'{"live":true}',
    )
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.endswith(b'{"live":true}')
    time.sleep(0.2)  # the hung-up request's handler runs on the server's loop
    assert call(port, "GET", "/v2/health/live").status == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- token auth and TLS -------------------------------------------------------------------------------


def test_token_auth(fresh: Callable[..., Served]) -> None:
    run = fresh(auth_token=TOKEN)
    port = run.http_port
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for headers, problem in (
        ({}, "missing 'authorization' header; expected 'authorization: Bearer <token>'"),
        ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
        ({"Authorization": TOKEN}, "is not of the form 'Bearer <token>'"),
    ):
        for method, path in (("GET", "/v2"), ("GET", "/v2/models/tiny"), ("POST", "/v2/models/tiny/infer")):
            answer = call(port, method, path, _GOOD, {**JSON, **headers})
            assert answer.status == 401 and answer.headers["www-authenticate"] == "Bearer", path
            assert problem in answer.error and "wrong" not in answer.error
    # Health (and the OpenAPI document) need no token.
    assert call(port, "GET", "/v2/health/live").status == 200
    assert call(port, "GET", "/v2/health/ready").json() == {"ready": True}
    assert call(port, "GET", "/v2/openapi.json").status == 200
    # The header works everywhere, the cookie on GET only.
    assert call(port, "POST", "/v2/models/tiny/infer", _GOOD, {**JSON, **bearer}).status == 200
    cookie = {"Cookie": f"cnnserve_token={TOKEN}"}
    assert call(port, "GET", "/v2/models/tiny", headers=cookie).json()["name"] == "tiny"
    assert call(port, "GET", "/v2/models/tiny", headers={"Cookie": "cnnserve_token=wrong"}).status == 401
    assert call(port, "POST", "/v2/models/tiny/infer", _GOOD, {**JSON, **cookie}).status == 401
    # Triton's client, with the header it is given.
    client = triton.InferenceServerClient(run.url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("tiny")
        assert info.value.status() == "401"
        batch = _batch(2, seed=6)
        result = client.infer("tiny", [_input(batch, True)], headers=bearer)
        np.testing.assert_array_equal(
            result.as_numpy("logits"), ort_reference(run.repository, "tiny", 1, batch)
        )
        assert client.is_model_ready("tiny", headers=bearer) and not client.is_model_ready("tiny")
    finally:
        client.close()


async def test_token_auth_aio(fresh: Callable[..., Served]) -> None:
    run = fresh(auth_token=TOKEN)
    client = triton_aio.InferenceServerClient(run.url)
    try:
        assert await client.is_server_live()  # no token needed
        with pytest.raises(InferenceServerException) as info:
            await client.get_server_metadata()
        assert info.value.status() == "401"
        metadata = await client.get_server_metadata(headers={"Authorization": f"Bearer {TOKEN}"})
        assert metadata["name"] == "cnnserve"
    finally:
        await client.close()


def test_tls(fresh: Callable[..., Served], pki: Pki) -> None:
    run = fresh(tls_cert=pki.path("server_cert"), tls_key=pki.path("server_key"))
    port = run.http_port
    batch = _batch(2, seed=7)
    client = triton.InferenceServerClient(
        f"127.0.0.1:{port}", ssl=True, ssl_options={"ca_certs": str(pki.path("ca"))}
    )
    try:
        assert client.is_server_ready()
        result = client.infer("tiny", [_input(batch, True)])
        np.testing.assert_array_equal(
            result.as_numpy("logits"), ort_reference(run.repository, "tiny", 1, batch)
        )
    finally:
        client.close()
    trusted = ssl.create_default_context(cafile=str(pki.path("ca")))
    assert call(port, "GET", "/v2/health/live", context=trusted).status == 200
    # Plaintext HTTP to the TLS port, and TLS with another CA, get nothing.
    with pytest.raises((http.client.HTTPException, OSError)):
        call(port, "GET", "/v2/health/live")
    with pytest.raises(ssl.SSLCertVerificationError):
        call(
            port, "GET", "/v2/health/live", context=ssl.create_default_context(cadata=pki.rogue_cert.decode())
        )


async def test_tls_aio(fresh: Callable[..., Served], pki: Pki) -> None:
    run = fresh(tls_cert=pki.path("server_cert"), tls_key=pki.path("server_key"))
    context = ssl.create_default_context(cafile=str(pki.path("ca")))
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{run.http_port}", ssl=True, ssl_context=context)
    try:
        assert await client.is_model_ready("tiny")
        batch = _batch(1, seed=8)
        result = await client.infer("tiny", [_input(batch, False)])
        assert np.allclose(result.as_numpy("logits"), ort_reference(run.repository, "tiny", 1, batch))
    finally:
        await client.close()


def test_mutual_tls(fresh: Callable[..., Served], pki: Pki) -> None:
    run = fresh(
        tls_cert=pki.path("server_cert"), tls_key=pki.path("server_key"), tls_client_ca=pki.path("ca")
    )
    port = run.http_port
    client = triton.InferenceServerClient(
        f"127.0.0.1:{port}",
        ssl=True,
        ssl_options={
            "ca_certs": str(pki.path("ca")),
            "certfile": str(pki.path("client_cert")),
            "keyfile": str(pki.path("client_key")),
        },
    )
    try:
        assert client.is_model_ready("tiny")
    finally:
        client.close()
    for cert, key in ((None, None), ("rogue_cert", "rogue_key")):
        context = ssl.create_default_context(cafile=str(pki.path("ca")))
        if cert and key:
            context.load_cert_chain(str(pki.path(cert)), str(pki.path(key)))
        with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
            call(port, "GET", "/v2/health/live", context=context)
