"""Coverage-guided fuzzing of the request decoders with atheris (libFuzzer for Python).

    python scripts/fuzz.py --seconds 60                       # every target, 20 s each
    python scripts/fuzz.py --seconds 30 --target image --json /tmp/fuzz.json
    python scripts/fuzz.py --make-seeds                       # regenerate tests/fuzz_corpus/<target>/
    python scripts/fuzz.py --target tensor --reproduce tests/fuzz_corpus/crashes/NAME

Targets, each run against real tiny ONNX models loaded by a real ``ModelManager``:

- ``tensor``: a FuzzedDataProvider builds a ModelInferRequest (datatype from the datatype table
  ``modelrepo.datatypes.DATATYPES``, shape, raw or typed contents, BYTES elements, parameters,
  requested outputs with the ``classification`` parameter); it is decoded as the server does:
  ``server.grpc.converters.infer_request`` (every input's deferred decoder is also called on its
  own), then ``server.tensors.requested_outputs`` and ``server.tensors.input_batch``; a valid batch
  runs on the model's ONNX Runtime session, through ``tensors.output_tensors`` and back to the
  wire with ``server.grpc.converters.infer_response``.
- ``image``: one config byte (channels 1 or 3, output size, pixel limit) and encoded image bytes
  through ``images.decode_images``.
- ``wire``: arbitrary bytes parsed as a ModelInferRequest or ClassifyRequest (the first byte
  chooses), converted by ``server.grpc.converters`` and answered by the real ``DataPlane`` (model
  lookup, batcher, top_k), the answer converted back, as the gRPC servicers do.

The invariant: only ``ServerError`` subclasses escape (only ``InvalidInput`` from the decoders),
every batch has the dtype and shape the model and the request imply and holds exactly the
request's data, every answer has the shape the request implies and holds the model's output, and
no input runs past ``--input-timeout``. Each target runs in its own process (libFuzzer exits when
its time is up) on a temporary copy of its committed seed corpus; what it finds is saved in
``tests/fuzz_corpus/crashes/`` (``--crashes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz_corpus"
TARGETS = ("tensor", "image", "wire")
#: Packages whose bytecode atheris instruments: coverage is measured (and guides) inside these.
INSTRUMENTED = ("server", "modelrepo", "PIL")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:  # reported by main(); the module stays importable for its tests
    atheris = None


class InvariantViolation(AssertionError):
    """A decoder returned something of the wrong shape or kind: a bug even without an exception."""


# -- the system under test, imported instrumented ------------------------------------------------


def _import_project() -> dict[str, Any]:
    """Import the decoders, instrumented when atheris is there (before anything else imports them)."""
    hook = atheris.instrument_imports(include=list(INSTRUMENTED)) if atheris else contextlib.nullcontext()
    with hook:
        import PIL.Image  # noqa: F401 - instrumented here, used by server.images

        import modelrepo
        from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec
        from modelrepo.datatypes import DATATYPES
        from protocol import grpc_service_pb2 as pb
        from protocol import image_classification_pb2 as img_pb
        from server import images, tensors
        from server.dataplane import DataPlane
        from server.errors import InvalidInput, ServerError
        from server.grpc import converters
        from server.models import ModelManager
        from server.runtime import resolve_device
        from server.settings import Settings
        from server.types import InferResponse
    return {
        "modelrepo": modelrepo,
        "BatchingConfig": BatchingConfig,
        "ModelConfig": ModelConfig,
        "Preprocessing": Preprocessing,
        "TensorSpec": TensorSpec,
        "pb": pb,
        "img_pb": img_pb,
        "DATATYPES": DATATYPES,
        "converters": converters,
        "tensors": tensors,
        "images": images,
        "DataPlane": DataPlane,
        "InvalidInput": InvalidInput,
        "ServerError": ServerError,
        "InferResponse": InferResponse,
        "ModelManager": ModelManager,
        "resolve_device": resolve_device,
        "Settings": Settings,
    }


# -- models ------------------------------------------------------------------------------------------

#: (name, input datatype, channels, size, labels): one gray FP32, one RGB FP32 (with an empty
#: label, which classification output leaves out) and one UINT8 model, to reach each decode path.
MODELS = (
    ("gray", "FP32", 1, 4, ("zero", "one", "two", "three")),
    ("rgb", "FP32", 3, 4, ("red", "", "blue")),
    ("gray8", "UINT8", 1, 4, ("a", "b", "c", "d", "e")),
)
MAX_BATCH = 4
ONNX_TYPES = {"FP32": 1, "UINT8": 2}  # onnx.TensorProto.FLOAT, UINT8


def _write_model(path: Path, datatype: str, shape: tuple[int, ...], classes: int, seed: int) -> None:
    """``logits = flatten(float(input)) @ W.T + b`` as a self-contained ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((classes, math.prod(shape))).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT)]
    nodes += [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz",
        [helper.make_tensor_value_info("input", ONNX_TYPES[datatype], ["N", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@dataclass
class Fixture:
    """The real objects the targets call: loaded models, a data plane and its event loop."""

    mods: dict[str, Any]
    models: list[Any]
    dataplane: Any
    loop: asyncio.AbstractEventLoop
    tmp: tempfile.TemporaryDirectory[str]

    def close(self) -> None:
        self.loop.run_until_complete(self.dataplane.manager.close())
        self.loop.close()
        self.tmp.cleanup()


def make_fixture() -> Fixture:
    """Publish the tiny models into a temporary repository and load them as the server does."""
    mods = _import_project()
    m = mods["modelrepo"]
    tmp = tempfile.TemporaryDirectory(prefix="fuzz-repo-")
    repo = Path(tmp.name) / "repo"
    for seed, (name, datatype, channels, size, labels) in enumerate(MODELS):
        shape = (channels, size, size)
        config = mods["ModelConfig"](
            name=name,
            input=mods["TensorSpec"]("input", datatype, shape),
            output=mods["TensorSpec"]("logits", "FP32", (len(labels),)),
            labels=labels,
            preprocessing=mods["Preprocessing"](size, size, channels, (0.5,) * channels, (0.25,) * channels),
            batching=mods["BatchingConfig"](
                max_batch_size=MAX_BATCH, max_queue_delay_us=0, max_queue_size=64
            ),
        )
        model_file = Path(tmp.name) / f"{name}.onnx"
        _write_model(model_file, datatype, shape, len(labels), seed)
        m.publish(repo, config, model_file, {"source": "fuzz"})
    settings = mods["Settings"](
        repository=repo, device="cpu", intra_op_threads=1, max_image_pixels=4096, grace_period=1.0
    )
    manager = mods["ModelManager"](settings, mods["resolve_device"]("cpu"))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(manager.load_initial())
    models = [manager.get(name) for name, *_ in MODELS]
    return Fixture(mods, models, mods["DataPlane"](settings, manager), loop, tmp)


# -- invariant checks (pure: they see only the request and what the decoder returned) -------------


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)


def _mismatch(array: np.ndarray, values: Sequence[Any]) -> str | None:
    """Where flat ``array`` differs from ``values`` (ints and bytes equal, floats equal or both NaN)."""
    if len(array) != len(values):
        return f"{len(array)} values for {len(values)}"
    decoded = array.tolist()
    for i, (got, want) in enumerate(zip(decoded, values, strict=True)):
        if got != want and not (array.dtype.kind == "f" and math.isnan(got) and math.isnan(want)):
            return f"value {i}, {want!r}, decoded as {got!r}"
    return None


def _length_prefixed(items: Sequence[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + bytes(item) for item in items)


def check_input_data(
    message: Any,
    index: int,
    tensor: Any,
    data: Any,
    datatypes: dict[str, Any],
    serialize: Callable[..., bytes],
) -> None:
    """One input's deferred decoder (``converters.infer_request``) returned exactly the message's data.

    Raw contents: the bytes of its own ``raw_input_contents`` entry, only when there is one per
    input and no typed contents. Typed contents: a flat array of the datatype's dtype holding the
    values of the datatype's own ``contents`` field (BYTES elements serialize back to their v2
    binary form).
    """
    wire = message.inputs[index]
    check(
        (tensor.name, tensor.datatype, tensor.shape) == (wire.name, wire.datatype, tuple(wire.shape)),
        f"input {index} converted to {tensor.name!r} {tensor.datatype!r} {tensor.shape}",
    )
    raw = message.raw_input_contents
    if raw:
        check(
            len(raw) == len(message.inputs),
            f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs decoded",
        )
        check(not wire.contents.ListFields(), "an input with both raw_input_contents and contents decoded")
        check(isinstance(data, bytes | memoryview), f"raw input decoded to {type(data).__name__}")
        check(bytes(data) == raw[index], "the raw input's data is not the bytes it was given")
        return
    datatype = datatypes.get(wire.datatype)
    if datatype is None:
        return  # no field to read: the core refuses the datatype by the model's
    check(datatype.contents_field is not None, f"datatype {wire.datatype} decoded from typed contents")
    values = getattr(wire.contents, datatype.contents_field)
    check(isinstance(data, np.ndarray), f"typed contents decoded to {type(data).__name__}")
    check(data.ndim == 1, f"typed contents decoded to shape {data.shape}; expected flat values")
    check(data.dtype == datatype.dtype, f"dtype {data.dtype} for datatype {wire.datatype}")
    wrong = _mismatch(data, values)
    check(wrong is None, f"{wire.datatype} contents.{datatype.contents_field} decoded wrongly: {wrong}")
    if datatype.variable_size:
        check(
            serialize(data) == _length_prefixed(values), "BYTES elements do not serialize to their wire form"
        )


def check_batch(request: Any, model: Any, batch: np.ndarray) -> None:
    """``input_batch`` returned ``[N, *sample]`` of the model's dtype, N from the request."""
    expected = (request.inputs[0].shape[0], *model.sample_shape)
    check(batch.shape == expected, f"input_batch returned shape {batch.shape}; expected {expected}")
    check(batch.dtype == model.dtype, f"input_batch returned dtype {batch.dtype}; model has {model.dtype}")
    check(1 <= len(batch) <= model.max_batch_size, f"batch of {len(batch)} passed the batch limit")


def check_batch_data(message: Any, model: Any, batch: np.ndarray, datatypes: dict[str, Any]) -> None:
    """The batch came from a message whose one input is the model's, and holds exactly its data."""
    spec = model.config.input
    check(len(message.inputs) == 1, f"a batch from a request with {len(message.inputs)} inputs")
    wire = message.inputs[0]
    check(wire.name == spec.name, f"a batch from input {wire.name!r}; the model's is {spec.name!r}")
    check(
        wire.datatype == spec.datatype,
        f"a batch from datatype {wire.datatype!r}; the model's is {spec.datatype}",
    )
    if message.raw_input_contents:
        check(
            len(message.raw_input_contents) == 1,
            f"a batch from {len(message.raw_input_contents)} raw contents",
        )
        check(
            not wire.contents.ListFields(), "a batch from an input with both raw_input_contents and contents"
        )
        check(
            batch.tobytes() == message.raw_input_contents[0],
            "the batch does not hold the raw bytes it was given",
        )
        return
    field_name = datatypes[spec.datatype].contents_field
    values = getattr(wire.contents, field_name)
    wrong = _mismatch(batch.reshape(-1), values)
    check(wrong is None, f"the batch does not hold the values of contents.{field_name}: {wrong}")


def check_infer_response(
    response: Any,
    model: Any,
    batch_size: int,
    outputs: Sequence[tuple[str, int]],
    result: np.ndarray | None = None,
) -> None:
    """One output per requested output: logits ``[N, C]`` or classification ``[N, min(k, C)]``.

    With ``result`` (the model's output for the batch) the logits must be exactly its values and
    each classification row its best ``k`` classes, best first.
    """
    classes, labels = model.config.output.shape[0], model.config.labels
    check(
        response.model_name == model.name, f"answer from model {response.model_name!r}; asked {model.name!r}"
    )
    check(response.model_version == str(model.version), f"answer from version {response.model_version!r}")
    check(
        len(response.outputs) == len(outputs), f"{len(response.outputs)} outputs for {len(outputs)} requested"
    )
    check(len(response.raw_output_contents) == len(outputs), "raw_output_contents do not match the outputs")
    for tensor, raw, (name, k) in zip(response.outputs, response.raw_output_contents, outputs, strict=False):
        check(tensor.name == name, f"output {tensor.name!r} answers requested output {name!r}")
        if k:
            shape = (batch_size, min(k, classes))
            check(tensor.datatype == "BYTES", f"classification output has datatype {tensor.datatype}")
            check(
                tuple(tensor.shape) == shape,
                f"classification output shape {list(tensor.shape)}; expected {shape}",
            )
            items = list(_split_bytes(raw))
            check(len(items) == math.prod(shape), f"{len(items)} classification elements for shape {shape}")
            for position, item in enumerate(items):
                score, index, *_ = item.decode().split(":", 2)
                float(score)
                check(0 <= int(index) < classes, f"classification index {index} of {classes} classes")
                if result is not None:
                    row = result[position // shape[1]]
                    best = int(np.argsort(-row, kind="stable")[position % shape[1]])
                    label = labels[best] if best < len(labels) else ""
                    text = f"{float(row[best]):f}:{best}" + (f":{label}" if label else "")
                    check(
                        item == text.encode(),
                        f"classification element {position} is {item!r}; expected {text!r}",
                    )
        else:
            shape = (batch_size, classes)
            check(tensor.datatype == "FP32", f"logits output has datatype {tensor.datatype}")
            check(tuple(tensor.shape) == shape, f"output shape {list(tensor.shape)}; expected {shape}")
            check(len(raw) == batch_size * classes * 4, f"{len(raw)} bytes for FP32 output {shape}")
            if result is not None:
                values = np.frombuffer(raw, dtype="<f4").reshape(shape)
                check(
                    np.array_equal(values, result, equal_nan=True),
                    "the logits output is not the model's output",
                )


def check_classify_response(response: Any, model: Any, images: int, top_k: int) -> None:
    """One result per image with ``min(top_k or 1, C)`` classes, best first, scores in [0, 1]."""
    classes = model.config.output.shape[0]
    check(len(response.results) == images, f"{len(response.results)} results for {images} images")
    for result in response.results:
        scores = [c.score for c in result.classes]
        check(len(scores) == min(top_k or 1, classes), f"{len(scores)} classes for top_k {top_k}")
        check(all(0.0 <= s <= 1.0 for s in scores), f"scores {scores} outside [0, 1]")
        check(scores == sorted(scores, reverse=True), f"scores {scores} not best first")


def check_images(batch: np.ndarray, count: int, pre: Any) -> None:
    expected = (count, pre.channels, pre.height, pre.width)
    check(batch.shape == expected, f"decode_images returned shape {batch.shape}; expected {expected}")
    check(batch.dtype == np.float32, f"decode_images returned dtype {batch.dtype}")


def _split_bytes(raw: bytes) -> Iterator[bytes]:
    offset = 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        yield raw[offset + 4 : offset + 4 + length]
        offset += 4 + length


# -- targets -----------------------------------------------------------------------------------------

HUGE = 2**63 - 1


class Harness:
    """The three targets over one fixture; each returns a short outcome label or raises a finding."""

    def __init__(self, fixture: Fixture, planted_bug: bool = False) -> None:
        self.fx = fixture
        self.m = fixture.mods
        self.planted_bug = planted_bug
        self.targets: dict[str, Callable[[bytes], str]] = {
            "tensor": self.tensor,
            "image": self.image,
            "wire": self.wire,
        }

    # tensor ------------------------------------------------------------------------------------

    def _param(self, fdp: Any) -> Any:
        pb = self.m["pb"]
        kind = fdp.ConsumeIntInRange(0, 5)
        if kind == 0:
            return pb.InferParameter(int64_param=fdp.ConsumeIntInRange(-(2**63), HUGE))
        if kind == 1:
            return pb.InferParameter(string_param=fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 6)))
        if kind == 2:
            return pb.InferParameter(bool_param=fdp.ConsumeBool())
        if kind == 3:
            return pb.InferParameter(double_param=fdp.ConsumeFloat())
        if kind == 4:
            return pb.InferParameter(uint64_param=fdp.ConsumeIntInRange(0, 2**64 - 1))
        return pb.InferParameter(int64_param=fdp.ConsumeIntInRange(-1, 8))

    def _shape(self, fdp: Any, model: Any) -> list[int]:
        if fdp.ConsumeProbability() < 0.7:
            return [fdp.ConsumeIntInRange(0, model.max_batch_size + 1), *model.sample_shape]
        dims = fdp.ConsumeIntInRange(0, 6)
        big = fdp.ConsumeBool()
        return [fdp.ConsumeIntInRange(-2, HUGE if big else 6) for _ in range(dims)]

    def _contents(self, fdp: Any, request: Any, tensor: Any, count: int) -> None:
        known = self.m["DATATYPES"].get(tensor.datatype)
        dtype = known.dtype if known else np.dtype(np.float32)
        mode = fdp.ConsumeIntInRange(0, 5)
        if mode in (0, 1, 5):  # raw: exact size, random size, or BYTES elements
            if tensor.datatype == "BYTES" or mode == 5:
                parts = []
                for _ in range(min(count, 64) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 8)):
                    item = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
                    parts.append(len(item).to_bytes(4, "little") + item)
                raw = b"".join(parts)
                if fdp.ConsumeProbability() < 0.2:
                    raw = raw[: fdp.ConsumeIntInRange(0, len(raw))] + fdp.ConsumeBytes(3)
            elif mode == 0 and 0 <= count <= 4096:
                size = count * dtype.itemsize
                raw = fdp.ConsumeBytes(size).ljust(size, b"\0")
            else:
                raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1024))
            request.raw_input_contents.append(raw)
        if mode in (2, 3, 4):  # typed contents, usually the datatype's own field
            fields = sorted({d.contents_field for d in self.m["DATATYPES"].values() if d.contents_field})
            name = known.contents_field if known and mode != 4 else None
            name = name or fdp.PickValueInList(fields)
            n = count if mode == 2 and 0 <= count <= 4096 else fdp.ConsumeIntInRange(0, 64)
            values = getattr(tensor.contents, name)
            if name == "bytes_contents":
                values.extend(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)) for _ in range(n))
            elif name == "bool_contents":
                values.extend(fdp.ConsumeBool() for _ in range(n))
            elif name in ("fp32_contents", "fp64_contents"):
                values.extend(fdp.ConsumeFloat() if name == "fp64_contents" else _f32(fdp) for _ in range(n))
            elif name == "uint64_contents":
                values.extend(fdp.ConsumeIntInRange(0, 2**64 - 1) for _ in range(n))
            elif name == "int64_contents":
                values.extend(fdp.ConsumeIntInRange(-(2**63), HUGE) for _ in range(n))
            else:
                lo = 0 if name == "uint_contents" else -(2**31)
                hi = 2**32 - 1 if name == "uint_contents" else 2**31 - 1
                small = fdp.ConsumeBool()
                values.extend(
                    fdp.ConsumeIntInRange(0, 255) if small else fdp.ConsumeIntInRange(lo, hi)
                    for _ in range(n)
                )
            if mode == 3 and fdp.ConsumeBool():  # both raw and typed
                request.raw_input_contents.append(
                    fdp.ConsumeBytes(count * dtype.itemsize if 0 <= count < 4096 else 8)
                )

    def build_request(self, fdp: Any) -> tuple[Any, Any]:
        """A ModelInferRequest for one of the models, valid often enough to reach every path."""
        pb = self.m["pb"]
        model = fdp.PickValueInList(self.fx.models)
        request = pb.ModelInferRequest(model_name=model.name, id=fdp.ConsumeUnicodeNoSurrogates(4))
        for _ in range(fdp.ConsumeIntInRange(0, 2)):
            request.parameters[fdp.PickValueInList(["priority", "timeout", "classification", "x"])].CopyFrom(
                self._param(fdp)
            )
        spec = model.config.input
        for _ in range(fdp.PickValueInList([1, 1, 1, 1, 1, 0, 2])):
            names = [spec.name] * 6 + ["x", ""]
            datatypes = [spec.datatype] * 6 + [*self.m["DATATYPES"], "BF16", "", "fp32"]
            tensor = request.inputs.add(
                name=fdp.PickValueInList(names), datatype=fdp.PickValueInList(datatypes)
            )
            shape = self._shape(fdp, model)
            tensor.shape.extend(shape)
            count = math.prod(shape) if all(d >= 0 for d in shape) else -1
            self._contents(fdp, request, tensor, count)
        for _ in range(fdp.PickValueInList([0, 0, 1, 1, 2])):
            output = request.outputs.add(name=fdp.PickValueInList(model.output_names * 4 + ["probs", ""]))
            if fdp.ConsumeProbability() < 0.6:
                output.parameters["classification"].CopyFrom(self._param(fdp))
        return model, request

    def tensor(self, data: bytes) -> str:
        m = self.m
        converters, tensors, invalid = m["converters"], m["tensors"], m["InvalidInput"]
        fdp = atheris.FuzzedDataProvider(data)
        model, message = self.build_request(fdp)
        # As the gRPC servicer: the message as the core's request (typed contents stay deferred).
        try:
            request = converters.infer_request(message)
        except invalid as exc:
            return type(exc).__name__
        check(len(request.inputs) == len(message.inputs), f"{len(request.inputs)} inputs converted")
        # Every input's deferred decoder on its own, whatever the model would say about its header.
        for i, tensor in enumerate(request.inputs):
            try:
                value = tensor.data() if callable(tensor.data) else tensor.data
            except invalid:
                continue
            check_input_data(message, i, tensor, value, m["DATATYPES"], tensors.serialize_bytes)
        # As DataPlane.infer: outputs, then the batch; only InvalidInput may come out of either.
        try:
            outputs = tensors.requested_outputs(request, model)
            batch = (self._buggy_input_batch if self.planted_bug else tensors.input_batch)(request, model)
        except invalid as exc:
            return type(exc).__name__
        check_batch(request, model, batch)
        check_batch_data(message, model, batch, m["DATATYPES"])
        result = model.sessions[0].run(model.output_names, {model.input_name: batch})[0]
        answer = m["InferResponse"](
            model.name, str(model.version), request.id, tensors.output_tensors(model, result, outputs)
        )
        response = converters.infer_response(answer)
        check(response.id == message.id, f"answer id {response.id!r} for request id {message.id!r}")
        check_infer_response(response, model, len(batch), outputs, result)
        return "ok-classification" if any(k for _, k in outputs) else "ok"

    def _buggy_input_batch(self, request: Any, model: Any) -> np.ndarray:
        """input_batch minus its byte-count (and batch-limit) check: the bug ``--plant-bug`` must find."""
        tensor = request.inputs[0] if request.inputs else None
        if (
            tensor is not None
            and isinstance(tensor.data, bytes | memoryview)
            and tensor.datatype == model.config.input.datatype
        ):
            shape = tuple(tensor.shape)
            if shape[1:] == model.sample_shape and shape[0] >= 1:
                return np.frombuffer(tensor.data, dtype=model.dtype).reshape(shape)
        result: np.ndarray = self.m["tensors"].input_batch(request, model)
        return result

    # image -------------------------------------------------------------------------------------

    #: What the config byte selects: (channels, height, width), and the pixel limit.
    IMAGE_SIZES = ((1, 4, 4), (3, 4, 4), (1, 9, 5), (3, 1, 16))
    PIXEL_LIMITS = (4096, 64, 1 << 20, 1)

    def split_image_input(self, data: bytes) -> tuple[Any, int, list[bytes]]:
        """Byte 0: size (bits 0-1), pixel limit (2-3), images (4-5: 1, 1, 2, 3); the rest: the images."""
        head = data[0] if data else 0
        channels, height, width = self.IMAGE_SIZES[head & 3]
        pre = self.m["Preprocessing"](height, width, channels, (0.5,) * channels, (0.25,) * channels)
        count = (1, 1, 2, 3)[(head >> 4) & 3]
        body = data[1:]
        # Several images: equal slices of the body, so a mutation of one keeps the others intact.
        step = max(1, math.ceil(len(body) / count))
        shots = [body[i * step : (i + 1) * step] for i in range(count)]
        return pre, self.PIXEL_LIMITS[(head >> 2) & 3], shots

    def image(self, data: bytes) -> str:
        pre, limit, shots = self.split_image_input(data)
        try:
            batch = self.m["images"].decode_images(shots, pre, limit)
        except self.m["ServerError"] as exc:
            return type(exc).__name__
        check_images(batch, len(shots), pre)
        return "ok"

    # wire --------------------------------------------------------------------------------------

    def wire(self, data: bytes) -> str:
        from google.protobuf.message import DecodeError

        m, fx = self.m, self.fx
        classify = bool(data) and data[0] & 1 == 1
        try:
            message = (m["img_pb"].ClassifyRequest if classify else m["pb"].ModelInferRequest).FromString(
                data[1:]
            )
        except DecodeError:
            return "undecodable"  # grpc refuses these before any servicer runs
        converters = m["converters"]
        try:  # as the gRPC servicers: convert, call the core, convert the answer back
            if classify:
                answer = fx.loop.run_until_complete(
                    fx.dataplane.classify(converters.classify_request(message), None)
                )
                response = converters.classify_response(answer)
            else:
                request = converters.infer_request(message)
                response = converters.infer_response(
                    fx.loop.run_until_complete(fx.dataplane.infer(request, None))
                )
        except m["ServerError"] as exc:
            return type(exc).__name__
        model = fx.dataplane.manager.get(response.model_name)
        if classify:
            check_classify_response(response, model, len(message.images), message.top_k)
            return "ok-classify"
        check(response.id == message.id, f"answer id {response.id!r} for request id {message.id!r}")
        outputs = m["tensors"].requested_outputs(request, model)
        check_infer_response(response, model, message.inputs[0].shape[0], outputs)
        return "ok-infer"


def _f32(fdp: Any) -> float:
    value = fdp.ConsumeFloat()
    return value if not math.isfinite(value) or abs(value) < 3e38 else math.copysign(math.inf, value)


# -- seeds -------------------------------------------------------------------------------------------


def image_seed_bodies() -> dict[str, bytes]:
    """Small real images in the formats and modes clients send."""
    from PIL import Image

    images = {
        "png-gray": ("L", (4, 4), "PNG"),
        "png-rgb": ("RGB", (7, 5), "PNG"),
        "png-rgba": ("RGBA", (3, 3), "PNG"),
        "png-palette": ("P", (5, 5), "PNG"),
        "jpeg-rgb": ("RGB", (8, 8), "JPEG"),
        "jpeg-gray": ("L", (8, 4), "JPEG"),
        "gif": ("P", (4, 4), "GIF"),
        "bmp-1bit": ("1", (8, 8), "BMP"),
        "webp": ("RGB", (4, 4), "WEBP"),
        "tiff-float": ("F", (3, 3), "TIFF"),
        "png-16bit": ("I;16", (3, 3), "PNG"),
        "ppm": ("RGB", (3, 2), "PPM"),
    }
    out = {}
    for name, (mode, size, fmt) in images.items():
        image = Image.new(mode, size)
        pixels = range(size[0] * size[1])
        if len(mode) >= 3 and mode != "I;16":
            image.putdata([((i * 37) % 251, (i * 11) % 241, (i * 5) % 239, 255)[: len(mode)] for i in pixels])
        else:
            image.putdata([(i * 37) % 251 for i in pixels])
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        out[name] = buffer.getvalue()
    return out


def make_seeds(harness: Harness, corpus: Path) -> dict[str, int]:
    """Write the committed seed corpus: a handful of valid inputs per target, reproducibly."""
    m = harness.m
    pb, img_pb = m["pb"], m["img_pb"]
    seeds: dict[str, dict[str, bytes]] = {t: {} for t in TARGETS}
    bodies = image_seed_bodies()
    for i, (name, body) in enumerate(bodies.items()):
        head = (i % 4) | ((i // 4 % 2) << 4)  # every output size, one image or (0x10) one again
        seeds["image"][name] = bytes([head]) + body
    seeds["image"]["two-images"] = bytes([0x20 | 1]) + bodies["png-rgb"] + bodies["png-rgb"]
    # tensor: inputs of a fixed random search that reach distinct outcomes, valid ones first.
    rng = random.Random(20261203)
    wanted = {"ok": 3, "ok-classification": 3, "InvalidInput": 3}
    found: dict[str, int] = {}
    for _ in range(200_000):
        data = rng.randbytes(rng.randint(8, 400))
        outcome = harness.tensor(data)
        if found.get(outcome, 0) < wanted.get(outcome, 0):
            found[outcome] = found.get(outcome, 0) + 1
            seeds["tensor"][f"{outcome}-{found[outcome]}"] = data
        if found == wanted:
            break
    # wire: serialized valid requests of both services.
    for model in harness.fx.models:
        batch = np.ones((2, *model.sample_shape), dtype=model.dtype)
        request = pb.ModelInferRequest(model_name=model.name, id="seed")
        request.inputs.add(name="input", datatype=model.config.input.datatype, shape=list(batch.shape))
        request.raw_input_contents.append(batch.tobytes())
        seeds["wire"][f"infer-raw-{model.name}"] = b"\0" + request.SerializeToString()
        typed = pb.ModelInferRequest(model_name=model.name, model_version="1")
        tensor = typed.inputs.add(
            name="input", datatype=model.config.input.datatype, shape=[1, *model.sample_shape]
        )
        field_name = m["DATATYPES"][model.config.input.datatype].contents_field
        getattr(tensor.contents, field_name).extend([1] * math.prod(model.sample_shape))
        output = typed.outputs.add(name="logits")
        output.parameters["classification"].int64_param = 2
        seeds["wire"][f"infer-typed-classification-{model.name}"] = b"\0" + typed.SerializeToString()
    for name, top_k in (("gray", 0), ("rgb", 2), ("", 9)):
        shots = [bodies["png-gray"], bodies["jpeg-rgb"]][: 1 + top_k % 2]
        message = img_pb.ClassifyRequest(model_name=name, images=shots, top_k=top_k)
        seeds["wire"][f"classify-{name or 'default'}-{top_k}"] = b"\1" + message.SerializeToString()
    counts = {}
    for target, items in seeds.items():
        directory = corpus / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in items.items():
            (directory / name).write_bytes(data)
        counts[target] = len(items)
    return counts


# -- the worker: one target under libFuzzer --------------------------------------------------------


def worker(target: str, libfuzzer_args: list[str], planted_bug: bool) -> None:
    """Run one target under libFuzzer until its -max_total_time (never returns)."""
    harness = Harness(make_fixture(), planted_bug)
    run = harness.targets[target]

    def one_input(data: bytes) -> None:
        run(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def reproduce(target: str, path: Path, planted_bug: bool) -> int:
    """Run one saved input through a target; print its outcome or the traceback of the finding."""
    fixture = make_fixture()
    try:
        outcome = Harness(fixture, planted_bug).targets[target](path.read_bytes())
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        fixture.close()
    print(f"{path}: {outcome} (no finding)")
    return 0


# -- the driver: measurement ---------------------------------------------------------------------------

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+(?: .*?exec/s: (\d+))?")
_FINAL = re.compile(r"^stat::(\w+):\s+(\d+)")


@dataclass
class Finding:
    """One distinct bug: where it raised, the saved input that shows it, and the traceback."""

    signature: str
    path: str
    traceback: str


@dataclass
class TargetReport:
    target: str
    seconds: float
    executions: int = 0
    exec_per_s: float = 0.0
    coverage: int = 0
    features: int = 0
    corpus_seeds: int = 0
    corpus_final: int = 0
    restarts: int = 0
    findings: list[Finding] = field(default_factory=list)
    exit_code: int = 0


#: libFuzzer stops at a finding; the driver restarts it (without that input) up to this often.
MAX_RESTARTS = 5


def _signature(trace: str, artifact: str) -> str:
    """``ValueError at server/tensors.py:115``: the exception and the deepest project frame.

    ``check`` itself is skipped, so that each invariant is its own finding (named by its caller).
    """
    found = re.findall(r'File "([^"]+)", line (\d+)(?:, in (\w+))?', trace)
    frames = [(Path(f), line) for f, line, function in found if function != "check"]
    ours = [(f.relative_to(ROOT), line) for f, line in frames if f.is_relative_to(ROOT)]
    project = [(f, line) for f, line in ours if f.parts[0] != "scripts"] or ours
    where = f" at {project[-1][0]}:{project[-1][1]}" if project else ""
    first = trace.strip().splitlines()[0] if trace.strip() else ""
    kind = first.split(":")[0] if re.match(r"^[\w.]+:", first) else artifact.split("-")[0]
    return kind + where


def _run_libfuzzer(
    command: list[str], report: TargetReport, started: float, progress: Callable[[str], None]
) -> tuple[int, str]:
    """One libFuzzer process: fold its status lines into ``report``; return its exit code and trace."""
    target = report.target
    shown = 0.0
    after: list[str] = []  # what follows a finding: the exception and its traceback
    tail: list[str] = []
    last_count, final_count = 0, 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", cwd=ROOT, env=env) as child:  # fmt: skip
        assert child.stdout is not None
        for line in child.stdout:  # libFuzzer's stderr; atheris prints tracebacks on stdout
            tail = [*tail[-40:], line]
            if status := _STATUS.match(line):
                last_count = int(status[1])
                report.coverage = max(report.coverage, int(status[3]))
                report.features = max(report.features, int(status[4]))
                report.corpus_final = int(status[5])
                if time.monotonic() - shown > 5 or status[2] == "INITED":
                    shown = time.monotonic()
                    progress(f"  {target}: {time.monotonic() - started:5.1f}s  #{status[1]} {status[2]:<6} "
                             f"cov {status[3]} ft {status[4]} corpus {status[5]}")  # fmt: skip
            elif final := _FINAL.match(line):
                if final[1] == "number_of_executed_units":
                    final_count = int(final[2])
            elif (after or "Uncaught Python exception" in line) and len(after) < 400:
                after.append(line)
            if "ERROR: libFuzzer" in line or "Uncaught Python exception" in line:
                progress(f"  {target}: {line.strip()}")
        code = child.wait()
    report.executions += final_count or last_count
    found = re.search(r"Uncaught Python exception: ===\n(.*?)\n\s*\n", "".join(after), re.S)
    if found:
        return code, found[1] + "\n"
    return code, "".join(tail[-15:]) if code else ""


def fuzz_target(
    target: str,
    seconds: int,
    corpus: Path,
    crashes: Path,
    *,
    input_timeout: int,
    update_corpus: bool,
    planted_bug: bool,
    progress: Callable[[str], None],
) -> TargetReport:
    """Fuzz one target in child processes on a copy of its corpus; parse libFuzzer's figures.

    After a finding the child is restarted for the time left, without the input that showed it,
    so one bug does not end the run; findings are kept once per signature.
    """
    seeds = corpus / target
    report = TargetReport(target, seconds, corpus_seeds=len(list(seeds.glob("*"))) if seeds.is_dir() else 0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        work, artifacts = Path(tmp) / "corpus", Path(tmp) / "artifacts"
        if seeds.is_dir():
            shutil.copytree(seeds, work)
        else:
            work.mkdir()
        artifacts.mkdir()
        while True:
            left = seconds - (time.monotonic() - started)
            command = [
                sys.executable, __file__, "--worker", target, *(["--plant-bug"] if planted_bug else []), "--",
                f"-max_total_time={max(1, round(left))}", f"-timeout={input_timeout}", "-rss_limit_mb=3072",
                "-max_len=16384", "-print_final_stats=1", f"-artifact_prefix={artifacts}/", str(work),
            ]  # fmt: skip
            report.exit_code, trace = _run_libfuzzer(command, report, started, progress)
            new = sorted(artifacts.iterdir())
            for artifact in new:
                signature = _signature(trace, artifact.name)
                if all(f.signature != signature for f in report.findings):
                    crashes.mkdir(parents=True, exist_ok=True)
                    saved = crashes / f"{target}-{artifact.name}"
                    shutil.copyfile(artifact, saved)
                    shown = saved.relative_to(ROOT) if saved.is_relative_to(ROOT) else saved
                    report.findings.append(Finding(signature, str(shown), trace))
                    progress(f"  {target}: finding {signature}, saved as {shown}")
                _drop_from_corpus(work, artifact.read_bytes())
                artifact.unlink()
            if not new or report.restarts >= MAX_RESTARTS or seconds - (time.monotonic() - started) < 3:
                break
            report.restarts += 1
        report.exec_per_s = report.executions / max(1.0, time.monotonic() - started)
        report.corpus_final = len(list(work.iterdir()))
        if update_corpus:
            seeds.mkdir(parents=True, exist_ok=True)
            for entry in work.iterdir():
                if not (seeds / entry.name).exists():
                    shutil.copyfile(entry, seeds / entry.name)
    return report


def _drop_from_corpus(work: Path, data: bytes) -> None:
    """Remove an input that showed a finding, so the restarted fuzzer does not stop on it again."""
    for entry in work.iterdir():
        if entry.read_bytes() == data:
            entry.unlink()


def failure_of(run: Callable[[bytes], str], data: bytes) -> str | None:
    """The signature of the finding ``data`` shows (as in the report), or None when it passes."""
    try:
        run(data)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        text = "".join(traceback.format_exception_only(exc)) + "".join(traceback.format_list(frames))
        return _signature(text, "crash")
    return None


def minimize(run: Callable[[bytes], str], data: bytes, seconds: float = 60) -> bytes:
    """The shortest input (by deleting ever smaller chunks) that fails with the same signature.

    libFuzzer's own ``-minimize_crash`` re-executes ``argv[0]``, which a Python script is not.
    """
    wanted = failure_of(run, data)
    if wanted is None:
        raise ValueError("the input shows no finding")
    deadline = time.monotonic() + seconds
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, shrunk = 0, False
        while i < len(data) and time.monotonic() < deadline:
            candidate = data[:i] + data[i + chunk :]
            if failure_of(run, candidate) == wanted:
                data, shrunk = candidate, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return data


# -- verdicts and rendering ---------------------------------------------------------------------------


def verdict(reports: Sequence[TargetReport]) -> list[str]:
    """What is wrong with a run: a target that executed nothing, measured no coverage, or found a bug."""
    problems = []
    for r in reports:
        if r.executions == 0:
            problems.append(f"{r.target}: executed no inputs (exit code {r.exit_code})")
        if r.coverage == 0:
            problems.append(f"{r.target}: no coverage reported")
        problems += [f"{r.target}: finding {f.signature} ({f.path})" for f in r.findings]
    return problems


def render(reports: Sequence[TargetReport]) -> str:
    lines = [
        "| target | seconds | executions | exec/s | coverage (cov) | features (ft) | corpus seeds -> final "
        "| findings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        findings = "; ".join(f"{f.signature} (`{f.path}`)" for f in r.findings) or "none"
        lines.append(
            f"| {r.target} | {r.seconds} | {r.executions} | {r.exec_per_s:.0f} | {r.coverage} | {r.features} "
            f"| {r.corpus_seeds} -> {r.corpus_final} | {findings} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="total fuzzing time, shared by the targets")
    parser.add_argument(
        "--target", action="append", choices=TARGETS, help="a target (repeatable; default all)"
    )
    parser.add_argument(
        "--corpus", type=Path, default=CORPUS, help="seed corpus root (one folder per target)"
    )
    parser.add_argument("--crashes", type=Path, default=CORPUS / "crashes", help="where findings are saved")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--input-timeout", type=int, default=10, help="seconds one input may run (a hang)")
    parser.add_argument("--update-corpus", action="store_true", help="add new corpus entries to --corpus")
    parser.add_argument("--make-seeds", action="store_true", help="regenerate the seed corpus and exit")
    parser.add_argument("--reproduce", type=Path, help="run one saved input through --target and exit")
    parser.add_argument("--minimize", type=Path, help="minimise a saved finding of --target (to FILE.min)")
    parser.add_argument("--plant-bug", action="store_true", help="self-test: drop input_batch's size check")
    parser.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if atheris is None:
        print(
            "atheris is not installed (pip install atheris: a manylinux wheel for CPython 3.11)",
            file=sys.stderr,
        )
        return 2
    if args.worker:
        worker(args.worker, [a for a in rest if a != "--"], args.plant_bug)
        return 0
    targets = args.target or list(TARGETS)
    if args.make_seeds:
        fixture = make_fixture()
        try:
            counts = make_seeds(Harness(fixture), args.corpus)
        finally:
            fixture.close()
        print(f"wrote seeds: {counts}")
        return 0
    if args.minimize:
        fixture = make_fixture()
        try:
            run = Harness(fixture, args.plant_bug).targets[targets[0]]
            data = args.minimize.read_bytes()
            small = minimize(run, data)
            print(f"{failure_of(run, small)}: {len(data)} -> {len(small)} bytes")
        finally:
            fixture.close()
        out = args.minimize.with_name(args.minimize.name + ".min")
        out.write_bytes(small)
        print(f"minimised input written to {out}")
        return 0
    if args.reproduce:
        return reproduce(targets[0], args.reproduce, args.plant_bug)
    share = max(1, args.seconds // len(targets))
    print(f"fuzzing {', '.join(targets)} for {share} s each (atheris {_atheris_version()}, "
          f"instrumented: {', '.join(INSTRUMENTED)})", flush=True)  # fmt: skip
    reports = []
    for target in targets:
        reports.append(
            fuzz_target(
                target, share, args.corpus, args.crashes, input_timeout=args.input_timeout,
                update_corpus=args.update_corpus, planted_bug=args.plant_bug,
                progress=lambda line: print(line, flush=True),
            )
        )  # fmt: skip
    print(render(reports))
    problems = verdict(reports)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        figures = {"engine": f"atheris {_atheris_version()}", "seconds": args.seconds, "cpus": os.cpu_count(),
                   "targets": [asdict(r) for r in reports], "problems": problems}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if problems else 0


def _atheris_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atheris")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
