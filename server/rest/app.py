"""The HTTP/REST edge: KServe v2 routes on Starlette, over the same core as gRPC.

Each endpoint reads the path and body, decodes them (:mod:`server.rest.codecs`), calls
the :class:`~server.dataplane.DataPlane`, and encodes the answer; :func:`_errors` is the
one place where exceptions become ``{"error": ...}`` answers with an HTTP status.
Authentication (:class:`TokenAuth`) is a plain ASGI middleware, present only when a
token is configured.
"""

from __future__ import annotations

import logging
import urllib.parse
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.auth import BearerToken
from server.dataplane import DataPlane
from server.errors import InvalidInput, ModelNotFound, Status, status_of
from server.rest import codecs
from server.settings import Settings
from server.types import ClassifyRequest

logger = logging.getLogger(__name__)

#: Paths anyone may call: probes, the OpenAPI document, and the page (which asks for the token).
PUBLIC_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/v2/openapi.json", "/"})
#: The cookie the model page keeps the token in; honoured on GET requests only.
TOKEN_COOKIE = "cnnserve_token"
AUTHENTICATED = "cnnserve.authenticated"

_JSON = "application/json"
#: Content types an inference body may declare (none at all is accepted too: curl -d, tritonclient).
_INFER_TYPES = frozenset(
    {_JSON, "application/octet-stream", "application/vnd.sagemaker-triton.binary+json", "text/plain"}
)
#: Content types a JSON request body may declare: aiohttp (tritonclient.http.aio) sends bytes as
#: application/octet-stream and text as text/plain.
_JSON_TYPES = frozenset({_JSON, "application/octet-stream", "text/plain"})
_IMAGE_TYPES = ("image/", "application/octet-stream")
_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
_GZIP_MAGIC = b"\x1f\x8b"
#: How much compressed input is inflated at a time, and how many gzip members a body may have.
_PIECE = 1 << 16
_MAX_MEMBERS = 64
#: What curl -d (and HTML forms) send unless told otherwise.
_FORM = "application/x-www-form-urlencoded"


class HttpProblem(Exception):
    """An HTTP-level problem with no gRPC counterpart (413, 415): its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(codecs.dumps({"error": message}), status, headers=headers, media_type=_JSON)


def _json(document: object, status: int = 200) -> Response:
    return Response(codecs.dumps(document), status, media_type=_JSON)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip (every member, RFC 1952) or deflate (zlib) body, refused once it inflates past ``limit``.

    The input goes in pieces of :data:`_PIECE` bytes and gzip members are counted, so neither
    what zlib copies at each member's end nor the number of members can grow with the body.
    """
    if not body:
        return body
    view = memoryview(body)
    parts: list[bytes] = []
    size = position = members = 0
    while True:
        members += 1
        if members > _MAX_MEMBERS:
            raise InvalidInput(
                f"the gzip body has more than {_MAX_MEMBERS} members (gzip streams one after another)"
            )
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        while not inflater.eof:
            if position >= len(view):
                raise InvalidInput(f"the {encoding} body is truncated")
            piece = view[position : position + _PIECE]
            try:
                data = inflater.decompress(piece, limit + 1 - size)
            except zlib.error as exc:
                raise InvalidInput(f"the body is not valid {encoding} data ({exc})") from None
            size += len(data)
            if size > limit or inflater.unconsumed_tail:
                raise HttpProblem(
                    413, f"the body inflates to more than {limit} bytes, the most this server accepts"
                )
            parts.append(data)
            position += len(piece)
        position -= len(inflater.unused_data)
        if position == len(view):
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if encoding != "gzip" or view[position : position + 2] != _GZIP_MAGIC:
            raise InvalidInput(
                f"the {encoding} body has {len(view) - position} bytes of trailing data after its "
                "compressed stream"
            )


def _shown(text: str, limit: int = 200) -> str:
    """``text`` for an error message: at most ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


Endpoint = Callable[[Request], Awaitable[Response]]


def _errors(endpoint: Endpoint) -> Endpoint:
    """Turn every exception into ``{"error": ...}`` with its status; unexpected ones into 500."""

    async def call(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpProblem as exc:
            return error(exc.status, exc.message)
        except ClientDisconnect:
            # Nobody reads this answer; the point is not to log it as a server error.
            logger.debug("%s %s: the client disconnected during the body", request.method, request.url.path)
            return error(400, "the client disconnected before sending the whole body")
        except Exception as exc:
            status, message = status_of(exc)
            return error(status.http, message)

    return call


class Routes:
    """The endpoints, bound to one data plane."""

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings

    # -- reading bodies -----------------------------------------------------------------------------

    async def body(self, request: Request) -> bytes:
        """The request body, decompressed (Content-Encoding gzip or deflate), within the size cap."""
        limit = self.settings.max_message_bytes
        headers = request.headers
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in _ENCODINGS:
            raise HttpProblem(
                415, f"Content-Encoding is {_shown(encoding)!r}; expected gzip, deflate or none (identity)"
            )
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise HttpProblem(413, f"the body has {int(declared)} bytes; this server accepts at most {limit}")
        chunks = []
        size = 0
        async for chunk in request.stream():
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise HttpProblem(413, f"the body exceeds {limit} bytes, the most this server accepts")
                chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if encoding in ("", "identity"):
            return body
        return _inflate(body, encoding, limit)

    async def json_body(self, request: Request, what: str) -> dict[str, Any]:
        """An optional JSON object body (empty: {})."""
        _content_type(request, _JSON_TYPES, what)
        body = await self.body(request)
        if not body.strip():
            return {}
        document = codecs.parse_json(body, what)
        if not isinstance(document, dict):
            raise InvalidInput(f"the {what} is not a JSON object")
        return document

    # -- server ---------------------------------------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        return _json(self.plane.server_metadata())

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.plane.ready
        return _json({"ready": ready}, 200 if ready else Status.UNAVAILABLE.http)

    # -- models ---------------------------------------------------------------------------------

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        return _json(self.plane.model_metadata(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        ready = self.plane.model_ready(name, version)
        return _json({"name": name, "ready": ready}, 200 if ready else Status.UNAVAILABLE.http)

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request)
        return _json(self.plane.model_config(name, version))

    async def model_statistics(self, request: Request) -> Response:
        name, version = _model(request)
        return _json(self.plane.model_statistics(name, version))

    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        _content_type(request, _INFER_TYPES, "inference request")
        body = await self.body(request)
        decoded = codecs.infer_request(body, request.headers.get(codecs.HEADER_LENGTH), name, version)
        response = await self.plane.infer(decoded.request, None)
        payload, header_length = codecs.infer_response(response, decoded)
        if header_length is None:
            return Response(payload, media_type=_JSON)
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )

    async def classify(self, request: Request) -> Response:
        name, version = _model(request)
        top_k = codecs.top_k(request.query_params.getlist("top_k"))
        images = await self.images(request)
        response = await self.plane.classify(ClassifyRequest(images, name, version, top_k), None)
        return _json(codecs.classify_response(response))

    async def images(self, request: Request) -> list[bytes]:
        """The images of a classify request: the raw body, or every file of a multipart form."""
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if media == "multipart/form-data":
            # Read (and inflate) the body as any other, so the size cap and Content-Encoding hold here too.
            body = await self.body(request)

            async def chunks() -> AsyncGenerator[bytes, None]:
                yield body

            parser = MultiPartParser(
                request.headers,
                chunks(),
                max_files=1024,
                max_fields=1024,
                max_part_size=self.settings.max_message_bytes,
            )
            try:
                form = await parser.parse()
            except MultiPartException as exc:
                raise InvalidInput(f"the multipart body cannot be read: {exc.message}") from None
            try:
                images = [await v.read() for _, v in form.multi_items() if isinstance(v, UploadFile)]
            finally:
                await form.close()
            if not images:
                raise InvalidInput("the multipart form holds no file; expected one file part per image")
            return images
        if not media or not media.startswith(_IMAGE_TYPES):
            shown = f"{_shown(content_type)!r}" if content_type else "missing"
            raise HttpProblem(
                415,
                f"Content-Type is {shown}; expected image/* or application/octet-stream (the image's "
                "bytes) or multipart/form-data (image files)",
            )
        body = await self.body(request)
        return [body]

    # -- repository -----------------------------------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        document = await self.json_body(request, "repository index request")
        ready = document.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"ready is {ready!r}; expected true or false")
        return _json(await self.plane.repository_index(ready))

    async def load(self, request: Request) -> Response:
        name = _name(request)
        document = await self.json_body(request, "load request")
        parameters = document.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput(f'parameters is {parameters!r}; expected an object such as {{"version": "2"}}')
        await self.plane.load(name, parameters)
        return _json({})

    async def unload(self, request: Request) -> Response:
        name = _name(request)
        await self.json_body(request, "unload request")
        await self.plane.unload(name)
        return _json({})


def _content_type(request: Request, allowed: frozenset[str] | set[str], what: str) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";")[0].strip().lower()
    if media not in allowed:
        hint = ""
        if media == _FORM:
            hint = (
                f"; {_FORM} is what curl -d sends unless told otherwise: "
                "send -H 'Content-Type: application/json'"
            )
        raise HttpProblem(
            415,
            f"Content-Type is {_shown(content_type)!r}; the {what} must be one of {sorted(allowed)}{hint}",
        )


def _name(request: Request) -> str:
    name: str = request.path_params["model"]
    return name


def _model(request: Request) -> tuple[str, str]:
    """The model name and version of the path ('' for both when the path has none)."""
    params = request.path_params
    version: str = params.get("version", "")
    if version and not (version.isascii() and version.isdigit()):
        raise ModelNotFound(
            f"model {params.get('model', '')!r} has no version {version!r}; versions are integers"
        )
    return params.get("model", ""), version


def routes(plane: DataPlane, settings: Settings) -> list[BaseRoute]:
    """Every KServe v2 route, each with and without ``/versions/{version}``."""
    r = Routes(plane, settings)
    models = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    # Inference first: Starlette tries the routes in order, and no other path ends in /infer.
    table: list[tuple[str, Endpoint, str]] = [(f"{model}/infer", r.infer, "POST") for model in models]
    table += [
        ("/v2", r.server_metadata, "GET"),
        ("/v2/health/live", r.live, "GET"),
        ("/v2/health/ready", r.ready, "GET"),
        ("/v2/models/stats", r.model_statistics, "GET"),
        ("/v2/classify", r.classify, "POST"),
        ("/v2/repository/index", r.repository_index, "POST"),
        ("/v2/repository/models/{model}/load", r.load, "POST"),
        ("/v2/repository/models/{model}/unload", r.unload, "POST"),
    ]
    for model in models:
        table += [
            (model, r.model_metadata, "GET"),
            (f"{model}/ready", r.model_ready, "GET"),
            (f"{model}/config", r.model_config, "GET"),
            (f"{model}/stats", r.model_statistics, "GET"),
            (f"{model}/classify", r.classify, "POST"),
        ]
    return [Route(path, _errors(endpoint), methods=[method]) for path, endpoint, method in table]


class TokenAuth:
    """Refuses requests without ``Authorization: Bearer <token>`` (401), except :data:`PUBLIC_PATHS`.

    GET requests may carry the token in the :data:`TOKEN_COOKIE` cookie instead, so a
    browser can show the model page's images. Whether the caller proved the token is
    left in the scope (:data:`AUTHENTICATED`) for the page.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = BearerToken(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if not values and scope["method"] in ("GET", "HEAD"):
            cookie = Request(scope).cookies.get(TOKEN_COOKIE)
            if cookie:
                # The page percent-encodes what a cookie value cannot hold (; , " \ % space).
                token = urllib.parse.unquote(cookie)
                values = [b"Bearer " + token.encode("latin-1", errors="replace")]
        problem = self.token.problem(values, "header")
        scope[AUTHENTICATED] = problem is None
        if problem is not None and scope["path"] not in PUBLIC_PATHS:
            logger.debug("refused %s %s: %s", scope["method"], scope["path"], problem)
            response = error(Status.UNAUTHENTICATED.http, problem, {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Authenticated:
    """Marks every request authenticated: the server has no token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[AUTHENTICATED] = True
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method) in the protocol's error form."""
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return error(
                404,
                f"no route {request.method} {_shown(request.url.path)}; the routes are in /v2/openapi.json",
            )
        if exc.status_code == 405:
            allowed = exc.headers.get("Allow", "") if exc.headers else ""
            return error(
                405,
                f"{request.method} is not allowed on {_shown(request.url.path)}; expected {allowed}",
                exc.headers,
            )
        return error(exc.status_code, str(exc.detail))
    raise exc  # pragma: no cover - registered for HTTPException only


def create_app(plane: DataPlane, settings: Settings) -> ASGIApp:
    """The ASGI application of the HTTP edge: every route, the page, the OpenAPI document."""
    from server.rest import openapi, page

    async def openapi_document(request: Request) -> Response:
        return JSONResponse(openapi.document())

    app = Starlette(
        routes=[
            *routes(plane, settings),
            Route("/v2/openapi.json", openapi_document, methods=["GET"]),
            *page.routes(plane),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    if settings.auth_token:
        return TokenAuth(app, settings.auth_token)
    return Authenticated(app)
