"""Property-based fuzzing of ModelInfer and Classify against a real server.

Every request, however malformed, is answered with a valid response or a clean error
(a documented status, never UNKNOWN or INTERNAL), and the server stays up. CI runs
``FUZZ_EXAMPLES`` (default 150) examples per test; ``scripts/reliability.py`` runs more.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from typing import TypeVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_testlib import CLEAN_CODES, ServerThread, png_bytes

from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc
from protocol import image_classification_pb2 as img_pb
from protocol import image_classification_pb2_grpc as img_grpc

T = TypeVar("T")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
#: Requests whose shape holds more elements than this get data of a wrong size instead.
MAX_EXACT = 8192
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="FUZZ_SEED" not in os.environ,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)
#: Outcome counts per test, read by scripts/reliability.py.
OUTCOMES: dict[str, Counter[str]] = {"infer": Counter(), "classify": Counter()}

DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", "", "fp32"]
SHAPES = {"tiny": (1, 8, 8), "tinyrgb": (3, 8, 8), "wide": (1, 16, 16)}
ITEMSIZE = {"FP32": 4, "FP16": 2, "FP64": 8, "INT8": 1, "INT32": 4, "INT64": 8, "UINT8": 1, "BOOL": 1}


def mostly(good: st.SearchStrategy[T], bad: st.SearchStrategy[T], share: int = 9) -> st.SearchStrategy[T]:
    """``good`` in ``share`` draws of ``share + 1``: most requests must get past the checks before them."""
    return st.integers(0, share).flatmap(lambda i: bad if i == share else good)


# Nine requests in ten name a loaded model and a version it has ("" or "1"), so that they reach
# the decoders instead of stopping at NOT_FOUND; the rest probe the name and version checks.
MODELS = ["tiny", "tinyrgb", "wide"]
names = mostly(
    st.sampled_from(MODELS),
    st.sampled_from(["", "nope", "../tiny", "tiny/..", "/etc/passwd", "tiny\x00"]) | st.text(max_size=40),
)
versions = mostly(
    st.sampled_from(["", "", "1"]), st.sampled_from(["2", "01", "-1", "1/../x"]) | st.text(max_size=10)
)
param_values = st.one_of(
    st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=20)),
    st.builds(lambda v: pb.InferParameter(double_param=v), st.floats()),
    st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
)
params = st.dictionaries(
    st.sampled_from(["classification", "priority", "timeout", "x", ""]), param_values, max_size=3
)
#: A requested output's parameters: mostly none or a valid classification count.
output_params = mostly(
    st.dictionaries(
        st.just("classification"), st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(1, 6))
    ),
    params,
    share=3,
)


def float_values(count: int) -> st.SearchStrategy[list[float]]:
    """``count`` float32 values: a few drawn ones, repeated (hypothesis cannot draw lists that long)."""
    if count == 0:
        return st.just([])
    return st.lists(st.floats(width=32), min_size=1, max_size=16).map(
        lambda values: [values[i % len(values)] for i in range(count)]
    )


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    model = draw(names)
    request = pb.ModelInferRequest(
        model_name=model, model_version=draw(versions), id=draw(st.text(max_size=8))
    )
    for key, value in draw(params).items():
        request.parameters[key].CopyFrom(value)
    sample = SHAPES.get(model, (1, 8, 8))
    n_inputs = draw(mostly(st.just(1), st.sampled_from([0, 2])))
    for i in range(n_inputs):
        datatype = draw(mostly(st.just("FP32"), st.sampled_from(DATATYPES), share=4))
        # Mostly the model's own sample shape with a batch it accepts, then any batch, then anything.
        shape = draw(
            mostly(
                st.builds(lambda n: [n, *sample], st.integers(1, 4)),
                st.builds(lambda n: [n, *sample], st.integers(-2, 20))
                | st.lists(st.integers(-(2**62), 2**62) | st.integers(-1, 20), max_size=6),
                share=3,
            )
        )
        tensor = request.inputs.add(
            name=draw(mostly(st.just("input"), st.sampled_from(["x", ""]))), datatype=datatype
        )
        tensor.shape.extend(shape)
        for key, value in draw(params).items():
            tensor.parameters[key].CopyFrom(value)
        exact = math.prod(shape) if shape and all(0 <= d <= 64 for d in shape) else 0
        exact = exact if exact <= MAX_EXACT else 0  # larger: sent with a wrong size instead
        mode = draw(
            st.sampled_from(
                ["raw-exact", "raw-exact", "raw-exact", "typed-exact", "raw-random", "typed", "both", "none"]
            )
        )
        if mode in ("raw-exact", "both"):
            data = draw(st.sampled_from([np.nan, np.inf, 0.0, 1.0, -1e30]))
            request.raw_input_contents.append(
                bytes(np.full(exact, data, np.float32).tobytes()[: exact * ITEMSIZE.get(datatype, 4)])
            )
        elif mode == "raw-random":
            request.raw_input_contents.append(draw(st.binary(max_size=2048)))
        if mode == "typed-exact":
            tensor.contents.fp32_contents.extend(draw(float_values(exact)))
        if mode in ("typed", "both"):
            count = draw(st.sampled_from([exact, exact, draw(st.integers(0, 300))]))
            kind = draw(st.sampled_from(["fp32", "int", "int64", "bool", "bytes", "fp64", "uint64"]))
            c = tensor.contents
            if kind == "fp32":
                c.fp32_contents.extend(draw(float_values(count)))
            elif kind == "int":
                c.int_contents.extend([draw(st.integers(-(2**31), 2**31 - 1))] * count)
            elif kind == "int64":
                c.int64_contents.extend([draw(st.integers(-(2**63), 2**63 - 1))] * count)
            elif kind == "bool":
                c.bool_contents.extend([True] * count)
            elif kind == "bytes":
                c.bytes_contents.extend([b"x"] * count)
            elif kind == "fp64":
                c.fp64_contents.extend([draw(st.floats())] * count)
            else:
                c.uint64_contents.extend([draw(st.integers(0, 2**64 - 1))] * count)
        if i == 0 and draw(st.booleans()):
            output = request.outputs.add(name=draw(mostly(st.just("logits"), st.sampled_from(["probs", ""]))))
            for key, value in draw(output_params).items():
                output.parameters[key].CopyFrom(value)
    return request


@pytest.fixture(scope="module")
def channel(bad_input_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(bad_input_server.address) as channel:
        yield channel


def _assert_clean(kind: str, call: object, request: object, timeout: float = 30) -> None:
    try:
        call(request, timeout=timeout)  # type: ignore[operator]
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        OUTCOMES[kind][code.name] += 1
        assert code in CLEAN_CODES, f"{code.name}: {details!r} for {request!r}"[:2000]
        assert details and "Traceback" not in details
        return
    OUTCOMES[kind]["OK"] += 1


@FUZZ
@given(request=infer_requests())
def test_fuzz_model_infer(request: pb.ModelInferRequest, channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    _assert_clean("infer", stub.ModelInfer, request)


def _mangle(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(0, len(data) - cut)])
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    return bytes(out)


images = st.builds(
    _mangle,
    st.sampled_from(
        [png_bytes((9, 9)), png_bytes((30, 7), "RGB"), png_bytes((5, 5), "RGB", "JPEG"),
         png_bytes((4, 4), "P", "GIF"),
         png_bytes((6, 6), "RGBA", "WEBP"), png_bytes((3, 3), "I;16"), png_bytes((4, 4), "F", "TIFF"),
         png_bytes((8, 8), "1", "BMP"), png_bytes((5, 3), "LA")]
    ),
    st.sampled_from([0, 0, 0, 1, 10, 40]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
) | st.binary(max_size=200)  # fmt: skip
#: Images that decode: each format and mode as it was saved.
clean_images = st.sampled_from(
    [png_bytes((9, 9)), png_bytes((30, 7), "RGB"), png_bytes((5, 5), "RGB", "JPEG"),
     png_bytes((4, 4), "P", "GIF"), png_bytes((6, 6), "RGBA", "WEBP"), png_bytes((3, 3), "I;16"),
     png_bytes((8, 8), "1", "BMP")]
)  # fmt: skip


@FUZZ
@given(
    model=mostly(st.sampled_from(MODELS), st.sampled_from(["", "nope", "../x"])),
    version=versions,
    shots=mostly(st.lists(clean_images, min_size=1, max_size=4), st.lists(images, max_size=18), share=1),
    top_k=st.integers(-5, 50),
)
def test_fuzz_classify(
    model: str, version: str, shots: list[bytes], top_k: int, channel: grpc.Channel
) -> None:
    stub = img_grpc.ImageClassificationStub(channel)
    request = img_pb.ClassifyRequest(
        model_name=model, model_version=version, images=shots, top_k=max(0, top_k)
    )
    _assert_clean("classify", stub.Classify, request)


def test_fuzzing_reached_the_decoders() -> None:
    """Most generated requests got past model lookup: decoded and answered, or refused as invalid."""
    for kind, outcomes in OUTCOMES.items():
        total = sum(outcomes.values())
        if total < EXAMPLES:
            pytest.skip(f"test_fuzz_{kind} did not run in this session")
        past_lookup = outcomes["OK"] + outcomes["INVALID_ARGUMENT"]
        figures = f"{kind}: {dict(outcomes)}"
        assert outcomes["NOT_FOUND"] < total * 0.25, figures
        assert past_lookup > total * 0.6, figures
        assert outcomes["OK"] > total * 0.1, figures


def test_server_healthy_after_fuzzing(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tiny", "tinyrgb", "wide"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
