"""Protocol conversion for the clients: numpy and images in, protobuf out, and back.

Everything here is pure (no I/O, no channels), so the synchronous and the asyncio
client share it and differ only in how they await the RPC.
"""

from __future__ import annotations

import io
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeGuard, Union

import grpc
import numpy as np
from PIL import Image

from clients.errors import described, invalid_argument, unreadable_answer
from clients.retry import RetryPolicy
from clients.types import Classification, ClassScore, ModelIndexEntry, ModelMetadata, TensorMetadata
from modelrepo.datatypes import DATATYPES, datatype_of
from protocol import grpc_service_pb2, image_classification_pb2

#: The server's default gRPC message cap (``--max-message-bytes``); the client matches it.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: What ``classify`` accepts for one image.
ImageLike: TypeAlias = Union[str, "os.PathLike[str]", bytes, Image.Image, np.ndarray]

#: Answers that metadata cached before a model swap would explain: the version it describes is
#: gone (NOT_FOUND), or the new version takes other inputs or outputs (INVALID_ARGUMENT).
STALE_METADATA_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})


_NAME_EXAMPLES = {
    "model": "a model name such as 'lenet'",
    "version": "a version such as '2', or '' for the latest",
    "service": "a model name, or '' for the whole server",
    "url": "'HOST:PORT'",
}


def check_name(value: object, what: str, *, optional: bool = False) -> str:
    """``value`` if it is a string (a model name, version, ...); else InvalidArgumentError.

    ``optional`` lets None through, as "".
    """
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        example = _NAME_EXAMPLES.get(what, "a string")
        raise invalid_argument(f"{what} is {described(value)}; expected {example}")
    return value


def check_top_k(top_k: object) -> int:
    """``top_k`` as an int >= 1; else InvalidArgumentError."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise invalid_argument(f"top_k is {described(top_k)}; expected an int >= 1")
    if top_k < 1:
        raise invalid_argument(f"top_k is {top_k}; expected >= 1")
    return int(top_k)


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds (a positive number) or None; else InvalidArgumentError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not float(timeout) > 0:
        raise invalid_argument(f"timeout is {described(timeout)}; expected seconds > 0, or None")
    return float(timeout)


def check_outputs(outputs: object) -> tuple[str, ...]:
    """Output names: a sequence of strings, or one string; else InvalidArgumentError."""
    if isinstance(outputs, str):
        return (outputs,)
    if not isinstance(outputs, Iterable):
        raise invalid_argument(f"outputs is {described(outputs)}; expected a sequence of output names")
    names = tuple(outputs)
    for name in names:
        if not isinstance(name, str):
            raise invalid_argument(f"output name {described(name)} is not a string; expected output names")
    return names


def forget_replaced(cache: dict[tuple[str, str], ModelMetadata], key: tuple[str, str], version: str) -> None:
    """Drop cached metadata that an answer from model ``version`` shows to describe a replaced version."""
    cached = cache.get(key)
    if cached is not None and version and version not in cached.versions:
        cache.pop(key, None)


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, retry: RetryPolicy | None = None
) -> list[tuple[str, Any]]:
    """Channel options: message caps that match the server's, so big batches are not cut off.

    With ``retry``, also gRPC's retries of the calls that are safe to repeat (:mod:`clients.retry`).
    """
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if retry is not None:
        if not isinstance(retry, RetryPolicy):
            raise invalid_argument(f"retry is {described(retry)}; expected a RetryPolicy, or None for none")
        options += retry.channel_options(max_message_bytes)
    return options


def _read_pem(value: bytes | str | os.PathLike[str] | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if not isinstance(value, str | os.PathLike):
        raise invalid_argument(f"{what} is {described(value)}; expected PEM bytes or the path of a PEM file")
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise invalid_argument(
            f"{what} file {os.fspath(value)!r} cannot be read: {exc.strerror or exc}; expected a PEM file"
        ) from None


def tls_credentials(
    root_certificates: bytes | str | os.PathLike[str] | None = None,
    private_key: bytes | str | os.PathLike[str] | None = None,
    certificate_chain: bytes | str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials from PEM bytes or paths to PEM files.

    ``root_certificates`` None uses the system roots; give ``private_key`` and
    ``certificate_chain`` together for mutual TLS.
    """
    if (private_key is None) != (certificate_chain is None):
        raise invalid_argument("private_key and certificate_chain must be given together for client TLS")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(root_certificates, "root_certificates"),
        private_key=_read_pem(private_key, "private_key"),
        certificate_chain=_read_pem(certificate_chain, "certificate_chain"),
    )


def _numpy_name(datatype: str) -> str:
    known = DATATYPES.get(datatype)
    return known.dtype.name if known is not None else "?"


def kserve_datatype(dtype: np.dtype[Any]) -> str | None:
    """The KServe v2 datatype name of a numpy dtype, or None if the client cannot send it.

    BYTES (object arrays) is left out: no model takes it, and the client sends raw fixed-size data.
    """
    name = datatype_of(dtype)
    return None if name is None or DATATYPES[name].variable_size else name


def _dims(shape: Iterable[int]) -> str:
    return "[" + ",".join("N" if d < 0 else str(d) for d in shape) + "]"


def metadata_from_proto(response: grpc_service_pb2.ModelMetadataResponse) -> ModelMetadata:
    """The plain form of a ModelMetadata answer."""

    def tensors(items: Iterable[Any]) -> tuple[TensorMetadata, ...]:
        return tuple(TensorMetadata(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return ModelMetadata(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=tensors(response.inputs),
        outputs=tensors(response.outputs),
    )


def index_from_proto(response: grpc_service_pb2.RepositoryIndexResponse) -> list[ModelIndexEntry]:
    """The plain form of a RepositoryIndex answer."""
    return [ModelIndexEntry(m.name, m.version, m.state, m.reason) for m in response.models]


def check_inputs(
    metadata: ModelMetadata, inputs: Mapping[str, np.ndarray] | np.ndarray
) -> list[tuple[TensorMetadata, np.ndarray]]:
    """Match ``inputs`` to the model's inputs and check name, datatype and shape.

    A bare array is taken as the model's only input. Raises
    :class:`~clients.errors.InferenceServerError` (INVALID_ARGUMENT) naming the bad
    value and what the model expects, as the server would.
    """
    model = metadata.name
    expected = [t.name for t in metadata.inputs]
    if not isinstance(inputs, np.ndarray | Mapping):
        raise invalid_argument(
            f"inputs is {described(inputs)}; expected a numpy array or a dict of input name -> numpy array"
        )
    if isinstance(inputs, np.ndarray):
        if len(metadata.inputs) != 1:
            raise invalid_argument(
                f"model {model!r} expects {len(expected)} inputs {expected}; pass a dict of name -> array"
            )
        inputs = {metadata.inputs[0].name: inputs}
    if len(inputs) != len(expected):
        raise invalid_argument(
            f"model {model!r} expects {len(expected)} input{'s' if len(expected) != 1 else ''} {expected}; "
            f"the request has {len(inputs)}: {list(inputs)}"
        )
    for name in inputs:
        if name not in expected:
            wanted = repr(expected[0]) if len(expected) == 1 else f"one of {expected}"
            raise invalid_argument(f"input {name!r} is not an input of model {model!r}; expected {wanted}")
    checked = []
    for spec in metadata.inputs:
        array = inputs[spec.name]
        if not isinstance(array, np.ndarray):
            raise invalid_argument(
                f"input {spec.name!r} is {described(array)}; model {model!r} expects a numpy array "
                f"of {spec.datatype} ({_numpy_name(spec.datatype)})"
            )
        datatype = kserve_datatype(array.dtype)
        if datatype != spec.datatype:
            raise invalid_argument(
                f"input {spec.name!r} has datatype {datatype or array.dtype.name!r}; "
                f"model {model!r} expects {spec.datatype}"
            )
        shape = array.shape
        fits = (
            len(shape) == len(spec.shape)
            and all(e < 0 or e == d for d, e in zip(shape, spec.shape, strict=True))
            and (not shape or spec.shape[0] >= 0 or shape[0] >= 1)
        )
        if not fits:
            suffix = " with N >= 1" if spec.shape and spec.shape[0] < 0 else ""
            raise invalid_argument(
                f"input {spec.name!r} has shape {_dims(shape)}; model {model!r} expects "
                f"{_dims(spec.shape)}{suffix}"
            )
        checked.append((spec, array))
    return checked


def infer_request(
    model: str,
    inputs: Sequence[tuple[TensorMetadata, np.ndarray]],
    outputs: Sequence[str] = (),
    version: str = "",
    request_id: str = "",
) -> grpc_service_pb2.ModelInferRequest:
    """A ModelInfer request carrying the arrays as ``raw_input_contents`` (row-major, little-endian)."""
    request = grpc_service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for spec, array in inputs:
        tensor = request.inputs.add()
        tensor.name = spec.name
        tensor.datatype = spec.datatype
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(
            np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        )
    for name in outputs:
        request.outputs.add().name = name
    return request


def infer_response_arrays(response: grpc_service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """The output tensors of a ModelInfer answer, by name (from raw or typed contents)."""
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(response.outputs):
        datatype = DATATYPES.get(tensor.datatype)
        if datatype is None or datatype.variable_size:
            raise unreadable_answer(
                f"output {tensor.name!r} has datatype {tensor.datatype!r}, which numpy cannot hold"
            )
        dtype = datatype.dtype.newbyteorder("<")
        shape = tuple(int(d) for d in tensor.shape)
        if i < len(response.raw_output_contents):
            array = np.frombuffer(response.raw_output_contents[i], dtype=dtype)
        else:
            array = np.asarray(
                getattr(tensor.contents, datatype.contents_field or "fp32_contents"), dtype=dtype
            )
        # A copy, so callers get an ordinary writable array, not a view on the message's bytes.
        arrays[tensor.name] = array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)
    return arrays


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image (lossless, so the server sees exactly these pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def is_tensor(item: object) -> TypeGuard[np.ndarray]:
    """True for an already-preprocessed CHW (or NCHW) floating-point array."""
    return isinstance(item, np.ndarray) and item.dtype.kind == "f"


def _read_image_file(path: str | os.PathLike[str], index: int) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise invalid_argument(
            f"image {index} ({os.fspath(path)!r}) cannot be read: {exc.strerror or exc}; "
            "expected the path of an image file"
        ) from None


def _encode_pil(image: Image.Image, index: int) -> bytes:
    try:
        return encode_png(image)
    except (OSError, ValueError) as exc:
        # Modes PNG cannot hold (CMYK, F, ...) and lazily loaded files that turn out truncated.
        raise invalid_argument(
            f"image {index} (PIL image, mode {image.mode}, {image.width}x{image.height}) cannot be "
            f"encoded as PNG: {exc}; expected an L, LA, RGB, RGBA, P, I or 1 image that loads"
        ) from None


def encode_image(item: ImageLike, index: int = 0) -> bytes:
    """Encoded image bytes for a path, bytes, PIL image, or HxW / HxWxC uint8 array.

    ``index`` is the image's place in the call, for the messages. Anything else, or a file that
    cannot be read, raises :class:`~clients.errors.InvalidArgumentError`.
    """
    if isinstance(item, bytes):
        return item
    if isinstance(item, str | os.PathLike):
        return _read_image_file(item, index)
    if isinstance(item, Image.Image):
        return _encode_pil(item, index)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise invalid_argument(
                f"image {index} is an array of dtype {item.dtype}; expected uint8 HxW or HxWxC pixels, "
                "or a float32 CHW tensor that is already preprocessed"
            )
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[:, :, 0]
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise invalid_argument(
                f"image {index} is an array of shape {list(item.shape)}; "
                "expected HxW, HxWx1, HxWx3 or HxWx4 uint8 pixels"
            )
        return encode_png(Image.fromarray(item))
    raise invalid_argument(
        f"image {index} is {described(item)}; expected a path, bytes, a PIL image or a numpy array"
    )


def split_images(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """A list of single images from one image, a sequence of them, or an NCHW float batch."""
    if isinstance(images, np.ndarray):
        if is_tensor(images) and images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, str | bytes | os.PathLike | Image.Image) or not isinstance(images, Iterable):
        return [images]  # not an image: encode_image says what it is
    return list(images)


def classify_request(
    images: Sequence[bytes], model: str | None, top_k: int, version: str = ""
) -> image_classification_pb2.ClassifyRequest:
    """A Classify request for encoded images."""
    return image_classification_pb2.ClassifyRequest(
        model_name=model or "", model_version=version, images=list(images), top_k=top_k
    )


def classifications_from_proto(response: image_classification_pb2.ClassifyResponse) -> list[Classification]:
    """The plain form of a Classify answer, one entry per image."""
    return [
        Classification(
            tuple(ClassScore(int(c.index), c.label, float(c.score)) for c in result.classes),
            model=response.model_name,
            version=response.model_version,
        )
        for result in response.results
    ]


@dataclass(frozen=True)
class ClassifyPlan:
    """One classify call's images split by route, and the answers put back in their order.

    Encoded images go to the image service in one Classify request; preprocessed
    tensors go to ModelInfer in one request (see :func:`classify_tensor_request`).
    """

    encoded: list[tuple[int, bytes]]
    tensors: list[tuple[int, np.ndarray]]
    model: str | None
    top_k: int
    version: str

    @classmethod
    def make(
        cls, images: ImageLike | Sequence[ImageLike], model: str | None, top_k: int, version: str
    ) -> ClassifyPlan:
        top_k = check_top_k(top_k)
        model = check_name(model, "model", optional=True) or None
        version = check_name(version, "version")
        items = split_images(images)
        encoded = [(i, encode_image(item, i)) for i, item in enumerate(items) if not is_tensor(item)]
        tensors = [(i, item) for i, item in enumerate(items) if is_tensor(item)]
        if tensors and not model:
            raise invalid_argument(
                f"image {tensors[0][0]} is a preprocessed tensor, which needs model=NAME; "
                "the server's default model takes encoded images only"
            )
        if len({t.shape for _, t in tensors}) > 1:
            listed = ", ".join(f"image {i}: {_dims(t.shape)}" for i, t in tensors)
            raise invalid_argument(
                f"preprocessed tensors have different shapes ({listed}); expected one shape"
            )
        return cls(encoded, tensors, model, top_k, version)

    def classify_request(self) -> image_classification_pb2.ClassifyRequest:
        """The Classify request for the encoded images."""
        return classify_request([data for _, data in self.encoded], self.model, self.top_k, self.version)

    def tensor_model(self) -> str:
        """The model the tensors go to (:meth:`make` refuses tensors without one)."""
        return self.model or ""

    def tensor_request(self, metadata: ModelMetadata) -> grpc_service_pb2.ModelInferRequest:
        """The ModelInfer request for the tensors, checked against the model's metadata."""
        batch = np.stack([np.asarray(t) for _, t in self.tensors])
        checked = check_inputs(metadata, batch)
        if not metadata.outputs:
            raise unreadable_answer(f"model {metadata.name!r} has no outputs in its metadata")
        output = metadata.outputs[0].name
        return classify_tensor_request(self.tensor_model(), checked, output, self.top_k, self.version)

    def results(
        self, from_images: Sequence[Classification], from_tensors: Sequence[Classification]
    ) -> list[Classification]:
        """Both routes' answers, in the order the images were given."""
        results: dict[int, Classification] = {}
        for (i, _), result in zip(self.encoded, from_images, strict=True):
            results[i] = result
        for (i, _), result in zip(self.tensors, from_tensors, strict=True):
            results[i] = result
        return [results[i] for i in sorted(results)]


def classify_tensor_request(
    model: str,
    inputs: Sequence[tuple[TensorMetadata, np.ndarray]],
    output: str,
    top_k: int,
    version: str = "",
) -> grpc_service_pb2.ModelInferRequest:
    """A ModelInfer request for preprocessed tensors that asks for ``output`` twice.

    First as the plain logits (for the softmax scores), then through the
    classification extension (``score:index:label`` strings) for the labels, which
    the KServe metadata does not carry.
    """
    request = infer_request(model, inputs, (output, output), version)
    request.outputs[1].parameters["classification"].int64_param = top_k
    return request


def _split_bytes(raw: bytes) -> list[bytes]:
    """The elements of a raw BYTES tensor: each a 4-byte little-endian length, then the data."""
    items, offset = [], 0
    while offset + 4 <= len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


def classifications_from_tensors(
    response: grpc_service_pb2.ModelInferResponse, top_k: int
) -> list[Classification]:
    """Classifications from the answer to :func:`classify_tensor_request`."""
    if len(response.outputs) != 2 or len(response.raw_output_contents) != 2:
        raise unreadable_answer(
            f"expected 2 raw outputs (logits, classes); the server sent {len(response.outputs)}"
        )
    logits_meta = response.outputs[0]
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(logits_meta.shape))
    labels: dict[int, str] = {}
    for item in _split_bytes(response.raw_output_contents[1]):
        _, index, *label = item.decode().split(":", 2)
        labels[int(index)] = label[0] if label else index
    names = [labels.get(i, str(i)) for i in range(logits.shape[1])]
    return [
        Classification(c.classes, model=response.model_name, version=response.model_version)
        for c in top_k_classes(logits, names, top_k)
    ]


def top_k_classes(logits: np.ndarray, labels: Sequence[str] | None, top_k: int) -> list[Classification]:
    """Softmax and the best ``top_k`` classes for each row of ``logits`` (N x classes)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    k = max(1, min(top_k, probabilities.shape[1]))
    if labels is None:
        labels = [str(i) for i in range(probabilities.shape[1])]
    results = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:k]
        results.append(
            Classification(
                tuple(
                    ClassScore(
                        int(i), labels[i] if labels and i < len(labels) else str(int(i)), float(row[i])
                    )
                    for i in best
                )
            )
        )
    return results
