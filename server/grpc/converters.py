"""Protobuf messages <-> the core's plain types (:mod:`server.types`).

The only module that knows the gRPC wire form of tensors: ``raw_input_contents`` (the v2
binary layout, handed to the core as bytes) or the typed ``contents`` fields (decoded
here, by the datatype table's ``contents_field``). Outputs go back in
``raw_output_contents``, as the reference server (Triton) sends them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf import json_format

from modelrepo.datatypes import DATATYPES
from protocol import grpc_service_pb2 as pb
from protocol import image_classification_pb2 as img_pb
from protocol import model_config_pb2 as mc
from server import tensors
from server.errors import InvalidInput
from server.types import (
    ClassifyRequest,
    ClassifyResponse,
    InferRequest,
    InferResponse,
    InputTensor,
    ModelConfiguration,
    ModelMetadata,
    ModelStatistics,
    RepositoryEntry,
    RequestedOutput,
    ServerMetadata,
    TensorData,
)

_EMPTY = np.empty(0, dtype=np.float32)


def parameter_value(param: Any) -> object:
    """An ``InferParameter`` / ``ModelRepositoryParameter`` as a plain value (None: unset)."""
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _parameters(params: Any) -> dict[str, object]:
    return {key: parameter_value(value) for key, value in params.items()}


def _refusal(message: str) -> Callable[[], TensorData]:
    """Data that is a wire-format problem: reported once the core has checked the tensor's header."""

    def refuse() -> TensorData:
        raise InvalidInput(message)

    return refuse


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> InputTensor:
    shape = tuple(tensor.shape)
    datatype = DATATYPES.get(tensor.datatype)
    if datatype is None:
        # The core refuses the datatype by the model's (it has one); no field to read.
        return InputTensor(tensor.name, tensor.datatype, shape, _EMPTY)
    field = datatype.contents_field
    if field is None:
        problem = f"input {tensor.name!r} of datatype {tensor.datatype} must be sent in raw_input_contents"
        return InputTensor(tensor.name, tensor.datatype, shape, _refusal(problem))
    values = getattr(tensor.contents, field)
    return InputTensor(
        tensor.name,
        tensor.datatype,
        shape,
        lambda: tensors.values_array(tensor.name, tensor.datatype, values),
        source=f"contents.{field}",
    )


def _raw(request: pb.ModelInferRequest, index: int) -> InputTensor:
    tensor = request.inputs[index]
    shape = tuple(tensor.shape)
    raw_contents = request.raw_input_contents
    if tensor.contents.ListFields():
        problem = f"input {tensor.name!r} has both raw_input_contents and contents; expected only one of them"
        return InputTensor(tensor.name, tensor.datatype, shape, _refusal(problem))
    if len(raw_contents) != len(request.inputs):
        problem = (
            f"request has {len(raw_contents)} raw_input_contents for {len(request.inputs)} inputs; "
            "expected one per input"
        )
        return InputTensor(tensor.name, tensor.datatype, shape, _refusal(problem))
    return InputTensor(tensor.name, tensor.datatype, shape, raw_contents[index])


def infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest as the core's request: raw contents stay bytes, typed ones are decoded
    when the core asks (after its checks of names, datatypes and shapes)."""
    if request.raw_input_contents:
        inputs = [_raw(request, i) for i in range(len(request.inputs))]
    else:
        inputs = [_contents(t) for t in request.inputs]
    return InferRequest(
        model_name=request.model_name,
        inputs=inputs,
        model_version=request.model_version,
        id=request.id,
        outputs=[RequestedOutput(o.name, _parameters(o.parameters)) for o in request.outputs],
    )


def infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for output in response.outputs:
        raw = tensors.raw_bytes(output)
        tensor = message.outputs.add()
        tensor.name = output.name
        tensor.datatype = output.datatype
        tensor.shape.extend(output.shape)
        message.raw_output_contents.append(raw)
    return message


def classify_request(request: img_pb.ClassifyRequest) -> ClassifyRequest:
    return ClassifyRequest(
        images=request.images,
        model_name=request.model_name,
        model_version=request.model_version,
        top_k=request.top_k,
    )


def classify_response(response: ClassifyResponse) -> img_pb.ClassifyResponse:
    message = img_pb.ClassifyResponse(model_name=response.model_name, model_version=response.model_version)
    for scores in response.results:
        result = message.results.add()
        for score in scores:
            result.classes.add(index=score.index, label=score.label, score=score.score)
    return message


def server_metadata(metadata: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(**metadata)


def model_metadata(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    return json_format.ParseDict(dict(metadata), pb.ModelMetadataResponse())


def model_config(config: ModelConfiguration) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))


def model_statistics(statistics: ModelStatistics) -> pb.ModelStatisticsResponse:
    return json_format.ParseDict(statistics, pb.ModelStatisticsResponse())


def repository_index(entries: list[RepositoryEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries])


def load_parameters(request: pb.RepositoryModelLoadRequest) -> dict[str, object]:
    return _parameters(request.parameters)
