"""gRPC servicers: decide nothing; convert (:mod:`server.grpc.converters`), call the core, map errors.

Every unary method goes through :func:`_guard`, the one place where exceptions
become statuses (:func:`abort_with`).

:func:`add_services` registers both services with request deserializers that never
raise: bytes that are not the method's message become an :class:`Undecodable`, which
a unary method answers with INVALID_ARGUMENT and a stream with an error for that one
message (grpc itself would answer UNKNOWN, with the parser's exception type).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
import grpc.aio

from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc
from protocol import image_classification_pb2 as img_pb
from protocol import image_classification_pb2_grpc as img_grpc
from server.dataplane import DataPlane
from server.errors import Status, status_of
from server.grpc import converters

logger = logging.getLogger(__name__)

T = TypeVar("T")


def grpc_code(status: Status) -> grpc.StatusCode:
    """The gRPC status code of a core status (they share names)."""
    return cast(grpc.StatusCode, grpc.StatusCode[status.name])


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """Abort the RPC with the status that ``exc`` maps to."""
    status, message = status_of(exc)
    await context.abort(grpc_code(status), message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


class Undecodable:
    """What a request deserializer returns for bytes that are not the expected message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    type_name = message_type.full_name if message_type is not None else "request"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return Undecodable(f"the request ({len(data)} bytes) is not a valid {type_name} message")

    return parse


def _refuse_undecodable(
    behavior: Callable[[Any, Any], Awaitable[Any]],
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: Any) -> Any:
        if type(request) is Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return call


class _Capture:
    """Stands in for the server while the generated ``add_*_to_server`` functions register."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = handlers


def add_services(server: grpc.aio.Server, plane: DataPlane) -> None:
    """Register the inference and image services on ``server``, with tolerant deserializers."""
    capture = _Capture()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), capture)
    img_grpc.add_ImageClassificationServicer_to_server(ImageClassificationServicer(plane), capture)
    for service, handlers in capture.services.items():
        safe = {}
        for name, handler in handlers.items():
            h = cast(Any, handler)
            h = h._replace(request_deserializer=_tolerant(h.request_deserializer))
            if not h.request_streaming and not h.response_streaming:
                h = h._replace(unary_unary=_refuse_undecodable(h.unary_unary))
            elif not h.request_streaming:  # pragma: no cover - neither service has one today
                raise TypeError(f"{service}/{name}: unary-stream methods need their own Undecodable check")
            safe[name] = h
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, safe),))
        cast(Any, server).add_registered_method_handlers(service, safe)


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
        return converters.server_metadata(self.plane.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return await _guard(
            context,
            _value(
                lambda: converters.model_metadata(self.plane.model_metadata(request.name, request.version))
            ),
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await _guard(context, _infer(self.plane, request, context.time_remaining()))

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
                response = await _infer(self.plane, request, context.time_remaining())
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
                    if type(request) is Undecodable:
                        # One bad message: an error answer for it; the stream goes on.
                        undecodable = cast(Undecodable, request)
                        await results.put(pb.ModelStreamInferResponse(error_message=undecodable.message))
                        continue
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    # wait, not gather: cancelling this reader at shutdown must not cancel the
                    # admitted requests (they are answered before the stream ends).
                    await asyncio.wait(list(tasks))
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
        return await _guard(
            context,
            _value(lambda: converters.model_config(self.plane.model_config(request.name, request.version))),
        )

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return await _guard(
            context,
            _value(
                lambda: converters.model_statistics(
                    self.plane.model_statistics(request.name, request.version)
                )
            ),
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        entries = await _guard(context, self.plane.repository_index(request.ready))
        return converters.repository_index(entries)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await _guard(context, self.plane.load(request.model_name, converters.load_parameters(request)))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await _guard(context, self.plane.unload(request.model_name))
        return pb.RepositoryModelUnloadResponse()


class ImageClassificationServicer(img_grpc.ImageClassificationServicer):
    """``cnnserve.v1.ImageClassification``: encoded images in, labels and scores out."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def Classify(self, request: img_pb.ClassifyRequest, context: Any) -> img_pb.ClassifyResponse:
        return await _guard(context, _classify(self.plane, request, context.time_remaining()))


async def _infer(
    plane: DataPlane, request: pb.ModelInferRequest, time_remaining: float | None
) -> pb.ModelInferResponse:
    return converters.infer_response(await plane.infer(converters.infer_request(request), time_remaining))


async def _classify(
    plane: DataPlane, request: img_pb.ClassifyRequest, time_remaining: float | None
) -> img_pb.ClassifyResponse:
    response = await plane.classify(converters.classify_request(request), time_remaining)
    return converters.classify_response(response)
