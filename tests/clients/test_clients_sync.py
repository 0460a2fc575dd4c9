"""The synchronous client against a real server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from clienttest_support import LABELS, SIDE, RunningServer, tiny_logits
from PIL import Image

from clients import Classification, InferenceClient, InferenceServerError


@pytest.fixture
def client(server: RunningServer) -> Iterator[InferenceClient]:
    with InferenceClient(server.address, timeout=10) as c:
        yield c


def test_import_pulls_in_neither_onnxruntime_nor_torch() -> None:
    code = (
        "import sys, clients, clients.bench, clients.classify\n"
        "bad = [m for m in ('onnxruntime', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    # The container health check imports the package too: it must not pay for numpy and Pillow.
    code = "import sys, clients.health\nassert not {'numpy', 'PIL', 'onnxruntime'} & set(sys.modules)\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_health_and_readiness(client: InferenceClient) -> None:
    assert client.server_live()
    assert client.server_ready()
    assert client.model_ready("tiny")
    assert client.health() == "SERVING"
    assert client.health("tiny") == "SERVING"


def test_list_models_and_metadata(client: InferenceClient) -> None:
    index = {entry.name: entry for entry in client.list_models()}
    assert set(index) == {"tiny", "slow"}
    assert index["tiny"].state == "READY"
    assert index["tiny"].version == "1"
    metadata = client.model_metadata("tiny")
    assert metadata.name == "tiny"
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [
        ("input", "FP32", (-1, 1, SIDE, SIDE))
    ]
    assert [(t.name, t.shape) for t in metadata.outputs] == [("logits", (-1, len(LABELS)))]
    config = client.model_config("tiny")
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [1, SIDE, SIDE]


def test_infer_matches_the_model(client: InferenceClient) -> None:
    batch = np.random.default_rng(0).standard_normal((5, 1, SIDE, SIDE)).astype(np.float32)
    outputs = client.infer("tiny", {"input": batch})
    assert set(outputs) == {"logits"}
    np.testing.assert_allclose(outputs["logits"], tiny_logits(batch), rtol=1e-5, atol=1e-5)
    # A bare array is the only input; the result is an ordinary writable array.
    logits = client.infer("tiny", batch[:1], outputs=["logits"])["logits"]
    assert logits.shape == (1, len(LABELS)) and logits.flags.writeable


def test_classify_accepts_every_image_kind(client: InferenceClient, image_files: dict) -> None:
    white = image_files["white"]
    black = image_files["black"]
    results = client.classify(
        [
            white,  # path
            str(black),  # str path
            white.read_bytes(),  # encoded bytes
            Image.open(black),  # PIL image
            np.full((10, 10), 255, dtype=np.uint8),  # HxW pixels
            np.zeros((9, 9, 3), dtype=np.uint8),  # HxWxC pixels
            np.ones((1, SIDE, SIDE), dtype=np.float32),  # preprocessed CHW tensor
        ],
        model="tiny",
        top_k=2,
    )
    assert [r.label for r in results] == ["bright", "dark", "bright", "dark", "bright", "dark", "bright"]
    for result in results:
        assert isinstance(result, Classification)
        assert len(result.classes) == 2
        assert result.classes[0].score >= result.classes[1].score
        assert 0.0 < result.score <= 1.0
        assert (result.model, result.version) == ("tiny", "1")
    # The tensor path and the image path agree on the scores of the same pixels.
    assert results[6].score == pytest.approx(results[0].score, rel=1e-5)
    assert results[0].classes[0].index == 0 and results[0].classes[0].label == LABELS[0]


def test_classify_uses_the_default_model(client: InferenceClient, image_files: dict) -> None:
    [result] = client.classify(image_files["black"], top_k=3)
    assert result.label == "dark"
    assert len(result.classes) == 3
    assert sum(c.score for c in result.classes) == pytest.approx(1.0, rel=1e-5)


def test_server_errors_carry_code_and_message(client: InferenceClient, image_files: dict) -> None:
    with pytest.raises(InferenceServerError) as info:
        client.model_metadata("nonexistent")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "nonexistent" in info.value.message
    assert info.value.__suppress_context__  # raised from None: no grpc traceback chained
    with pytest.raises(InferenceServerError) as info:
        client.classify(b"not an image", model="tiny")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not info.value.local


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"input": np.zeros((2, 3, SIDE, SIDE), np.float32)},
            f"input 'input' has shape [2,3,{SIDE},{SIDE}]; "
            f"model 'tiny' expects [N,1,{SIDE},{SIDE}] with N >= 1",
        ),
        (
            {"input": np.zeros((2, 1, SIDE, SIDE), np.float64)},
            "input 'input' has datatype 'FP64'; model 'tiny' expects FP32",
        ),
        (
            {"image": np.zeros((1, 1, SIDE, SIDE), np.float32)},
            "input 'image' is not an input of model 'tiny'",
        ),
        ({"input": np.zeros((0, 1, SIDE, SIDE), np.float32)}, "with N >= 1"),
    ],
)
def test_client_side_validation_names_value_and_expectation(
    client: InferenceClient, inputs: dict, message: str
) -> None:
    with pytest.raises(InferenceServerError) as info:
        client.infer("tiny", inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.local
    assert message in info.value.message


def test_client_and_server_give_the_same_message(client: InferenceClient) -> None:
    """The same bad shape, sent past the client's check, gets the same words from the server."""
    from clients import convert
    from clients.types import TensorMetadata
    from protocol import grpc_service_pb2_grpc

    bad = np.zeros((2, 3, SIDE, SIDE), np.float32)
    with pytest.raises(InferenceServerError) as local:
        client.infer("tiny", bad)
    request = convert.infer_request("tiny", [(TensorMetadata("input", "FP32", ()), bad)])
    with grpc.insecure_channel(client.url) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as remote:
            stub.ModelInfer(request, timeout=10)
    assert remote.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert remote.value.details() == local.value.message


def test_timeout_is_deadline_exceeded(client: InferenceClient) -> None:
    started = time.monotonic()
    with pytest.raises(InferenceServerError) as info:
        client.infer("slow", np.zeros((1, 1, SIDE, SIDE), np.float32), timeout=0.3)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5


def test_unreachable_server_is_unavailable() -> None:
    with InferenceClient("127.0.0.1:1", timeout=2) as c, pytest.raises(InferenceServerError) as info:
        c.server_live()
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_bad_image_array_is_refused_before_sending(client: InferenceClient) -> None:
    with pytest.raises(InferenceServerError, match=r"image 0 is an array of shape \[4, 4, 2\]"):
        client.classify(np.zeros((4, 4, 2), np.uint8), model="tiny")
    with pytest.raises(ValueError, match="top_k is 0"):
        client.classify(np.zeros((4, 4), np.uint8), model="tiny", top_k=0)


def test_tls_options(server: RunningServer) -> None:
    with pytest.raises(ValueError, match="private_key and certificate_chain must be given together"):
        InferenceClient(server.address, private_key=b"key")
    # A TLS client cannot talk to the plain-text test server: it fails with a status, not a hang.
    with (
        InferenceClient(server.address, ssl=True, timeout=3) as c,
        pytest.raises(InferenceServerError) as info,
    ):
        c.server_live()
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
