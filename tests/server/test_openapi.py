"""The OpenAPI document of the HTTP edge (server/rest/openapi.py), checked three ways.

* It is a valid OpenAPI 3.1 document whose schemas are valid JSON Schema and whose
  references all resolve, and its model name pattern is ``validate_model_name``.
* It describes exactly the routes the Starlette app serves, no more, no less.
* schemathesis fuzzes a running server (tiny real models, a real port) from the document
  the server itself serves, with and without a bearer token: every answer must be
  documented (status, content type, headers, JSON schema), bad input must be refused
  and nothing may be a server error. Hand-written valid requests reach the answers
  fuzzing rarely gets (a 200 from inference, classification, a published PNG) and go
  through the same checks; a deliberately wrong document must fail them.

The schemathesis runs are bounded (``MAX_EXAMPLES`` per operation, fixed seed, a hard
timeout); a failure prints schemathesis' report, with a curl line for each failing request.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import jsonschema
import jsonschema_rs
import numpy as np
import pytest
import requests
import schemathesis
import schemathesis.checks
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from schemathesis.core.failures import FailureGroup
from server_testlib import RGB_LABELS, make_settings, publish_tiny
from starlette.applications import Starlette
from starlette.routing import Route

from modelrepo.repository import InvalidModelName, validate_model_name
from server import InferenceServer, create_server
from server.dataplane import DataPlane
from server.models import ModelManager
from server.rest import openapi
from server.rest.app import create_app
from server.runtime import resolve_device

TOKEN = "openapi-fuzz-token-0123456789"
MAX_EXAMPLES = 10
#: A hang guard for one schemathesis run; a healthy run takes well under a minute.
RUN_TIMEOUT_S = 100
FIGURE = "training_curves.png"

#: The checks every answer goes through.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
    "allow_header_conformance",
)
#: With a token configured: requests without it, or with a wrong one, must be refused.
AUTH_CHECKS = ("ignored_auth", "missing_required_header")

#: schemathesis' configuration; {security}: whether it sends generated credentials. One worker:
#: with two threads, hypothesis' lambda descriptions call ast.parse concurrently, and CPython
#: 3.11 then sometimes fails with "SystemError: AST constructor recursion depth mismatch"
#: inside schemathesis (2 of 6 runs under load), which fails the run for no fault of the server.
CONFIG = """
workers = 1
seed = 1
[generation]
max-examples = {max_examples}
database = "none"
with-security-parameters = {security}
[phases.coverage]
unexpected-methods = ["DELETE"]
[phases.stateful]
enabled = false
[checks]
enabled = false
{checks}
# 503 is a documented answer (a model unloaded by the fuzzing itself, not ready); undocumented
# ones still fail status_code_conformance.
not_a_server_error = {{ enabled = true, expected-statuses = ["2xx", "3xx", "4xx", "503"] }}

# Schema-valid bodies are rarely a valid inference (the model's shape), image or repository
# version: positive_data_acceptance only means something for the GET routes.
[[operations]]
include-method = "POST"
checks.positive_data_acceptance.enabled = false

[dictionaries.models]
values = ["tiny", "tinyrgb"]
[dictionaries.versions]
values = ["1"]
[dictionaries.files]
values = ["{figure}"]
[dictionaries.inputs]
values = ["input"]
[parameters]
"path.model" = {{ dictionary = "models", probability = 0.7 }}
"path.version" = {{ dictionary = "versions", probability = 0.7 }}
"path.filename" = {{ dictionary = "files", probability = 0.7 }}
"body.inputs[*].name" = {{ dictionary = "inputs", probability = 0.5 }}
"""


# -- the document itself ---------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"components.schemas.{name}: {exc.message}")
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_the_validity_check_can_fail() -> None:
    document = openapi.document()
    document["paths"]["/v2"]["get"]["responses"]["200"]["content"] = "JSON"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(document).validate()


def test_document_copies_are_independent() -> None:
    first = openapi.document()
    first["paths"].clear()
    assert openapi.document()["paths"]


def test_security_and_error_bodies() -> None:
    """Public routes need no token; the rest say so and document 401; every error is Error."""
    document = openapi.document()
    public = {"/v2/health/live", "/v2/health/ready", "/v2/openapi.json", "/"}
    responses = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            if path in public:
                assert operation["security"] == [] and "401" not in operation["responses"], where
            else:
                assert operation["security"] and "401" in operation["responses"], where
            for status, response in operation["responses"].items():
                if int(status) >= 400 and "$ref" in response:
                    component = responses[response["$ref"].rsplit("/", 1)[1]]
                    schema = component["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (where, status)
                elif int(status) >= 400:  # the readiness routes' 503: their own body
                    assert status == "503" and path.endswith("ready"), (where, status)


@given(st.text(alphabet="aZ09_.-/ é\n%", max_size=140))
def test_model_name_pattern_is_validate_model_name(name: str) -> None:
    try:
        validate_model_name(name)
        valid = True
    except InvalidModelName:
        valid = False
    # JSON Schema patterns are ECMA 262: '$' is the end of the string, not before a final newline.
    matches = re.fullmatch(openapi.MODEL_NAME_PATTERN.strip("^$"), name) is not None
    assert (matches and 1 <= len(name) <= openapi.MODEL_NAME_MAX_LENGTH) == valid, name


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


# -- the document against the app's routes ---------------------------------------------------------


def _starlette(app: object) -> Starlette:
    """The Starlette app under the edge's middleware (TokenAuth, Authenticated)."""
    for _ in range(10):
        if isinstance(app, Starlette):
            return app
        app = getattr(app, "app", None)
    raise AssertionError("create_app returned no Starlette app under its middleware")


def served_routes(app: object) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route; HEAD comes with GET and is left out."""
    found = set()
    for route in _starlette(app).routes:
        assert isinstance(route, Route), f"unexpected route type {type(route).__name__}: {route!r}"
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        found |= {(method, path) for method in route.methods or () if method != "HEAD"}
    return found


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_document_describes_exactly_the_served_routes(tmp_path: Path, token: str | None) -> None:
    settings = make_settings(tmp_path, http_port=0, auth_token=token)
    plane = DataPlane(settings, ModelManager(settings, resolve_device("cpu")))
    served = served_routes(create_app(plane, settings))
    documented = documented_routes(openapi.document())
    assert not served - documented, f"served but not in the document: {sorted(served - documented)}"
    assert not documented - served, f"in the document but not served: {sorted(documented - served)}"


# -- a running server ------------------------------------------------------------------------------


@dataclass
class Http:
    server: InferenceServer
    base: str
    token: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def png(size: int, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    publish_tiny(repo, "tiny", seed=1)
    publish_tiny(repo, "tinyrgb", channels=3, labels=RGB_LABELS, seed=2)
    (repo / "tiny" / "1" / FIGURE).write_bytes(png(4, (9, 9, 9)))
    return repo


async def start_http(repo: Path, token: str | None, **overrides: object) -> Http:
    server, _ = await create_server(make_settings(repo, http_port=0, auth_token=token, **overrides))
    assert server.http_port, "the server has no HTTP port"
    return Http(server, f"http://127.0.0.1:{server.http_port}", token)


@pytest.fixture(params=[None, TOKEN], ids=["no-token", "token"])
async def http(request: pytest.FixtureRequest, repo: Path) -> AsyncIterator[Http]:
    # With a token, model control too: the fuzzing loads and unloads; without, it gets 403s.
    run = await start_http(repo, request.param, allow_model_control=request.param is not None)
    try:
        yield run
    finally:
        await run.server.stop(0)


async def test_schemathesis_fuzzes_the_running_server(http: Http, tmp_path: Path) -> None:
    checks = CHECKS + AUTH_CHECKS if http.token else CHECKS
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        CONFIG.format(
            max_examples=MAX_EXAMPLES,
            security="true" if http.token else "false",
            checks="\n".join(f"{name}.enabled = true" for name in checks if name != "not_a_server_error"),
            figure=FIGURE,
        )
    )
    args = ["--config-file", str(config), "run", f"{http.base}/v2/openapi.json", "--url", http.base]
    if http.token:
        args += ["-H", f"Authorization: Bearer {http.token}"]
    args += ["--no-color", "--report", "junit", "--report-dir", str(tmp_path / "report")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        *args,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"schemathesis ran over {RUN_TIMEOUT_S}s:\n{out.decode(errors='replace')[-6000:]}")
    report = out.decode(errors="replace")
    assert proc.returncode == 0, f"schemathesis found problems (exit {proc.returncode}):\n{report[-20000:]}"
    # Every operation was tested but the document's own (schemathesis leaves its location out).
    [junit] = (tmp_path / "report").glob("*.xml")
    tested = {case.get("name", "") for case in ElementTree.parse(junit).iter("testcase")}
    expected = {f"{m} {p}" for m, p in documented_routes(openapi.document())} - {"GET /v2/openapi.json"}
    assert tested == expected, (
        f"not tested: {sorted(expected - tested)}; unknown: {sorted(tested - expected)}"
    )


# -- valid requests through the same checks --------------------------------------------------------

Answer = schemathesis.Response

#: not_a_server_error first: it is left out for calls whose documented answer is 503.
RESPONSE_CHECKS = [
    getattr(schemathesis.checks, name)
    for name in (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
]


@dataclass
class Call:
    """One hand-written request and the status it must get."""

    method: str
    path: str
    status: int
    path_parameters: dict[str, str] | None = None
    body: Any = None
    media_type: str | None = None
    headers: dict[str, str] | None = None
    query: dict[str, Any] | None = None
    authenticated: bool = True
    check: Callable[[Answer], None] | None = None


def _floats(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def binary_infer_body() -> tuple[bytes, int]:
    batch = _floats((2, 1, 8, 8), 3)
    header = json.dumps(
        {
            "id": "bin",
            "inputs": [
                {
                    "name": "input",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + batch.tobytes(), len(header)


def _binary_answer(response: Answer) -> None:
    length = int(response.headers["inference-header-content-length"][0])
    header = json.loads(response.content[:length])
    [output] = header["outputs"]
    assert output["shape"] == [2, 4] and output["parameters"]["binary_data_size"] == 2 * 4 * 4
    assert len(response.content) == length + 2 * 4 * 4
    assert struct.unpack("<8f", response.content[length:])  # eight floats


def _json_answer(response: Answer) -> None:
    document = response.json()
    assert document["id"] == "js" and [o["name"] for o in document["outputs"]] == ["logits"]
    assert document["outputs"][0]["shape"] == [2, 2]  # classification: the top 2 of each sample


def valid_calls(model_control: bool = True) -> list[Call]:
    """Valid requests (and a few documented refusals); without model control, load and unload get 403."""
    control, after_unload = (200, 503) if model_control else (403, 200)
    tiny = {"model": "tiny"}
    tiny1 = {"model": "tiny", "version": "1"}
    batch = _floats((2, 1, 8, 8), 4)
    infer_json = {
        "id": "js",
        "inputs": [
            {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": batch.ravel().tolist()}
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
    }
    binary, header_length = binary_infer_body()
    images = [png(8, (255, 0, 0)), png(12, (0, 0, 255))]
    calls = [
        Call("GET", "/v2", 200),
        Call("GET", "/v2/health/live", 200, authenticated=False),
        Call("GET", "/v2/health/ready", 200, authenticated=False),
        Call("GET", "/v2/openapi.json", 200, authenticated=False),
        Call("GET", "/", 200, authenticated=False),
        Call(
            "GET", "/models/{model}/versions/{version}/files/{filename}", 200, {**tiny1, "filename": FIGURE}
        ),
        Call(
            "GET", "/models/{model}/versions/{version}/files/{filename}", 404, {**tiny1, "filename": "x.png"}
        ),
        Call(
            "POST", "/v2/models/{model}/infer", 200, tiny, infer_json, "application/json", check=_json_answer
        ),
        Call(
            "POST",
            "/v2/models/{model}/versions/{version}/infer",
            200,
            tiny1,
            binary,
            "application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
            check=_binary_answer,
        ),
        Call(
            "POST",
            "/v2/models/{model}/infer",
            400,
            tiny,
            {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            "application/json",
        ),
        Call("POST", "/v2/models/{model}/infer", 404, {"model": "nope"}, {"inputs": []}, "application/json"),
        Call("POST", "/v2/models/{model}/classify", 200, {"model": "tinyrgb"}, images[0], "image/png"),
        Call(
            "POST",
            "/v2/models/{model}/versions/{version}/classify",
            200,
            {"model": "tinyrgb", "version": "1"},
            {"image": images},
            "multipart/form-data",
            query={"top_k": 3},
        ),
        Call("POST", "/v2/classify", 200, None, images[1], "application/octet-stream", query={"top_k": 2}),
        Call("POST", "/v2/classify", 400, None, b"not an image", "application/octet-stream"),
        Call("POST", "/v2/classify", 415, None, {"a": 1}, "application/json"),
        Call("GET", "/v2/models/stats", 200),  # after the inferences: non-empty statistics
        Call("POST", "/v2/repository/index", 200, None, {"ready": True}, "application/json"),
        Call(
            "POST",
            "/v2/repository/models/{model}/unload",
            control,
            {"model": "tinyrgb"},
            {},
            "application/json",
        ),
        Call("GET", "/v2/models/{model}/ready", after_unload, {"model": "tinyrgb"}),
        Call("GET", "/v2/models/{model}", after_unload, {"model": "tinyrgb"}),
        Call("POST", "/v2/repository/index", 200, None, {}, "application/json"),
        Call(
            "POST",
            "/v2/repository/models/{model}/load",
            control,
            {"model": "tinyrgb"},
            {"parameters": {"version": "1"}},
            "application/json",
        ),
        Call(
            "POST",
            "/v2/repository/models/{model}/load",
            404 if model_control else 403,
            {"model": "nope"},
            {},
            "application/json",
        ),
        Call("GET", "/v2/models/{model}/ready", 503, {"model": "nope"}),
        Call("GET", "/v2/models/{model}/versions/{version}", 404, {"model": "tiny", "version": "2"}),
    ]
    for suffix in ("", "/ready", "/config", "/stats"):
        calls.append(Call("GET", f"/v2/models/{{model}}{suffix}", 200, tiny))
        calls.append(Call("GET", f"/v2/models/{{model}}/versions/{{version}}{suffix}", 200, tiny1))
    return calls


def run_calls(document: dict[str, Any], http: Http, calls: list[Call]) -> list[str]:
    """Send each call and run the response checks; the problems found, one line each."""
    schema = schemathesis.openapi.from_dict(document)
    problems = []
    with requests.Session() as session:
        for call in calls:
            operation = schema[call.path][call.method]
            body = {} if call.body is None else {"body": call.body, "media_type": call.media_type}
            case = operation.Case(
                path_parameters=call.path_parameters, headers=call.headers, query=call.query, **body
            )
            headers = http.headers if call.authenticated else {}
            label = f"{call.method} {call.path} {call.path_parameters or ''}"
            # A documented 503 (a model not loaded) is what the call is for, not a server error.
            checks = RESPONSE_CHECKS[1:] if call.status == 503 else RESPONSE_CHECKS
            try:
                response = case.call_and_validate(
                    base_url=http.base, session=session, headers=headers, checks=checks
                )
            except FailureGroup as exc:
                problems.append(f"{label}: {exc}")
                continue
            if response.status_code != call.status:
                problems.append(f"{label}: status {response.status_code}, expected {call.status}")
            elif call.check is not None:
                call.check(response)
            if call.authenticated and http.token:
                # The same request without the token: 401, as documented.
                refused = case.call(base_url=http.base, session=session)
                if refused.status_code != 401:
                    problems.append(f"{label} without the token: status {refused.status_code}, expected 401")
                else:
                    try:
                        case.validate_response(refused, checks=RESPONSE_CHECKS)
                    except FailureGroup as exc:
                        problems.append(f"{label} without the token: {exc}")
    return problems


async def test_valid_requests_get_documented_answers(http: Http) -> None:
    served = await asyncio.to_thread(requests.get, f"{http.base}/v2/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == openapi.document()
    model_control = http.server.settings.allow_model_control
    problems = await asyncio.to_thread(run_calls, openapi.document(), http, valid_calls(model_control))
    assert not problems, "\n".join(problems)


def _require_vendor(document: dict[str, Any]) -> None:
    document["components"]["schemas"]["InferResponse"]["required"].append("vendor")


def _forget_415(document: dict[str, Any]) -> None:
    del document["paths"]["/v2/classify"]["post"]["responses"]["415"]


def _count_as_string(document: dict[str, Any]) -> None:
    document["components"]["schemas"]["ModelStatistics"]["properties"]["inference_count"] = {"type": "string"}


#: Wrong documents, and the request (in run_calls' problem lines) each must be caught at.
WRONG_DOCUMENTS = [
    (_require_vendor, "POST /v2/models/{model}/infer"),
    (_forget_415, "POST /v2/classify"),
    (_count_as_string, "GET /v2/models/stats"),
]


async def test_a_wrong_document_fails_the_checks(repo: Path) -> None:
    run = await start_http(repo, None)
    try:
        for wrong, caught_at in WRONG_DOCUMENTS:
            document = openapi.document()
            wrong(document)
            problems = await asyncio.to_thread(run_calls, document, run, valid_calls())
            assert any(p.startswith(caught_at) for p in problems), (wrong.__name__, problems)
    finally:
        await run.server.stop(0)
