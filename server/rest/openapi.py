"""The OpenAPI 3.1 document of the HTTP/REST edge, served at ``GET /v2/openapi.json``.

It describes every route of :mod:`server.rest.app` and the model page: KServe v2 (the Open
Inference Protocol's REST binding) with Triton's extensions (binary tensor data,
classification, model repository, model configuration, statistics) and the server's own
image endpoint. Each request and response body has its JSON schema, every error the route
can answer is ``{"error": "<message>"}`` (:data:`ERROR_STATUSES`), and every route except
the health probes, this document and the page needs ``Authorization: Bearer <token>`` when
the server has ``--auth-token`` (GET routes accept the ``cnnserve_token`` cookie instead).

The document is written here as Python data, built once; :func:`document` hands out a copy.
``tests/server/test_openapi.py`` checks it against the OpenAPI 3.1 schema and the app's
routes, and fuzzes a running server with it (schemathesis).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from modelrepo import repository
from modelrepo.datatypes import DATATYPES
from server.dataplane import EXTENSIONS, SERVER_VERSION
from server.metrics import INFERENCE_STATS

Schema = dict[str, Any]

#: ``modelrepo.repository.validate_model_name`` as one regular expression (no lookahead, so any
#: JSON Schema tool can generate from it): 1-128 of letters, digits, ``_ - .``, not starting with
#: ``.``, and every ``.`` followed by another character or ending the name (no ``..``).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_](?:\.?[A-Za-z0-9_-])*\.?$"
MODEL_NAME_MAX_LENGTH = 128
#: A version as the repository spells its directories: a positive integer, no leading zero.
VERSION_PATTERN = f"^{repository.VERSION_PATTERN}$"
#: The header of Triton's binary tensor data extension: the JSON part's length in bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: Status -> (response component, description) of every error the document uses.
ERROR_STATUSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad input: malformed body, wrong tensor name, datatype, shape or data, bad image."),
    401: ("Unauthorized", "No or a wrong bearer token (only when the server has --auth-token)."),
    403: ("Forbidden", "Model control is disabled (the server runs without --allow-model-control)."),
    404: ("NotFound", "Unknown model, or a version of it that is not loaded."),
    413: ("PayloadTooLarge", "The body (or what it inflates to) exceeds --max-message-bytes."),
    415: ("UnsupportedMediaType", "The body's Content-Type or Content-Encoding is not accepted here."),
    429: ("TooManyRequests", "The model's queue is full."),
    503: (
        "ServiceUnavailable",
        "The model is not loaded (loading, unloaded, failed), or the server is stopping.",
    ),
    504: ("GatewayTimeout", "The request's deadline passed while it was queued."),
}

#: Errors of every route that reads a request body.
_BODY_ERRORS = (400, 413, 415)
#: Errors of every route that names a model.
_MODEL_ERRORS = (404, 503)
#: Errors of inference and classification.
_INFER_ERRORS = (*_BODY_ERRORS, *_MODEL_ERRORS, 429, 504)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> dict[str, Schema]:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": _json(schema)}


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"$ref": f"#/components/responses/{ERROR_STATUSES[s][0]}"} for s in sorted(set(statuses))}


_BINARY: Schema = {"type": "string", "format": "binary"}
_COUNT: Schema = {"type": "integer", "minimum": 0}


def _narrowed(name: str, **consts: Any) -> Schema:
    """Schema ``name`` with some properties pinned to one value."""
    return {"allOf": [_ref(name), {"properties": {k: {"const": v} for k, v in consts.items()}}]}


def _closed(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    """An object with exactly these properties (the ones in ``required``, default all, always there)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


# -- schemas --------------------------------------------------------------------------------------


def _schemas() -> dict[str, Schema]:
    datatypes = list(DATATYPES)
    config_types = sorted({d.config_type for d in DATATYPES.values()})
    scalar: list[Schema] = [{"type": "number"}, {"type": "boolean"}, {"type": "string"}]
    duration = _closed({"count": _COUNT, "ns": _COUNT}, description="How many, and their total nanoseconds.")
    return {
        "Error": _closed(
            {"error": {"type": "string", "description": "What is wrong, for a person to read."}},
            description="Every error answer (KServe v2 `$inference_error_response`).",
        ),
        "Parameters": {
            "type": "object",
            "description": "KServe v2 `$parameters`: names mapped to strings, numbers or booleans.",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "Datatype": {"type": "string", "enum": datatypes, "description": "A KServe v2 tensor datatype."},
        "Shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "TensorData": {
            "type": "array",
            "description": (
                "The tensor's elements in row-major order: a flat array, or arrays nested as the "
                "shape. Numbers for numeric datatypes (non-finite floats in answers as the strings "
                '"nan", "inf", "-inf"), booleans for BOOL, strings for BYTES.'
            ),
            "items": {"anyOf": [*scalar, {"type": "array"}]},
        },
        # -- server and model metadata --
        "ServerMetadata": _closed(
            {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}, "examples": [list(EXTENSIONS)]},
            }
        ),
        "TensorMetadata": _closed(
            {
                "name": {"type": "string"},
                "datatype": _ref("Datatype"),
                "shape": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": -1},
                    "description": "-1: a variable dimension (the batch).",
                },
            }
        ),
        "ModelMetadata": _closed(
            {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string", "pattern": VERSION_PATTERN}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            }
        ),
        "ModelReady": _closed({"name": {"type": "string"}, "ready": {"type": "boolean"}}),
        "ModelConfig": {
            "type": "object",
            "description": "Triton's model configuration (model_config.proto `ModelConfig`), JSON form.",
            "required": ["name", "platform", "max_batch_size", "input", "output"],
            "properties": {
                "name": {"type": "string"},
                "platform": {"type": "string"},
                "backend": {"type": "string"},
                "max_batch_size": _COUNT,
                "input": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "data_type", "dims"],
                        "properties": {
                            "name": {"type": "string"},
                            "data_type": {"type": "string", "enum": config_types},
                            "format": {
                                "type": "string",
                                "enum": ["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"],
                            },
                            "dims": {"type": "array", "items": {"type": "integer", "minimum": -1}},
                        },
                    },
                },
                "output": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "data_type", "dims"],
                        "properties": {
                            "name": {"type": "string"},
                            "data_type": {"type": "string", "enum": config_types},
                            "dims": {"type": "array", "items": {"type": "integer", "minimum": -1}},
                        },
                    },
                },
                "dynamic_batching": {
                    "type": "object",
                    "properties": {
                        "preferred_batch_size": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "max_queue_delay_microseconds": _COUNT,
                    },
                },
                "instance_group": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {
                                "type": "string",
                                "enum": ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"],
                            },
                            "count": {"type": "integer", "minimum": 1},
                            "gpus": {"type": "array", "items": _COUNT},
                        },
                    },
                },
                "default_model_filename": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "additionalProperties": _closed({"string_value": {"type": "string"}}),
                },
            },
        },
        # -- statistics --
        "StatisticDuration": duration,
        "InferStatistics": _closed({key: _ref("StatisticDuration") for key in INFERENCE_STATS}),
        "InferBatchStatistics": _closed(
            {
                "batch_size": {"type": "integer", "minimum": 1},
                "compute_input": _ref("StatisticDuration"),
                "compute_infer": _ref("StatisticDuration"),
                "compute_output": _ref("StatisticDuration"),
            }
        ),
        "ModelStatistics": {
            "type": "object",
            "required": [
                "name",
                "version",
                "last_inference",
                "inference_count",
                "execution_count",
                "inference_stats",
                "batch_stats",
            ],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string", "pattern": VERSION_PATTERN},
                "last_inference": {**_COUNT, "description": "Milliseconds since the epoch; 0: none yet."},
                "inference_count": {**_COUNT, "description": "Samples inferred (a batch of 4 counts 4)."},
                "execution_count": {**_COUNT, "description": "Model executions (batches run)."},
                "inference_stats": _ref("InferStatistics"),
                "batch_stats": {"type": "array", "items": _ref("InferBatchStatistics")},
            },
        },
        "ModelStatisticsResponse": _closed(
            {"model_stats": {"type": "array", "items": _ref("ModelStatistics")}}
        ),
        # -- inference --
        "InferRequest": {
            "type": "object",
            "description": "KServe v2 `$inference_request`.",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string", "description": "Echoed in the answer."},
                "parameters": {
                    "allOf": [_ref("Parameters")],
                    "properties": {
                        "binary_data_output": {
                            "type": "boolean",
                            "description": "Every output as binary data, unless its binary_data says not.",
                        }
                    },
                },
                "inputs": {"type": "array", "items": _ref("InferInput")},
                "outputs": {
                    "type": "array",
                    "description": "The outputs wanted; absent: every output, as JSON data.",
                    "items": _ref("InferRequestedOutput"),
                },
            },
        },
        "InferInput": {
            "type": "object",
            "description": "KServe v2 `$request_input`: `data`, or parameters.binary_data_size and bytes.",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": _ref("Shape"),
                "datatype": _ref("Datatype"),
                "parameters": {
                    "allOf": [_ref("Parameters")],
                    "properties": {
                        "binary_data_size": {
                            **_COUNT,
                            "description": "Its bytes follow the JSON header (binary tensor extension).",
                        }
                    },
                },
                "data": _ref("TensorData"),
            },
        },
        "InferRequestedOutput": {
            "type": "object",
            "description": "KServe v2 `$request_output`.",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "parameters": {
                    "allOf": [_ref("Parameters")],
                    "properties": {
                        "binary_data": {"type": "boolean", "description": "This output as binary data."},
                        "classification": {
                            "type": "integer",
                            "minimum": 1,
                            "description": (
                                "Classification extension: the top k classes per sample, as BYTES "
                                '"score:index[:label]", best first.'
                            ),
                        },
                    },
                },
            },
        },
        "InferResponse": _closed(
            {
                "model_name": {"type": "string"},
                "model_version": {"type": "string", "pattern": VERSION_PATTERN},
                "id": {"type": "string"},
                "parameters": _ref("Parameters"),
                "outputs": {"type": "array", "items": _ref("InferOutput")},
            },
            required=["model_name", "model_version", "outputs"],
            description="KServe v2 `$inference_response`.",
        ),
        "InferOutput": _closed(
            {
                "name": {"type": "string"},
                "shape": _ref("Shape"),
                "datatype": _ref("Datatype"),
                "parameters": {
                    "type": "object",
                    "properties": {"binary_data_size": _COUNT},
                    "required": ["binary_data_size"],
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                },
                "data": _ref("TensorData"),
            },
            required=["name", "shape", "datatype"],
            description=(
                "KServe v2 `$response_output`: `data`, or (binary tensor extension) "
                "`parameters.binary_data_size` and its bytes after the JSON header."
            ),
            oneOf=[{"required": ["data"]}, {"required": ["parameters"]}],
        ),
        # -- images --
        "ClassifyResponse": _closed(
            {
                "model_name": {"type": "string"},
                "model_version": {"type": "string", "pattern": VERSION_PATTERN},
                "results": {
                    "type": "array",
                    "description": "One entry per image, in the order sent.",
                    "items": _closed(
                        {
                            "classes": {
                                "type": "array",
                                "minItems": 1,
                                "description": "The top_k classes, best first.",
                                "items": _closed(
                                    {
                                        "index": _COUNT,
                                        "label": {"type": "string"},
                                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                                    }
                                ),
                            }
                        }
                    ),
                },
            }
        ),
        # -- repository --
        "RepositoryIndexRequest": {
            "type": "object",
            "properties": {"ready": {"type": "boolean", "description": "Only the models that are loaded."}},
        },
        "RepositoryIndex": {
            "type": "array",
            "items": _closed(
                {
                    "name": {"type": "string"},
                    "version": {
                        "type": "string",
                        "pattern": f"^(?:{repository.VERSION_PATTERN})?$",
                        "description": "The loaded version; empty when none is.",
                    },
                    "state": {"type": "string", "enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]},
                    "reason": {"type": "string", "description": "Why it is not READY (empty when it is)."},
                }
            ),
        },
        "RepositoryLoadRequest": {
            "type": "object",
            "properties": {
                "parameters": {
                    "type": "object",
                    "properties": {
                        "version": {
                            "description": "Load this version (default: the newest).",
                            "oneOf": [
                                {"type": "string", "pattern": VERSION_PATTERN},
                                {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
                            ],
                        }
                    },
                }
            },
        },
        "RepositoryUnloadRequest": {
            "type": "object",
            "description": 'Triton\'s unload request, {"parameters": {...}}; the server ignores its content.',
        },
        "Empty": {"type": "object", "maxProperties": 0, "description": "`{}`"},
    }


# -- parameters and operations ----------------------------------------------------------------------

_PARAMETERS: dict[str, Schema] = {
    "model": {
        "name": "model",
        "in": "path",
        "required": True,
        "description": "A model name of the repository.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MODEL_NAME_MAX_LENGTH,
            "pattern": MODEL_NAME_PATTERN,
        },
    },
    "version": {
        "name": "version",
        "in": "path",
        "required": True,
        "description": "A version of the model: a positive integer; only the loaded one answers.",
        "schema": {"type": "string", "pattern": VERSION_PATTERN},
    },
    "top_k": {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "Classes per image, best first (at most the model's class count are returned).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
    },
    "filename": {
        "name": "filename",
        "in": "path",
        "required": True,
        "description": "A PNG the version was published with (training_curves.png, confusion_matrix.png).",
        "schema": {
            "type": "string",
            "maxLength": 128,
            "pattern": r"^[A-Za-z0-9_](?:\.?[A-Za-z0-9_-])*\.png$",
        },
    },
}

_BINARY_DESCRIPTION = (
    "Triton's binary tensor data extension: the JSON request (its length in the "
    f"{HEADER_LENGTH} header), then each input with parameters.binary_data_size, its bytes in "
    "order (row-major, little-endian; BYTES elements each a 4-byte little-endian length and its bytes)."
)


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def _model_params(versioned: bool) -> list[Schema]:
    return [_param("model"), _param("version")] if versioned else [_param("model")]


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Schema],
    *,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    public: bool = False,
    cookie: bool = False,
) -> Schema:
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    if public:
        op["security"] = []
    else:
        # GET routes also take the token from the cookie (the page's <img> tags, the page itself).
        op["security"] = [{"bearerAuth": []}, {"tokenCookie": []}] if cookie else [{"bearerAuth": []}]
        responses = {**responses, **_errors(401)}
    op["responses"] = dict(sorted(responses.items()))
    return op


def _optional_json_body(schema: Schema, description: str) -> Schema:
    return {"required": False, "description": description, "content": _json(schema)}


def _infer_operation(operation_id: str, versioned: bool) -> Schema:
    header_param = {
        "name": HEADER_LENGTH,
        "in": "header",
        "required": False,
        "description": "With a binary body (application/octet-stream): the length of its JSON part in bytes.",
        "schema": {"type": "integer", "minimum": 0},
    }
    body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref("InferRequest")},
            "application/octet-stream": {"schema": {**_BINARY, "description": _BINARY_DESCRIPTION}},
        },
    }
    ok = {
        "description": (
            "The outputs: JSON, or (when binary data was asked for) the JSON answer, its length in "
            f"{HEADER_LENGTH}, then each binary output's bytes in order."
        ),
        "headers": {
            HEADER_LENGTH: {
                "description": "Binary answers only: the length of the JSON part.",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
        "content": {
            "application/json": {"schema": _ref("InferResponse")},
            "application/octet-stream": {"schema": _BINARY},
        },
    }
    version = " version" if versioned else ""
    return _operation(
        operation_id,
        f"Infer with the model{version} (KServe v2 inference, Triton binary and classification extensions)",
        "inference",
        {"200": ok, **_errors(*_INFER_ERRORS)},
        parameters=[*_model_params(versioned), header_param],
        body=body,
    )


def _classify_operation(operation_id: str, summary: str, parameters: list[Schema]) -> Schema:
    image = {**_BINARY, "description": "One encoded image (JPEG, PNG, BMP, GIF, WebP, ...)."}
    body = {
        "required": True,
        "description": "One image as the body, or a multipart form: every file part one image, in order.",
        "content": {
            "image/*": {"schema": image},
            "application/octet-stream": {"schema": image},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "array", "minItems": 1, "items": _BINARY}},
                    "required": ["image"],
                },
                "encoding": {"image": {"contentType": "image/*, application/octet-stream"}},
            },
        },
    }
    return _operation(
        operation_id,
        summary,
        "classification",
        {"200": _ok("The top classes of each image.", _ref("ClassifyResponse")), **_errors(*_INFER_ERRORS)},
        parameters=[*parameters, _param("top_k")],
        body=body,
    )


def _model_paths() -> dict[str, Schema]:
    """The routes under ``/v2/models/{model}``, each with and without ``/versions/{version}``."""
    paths: dict[str, Schema] = {}
    for versioned in (False, True):
        base = "/v2/models/{model}/versions/{version}" if versioned else "/v2/models/{model}"
        kind = "model_version" if versioned else "model"
        params = _model_params(versioned)
        what = "the model version" if versioned else "the model"
        paths[base] = {
            "get": _operation(
                f"{kind}_metadata",
                f"Metadata of {what}",
                "models",
                {"200": _ok("The model's metadata.", _ref("ModelMetadata")), **_errors(*_MODEL_ERRORS)},
                parameters=params,
                cookie=True,
            )
        }
        paths[f"{base}/ready"] = {
            "get": _operation(
                f"{kind}_ready",
                f"Whether {what} is ready",
                "health",
                {
                    "200": _ok("Ready.", _narrowed("ModelReady", ready=True)),
                    "503": _ok("Not ready.", _narrowed("ModelReady", ready=False)),
                    **_errors(404),
                },
                parameters=params,
                cookie=True,
            )
        }
        paths[f"{base}/config"] = {
            "get": _operation(
                f"{kind}_config",
                f"Configuration of {what} (Triton's model configuration extension)",
                "models",
                {"200": _ok("Triton's model configuration.", _ref("ModelConfig")), **_errors(*_MODEL_ERRORS)},
                parameters=params,
                cookie=True,
            )
        }
        paths[f"{base}/stats"] = {
            "get": _operation(
                f"{kind}_stats",
                f"Statistics of {what} (Triton's statistics extension)",
                "statistics",
                {"200": _ok("Its statistics.", _ref("ModelStatisticsResponse")), **_errors(*_MODEL_ERRORS)},
                parameters=params,
                cookie=True,
            )
        }
        paths[f"{base}/infer"] = {"post": _infer_operation(f"{kind}_infer", versioned)}
        paths[f"{base}/classify"] = {
            "post": _classify_operation(f"{kind}_classify", f"Classify images with {what}", params)
        }
    return paths


def _paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {
        "/v2": {
            "get": _operation(
                "server_metadata",
                "Server metadata",
                "server",
                {"200": _ok("Name, version and extensions.", _ref("ServerMetadata"))},
                cookie=True,
            )
        },
        "/v2/health/live": {
            "get": _operation(
                "server_live",
                "Liveness",
                "health",
                {"200": _ok("The server is live.", _closed({"live": {"const": True}}))},
                public=True,
            )
        },
        "/v2/health/ready": {
            "get": _operation(
                "server_ready",
                "Readiness: at least one model loaded, and not stopping",
                "health",
                {
                    "200": _ok("Ready.", _closed({"ready": {"const": True}})),
                    "503": _ok("Not ready.", _closed({"ready": {"const": False}})),
                },
                public=True,
            )
        },
        "/v2/models/stats": {
            "get": _operation(
                "models_stats",
                "Statistics of every loaded model (Triton's statistics extension)",
                "statistics",
                {"200": _ok("Every loaded model's statistics.", _ref("ModelStatisticsResponse"))},
                cookie=True,
            )
        },
        **_model_paths(),
        "/v2/classify": {
            "post": _classify_operation("classify", "Classify images with the server's default model", [])
        },
        "/v2/repository/index": {
            "post": _operation(
                "repository_index",
                "The models of the repository and their state (Triton's model repository extension)",
                "repository",
                {"200": _ok("Every model, by name.", _ref("RepositoryIndex")), **_errors(*_BODY_ERRORS)},
                body=_optional_json_body(_ref("RepositoryIndexRequest"), "Optional."),
            )
        },
        "/v2/repository/models/{model}/load": {
            "post": _operation(
                "repository_model_load",
                "Load (or reload) a model; needs --allow-model-control",
                "repository",
                {
                    "200": _ok("Loaded.", _ref("Empty")),
                    **_errors(*_BODY_ERRORS, 403, *_MODEL_ERRORS),
                },
                parameters=[_param("model")],
                body=_optional_json_body(
                    _ref("RepositoryLoadRequest"), "Optional; parameters.version pins one."
                ),
            )
        },
        "/v2/repository/models/{model}/unload": {
            "post": _operation(
                "repository_model_unload",
                "Unload a model; needs --allow-model-control",
                "repository",
                {"200": _ok("Unloaded.", _ref("Empty")), **_errors(*_BODY_ERRORS, 403, 404)},
                parameters=[_param("model")],
                body=_optional_json_body(_ref("RepositoryUnloadRequest"), "Optional."),
            )
        },
        "/v2/openapi.json": {
            "get": _operation(
                "openapi_document",
                "This document",
                "server",
                {"200": _ok("The OpenAPI 3.1 document of this server.", {"type": "object"})},
                public=True,
            )
        },
        "/": {
            "get": _operation(
                "model_page",
                "The model page (HTML); asks for the token when the server has one and the caller gave none",
                "page",
                {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                public=True,
            )
        },
        "/models/{model}/versions/{version}/files/{filename}": {
            "get": _operation(
                "model_file",
                "A PNG published with a model version (training curves, confusion matrix)",
                "page",
                {
                    "200": {"description": "The image.", "content": {"image/png": {"schema": _BINARY}}},
                    **_errors(404),
                },
                parameters=[_param("model"), _param("version"), _param("filename")],
                cookie=True,
            )
        },
    }
    return paths


@functools.cache
def _document() -> dict[str, Any]:
    responses = {
        name: {"description": description, "content": _json(_ref("Error"))}
        for name, description in ERROR_STATUSES.values()
    }
    responses["Unauthorized"]["headers"] = {
        "WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}, "required": True}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cnnserve",
            "version": SERVER_VERSION,
            "summary": "KServe v2 (Open Inference Protocol) over HTTP, with Triton's extensions.",
            "description": (
                'Every error is `{"error": "<message>"}` with the status of the problem. With '
                "`--auth-token`, every route except the health probes, this document and the page "
                "needs `Authorization: Bearer <token>` (GET routes accept the `cnnserve_token` cookie)."
            ),
        },
        "tags": [
            {"name": name}
            for name in (
                "server",
                "health",
                "models",
                "statistics",
                "inference",
                "classification",
                "repository",
                "page",
            )
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "parameters": _PARAMETERS,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The server's --auth-token (only when it has one).",
                },
                "tokenCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "cnnserve_token",
                    "description": "The token in a cookie; GET requests only.",
                },
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
