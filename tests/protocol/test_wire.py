"""The generated protocol modules match the public KServe v2 / Triton wire format."""

from __future__ import annotations

import subprocess
import sys

import pytest

from protocol import grpc_service_pb2, image_classification_pb2, model_config_pb2

# (message, field, number) from the public definitions: a client built from them
# must read and write the same bytes as ours.
PUBLIC_FIELD_NUMBERS = [
    (grpc_service_pb2.ModelInferRequest, "model_name", 1),
    (grpc_service_pb2.ModelInferRequest, "model_version", 2),
    (grpc_service_pb2.ModelInferRequest, "id", 3),
    (grpc_service_pb2.ModelInferRequest, "parameters", 4),
    (grpc_service_pb2.ModelInferRequest, "inputs", 5),
    (grpc_service_pb2.ModelInferRequest, "outputs", 6),
    (grpc_service_pb2.ModelInferRequest, "raw_input_contents", 7),
    (grpc_service_pb2.ModelInferRequest.InferInputTensor, "contents", 5),
    (grpc_service_pb2.ModelInferResponse, "outputs", 5),
    (grpc_service_pb2.ModelInferResponse, "raw_output_contents", 6),
    (grpc_service_pb2.InferTensorContents, "fp32_contents", 6),
    (grpc_service_pb2.InferTensorContents, "bytes_contents", 8),
    (grpc_service_pb2.InferParameter, "int64_param", 2),
    (grpc_service_pb2.ModelStreamInferResponse, "infer_response", 2),
    (grpc_service_pb2.ModelMetadataResponse, "inputs", 4),
    (grpc_service_pb2.ModelStatistics, "inference_count", 4),
    (grpc_service_pb2.ModelStatistics, "execution_count", 5),
    (grpc_service_pb2.ModelStatistics, "inference_stats", 6),
    (grpc_service_pb2.RepositoryIndexResponse.ModelIndex, "reason", 4),
    (grpc_service_pb2.RepositoryModelLoadRequest, "model_name", 2),
    (model_config_pb2.ModelConfig, "max_batch_size", 4),
    (model_config_pb2.ModelConfig, "input", 5),
    (model_config_pb2.ModelConfig, "output", 6),
    (model_config_pb2.ModelConfig, "instance_group", 7),
    (model_config_pb2.ModelConfig, "dynamic_batching", 11),
    (model_config_pb2.ModelInput, "dims", 4),
    (model_config_pb2.ModelOutput, "dims", 3),
    (model_config_pb2.ModelInstanceGroup, "kind", 4),
    (model_config_pb2.ModelDynamicBatching, "max_queue_delay_microseconds", 2),
]


@pytest.mark.parametrize(("message", "field", "number"), PUBLIC_FIELD_NUMBERS)
def test_field_numbers_match_public_definition(message: type, field: str, number: int) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number


def test_service_and_methods_match_public_names() -> None:
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    methods = {m.name for m in service.methods}
    assert {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    } <= methods
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming


def test_datatype_enum_values_match_public_definition() -> None:
    assert model_config_pb2.TYPE_FP32 == 11
    assert model_config_pb2.TYPE_STRING == 13
    assert model_config_pb2.TYPE_BF16 == 14


def test_round_trip_keeps_raw_contents() -> None:
    request = grpc_service_pb2.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00\x01"])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    parsed = grpc_service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert image_classification_pb2.ClassifyRequest(top_k=3).top_k == 3


def test_importing_protocol_pulls_in_no_runtime() -> None:
    code = (
        "import sys, protocol.grpc_service_pb2_grpc, protocol.image_classification_pb2_grpc;"
        "bad = [m for m in ('onnxruntime', 'torch') if m in sys.modules];"
        "sys.exit(str(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
