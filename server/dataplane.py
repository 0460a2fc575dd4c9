"""The plain core behind the RPCs: protocol-free except for the message types.

Every method either returns a response message or raises a
:class:`~server.errors.ServerError`; the servicers only map those to statuses.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
import time

import numpy as np

from modelrepo import ModelConfig
from protocol import grpc_service_pb2 as pb
from protocol import image_classification_pb2 as img_pb
from protocol import model_config_pb2 as mc
from server import converters
from server.errors import InvalidInput, ModelNotFound, PermissionDenied, ServerError, Unavailable
from server.images import decode_images
from server.logs import bind_request_id
from server.models import LoadedModel, ModelManager
from server.settings import Settings

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

    async def infer(
        self, request: pb.ModelInferRequest, time_remaining: float | None
    ) -> pb.ModelInferResponse:
        """Run one ModelInferRequest through its model's batcher."""
        bind_request_id(request.id)
        started = time.perf_counter_ns()
        model: LoadedModel | None = None
        self._enter()
        try:
            model = self.manager.get(request.model_name, request.model_version)
            outputs = converters.requested_outputs(request, model)
            batch = converters.decode_request(request, model)
            queued = time.perf_counter_ns()
            result = await model.infer(batch, _deadline(time_remaining))
            computed = time.perf_counter_ns()
            response = converters.encode_response(request, model, result, outputs)
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

    async def classify(
        self, request: img_pb.ClassifyRequest, time_remaining: float | None
    ) -> img_pb.ClassifyResponse:
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
            self.manager.get("", version)  # raises the right error (shutting down / unknown)
            raise Unavailable("no model is loaded")
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

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS)
        )

    def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        model = self.manager.get(name, version)
        config = model.config
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(model.version)],
            platform=PLATFORM,
            inputs=[
                tm(name=config.input.name, datatype=config.input.datatype, shape=[-1, *config.input.shape])
            ],
            outputs=[
                tm(name=config.output.name, datatype=config.output.datatype, shape=[-1, *config.output.shape])
            ],
        )

    def model_config(self, name: str, version: str) -> pb.ModelConfigResponse:
        model = self.manager.get(name, version)
        return pb.ModelConfigResponse(config=_triton_config(model))

    def model_statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        if name:
            models = [self.manager.get(name, version)]
        else:
            models = self.manager.loaded()
        response = pb.ModelStatisticsResponse()
        for model in models:
            s = model.stats
            entry = response.model_stats.add(
                name=model.name,
                version=str(model.version),
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
            )
            # Field by field as Triton means them: see ModelStats in server/metrics.py.
            stats = entry.inference_stats
            pairs = [
                (stats.success, s.success),
                (stats.fail, s.fail),
                (stats.queue, s.queue),
                (stats.compute_input, s.compute_input),
                (stats.compute_infer, s.compute_infer),
                (stats.compute_output, s.compute_output),
                (stats.cache_hit, s.cache_hit),
                (stats.cache_miss, s.cache_miss),
            ]
            for size, per_size in sorted(s.batch_stats.items()):
                batch = entry.batch_stats.add(batch_size=size)
                pairs += [
                    (batch.compute_input, per_size.compute_input),
                    (batch.compute_infer, per_size.compute_infer),
                    (batch.compute_output, per_size.compute_output),
                ]
            for target, source in pairs:
                target.count, target.ns = source.count, source.ns
        return response

    # -- repository ---------------------------------------------------------------------------------

    async def repository_index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for entry in await self.manager.entries():
            if ready_only and entry.current is None:
                continue
            version = str(entry.current.version) if entry.current is not None else ""
            response.models.add(name=entry.name, version=version, state=entry.state, reason=entry.reason)
        return response

    def _check_model_control(self, rpc: str) -> None:
        if not self.settings.allow_model_control:
            raise PermissionDenied(
                f"{rpc} is disabled on this server; start it with --allow-model-control "
                "(CNNSERVE_ALLOW_MODEL_CONTROL=1) to allow loading and unloading models"
            )

    async def load(self, request: pb.RepositoryModelLoadRequest) -> None:
        self._check_model_control("RepositoryModelLoad")
        if self.manager.shutting_down:
            raise Unavailable("server is shutting down")
        version: int | None = None
        if "version" in request.parameters:
            version = parse_version_parameter(request.parameters["version"])
        await self.manager.load(request.model_name, version)

    async def unload(self, request: pb.RepositoryModelUnloadRequest) -> None:
        self._check_model_control("RepositoryModelUnload")
        if request.model_name not in {e.name for e in await self.manager.entries()}:
            raise ModelNotFound(f"unknown model {request.model_name!r}")
        await self.manager.unload(request.model_name)


#: A version as the repository spells its directories: ASCII digits without a leading zero.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def parse_version_parameter(param: pb.ModelRepositoryParameter) -> int:
    """The ``version`` parameter of RepositoryModelLoad as a positive integer.

    Only the canonical spelling is accepted (``'01'``, ``'1/../x'``, ``'-1'``, ``'²'`` are
    refused), so a version can only ever become one numeric directory name.
    """
    choice = param.WhichOneof("parameter_choice")
    raw = getattr(param, choice) if choice else None
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw < 10**18:
        return raw
    if isinstance(raw, str) and _VERSION.fullmatch(raw):
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


def _classify_response(model: LoadedModel, logits: np.ndarray, top_k: int) -> img_pb.ClassifyResponse:
    labels = model.config.labels
    probabilities = converters.softmax(logits)
    k = min(top_k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    response = img_pb.ClassifyResponse(model_name=model.name, model_version=str(model.version))
    for row, indices in enumerate(order):
        result = response.results.add()
        for index in indices:
            i = int(index)
            label = labels[i] if i < len(labels) else str(i)
            result.classes.add(index=i, label=label, score=float(probabilities[row, i]))
    return response


_TYPE = {name: getattr(mc, f"TYPE_{name}") for name in converters.CONTENTS_FIELD if name != "BYTES"}
_TYPE.update({"FP16": mc.TYPE_FP16, "BYTES": mc.TYPE_STRING})


def _triton_config(model: LoadedModel) -> mc.ModelConfig:
    config: ModelConfig = model.config
    b = model.batching
    kind = mc.ModelInstanceGroup.KIND_GPU if model.device.kind == "cuda" else mc.ModelInstanceGroup.KIND_CPU
    group = mc.ModelInstanceGroup(name=f"{model.name}_0", kind=kind, count=len(model.sessions) or b.instances)
    if model.device.kind == "cuda":
        group.gpus.append(model.device.index)
    fmt = mc.ModelInput.FORMAT_NCHW if len(config.input.shape) == 3 else mc.ModelInput.FORMAT_NONE
    return mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=b.max_batch_size,
        input=[
            mc.ModelInput(
                name=config.input.name,
                data_type=_TYPE[config.input.datatype],
                format=fmt,
                dims=list(config.input.shape),
            )
        ],
        output=[
            mc.ModelOutput(
                name=config.output.name,
                data_type=_TYPE[config.output.datatype],
                dims=list(config.output.shape),
            )
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=[b.max_batch_size], max_queue_delay_microseconds=b.max_queue_delay_us
        ),
        instance_group=[group],
        default_model_filename="model.onnx",
        parameters={"max_queue_size": mc.ModelParameter(string_value=str(b.max_queue_size))},
    )
