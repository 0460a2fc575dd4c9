"""The error table: each bad request gets its status code and a message naming value and expectation."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from server_testlib import Running, infer_request

from protocol import grpc_service_pb2 as pb

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _good() -> pb.ModelInferRequest:
    return infer_request("tiny", np.zeros((2, 1, 8, 8), dtype=np.float32))


def _mutate(change: str) -> pb.ModelInferRequest:
    request = _good()
    tensor = request.inputs[0]
    if change == "unknown model":
        request.model_name = "nope"
    elif change == "unknown version":
        request.model_version = "9"
    elif change == "datatype":
        tensor.datatype = "FP64"
    elif change == "unknown datatype":
        tensor.datatype = "FLOAT"
    elif change == "shape":
        del tensor.shape[:]
        tensor.shape.extend([2, 3, 32, 32])
    elif change == "rank":
        del tensor.shape[:]
        tensor.shape.extend([1, 8, 8])
    elif change == "byte count":
        request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    elif change == "input name":
        tensor.name = "image"
    elif change == "two inputs":
        request.inputs.add(name="extra", datatype="FP32", shape=[1])
    elif change == "typed count":
        del request.raw_input_contents[:]
        tensor.contents.fp32_contents.extend([0.0] * 5)
    elif change == "output name":
        request.outputs.add(name="probs")
    elif change == "classification":
        request.outputs.add(name="logits").parameters["classification"].int64_param = 0
    elif change == "batch too large":
        del tensor.shape[:]
        tensor.shape.extend([17, 1, 8, 8])
        request.raw_input_contents[0] = np.zeros((17, 1, 8, 8), dtype=np.float32).tobytes()
    return request


ERROR_TABLE = [
    ("unknown model", NOT_FOUND, "unknown model 'nope'"),
    ("unknown version", NOT_FOUND, "model 'tiny' version '9' is not loaded; loaded version: 1"),
    ("datatype", INVALID, "input 'input' has datatype 'FP64'; model 'tiny' expects FP32"),
    ("unknown datatype", INVALID, "input 'input' has datatype 'FLOAT'; model 'tiny' expects FP32"),
    ("shape", INVALID, "input 'input' has shape [2,3,32,32]; model 'tiny' expects [N,1,8,8]"),
    ("rank", INVALID, "input 'input' has shape [1,8,8]; model 'tiny' expects [N,1,8,8]"),
    ("byte count", INVALID, "input 'input' has 508 bytes of raw data; shape [2,1,8,8] of FP32 needs 512"),
    ("input name", INVALID, "input 'image' is not an input of model 'tiny'; expected 'input'"),
    ("two inputs", INVALID, "model 'tiny' expects 1 input ['input']; the request has 2"),
    (
        "typed count",
        INVALID,
        "input 'input' has 5 values in contents.fp32_contents; shape [2,1,8,8] needs 128",
    ),
    ("output name", INVALID, "output 'probs' is not an output of model 'tiny'"),
    (
        "classification",
        INVALID,
        "output 'logits' has classification parameter 0; expected a positive integer",
    ),
    ("batch too large", INVALID, "input 'input' has batch size 17; model 'tiny' accepts at most 16"),
]


@pytest.mark.parametrize(("change", "code", "message"), ERROR_TABLE, ids=[row[0] for row in ERROR_TABLE])
async def test_infer_error_table(running: Running, change: str, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.infer.ModelInfer(_mutate(change))
    assert info.value.code() == code
    assert message in (info.value.details() or "")
    assert "Traceback" not in (info.value.details() or "")
    # One bad request disturbs nothing: the next good one succeeds.
    assert (await running.infer.ModelInfer(_good())).outputs[0].name == "logits"


async def test_metadata_errors(running: Running) -> None:
    for call, request in (
        (running.infer.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
        (running.infer.ModelConfig, pb.ModelConfigRequest(name="nope")),
        (running.infer.ModelStatistics, pb.ModelStatisticsRequest(name="nope")),
        (running.infer.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="nope")),
        (running.infer.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request)
        assert info.value.code() == NOT_FOUND, call
        assert "'nope'" in (info.value.details() or "")


async def test_load_rejects_path_names(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="../tiny"))
    assert info.value.code() == INVALID
    assert "model name '../tiny' is not valid" in (info.value.details() or "")


async def test_unexpected_error_is_internal_without_traceback(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    # No valid or invalid request reaches an unexpected error, so break the loaded model from
    # inside: ONNX Runtime then raises while computing the batch.
    model = running.server.manager.get("tiny")
    model.output_names[0] = "no_such_output"
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.infer.ModelInfer(_good())
    finally:
        model.output_names[0] = "logits"
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details() or ""
    assert "Traceback" not in details and "no_such_output" not in details
    assert "internal server error" in details
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)


async def test_bytes_that_are_no_request_message_get_invalid_argument(running: Running) -> None:
    """Bytes that are not the method's protobuf message get INVALID_ARGUMENT naming it (not UNKNOWN).

    grpc alone answers UNKNOWN naming the parser's exception; on a stream, the bad message gets an
    error answer and the next one is served.
    """
    garbage = b"\xff\xff\xff\xff not protobuf"
    for method, message in (
        ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
        ("/inference.GRPCInferenceService/ModelMetadata", "inference.ModelMetadataRequest"),
        ("/cnnserve.v1.ImageClassification/Classify", "cnnserve.v1.ClassifyRequest"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await running.channel.unary_unary(method)(garbage, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert f"is not a valid {message} message" in (info.value.details() or "")
    # On a stream, the bad message gets an error answer and the next one is served.
    good = infer_request("tiny", np.zeros((1, 1, 8, 8), np.float32), request_id="after").SerializeToString()
    call = running.channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )(iter([garbage, good]), timeout=5)
    answers = [answer async for answer in call]
    assert "is not a valid inference.ModelInferRequest message" in answers[0].error_message
    assert answers[1].error_message == "" and answers[1].infer_response.id == "after"
