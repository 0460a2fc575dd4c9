"""The plain core behind both protocols: inference, metadata and the model repository.

Every method takes and returns the plain types of :mod:`server.types` (dataclasses with
numpy arrays; dicts in the KServe v2 JSON form) and either answers or raises a
:class:`~server.errors.ServerError`. The edges (:mod:`server.grpc`, :mod:`server.rest`)
only decode, encode and map errors to their status codes.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time

import numpy as np

from modelrepo.datatypes import DATATYPES
from modelrepo.repository import VERSION
from server import tensors
from server.errors import InvalidInput, ModelNotFound, PermissionDenied, ServerError, Unavailable
from server.images import decode_images
from server.logs import bind_request_id
from server.metrics import INFERENCE_STATS, Duration
from server.models import LoadedModel, ModelManager
from server.settings import Settings
from server.types import (
    ClassifyRequest,
    ClassifyResponse,
    ClassScore,
    InferRequest,
    InferResponse,
    ModelConfiguration,
    ModelMetadata,
    ModelStatistics,
    Parameters,
    RepositoryEntry,
    ServerMetadata,
)

logger = logging.getLogger(__name__)

SERVER_NAME = "cnnserve"
EXTENSIONS = ("classification", "model_repository", "model_configuration", "statistics")
PLATFORM = "onnxruntime_onnx"

try:
    SERVER_VERSION = importlib.metadata.version("cnnserve")
except importlib.metadata.PackageNotFoundError:  # running from a checkout without install
    SERVER_VERSION = "0.0.0"


class DataPlane:
    """Inference, metadata and repository operations over a :class:`ModelManager`."""

    def __init__(self, settings: Settings, manager: ModelManager) -> None:
        self.settings = settings
        self.manager = manager
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set when shutdown begins: open streams stop reading and end with UNAVAILABLE.
        self.stopping = asyncio.Event()
        #: Set by a stop signal: not ready any more, though requests are still served until
        #: :meth:`shutdown` (the server's shutdown delay).
        self.leaving = False

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Serving: not leaving or shutting down, and at least one model ready."""
        return not self.leaving and not self.manager.shutting_down and bool(self.manager.loaded())

    async def shutdown(self, timeout: float) -> bool:
        """Refuse new requests, then wait up to ``timeout`` s for the admitted ones to finish."""
        self.manager.shutting_down = True
        self.stopping.set()
        if self._inflight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            logger.warning("%d requests still running after the %.1fs grace period", self._inflight, timeout)
            return False
        return True

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    # -- inference ----------------------------------------------------------------------------------

    async def infer(self, request: InferRequest, time_remaining: float | None) -> InferResponse:
        """Run one inference request through its model's batcher."""
        bind_request_id(request.id)
        started = time.perf_counter_ns()
        model: LoadedModel | None = None
        self._enter()
        try:
            model = self.manager.get(request.model_name, request.model_version)
            outputs = tensors.requested_outputs(request, model)
            batch = tensors.input_batch(request, model)
            queued = time.perf_counter_ns()
            result = await model.infer(batch, _deadline(time_remaining))
            computed = time.perf_counter_ns()
            response = InferResponse(
                model.name, str(model.version), request.id, tensors.output_tensors(model, result, outputs)
            )
        except BaseException as exc:
            self._record_failure(model, exc, started)
            raise
        finally:
            self._leave()
        done = time.perf_counter_ns()
        model.stats.record_success(done - started, queued - started, done - computed)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("infer %s v%d batch %d done", model.name, model.version, len(batch))
        return response

    async def classify(self, request: ClassifyRequest, time_remaining: float | None) -> ClassifyResponse:
        """Decode, preprocess and classify a request's images."""
        bind_request_id()
        started = time.perf_counter_ns()
        model: LoadedModel | None = None
        self._enter()
        try:
            model = self._image_model(request.model_name, request.model_version)
            if not request.images:
                raise InvalidInput("the request holds no images; expected at least 1")
            if len(request.images) > model.batching.max_batch_size:
                raise InvalidInput(
                    f"the request holds {len(request.images)} images; model {model.name!r} accepts at most "
                    f"{model.batching.max_batch_size} per request"
                )
            # Admitted (a place in the model's queue) before any CPU goes into decoding.
            batcher = model.batcher
            reservation = batcher.reserve(_decoded_bytes(model, len(request.images)))
            try:
                while True:
                    # Decoding is CPU work in a thread; the model may be swapped meanwhile.
                    batch = await asyncio.to_thread(
                        decode_images,
                        request.images,
                        model.config.preprocessing,
                        self.settings.max_image_pixels,
                    )
                    current = self._image_model(request.model_name, request.model_version)
                    if current is not model:
                        batcher.cancel_reservation(reservation)
                        batcher = current.batcher
                        reservation = batcher.reserve(_decoded_bytes(current, len(request.images)))
                    if current is model or current.config.preprocessing == model.config.preprocessing:
                        model = current
                        break
                    model = current
            except BaseException:
                batcher.cancel_reservation(reservation)
                raise
            queued = time.perf_counter_ns()
            logits = await model.infer(batch, _deadline(time_remaining), reservation)
            computed = time.perf_counter_ns()
            response = _classify_response(model, logits, request.top_k or 1)
        except BaseException as exc:
            self._record_failure(model, exc, started)
            raise
        finally:
            self._leave()
        done = time.perf_counter_ns()
        model.stats.record_success(done - started, queued - started, done - computed)
        return response

    def _image_model(self, name: str, version: str) -> LoadedModel:
        """The model a Classify request goes to; it must take the FP32 images preprocessing makes."""
        model = self._find_image_model(name, version)
        datatype = model.config.input.datatype
        if datatype != "FP32":
            raise InvalidInput(
                f"model {model.name!r} takes {datatype} input; the image service needs a model with an "
                "FP32 image input (send tensors to ModelInfer instead)"
            )
        return model

    def _find_image_model(self, name: str, version: str) -> LoadedModel:
        if name:
            return self.manager.get(name, version)
        if self.settings.default_model:
            return self.manager.get(self.settings.default_model, version)
        model = self.manager.first_ready()
        if model is None:
            if self.manager.shutting_down:
                raise Unavailable("server is shutting down")
            raise Unavailable("no model is loaded; the image service needs one (see RepositoryIndex)")
        return self.manager.get(model.name, version)

    def _record_failure(self, model: LoadedModel | None, exc: BaseException, started: int) -> None:
        if model is None:
            return  # unknown model: no per-model series, so arbitrary names cannot grow the metrics
        if isinstance(exc, ServerError):
            reason = exc.reason
        elif isinstance(exc, asyncio.CancelledError):
            reason = "cancelled"
        else:
            reason = "internal"
        model.stats.record_failure(reason, time.perf_counter_ns() - started)

    # -- metadata -----------------------------------------------------------------------------------

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.manager.get(name, version)
        except ServerError:
            return False
        return True

    def server_metadata(self) -> ServerMetadata:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        model = self.manager.get(name, version)
        config = model.config
        return {
            "name": model.name,
            "versions": [str(model.version)],
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": config.input.name,
                    "datatype": config.input.datatype,
                    "shape": [-1, *config.input.shape],
                }
            ],
            "outputs": [
                {
                    "name": config.output.name,
                    "datatype": config.output.datatype,
                    "shape": [-1, *config.output.shape],
                }
            ],
        }

    def model_config(self, name: str, version: str) -> ModelConfiguration:
        return _triton_config(self.manager.get(name, version))

    def model_statistics(self, name: str, version: str) -> ModelStatistics:
        """Triton's statistics extension, field by field as Triton means them (see ModelStats)."""
        models = [self.manager.get(name, version)] if name else self.manager.loaded()
        entries = []
        for model in models:
            s = model.stats
            entries.append(
                {
                    "name": model.name,
                    "version": str(model.version),
                    "last_inference": s.last_inference_ms,
                    "inference_count": s.inference_count,
                    "execution_count": s.execution_count,
                    "inference_stats": {key: _duration(getattr(s, key)) for key in INFERENCE_STATS},
                    "batch_stats": [
                        {
                            "batch_size": size,
                            "compute_input": _duration(per_size.compute_input),
                            "compute_infer": _duration(per_size.compute_infer),
                            "compute_output": _duration(per_size.compute_output),
                        }
                        for size, per_size in sorted(s.batch_stats.items())
                    ],
                }
            )
        return {"model_stats": entries}

    # -- repository ---------------------------------------------------------------------------------

    async def repository_index(self, ready_only: bool) -> list[RepositoryEntry]:
        return [
            {
                "name": entry.name,
                "version": str(entry.current.version) if entry.current is not None else "",
                "state": entry.state,
                "reason": entry.reason,
            }
            for entry in await self.manager.entries()
            if not ready_only or entry.current is not None
        ]

    def _check_model_control(self, rpc: str) -> None:
        if not self.settings.allow_model_control:
            raise PermissionDenied(
                f"{rpc} is disabled on this server; start it with --allow-model-control "
                "(CNNSERVE_ALLOW_MODEL_CONTROL=1) to allow loading and unloading models"
            )

    async def load(self, name: str, parameters: Parameters) -> None:
        """Load (or reload) a model; the ``version`` parameter pins one version."""
        self._check_model_control("RepositoryModelLoad")
        if self.manager.shutting_down:
            raise Unavailable("server is shutting down")
        unknown = sorted(set(parameters) - {"version"})
        if unknown:
            raise InvalidInput(
                f"load parameters {unknown} are not supported; expected only 'version' (the model's "
                "configuration and files come from the repository)"
            )
        version: int | None = None
        if "version" in parameters:
            version = parse_version_parameter(parameters["version"])
        await self.manager.load(name, version)

    async def unload(self, name: str) -> None:
        self._check_model_control("RepositoryModelUnload")
        if name not in {e.name for e in await self.manager.entries()}:
            raise ModelNotFound(f"unknown model {name!r}")
        await self.manager.unload(name)


def parse_version_parameter(raw: object) -> int:
    """The ``version`` parameter of a repository load as a positive integer.

    Only the canonical spelling is accepted (``'01'``, ``'1/../x'``, ``'-1'``, ``'²'`` are
    refused), so a version can only ever become one numeric directory name.
    """
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw < 10**18:
        return raw
    if isinstance(raw, str) and VERSION.fullmatch(raw):
        return int(raw)
    raise InvalidInput(f"load parameter version is {raw!r}; expected a positive integer such as 1")


def _decoded_bytes(model: LoadedModel, images: int) -> int:
    """Input bytes of ``images`` decoded for ``model``: what its queue will hold."""
    pre = model.config.preprocessing
    return images * pre.channels * pre.height * pre.width * np.dtype(np.float32).itemsize


def _deadline(time_remaining: float | None) -> float | None:
    if time_remaining is None:
        return None
    return asyncio.get_running_loop().time() + time_remaining


def _classify_response(model: LoadedModel, logits: np.ndarray, top_k: int) -> ClassifyResponse:
    labels = model.config.labels
    probabilities = tensors.softmax(logits)
    k = min(top_k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    results = [
        [
            ClassScore(int(i), labels[int(i)] if int(i) < len(labels) else str(int(i)), float(row[int(i)]))
            for i in indices
        ]
        for row, indices in zip(probabilities, order, strict=True)
    ]
    return ClassifyResponse(model.name, str(model.version), results)


def _duration(source: Duration) -> dict[str, int]:
    return {"count": source.count, "ns": source.ns}


def _triton_config(model: LoadedModel) -> ModelConfiguration:
    """The model's configuration as Triton reports it (``ModelConfig``, JSON form)."""
    config = model.config
    b = model.batching
    group: dict[str, object] = {
        "name": f"{model.name}_0",
        "kind": "KIND_GPU" if model.device.kind == "cuda" else "KIND_CPU",
        "count": len(model.sessions) or b.instances,
    }
    if model.device.kind == "cuda":
        group["gpus"] = [model.device.index]
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": b.max_batch_size,
        "input": [
            {
                "name": config.input.name,
                "data_type": DATATYPES[config.input.datatype].config_type,
                "format": "FORMAT_NCHW" if len(config.input.shape) == 3 else "FORMAT_NONE",
                "dims": list(config.input.shape),
            }
        ],
        "output": [
            {
                "name": config.output.name,
                "data_type": DATATYPES[config.output.datatype].config_type,
                "dims": list(config.output.shape),
            }
        ],
        "dynamic_batching": {
            "preferred_batch_size": [b.max_batch_size],
            "max_queue_delay_microseconds": b.max_queue_delay_us,
        },
        "instance_group": [group],
        "default_model_filename": "model.onnx",
        "parameters": {"max_queue_size": {"string_value": str(b.max_queue_size)}},
    }
