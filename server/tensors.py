"""Tensors in the core: an inference request's input checked against its model, and answers.

Protocol-neutral: the edges hand over :class:`~server.types.InputTensor` (raw bytes in
the v2 binary layout, or values they decoded) and turn :class:`~server.types.OutputTensor`
back into their wire form. Every check names the bad value and what the model expects.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from modelrepo import ModelConfig
from modelrepo.datatypes import DATATYPES, datatype_of
from server.errors import InvalidInput
from server.types import InferRequest, OutputTensor

_LENGTH = struct.Struct("<I")


def shape_str(shape: Sequence[int | str]) -> str:
    """``[2,3,32,32]``: the compact form used in error messages."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor -> its v2 binary form: each element as 4-byte LE length + bytes, row-major."""
    parts = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def raw_bytes(tensor: OutputTensor) -> bytes:
    """An output tensor's bytes in the v2 binary layout (both edges' binary form)."""
    array = tensor.data
    if tensor.datatype == "BYTES":
        return serialize_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


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


def class_count(output: str, value: object) -> int:
    """The ``classification`` parameter of requested output ``output`` (None: absent, 0)."""
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(
            f"output {output!r} has classification parameter {value!r}; expected a positive integer"
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


def input_batch(request: InferRequest, model: ModelSignature) -> np.ndarray:
    """Check a request's input against the model and return the batch ``[N, *shape]``.

    Name, datatype, shape and batch size are checked before the data is touched, so the
    element count a huge N implies is never materialised. Raw bytes become a read-only
    array sharing their memory.
    """
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
    shape = tensor.shape
    if len(shape) != len(spec.shape) + 1 or shape[1:] != spec.shape or shape[0] < 1:
        raise InvalidInput(
            f"input {tensor.name!r} has shape {shape_str(shape)}; model {model.name!r} expects "
            f"{shape_str(['N', *spec.shape])} with N >= 1"
        )
    if shape[0] > model.max_batch_size:
        raise InvalidInput(
            f"input {tensor.name!r} has batch size {shape[0]}; model {model.name!r} "
            f"accepts at most {model.max_batch_size}"
        )
    data = tensor.data
    if callable(data):
        data = data()
    count = math.prod(shape)
    if isinstance(data, np.ndarray):
        if data.size != count:
            raise InvalidInput(
                f"input {tensor.name!r} has {data.size} values in {tensor.source}; "
                f"shape {shape_str(shape)} needs {count}"
            )
        return data.astype(model.dtype, copy=False).reshape(shape)
    expected = count * model.dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"input {tensor.name!r} has {len(data)} bytes of raw data; shape {shape_str(shape)} "
            f"of {tensor.datatype} needs {expected}"
        )
    return np.frombuffer(data, dtype=model.dtype).reshape(shape)


def requested_outputs(request: InferRequest, model: ModelSignature) -> list[RequestedOutput]:
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
        result.append((output.name, class_count(output.name, output.parameters.get("classification"))))
    return result


def output_tensors(
    model: ModelSignature, result: np.ndarray, outputs: Sequence[RequestedOutput]
) -> list[OutputTensor]:
    """One request's slice of the model output as the requested tensors."""
    tensors = []
    for name, count in outputs:
        array = classify(result, count, model.config.labels) if count else result
        datatype = datatype_of(array.dtype)
        if datatype is None:  # pragma: no cover - model datatypes all have a name (modelrepo.config)
            raise TypeError(f"output dtype {array.dtype} has no KServe datatype")
        tensors.append(OutputTensor(name, datatype, array))
    return tensors


def values_array(name: str, datatype: str, values: Sequence[object] | np.ndarray) -> np.ndarray:
    """Decoded values (typed contents, JSON data) as a flat array of ``datatype``."""
    known = DATATYPES.get(datatype)
    if known is None:
        raise InvalidInput(f"input {name!r} has datatype {datatype!r}; expected one of {sorted(DATATYPES)}")
    if known.variable_size:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array
    if not isinstance(values, np.ndarray):
        # As Python numbers: numpy casts a protobuf repeated field (read as uint32, int64, ...)
        # down without a word (300 -> 44 for UINT8), but refuses a Python int out of range.
        values = list(values)
    try:
        return np.asarray(values, dtype=known.dtype).reshape(-1)
    except OverflowError:
        raise InvalidInput(f"input {name!r} has values out of range for {datatype}") from None
