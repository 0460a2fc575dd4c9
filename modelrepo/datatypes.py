"""The one table of tensor datatypes: every edge, the server core and the clients read it.

A KServe v2 datatype's name, its numpy dtype (element size), the typed ``contents`` field
of the gRPC protocol that can carry it, and Triton's model-configuration type name.
``BYTES`` elements are Python ``bytes`` in an object array; on the wire (gRPC's
``raw_input_contents`` and the HTTP binary tensor extension alike) each is a 4-byte
little-endian length followed by its bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Datatype:
    """One KServe v2 tensor datatype."""

    name: str
    dtype: np.dtype
    #: The ``InferTensorContents`` field that carries it, or None: raw bytes only (FP16).
    contents_field: str | None
    #: Triton's ``DataType`` enum name in a model configuration.
    config_type: str

    @property
    def variable_size(self) -> bool:
        """BYTES: elements of any length, so the byte count does not follow from the shape."""
        return self.dtype.kind == "O"


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("BOOL", np.dtype(np.bool_), "bool_contents", "TYPE_BOOL"),
        Datatype("UINT8", np.dtype(np.uint8), "uint_contents", "TYPE_UINT8"),
        Datatype("UINT16", np.dtype(np.uint16), "uint_contents", "TYPE_UINT16"),
        Datatype("UINT32", np.dtype(np.uint32), "uint_contents", "TYPE_UINT32"),
        Datatype("UINT64", np.dtype(np.uint64), "uint64_contents", "TYPE_UINT64"),
        Datatype("INT8", np.dtype(np.int8), "int_contents", "TYPE_INT8"),
        Datatype("INT16", np.dtype(np.int16), "int_contents", "TYPE_INT16"),
        Datatype("INT32", np.dtype(np.int32), "int_contents", "TYPE_INT32"),
        Datatype("INT64", np.dtype(np.int64), "int64_contents", "TYPE_INT64"),
        Datatype("FP16", np.dtype(np.float16), None, "TYPE_FP16"),
        Datatype("FP32", np.dtype(np.float32), "fp32_contents", "TYPE_FP32"),
        Datatype("FP64", np.dtype(np.float64), "fp64_contents", "TYPE_FP64"),
        Datatype("BYTES", np.dtype(object), "bytes_contents", "TYPE_STRING"),
    )
}

#: The datatypes a model's input or output may have (an ONNX classifier has no BYTES tensor).
MODEL_DATATYPES: tuple[str, ...] = tuple(name for name, d in DATATYPES.items() if not d.variable_size)

#: numpy dtype (native byte order) -> KServe name.
DATATYPE_OF: dict[np.dtype, str] = {d.dtype: name for name, d in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str | None:
    """The KServe name of a numpy dtype in either byte order, or None if the protocol has none."""
    return DATATYPE_OF.get(np.dtype(dtype).newbyteorder("="))
