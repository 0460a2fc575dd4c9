"""gRPC servicers: convert nothing, decide nothing; call the data plane and map errors.

Every unary method goes through :func:`_guard`, the one place where exceptions
become statuses (via :func:`server.errors.abort_with`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc
from protocol import image_classification_pb2 as img_pb
from protocol import image_classification_pb2_grpc as img_grpc
from server.dataplane import DataPlane
from server.errors import abort_with, status_of

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def _guard(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    try:
        return await call
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as exc:
        await abort_with(context, exc)


async def _value(fn: Callable[[], T]) -> T:
    return fn()


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService``: KServe v2 plus Triton's extensions."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return self.plane.server_metadata()

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return await _guard(context, _value(lambda: self.plane.model_metadata(request.name, request.version)))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await _guard(context, self.plane.infer(request, context.time_remaining()))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; each answer (or error) carries the request's id.

        At most ``max_stream_inflight`` requests per stream are outstanding (running, or
        answered but not yet sent): past that the stream stops reading, so a client that
        sends without reading its answers meets HTTP/2 flow control instead of growing
        the server's memory.
        """
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.plane.settings.max_stream_inflight)

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                response = await self.plane.infer(request, context.time_remaining())
                await results.put(pb.ModelStreamInferResponse(infer_response=response))
            except Exception as exc:
                _code, message = status_of(exc)
                await results.put(
                    pb.ModelStreamInferResponse(
                        error_message=message,
                        infer_response=pb.ModelInferResponse(
                            model_name=request.model_name, model_version=request.model_version, id=request.id
                        ),
                    )
                )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks))
            finally:
                await results.put(None)

        reader = asyncio.create_task(read())
        stopping = asyncio.create_task(self.plane.stopping.wait())
        try:
            while True:
                getter = asyncio.create_task(results.get())
                await asyncio.wait((getter, stopping), return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    if (item := getter.result()) is None:
                        return
                    yield item
                    slots.release()
                    continue
                getter.cancel()
                # Shutting down: read no more, answer what was admitted, then end the stream
                # with a status the client can act on, before the port closes under it.
                reader.cancel()
                await asyncio.gather(*list(tasks), return_exceptions=True)
                while not results.empty():
                    if (item := results.get_nowait()) is not None:
                        yield item
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        finally:
            stopping.cancel()
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return await _guard(context, _value(lambda: self.plane.model_config(request.name, request.version)))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return await _guard(
            context, _value(lambda: self.plane.model_statistics(request.name, request.version))
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return await _guard(context, _value(lambda: self.plane.repository_index(request.ready)))

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await _guard(context, self.plane.load(request))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await _guard(context, self.plane.unload(request))
        return pb.RepositoryModelUnloadResponse()


class ImageClassificationServicer(img_grpc.ImageClassificationServicer):
    """``cnnserve.v1.ImageClassification``: encoded images in, labels and scores out."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def Classify(self, request: img_pb.ClassifyRequest, context: Any) -> img_pb.ClassifyResponse:
        return await _guard(context, self.plane.classify(request, context.time_remaining()))
