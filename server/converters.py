"""Protocol conversion: KServe v2 protobuf messages <-> numpy arrays.

The only module that knows the wire layout of tensors: ``raw_input_contents``
(little-endian, row-major bytes; BYTES elements as 4-byte little-endian length +
payload) and the typed ``contents`` fields. Outputs go back in
``raw_output_contents`` as the reference server (Triton) does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from modelrepo import ModelConfig
from protocol import grpc_service_pb2 as pb
from server.errors import InvalidInput

#: KServe datatype -> numpy dtype; BYTES elements are Python ``bytes`` in an object array.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPE_OF: dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

#: Which typed ``contents`` field carries each datatype (FP16 and BF16 have none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LENGTH = struct.Struct("<I")


def shape_str(shape: Sequence[int | str]) -> str:
    """``[2,3,32,32]``: the compact form used in error messages."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> raw wire form: each element as 4-byte LE length + bytes, row-major."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, count: int, name: str = "") -> np.ndarray:
    """Raw wire form of a BYTES tensor -> flat object array of ``count`` elements."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element length at byte {offset}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(
                f"input {name!r}: BYTES element {len(items)} claims {length} bytes; "
                f"only {len(raw) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input {name!r} holds {len(items)} BYTES elements; its shape needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def tensor_to_array(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """Decode one input tensor from its raw bytes (if given) or its typed contents.

    Checks the datatype name, that the shape is non-negative, and that the byte or
    element count matches the shape. The array shares memory with ``raw`` (read-only).
    """
    name, datatype = tensor.name, tensor.datatype
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r} has datatype {datatype!r}; expected one of {sorted(DTYPES)}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r} has shape {shape_str(shape)}; dimensions must be >= 0")
    # Python integers: np.prod in int64 wraps around for hostile shapes and could match the data.
    count = math.prod(shape)
    # A zero dimension makes the count 0 whatever the others are; numpy still refuses a shape
    # whose other dimensions describe more than it can index.
    if count == 0 and math.prod(max(d, 1) for d in shape) * max(dtype.itemsize, 1) >= 2**63:
        raise InvalidInput(
            f"input {name!r} has shape {shape_str(shape)}; its dimensions describe more than 2**63 bytes"
        )
    if raw is not None:
        if datatype == "BYTES":
            return deserialize_bytes(raw, count, name).reshape(shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"input {name!r} has {len(raw)} bytes of raw data; shape {shape_str(shape)} "
                f"of {datatype} needs {expected}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r} of datatype {datatype} must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r} has {len(values)} values in contents.{field}; "
            f"shape {shape_str(shape)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"input {name!r} has values out of range for {datatype}") from None


def array_to_raw(array: np.ndarray) -> tuple[str, bytes]:
    """An output array -> (KServe datatype, raw little-endian bytes)."""
    datatype = DATATYPE_OF.get(array.dtype)
    if datatype is None:
        raise TypeError(f"output dtype {array.dtype} has no KServe datatype")
    if datatype == "BYTES":
        return datatype, serialize_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return datatype, array.tobytes()


def classify(scores: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: top ``k`` per sample as ``b"score:index:label"``.

    ``scores`` is ``[N, C]``; the result is an object array ``[N, min(k, C)]`` of
    bytes, best first, ties broken by the lower index. The score is the output value
    itself, printed like C++ ``std::to_string(float)`` (``%f``); the label part is
    left out for an index without a label, as Triton does.
    """
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    result = np.empty(order.shape, dtype=object)
    for row, indices in enumerate(order):
        for col, index in enumerate(indices):
            text = f"{float(scores[row, index]):f}:{index}"
            if index < len(labels) and labels[index]:
                text += ":" + labels[index]
            result[row, col] = text.encode()
    return result


def parse_class_count(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    """The ``classification`` parameter of a requested output, or 0 when absent."""
    if "classification" not in output.parameters:
        return 0
    param = output.parameters["classification"]
    choice = param.WhichOneof("parameter_choice")
    value: object = getattr(param, choice) if choice else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(
            f"output {output.name!r} has classification parameter {value!r}; expected a positive integer"
        )
    return value


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits.astype(np.float32, copy=False) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


class ModelSignature(Protocol):
    """What request validation needs to know about a loaded model."""

    name: str
    version: int
    input_name: str
    output_names: list[str]
    dtype: np.dtype
    sample_shape: tuple[int, ...]
    max_batch_size: int

    @property
    def config(self) -> ModelConfig: ...


#: A requested output: its name and the classification count (0: the plain tensor).
RequestedOutput = tuple[str, int]


def decode_request(request: pb.ModelInferRequest, model: ModelSignature) -> np.ndarray:
    """Validate a ModelInferRequest against the model and return its input batch ``[N, *shape]``."""
    spec = model.config.input
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InvalidInput(
            f"model {model.name!r} expects 1 input [{spec.name!r}]; the request has {len(names)}: {names}"
        )
    tensor = request.inputs[0]
    if tensor.name != spec.name:
        raise InvalidInput(
            f"input {tensor.name!r} is not an input of model {model.name!r}; expected {spec.name!r}"
        )
    if tensor.datatype != spec.datatype:
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype!r}; "
            f"model {model.name!r} expects {spec.datatype}"
        )
    shape = tuple(tensor.shape)
    if len(shape) != len(spec.shape) + 1 or shape[1:] != spec.shape or shape[0] < 1:
        raise InvalidInput(
            f"input {tensor.name!r} has shape {shape_str(shape)}; model {model.name!r} expects "
            f"{shape_str(['N', *spec.shape])} with N >= 1"
        )
    if shape[0] > model.max_batch_size:
        # Checked before any data is touched: the count a huge N implies is never materialised.
        raise InvalidInput(
            f"input {tensor.name!r} has batch size {shape[0]}; model {model.name!r} "
            f"accepts at most {model.max_batch_size}"
        )
    raw_contents = request.raw_input_contents
    if raw_contents:
        if tensor.contents.ListFields():
            raise InvalidInput(
                f"input {tensor.name!r} has both raw_input_contents and contents; expected only one of them"
            )
        if len(raw_contents) != 1:
            raise InvalidInput(
                f"request has {len(raw_contents)} raw_input_contents for {len(request.inputs)} inputs; "
                "expected one per input"
            )
        raw = raw_contents[0]
        dtype = model.dtype
        if dtype.kind != "O":
            # The hot path: name, datatype and shape are checked above; only the size is left.
            expected = math.prod(shape) * dtype.itemsize
            if len(raw) != expected:
                raise InvalidInput(
                    f"input {tensor.name!r} has {len(raw)} bytes of raw data; shape {shape_str(shape)} "
                    f"of {tensor.datatype} needs {expected}"
                )
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
        return tensor_to_array(tensor, raw)
    return tensor_to_array(tensor, None)


def requested_outputs(request: pb.ModelInferRequest, model: ModelSignature) -> list[RequestedOutput]:
    """The outputs to return: every model output when none is requested."""
    if not request.outputs:
        return [(name, 0) for name in model.output_names]
    result = []
    for output in request.outputs:
        if output.name not in model.output_names:
            raise InvalidInput(
                f"output {output.name!r} is not an output of model {model.name!r}; expected one of "
                f"{model.output_names}"
            )
        result.append((output.name, parse_class_count(output)))
    return result


def encode_response(
    request: pb.ModelInferRequest,
    model: ModelSignature,
    result: np.ndarray,
    outputs: Sequence[RequestedOutput],
) -> pb.ModelInferResponse:
    """Build the ModelInferResponse for one request's slice of the model output."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for name, class_count in outputs:
        array = classify(result, class_count, model.config.labels) if class_count else result
        datatype, raw = array_to_raw(array)
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(raw)
    return response
