"""The asyncio client: the same methods as the synchronous one, awaited."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import convert
from clients.auth import AioBearerToken
from clients.convert import ImageLike
from clients.errors import InferenceServerError, InvalidArgumentError, raise_error
from clients.retry import RetryPolicy
from clients.types import Classification, ModelIndexEntry, ModelMetadata
from protocol import (
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    image_classification_pb2_grpc,
    model_config_pb2,
)

PemSource = bytes | str | os.PathLike[str] | None


class AsyncInferenceClient:
    """An asyncio client for one server, over one reused ``grpc.aio`` channel.

    ``url`` is ``HOST:PORT``. Every method takes ``timeout`` in seconds; None uses
    the client's ``timeout``. Failed calls raise
    :class:`~clients.errors.InferenceServerError`; arguments it refuses to send raise its
    subclass :class:`~clients.errors.InvalidArgumentError`. Use it as an async context
    manager, or await :meth:`close`. ``token`` sends ``authorization: Bearer <token>`` on
    every call. ``retry`` and the cached model metadata (kept fresh across model swaps) work as
    in :class:`~clients.sync.InferenceClient`.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = 30.0,
        ssl: bool = False,
        root_certificates: PemSource = None,
        private_key: PemSource = None,
        certificate_chain: PemSource = None,
        max_message_bytes: int = convert.DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        convert.check_name(url, "url")
        self.timeout = convert.check_timeout(timeout)
        self._interceptors: list[Any] | None = [AioBearerToken(token)] if token else None
        self._options = convert.channel_options(max_message_bytes, retry)
        self._credentials: grpc.ChannelCredentials | None = None
        if ssl or root_certificates is not None or private_key is not None:
            self._credentials = convert.tls_credentials(root_certificates, private_key, certificate_chain)
        self.url = url
        # The channel belongs to the event loop it is made on, so it is made on first use
        # (inside the caller's loop), not here: a client may be built before the loop runs.
        self._channel: grpc.aio.Channel | None = None
        self._stubs: (
            tuple[
                grpc_service_pb2_grpc.GRPCInferenceServiceStub,
                image_classification_pb2_grpc.ImageClassificationStub,
                health_pb2_grpc.HealthStub,
            ]
            | None
        ) = None
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}

    def _connect(
        self,
    ) -> tuple[
        grpc_service_pb2_grpc.GRPCInferenceServiceStub,
        image_classification_pb2_grpc.ImageClassificationStub,
        health_pb2_grpc.HealthStub,
    ]:
        if self._stubs is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.url, self._credentials, options=self._options, interceptors=self._interceptors
                )
            else:
                self._channel = grpc.aio.insecure_channel(
                    self.url, options=self._options, interceptors=self._interceptors
                )
            self._stubs = (
                grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel),
                image_classification_pb2_grpc.ImageClassificationStub(self._channel),
                health_pb2_grpc.HealthStub(self._channel),
            )
        return self._stubs

    @property
    def _inference(self) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
        return self._connect()[0]

    @property
    def _images(self) -> image_classification_pb2_grpc.ImageClassificationStub:
        return self._connect()[1]

    @property
    def _health(self) -> health_pb2_grpc.HealthStub:
        return self._connect()[2]

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None
            self._stubs = None

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else convert.check_timeout(timeout)

    # Health -----------------------------------------------------------------------------------

    async def server_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server process answers (KServe ServerLive)."""
        try:
            request = grpc_service_pb2.ServerLiveRequest()
            return bool((await self._inference.ServerLive(request, timeout=self._timeout(timeout))).live)
        except grpc.RpcError as error:
            raise_error(error)

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server is ready for inference (KServe ServerReady)."""
        try:
            request = grpc_service_pb2.ServerReadyRequest()
            return bool((await self._inference.ServerReady(request, timeout=self._timeout(timeout))).ready)
        except grpc.RpcError as error:
            raise_error(error)

    async def model_ready(self, model: str, version: str = "", *, timeout: float | None = None) -> bool:
        """Whether one model (version) is loaded and ready."""
        request = grpc_service_pb2.ModelReadyRequest(
            name=convert.check_name(model, "model"), version=convert.check_name(version, "version")
        )
        try:
            return bool((await self._inference.ModelReady(request, timeout=self._timeout(timeout))).ready)
        except grpc.RpcError as error:
            raise_error(error)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status of ``service`` ("" is the whole server), e.g. ``"SERVING"``."""
        request = health_pb2.HealthCheckRequest(service=convert.check_name(service, "service"))
        try:
            response = await self._health.Check(request, timeout=self._timeout(timeout))
        except grpc.RpcError as error:
            raise_error(error)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # Repository and models ------------------------------------------------------------------------

    async def server_metadata(
        self, *, timeout: float | None = None
    ) -> grpc_service_pb2.ServerMetadataResponse:
        """The server's name, version and protocol extensions."""
        try:
            request = grpc_service_pb2.ServerMetadataRequest()
            return await self._inference.ServerMetadata(request, timeout=self._timeout(timeout))
        except grpc.RpcError as error:
            raise_error(error)

    async def list_models(
        self, *, ready: bool = False, timeout: float | None = None
    ) -> list[ModelIndexEntry]:
        """The repository index: every model version and its state (only ready ones if ``ready``)."""
        try:
            request = grpc_service_pb2.RepositoryIndexRequest(ready=ready)
            response = await self._inference.RepositoryIndex(request, timeout=self._timeout(timeout))
        except grpc.RpcError as error:
            raise_error(error)
        return convert.index_from_proto(response)

    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None, refresh: bool = False
    ) -> ModelMetadata:
        """The model's inputs and outputs; cached per (model, version) unless ``refresh``.

        The cache is dropped when the server shows that it replaced the version.
        """
        key = (convert.check_name(model, "model"), convert.check_name(version, "version"))
        if refresh or key not in self._metadata:
            try:
                request = grpc_service_pb2.ModelMetadataRequest(name=model, version=version)
                response = await self._inference.ModelMetadata(request, timeout=self._timeout(timeout))
            except grpc.RpcError as error:
                raise_error(error)
            self._metadata[key] = convert.metadata_from_proto(response)
        return self._metadata[key]

    async def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        """The model's configuration (Triton ModelConfig: batching, instances, tensors)."""
        request = grpc_service_pb2.ModelConfigRequest(
            name=convert.check_name(model, "model"), version=convert.check_name(version, "version")
        )
        try:
            return (await self._inference.ModelConfig(request, timeout=self._timeout(timeout))).config
        except grpc.RpcError as error:
            raise_error(error)

    # Inference --------------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        outputs: Sequence[str] = (),
        *,
        version: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model on raw tensors and return its outputs by name.

        ``inputs`` maps input names to arrays that include the batch dimension; a
        bare array is the model's only input. They are checked against the model's
        metadata before anything is sent. ``outputs`` picks outputs (default: all).
        """
        names = convert.check_outputs(outputs)

        def build(metadata: ModelMetadata) -> grpc_service_pb2.ModelInferRequest:
            return convert.infer_request(model, convert.check_inputs(metadata, inputs), names, version)

        response = await self._infer_with_metadata(model, version, build, timeout)
        return convert.infer_response_arrays(response)

    async def classify(
        self,
        images: ImageLike | Sequence[ImageLike],
        model: str | None = None,
        top_k: int = 1,
        *,
        version: str = "",
        timeout: float | None = None,
    ) -> list[Classification]:
        """Classify images; one :class:`Classification` (top-k, best first) per image.

        Images may be file paths, encoded bytes, PIL images or uint8 HxW / HxWxC
        arrays (sent encoded; the server preprocesses them), or float CHW / NCHW
        arrays that are already preprocessed (sent as raw tensors). ``model`` None
        is the server's default model (encoded images only).
        """
        plan = convert.ClassifyPlan.make(images, model, top_k, version)
        from_images: list[Classification] = []
        if plan.encoded:
            images_request = plan.classify_request()
            try:
                response = await self._images.Classify(images_request, timeout=self._timeout(timeout))
            except grpc.RpcError as error:
                raise_error(error)
            convert.forget_replaced(
                self._metadata, (response.model_name, plan.version), response.model_version
            )
            from_images = convert.classifications_from_proto(response)
        from_tensors: list[Classification] = []
        if plan.tensors:
            infer_response = await self._infer_with_metadata(
                plan.tensor_model(), plan.version, plan.tensor_request, timeout
            )
            from_tensors = convert.classifications_from_tensors(infer_response, plan.top_k)
        return plan.results(from_images, from_tensors)

    # Metadata freshness (the same rules as the synchronous client) --------------------------------

    async def _infer_with_metadata(
        self,
        model: str,
        version: str,
        build: Callable[[ModelMetadata], grpc_service_pb2.ModelInferRequest],
        timeout: float | None,
    ) -> grpc_service_pb2.ModelInferResponse:
        """ModelInfer of the request that ``build`` makes from the model's metadata, kept fresh."""
        key = (convert.check_name(model, "model"), convert.check_name(version, "version"))
        was_cached = key in self._metadata
        metadata = await self.model_metadata(model, version, timeout=timeout)
        request: grpc_service_pb2.ModelInferRequest | None = None
        try:
            request = build(metadata)
        except InvalidArgumentError:
            if not was_cached:
                raise
        if request is None:
            # Refused by cached metadata: it may describe a version the server has replaced.
            metadata = await self.model_metadata(model, version, timeout=timeout, refresh=True)
            request = build(metadata)
        try:
            response = await self._inference.ModelInfer(request, timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            error = exc
        else:
            convert.forget_replaced(self._metadata, key, response.model_version)
            return response
        fresh = await self._changed_metadata(error, key, metadata, timeout)
        if fresh is None:
            raise_error(error)
        request = build(fresh)
        try:
            response = await self._inference.ModelInfer(request, timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise_error(exc)
        convert.forget_replaced(self._metadata, key, response.model_version)
        return response

    async def _changed_metadata(
        self, error: grpc.RpcError, key: tuple[str, str], used: ModelMetadata, timeout: float | None
    ) -> ModelMetadata | None:
        """Fresh metadata if ``error`` may come from ``used`` being out of date and it differs; else None."""
        if error.code() not in convert.STALE_METADATA_CODES:
            return None
        self._metadata.pop(key, None)
        try:
            fresh = await self.model_metadata(*key, timeout=timeout)
        except InferenceServerError:
            return None
        return fresh if fresh != used else None
