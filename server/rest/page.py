"""The model page (``GET /``) and the PNGs each published version ships with.

The page is rendered on the server from what the repository holds (every model, every
version on disk, its ``config.json`` and ``metadata.json``) and what the model manager
says (state, reason, the loaded version), so it reads without JavaScript. A little inline
JavaScript adds the live request counts (polling ``GET /v2/models/stats``) and the upload
form's result (``POST /v2/models/{model}/classify?top_k=5``).

Everything shown is escaped (Jinja2 autoescape): model names, labels and metadata are data
from the repository. The page's script runs under a per-response nonce in a strict
Content-Security-Policy, and reads nothing from the page but ``data-`` attributes.

With ``--auth-token`` set, an unauthenticated ``GET /`` (``request.scope
["cnnserve.authenticated"]`` not True, set by the HTTP edge's middleware) renders only a
token prompt. The prompt stores the token in the cookie ``cnnserve_token`` (``path=/``,
``SameSite=Strict``), percent-encoded only where a cookie value cannot hold the character
(``%``, ``"``, ``,``, ``;``, backslash, spaces, non-ASCII); the middleware accepts the
cookie on GET requests, and the page's script sends it as ``Authorization: Bearer`` on its
own requests.

``GET /models/{model}/versions/{version}/files/{filename}`` serves only the PNGs a version
directory publishes: the model name must be valid, the version canonical, and the file name
one of the ``*.png`` regular files listed in that directory (resolved inside the repository);
anything else is 404 with a JSON ``{"error": ...}`` naming the bad value.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

import modelrepo
from modelrepo.repository import CONFIG_FILENAME, VERSION, InvalidModelName, validate_model_name
from server.dataplane import DataPlane
from server.models import READY, LoadedModel, ModelEntry, repository_relative
from server.rest.app import AUTHENTICATED, TOKEN_COOKIE

TEMPLATES = Path(__file__).parent / "templates"
#: A version as the repository spells its directories: ASCII digits without a leading zero.
#: What a published figure may be called: no dot file, no separator, lower-case ``.png``.
_FIGURE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,123}\.png")
#: Larger files are not served (the export's figures are some tens of KiB).
MAX_FIGURE_BYTES = 16 * 2**20
#: The figures the export publishes, in the order the page shows them, with their captions.
KNOWN_FIGURES = {
    "training_curves.png": "Training curves: loss and accuracy per epoch, training and validation",
    "confusion_matrix.png": "Confusion matrix of the ONNX model on the test split",
}
#: Labels shown for a version before "and N more".
SHOWN_LABELS = 12
TOP_K = 5
FIGURE_CACHE_CONTROL = "private, max-age=300"


class _NotFound(Exception):
    """A figure request that names something the version does not publish."""


@dataclass(frozen=True)
class Figure:
    filename: str
    url: str
    caption: str
    alt: str
    #: Pixel size from the PNG header (0 when unreadable): the page reserves the space.
    width: int = 0
    height: int = 0

    @property
    def wide(self) -> bool:
        return self.height > 0 and self.width / self.height > 1.5


@dataclass(frozen=True)
class Fact:
    """One line of a version's facts: a term, its value, and an optional CSS class."""

    term: str
    value: str
    css: str = ""


@dataclass
class VersionView:
    number: int
    loaded: bool
    facts: list[Fact] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class ModelView:
    name: str
    anchor: str
    state: str
    reason: str
    loaded_version: int | None
    input_summary: str
    classifiable: bool
    success: int | None
    fail: int | None
    versions: list[VersionView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def routes(plane: DataPlane) -> list[BaseRoute]:
    """``GET /`` (the model page) and the route serving each version's published PNGs."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = environment.get_template("page.html")

    async def page(request: Request) -> Response:
        nonce = secrets.token_urlsafe(18)
        context: dict[str, Any] = {
            "nonce": nonce,
            "server": plane.server_metadata(),
            "auth_required": bool(plane.settings.auth_token),
            "cookie_name": TOKEN_COOKIE,
            "top_k": TOP_K,
        }
        if not _authenticated(plane, request):
            context.update(prompt=True, token_rejected=TOKEN_COOKIE in request.cookies)
        else:
            models = await _model_views(plane)
            ready = [m for m in models if m.classifiable]
            names = [m.name for m in ready]
            default = plane.settings.default_model
            context.update(
                prompt=False,
                ready=plane.ready,
                models=models,
                classifiable=ready,
                selected=default if default in names else (names[0] if names else ""),
            )
        html = template.render(context)
        return HTMLResponse(html, headers=_page_headers(nonce))

    async def figure(request: Request) -> Response:
        if not _authenticated(plane, request):
            return JSONResponse(
                {"error": "missing or invalid bearer token; send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        model = request.path_params["model"]
        version = request.path_params["version"]
        filename = request.path_params["filename"]
        try:
            validate_model_name(model)
            if not VERSION.fullmatch(version):
                raise _NotFound(f"version {version!r} is not valid; expected a positive integer such as 1")
            content = await asyncio.to_thread(
                _read_figure, Path(plane.settings.repository), model, int(version), filename
            )
        except (InvalidModelName, _NotFound) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return Response(
            content,
            media_type="image/png",
            headers={"Cache-Control": FIGURE_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"},
        )

    return [
        Route("/", page, methods=["GET"], name="model_page"),
        Route(
            "/models/{model}/versions/{version}/files/{filename:path}",
            figure,
            methods=["GET"],
            name="model_file",
        ),
    ]


def _authenticated(plane: DataPlane, request: Request) -> bool:
    """No token configured, or the edge's middleware said this request carries the right one."""
    return not plane.settings.auth_token or request.scope.get(AUTHENTICATED) is True


def _page_headers(nonce: str) -> dict[str, str]:
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "img-src 'self' blob: data:",
            "connect-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


# -- the page's data ------------------------------------------------------------------------------


async def _model_views(plane: DataPlane) -> list[ModelView]:
    entries = await plane.manager.entries()
    stats = {s["name"]: s["inference_stats"] for s in plane.model_statistics("", "")["model_stats"]}
    repository = Path(plane.settings.repository)
    # The repository is read in a thread: a slow file system never stalls the event loop.
    on_disk = await asyncio.to_thread(_scan_repository, repository, [e.name for e in entries])
    views = []
    for entry in entries:
        versions, problems = on_disk.get(entry.name, ([], []))
        counts = stats.get(entry.name)
        views.append(_model_view(entry, versions, problems, counts))
    return views


def _model_view(
    entry: ModelEntry,
    versions: list[VersionView],
    problems: list[str],
    counts: dict[str, dict[str, int]] | None,
) -> ModelView:
    current: LoadedModel | None = entry.current
    loaded = current.version if current is not None else None
    for version in versions:
        version.loaded = version.number == loaded
    if current is not None and not any(v.loaded for v in versions):
        # Still serving a version that is gone from disk: what the server holds of it.
        gone = VersionView(current.version, loaded=True, facts=_config_facts(current.config))
        gone.problems.append("this version is no longer in the repository; the server still serves it")
        versions = sorted([*versions, gone], key=lambda v: v.number, reverse=True)
    spec = current.config.input if current is not None else None
    return ModelView(
        name=entry.name,
        anchor="model-" + entry.name,
        state=entry.state,
        reason=entry.reason,
        loaded_version=loaded,
        input_summary=_tensor_summary(spec.datatype, spec.shape) if spec is not None else "",
        classifiable=entry.state == READY and spec is not None and spec.datatype == "FP32",
        success=counts["success"]["count"] if counts else None,
        fail=counts["fail"]["count"] if counts else None,
        versions=versions,
        problems=problems,
    )


def _scan_repository(repository: Path, known: list[str]) -> dict[str, tuple[list[VersionView], list[str]]]:
    """Every model's versions on disk, newest first, with the problems found reading them."""
    result: dict[str, tuple[list[VersionView], list[str]]] = {}
    for name in known:
        try:
            numbers = modelrepo.list_versions(repository, name)
        except (OSError, InvalidModelName) as exc:
            result[name] = ([], [f"cannot list the versions: {_relative(exc, repository)}"])
            continue
        result[name] = ([_version_view(repository, name, n) for n in reversed(numbers)], [])
    return result


def _version_view(repository: Path, name: str, number: int) -> VersionView:
    view = VersionView(number, loaded=False)
    directory = repository / name / str(number)
    metadata: dict[str, Any] = {}
    try:
        metadata = modelrepo.read_metadata(directory)
    except (OSError, ValueError) as exc:
        view.problems.append(f"metadata.json is unreadable: {_relative(exc, repository)}")
    config: modelrepo.ModelConfig | None = None
    try:
        config = modelrepo.ModelConfig.from_json((directory / CONFIG_FILENAME).read_text())
    except (OSError, ValueError) as exc:
        view.problems.append(f"{CONFIG_FILENAME} is unreadable: {_relative(exc, repository)}")
    description = metadata.get("description")
    if description:
        view.facts.append(Fact("Description", str(description)))
    if config is not None:
        view.facts.extend(_config_facts(config))
    view.facts.extend(_metadata_facts(metadata))
    try:
        view.figures = [
            _figure(name, number, filename, _png_size(directory / filename))
            for filename in _published_figures(repository, name, number)
        ]
    except OSError as exc:
        view.problems.append(f"cannot list the version's files: {_relative(exc, repository)}")
    return view


def _config_facts(config: modelrepo.ModelConfig) -> list[Fact]:
    labels = list(config.labels)
    shown = ", ".join(labels[:SHOWN_LABELS])
    if len(labels) > SHOWN_LABELS:
        shown += f", … and {len(labels) - SHOWN_LABELS} more"
    return [
        Fact("Input", f"{config.input.name}: {_tensor_summary(config.input.datatype, config.input.shape)}"),
        Fact(
            "Output", f"{config.output.name}: {_tensor_summary(config.output.datatype, config.output.shape)}"
        ),
        Fact(f"Labels ({len(labels)})", shown),
    ]


def _metadata_facts(metadata: dict[str, Any]) -> list[Fact]:
    facts = []
    test = metadata.get("test_accuracy")
    if isinstance(test, dict):
        parts = [f"{_FRAMEWORKS.get(k, k)} {_percent(v)}" for k, v in sorted(test.items(), key=_onnx_first)]
        facts.append(Fact("Test accuracy", " · ".join(parts)))
    elif test is not None:
        facts.append(Fact("Test accuracy", _percent(test)))
    if metadata.get("val_accuracy") is not None:
        facts.append(Fact("Validation accuracy", _percent(metadata["val_accuracy"])))
    parity = metadata.get("parity")
    if isinstance(parity, dict):
        facts.append(_parity_fact(parity))
    quantization = metadata.get("quantization")
    if isinstance(quantization, dict):
        facts.append(_quantization_fact(quantization))
    if parity is None and quantization is None:
        facts.append(Fact("Parity", "not recorded", "verdict-none"))
    dataset = metadata.get("dataset")
    if isinstance(dataset, dict) and dataset.get("name"):
        splits = dataset.get("splits")
        text = str(dataset["name"])
        if isinstance(splits, dict) and splits:
            text += " (" + ", ".join(f"{k} {v}" for k, v in splits.items()) + ")"
        facts.append(Fact("Data set", text))
    for key, term in (("precision", "Precision"), ("weights", "Weights"), ("parameters", "Parameters")):
        if metadata.get(key) not in (None, ""):
            value = metadata[key]
            facts.append(Fact(term, f"{value:,}" if isinstance(value, int) else str(value)))
    training = metadata.get("training")
    if isinstance(training, dict) and "epochs_run" in training:
        text = f"{training['epochs_run']} epochs"
        if "best_epoch" in training:
            text += f" (best {training['best_epoch']})"
        if "seconds" in training:
            text += f", {training['seconds']} s"
        facts.append(Fact("Training", text))
    if metadata.get("exported_at"):
        facts.append(Fact("Exported", str(metadata["exported_at"])))
    if metadata.get("model_sha256"):
        facts.append(Fact("SHA-256", str(metadata["model_sha256"]), "mono"))
    return facts


_FRAMEWORKS = {"onnx": "ONNX", "torch": "PyTorch"}


def _onnx_first(item: tuple[str, Any]) -> tuple[int, str]:
    return (0 if item[0] == "onnx" else 1, item[0])


def _parity_fact(parity: dict[str, Any]) -> Fact:
    passed = parity.get("passed")
    verdict = "passed" if passed is True else "FAILED" if passed is False else "unknown"
    details = []
    if "max_abs_diff" in parity:
        details.append(f"max abs diff {_general(parity['max_abs_diff'])}")
    if "max_rel_diff" in parity:
        details.append(f"max rel diff {_general(parity['max_rel_diff'])}")
    if "top1_agreement" in parity:
        text = f"top-1 agreement {_percent(parity['top1_agreement'])}"
        if "top1_disagreements" in parity:
            text += f" ({parity['top1_disagreements']} disagreements)"
        details.append(text)
    if "atol" in parity and "rtol" in parity:
        details.append(f"tolerance atol {_general(parity['atol'])}, rtol {_general(parity['rtol'])}")
    if isinstance(parity.get("batch_sizes"), list):
        details.append("batch sizes " + ", ".join(str(b) for b in parity["batch_sizes"]))
    value = "ONNX vs PyTorch " + verdict + (": " + "; ".join(details) if details else "")
    return Fact("Parity", value, _verdict_class(passed))


def _quantization_fact(record: dict[str, Any]) -> Fact:
    gate: dict[str, Any] = record["gate"] if isinstance(record.get("gate"), dict) else {}
    passed = gate.get("passed")
    verdict = "passed" if passed is True else "FAILED" if passed is False else "unknown"
    details = []
    if "accuracy_drop" in record:
        drop = record["accuracy_drop"]
        text = f"accuracy drop {drop * 100:.2f} points" if _is_number(drop) else f"accuracy drop {drop}"
        if _is_number(gate.get("max_accuracy_drop")):
            text += f" (at most {gate['max_accuracy_drop'] * 100:.2f})"
        details.append(text)
    if "top1_agreement" in record:
        text = f"top-1 agreement with FP32 {_percent(record['top1_agreement'])}"
        if "min_top1_agreement" in gate:
            text += f" (at least {_percent(gate['min_top1_agreement'])})"
        details.append(text)
    precision = str(record.get("precision", "quantized")).upper()
    value = f"{precision} gate vs FP32 {verdict}" + (": " + "; ".join(details) if details else "")
    return Fact("Quantization", value, _verdict_class(passed))


def _verdict_class(passed: object) -> str:
    return "verdict-pass" if passed is True else "verdict-fail" if passed is False else "verdict-none"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _percent(value: object) -> str:
    """``0.97222`` as ``97.22%``; anything that is not a number as it is."""
    return f"{value:.2%}" if _is_number(value) else str(value)


def _general(value: object) -> str:
    return f"{value:.3g}" if _is_number(value) else str(value)


def _tensor_summary(datatype: str, shape: tuple[int, ...]) -> str:
    return f"{datatype} [{', '.join(str(d) for d in (-1, *shape))}]"


def _relative(exc: BaseException, repository: Path) -> str:
    """An error's message without the server's file-system paths."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.strerror or exc}: {exc.filename}"
    return repository_relative(text, repository)


# -- the published figures ------------------------------------------------------------------------


def _figure(name: str, number: int, filename: str, size: tuple[int, int]) -> Figure:
    what = KNOWN_FIGURES.get(filename)
    if what is None:
        what = filename.removesuffix(".png").replace("_", " ").replace("-", " ").capitalize()
    return Figure(
        filename=filename,
        url=f"models/{quote(name, safe='')}/versions/{number}/files/{quote(filename, safe='')}",
        caption=what,
        alt=f"{what} ({name} version {number})",
        width=size[0],
        height=size[1],
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; (0, 0) for anything else."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError:
        return 0, 0
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return 0, 0
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _published_figures(repository: Path, name: str, number: int) -> list[str]:
    """The PNGs version ``number`` of ``name`` publishes: the files the figure route serves."""
    directory = modelrepo.model_dir(repository, name) / str(number)
    root = repository.resolve()
    names = []
    with os.scandir(directory) as listing:
        for item in listing:
            if not _FIGURE_NAME.fullmatch(item.name) or ".." in item.name:
                continue
            path = Path(item.path).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                continue  # a link out of the repository, or to a directory
            if path.stat().st_size > MAX_FIGURE_BYTES:
                continue
            names.append(item.name)
    order = list(KNOWN_FIGURES)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _read_figure(repository: Path, name: str, number: int, filename: str) -> bytes:
    """The bytes of a figure version ``number`` of ``name`` publishes; _NotFound for anything else."""
    try:
        versions = modelrepo.list_versions(repository, name)
        if not versions:
            raise _NotFound(f"unknown model {name!r}: it has no version in the repository")
        if number not in versions:
            raise _NotFound(f"model {name!r} has no version {number}; versions: {versions[-20:]}")
        published = _published_figures(repository, name, number)
        if filename not in published:
            raise _NotFound(
                f"model {name!r} version {number} publishes no file {filename!r}; its files: {published}"
            )
        return (repository / name / str(number) / filename).resolve().read_bytes()
    except OSError:
        raise _NotFound(f"model {name!r} version {number} file {filename!r} cannot be read") from None
