"""The core's request and response types: numpy arrays and plain Python values, no wire format.

Each protocol edge (:mod:`server.grpc`, :mod:`server.rest`) decodes its messages into
these, calls :class:`server.dataplane.DataPlane`, and encodes what comes back. Answers
that are not tensors (metadata, model configuration, statistics, the repository index)
are plain dicts in the KServe v2 / Triton JSON form, described by the TypedDicts below:
the HTTP edge sends them as they are, the gRPC edge parses them into its messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

#: Request and tensor parameters, as the edges decode them: bool, int, float or str values.
Parameters = Mapping[str, object]

_NONE: Mapping[str, object] = {}

#: A tensor's data as an edge hands it over; see :class:`InputTensor`.
TensorData = bytes | memoryview | np.ndarray


@dataclass(frozen=True, slots=True)
class InputTensor:
    """One input tensor of an inference request, not yet checked against the model.

    ``data`` is either the tensor's bytes in the v2 binary layout (row-major, little-endian;
    each BYTES element a 4-byte little-endian length and its bytes), which gRPC's
    ``raw_input_contents`` and the HTTP binary tensor extension share, or a flat array of
    its values decoded by the edge (gRPC typed contents, JSON ``data``), or a function
    that returns one of those: the edge's decoding, which the core calls only after the
    tensor's name, datatype and shape have passed, so that a request's first problem is
    the one reported whatever the protocol. ``source`` names where the values came from,
    for error messages (``contents.fp32_contents``, ``data``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: TensorData | Callable[[], TensorData]
    source: str = "data"


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the caller asks for; ``parameters`` may hold ``classification`` (top k)."""

    name: str
    parameters: Parameters = field(default_factory=lambda: _NONE)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """An inference request: inputs, the outputs wanted (none: all of them), an id to echo."""

    model_name: str
    inputs: Sequence[InputTensor]
    model_version: str = ""
    id: str = ""
    outputs: Sequence[RequestedOutput] = ()
    parameters: Parameters = field(default_factory=lambda: _NONE)


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One output tensor of an answer (``classification`` outputs are BYTES)."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(frozen=True, slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: Sequence[OutputTensor]


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    """Encoded images (JPEG, PNG, ...) to classify; no model name: the server's default model."""

    images: Sequence[bytes]
    model_name: str = ""
    model_version: str = ""
    #: Classes per image, best first; 0 means 1.
    top_k: int = 1


@dataclass(frozen=True, slots=True)
class ClassScore:
    index: int
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class ClassifyResponse:
    model_name: str
    model_version: str
    #: Per image, its top classes, best first.
    results: Sequence[Sequence[ClassScore]]


# -- answers in the protocol's JSON form ------------------------------------------------------------


class ServerMetadata(TypedDict):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(TypedDict):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RepositoryEntry(TypedDict):
    name: str
    version: str
    state: str
    reason: str


#: Triton's model configuration (``ModelConfig`` in proto/model_config.proto) in its JSON form.
ModelConfiguration = dict[str, Any]

#: Triton's statistics answer (``ModelStatisticsResponse``) in its JSON form.
ModelStatistics = dict[str, Any]
