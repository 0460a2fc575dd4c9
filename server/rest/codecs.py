"""HTTP bodies <-> the core's plain types: KServe v2 JSON and Triton's binary tensor extension.

An inference body is a JSON object, optionally followed by binary tensor data: the
``Inference-Header-Content-Length`` header then gives the JSON part's length, and each
input sent that way has ``parameters.binary_data_size``, its bytes following in the order
of the inputs, in the v2 binary layout the gRPC edge's ``raw_input_contents`` also uses.
Outputs go back as JSON ``data`` unless the request asks for binary data (an output's
``parameters.binary_data``, or the request's ``parameters.binary_data_output``).

Everything here is pure: bytes in, plain types out, or :class:`InvalidInput` naming the
problem. Decoding a tensor's values is left to the core's call (see ``InputTensor.data``),
so the model's checks of names, datatypes and shapes come first, as on gRPC.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrepo.datatypes import DATATYPES
from server import tensors
from server.errors import InvalidInput
from server.types import (
    ClassifyResponse,
    InferRequest,
    InferResponse,
    InputTensor,
    RequestedOutput,
    TensorData,
)

#: The header of Triton's binary tensor data extension.
HEADER_LENGTH = "inference-header-content-length"

_INT_KINDS = "iu"
_NO_HEADER_LENGTH = (
    "; if it is a JSON header followed by binary tensor data, send the Inference-Header-Content-Length "
    "header (the JSON part's length in bytes)"
)


def parse_json(body: bytes, what: str, trailing_hint: str = "") -> Any:
    """A JSON document, or InvalidInput saying where it is malformed.

    ``trailing_hint`` is added when the JSON may be followed by something else (bytes that are
    not UTF-8, or data after the document): the likely cause when the caller knows one.
    """
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InvalidInput(f"the {what} is not UTF-8 JSON{trailing_hint}") from None
    except json.JSONDecodeError as exc:
        hint = trailing_hint if exc.msg == "Extra data" else ""
        raise InvalidInput(f"the {what} is not valid JSON: {exc.msg} at byte {exc.pos}{hint}") from None
    except RecursionError:
        raise InvalidInput(f"the {what} nests too deeply") from None
    except ValueError:
        # Python refuses integers of more than sys.get_int_max_str_digits() digits (4300).
        raise InvalidInput(
            f"the {what} holds an integer of more than {sys.get_int_max_str_digits()} digits"
        ) from None


def _expect(value: object, kind: type | tuple[type, ...], where: str, expected: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        raise InvalidInput(f"{where} is {_described(value)}; expected {expected}")
    return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _described(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool) or value is None else None
    if text is not None and len(text) <= 40:
        return text
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _parameters(value: object, where: str) -> dict[str, object]:
    if value is None:
        return {}
    params = _expect(value, dict, f"{where} parameters", "an object")
    return dict(params)


@dataclass(frozen=True)
class HttpInferRequest:
    """A decoded inference body: the core's request and how the answer is to be encoded."""

    request: InferRequest
    #: Output name -> whether it goes back as binary data (absent: the request's default).
    binary_outputs: dict[str, bool]
    #: The request's ``binary_data_output`` parameter: every output in binary unless it says otherwise.
    binary_default: bool

    def binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part of a body and the binary data after it (empty without the header)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length[:40]!r}; "
            "expected the JSON header's length in bytes"
        )
    # Longer than any body can be: no need to read all the digits (nor to echo them).
    length = int(text) if len(text) <= 18 else len(body) + 1
    if length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {text if len(text) <= 18 else text[:18] + '...'}; "
            f"the body has only {len(body)} bytes"
        )
    view = memoryview(body)
    return body[:length], view[length:]


def infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str
) -> HttpInferRequest:
    """An inference body (JSON, or JSON plus binary tensor data) as the core's request."""
    header, binary = split_body(body, header_length)
    if header_length is None:
        document = parse_json(header, "inference request", _NO_HEADER_LENGTH)
    else:
        document = parse_json(header, "JSON header")
    request = _expect(document, dict, "the inference request", "a JSON object")
    request_id = request.get("id", "")
    _expect(request_id, str, "id", "a string")
    params = _parameters(request.get("parameters"), "request")
    binary_default = _expect(
        params.get("binary_data_output", False), bool, "parameter binary_data_output", "true or false"
    )
    raw_inputs = _expect(request.get("inputs"), list, "inputs", "an array of input tensors")
    inputs = []
    offset = 0
    for index, item in enumerate(raw_inputs):
        tensor, size = _input(item, index, binary, offset)
        inputs.append(tensor)
        offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary)} bytes of binary data after the JSON header; "
            f"the inputs' binary_data_size parameters add up to {offset}"
        )
    outputs = []
    binary_outputs: dict[str, bool] = {}
    for index, item in enumerate(_expect(request.get("outputs", []), list, "outputs", "an array")):
        output = _expect(item, dict, f"outputs[{index}]", "an object")
        name = _expect(output.get("name"), str, f"outputs[{index}].name", "the output's name")
        output_params = _parameters(output.get("parameters"), f"output {name!r}")
        if "binary_data" in output_params:
            binary_outputs[name] = _expect(
                output_params["binary_data"], bool, f"output {name!r} parameter binary_data", "true or false"
            )
        outputs.append(RequestedOutput(name, output_params))
    return HttpInferRequest(
        InferRequest(
            model_name=model_name,
            inputs=inputs,
            model_version=model_version,
            id=request_id,
            outputs=outputs,
            parameters=params,
        ),
        binary_outputs,
        binary_default,
    )


def _input(item: object, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    """One JSON input tensor; the size is its binary data's (0 for JSON data)."""
    where = f"inputs[{index}]"
    tensor = _expect(item, dict, where, "an object with name, datatype, shape and data")
    name = _expect(tensor.get("name"), str, f"{where}.name", "the input's name")
    datatype = _expect(tensor.get("datatype"), str, f"input {name!r} datatype", "a datatype such as FP32")
    raw_shape = _expect(tensor.get("shape"), list, f"input {name!r} shape", "an array of dimensions")
    for d in raw_shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InvalidInput(
                f"input {name!r} has shape {json.dumps(raw_shape)[:80]}; expected non-negative integers"
            )
    shape = tuple(raw_shape)
    params = _parameters(tensor.get("parameters"), f"input {name!r}")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(
                f"input {name!r} has binary_data_size {_described(size)}; expected a byte count >= 0"
            )
        if "data" in tensor:
            raise InvalidInput(f"input {name!r} has both binary_data_size and data; expected one of them")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r} has binary_data_size {size}; only {len(binary) - offset} bytes of binary "
                "data remain after the JSON header"
            )
        return InputTensor(name, datatype, shape, binary[offset : offset + size]), size
    if "data" not in tensor:
        raise InvalidInput(f"input {name!r} has no data; expected data, or binary_data_size with binary data")
    data = tensor["data"]
    return InputTensor(name, datatype, shape, _json_values(name, datatype, data)), 0


def _json_values(name: str, datatype: str, data: object) -> Callable[[], TensorData]:
    """The decoding of a JSON ``data`` field, run by the core after its header checks."""

    def decode() -> TensorData:
        known = DATATYPES.get(datatype)
        if known is None:
            raise InvalidInput(
                f"input {name!r} has datatype {datatype!r}; expected one of {sorted(DATATYPES)}"
            )
        if not isinstance(data, list):
            raise InvalidInput(f"input {name!r} data is {_described(data)}; expected an array of values")
        # The values themselves, flattened: what JSON wrote is what is checked (numpy alone would
        # quietly read [0.5, true] as [0.5, 1.0] and 1e20 written as an integer as no number).
        try:
            flat = np.asarray(data, dtype=object).reshape(-1).tolist()
        except (ValueError, RecursionError):
            flat = [data]
        kinds = set(map(type, flat))
        if list in kinds:
            raise InvalidInput(
                f"input {name!r} data is a ragged or too deeply nested array; expected a flat "
                "array or nested arrays of equal lengths"
            )
        return _typed_values(name, known.name, known.dtype, flat, kinds)

    return decode


#: The Python types JSON gives each kind of datatype's values.
_NUMBERS = frozenset({int, float})
_INTEGERS = frozenset({int})
_BOOLS = frozenset({bool})
_STRINGS = frozenset({str})


def _typed_values(name: str, datatype: str, dtype: np.dtype, flat: list[Any], kinds: set[type]) -> np.ndarray:
    """Flat JSON values (no lists) as an array of ``datatype``, or InvalidInput naming the problem."""
    if datatype == "BYTES":
        if not kinds <= _STRINGS:
            raise InvalidInput(f"input {name!r} of datatype BYTES has non-string data; expected strings")
        return tensors.values_array(name, datatype, [v.encode() for v in flat])
    if datatype == "BOOL":
        if not kinds <= _BOOLS:
            raise InvalidInput(f"input {name!r} of datatype BOOL has data that are not true or false")
        return np.array(flat, dtype=np.bool_)
    if dtype.kind in _INT_KINDS:
        if not kinds <= _INTEGERS:
            raise InvalidInput(f"input {name!r} of datatype {datatype} has data that are not integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidInput(f"input {name!r} has values out of range for {datatype}")
        return np.array(flat, dtype=dtype)
    if not kinds <= _NUMBERS:
        raise InvalidInput(f"input {name!r} of datatype {datatype} has data that are not numbers")
    try:
        values = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond any float
        raise InvalidInput(f"input {name!r} has values out of range for {datatype}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return values.astype(dtype, copy=False)


# -- answers ------------------------------------------------------------------------------------------


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if flat.dtype.kind == "O":
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item) for item in flat
        ]
    if flat.dtype.kind == "f":
        return [_json_float(v) for v in flat.tolist()]
    result: list[Any] = flat.tolist()
    return result


def _json_float(value: float) -> float | str:
    # JSON has no NaN or infinity; Triton writes them as strings.
    return value if math.isfinite(value) else str(value)


def infer_response(response: InferResponse, decoded: HttpInferRequest) -> tuple[bytes, int | None]:
    """The answer's body and, when it carries binary data, the JSON header's length."""
    outputs = []
    chunks: list[bytes] = []
    for output in response.outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if decoded.binary(output.name):
            raw = tensors.raw_bytes(output)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(output.data)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    document["outputs"] = outputs
    header = dumps(document)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def classify_response(response: ClassifyResponse) -> dict[str, Any]:
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "results": [
            {"classes": [{"index": c.index, "label": c.label, "score": c.score} for c in scores]}
            for scores in response.results
        ],
    }


def dumps(document: object) -> bytes:
    """Compact JSON (no NaN: the protocol's JSON has none)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def top_k(values: Sequence[str]) -> int:
    """The ``top_k`` query parameter of the image endpoint (absent: 1)."""
    if not values:
        return 1
    if len(values) > 1:
        raise InvalidInput(f"top_k is given {len(values)} times; expected it once")
    text = values[0]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise InvalidInput(f"top_k is {text!r}; expected an integer from 1 to 1000")
    return int(text)
