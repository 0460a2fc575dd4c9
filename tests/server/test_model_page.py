"""The model page (GET /) and the figure route, on a real server, read over real HTTP.

The repository is real: tiny ONNX classifiers published with :func:`modelrepo.publish`,
each with a ``metadata.json`` shaped like the export's (test accuracy per framework,
the parity record) and real PNG figures. Every expectation is computed from those files.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from server_testlib import build_classifier, make_settings

import modelrepo
from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec
from server import InferenceServer, create_server
from server.settings import ModelSelection

TOKEN = "page-test-token-42"
FIGURES = ("training_curves.png", "confusion_matrix.png")
#: User data that must come out escaped, never as markup.
HOSTILE_LABEL = "<script>alert('label')</script>"
HOSTILE_DESCRIPTION = '<img src=x onerror="alert(1)"> & co'


# -- a real repository ------------------------------------------------------------------------------


def _metadata(name: str, seed: int, *, passed: bool = True) -> dict[str, Any]:
    """A record with the keys ``python -m export`` writes (values differ per model and version)."""
    rng = np.random.default_rng(seed)
    return {
        "model": name,
        "description": f"tiny linear classifier {seed}",
        "precision": "fp32",
        "dataset": {"name": "synthetic", "splits": {"train": 10, "val": 5, "test": 7}, "labels": []},
        "val_accuracy": float(rng.uniform(0.5, 1.0)),
        "test_accuracy": {"torch": float(rng.uniform(0.5, 1.0)), "onnx": float(rng.uniform(0.5, 1.0))},
        "parity": {
            "batch_sizes": [1, 5, 32],
            "traced_batch_size": 2,
            "real_samples": 96,
            "random_samples": 8,
            "max_abs_diff": float(rng.uniform(1e-7, 1e-5)),
            "max_rel_diff": float(rng.uniform(1e-4, 1e-2)),
            "top1_agreement": 1.0 if passed else 0.75,
            "top1_disagreements": 0 if passed else 3,
            "atol": 1e-4,
            "rtol": 1e-3,
            "within_tolerance": passed,
            "passed": passed,
        },
        "exported_at": f"2026-01-0{seed % 9 + 1}T12:00:00+00:00",
    }


def _publish(
    repository: Path,
    name: str,
    seed: int,
    *,
    labels: Sequence[str] = ("zero", "one", "two"),
    metadata: dict[str, Any] | None = None,
) -> modelrepo.ModelVersion:
    shape = (1, 8, 8)
    config = ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", shape),
        output=TensorSpec("logits", "FP32", (len(labels),)),
        labels=tuple(labels),
        preprocessing=Preprocessing(8, 8, 1, (0.5,), (0.25,)),
        batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=100),
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_classifier(work / "model.onnx", shape, len(labels), seed)
        figures = []
        for i, figure in enumerate(FIGURES):
            path = work / figure
            Image.new("RGB", (40 + seed, 30 + i), (seed * 40 % 256, 90, 160)).save(path)
            figures.append(path)
        return modelrepo.publish(
            repository, config, work / "model.onnx", metadata or _metadata(name, seed), figures
        )


@dataclass
class Repo:
    path: Path
    outside: Path
    versions: dict[tuple[str, int], modelrepo.ModelVersion] = field(default_factory=dict)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """``digits-tiny`` v1 and v2 (v1 served), ``hostile`` (escaping), ``broken`` (fails to load),
    ``badmeta`` (its metadata.json is not JSON), ``oddmeta`` (odd values in it)."""
    root = tmp_path / "repo"
    result = Repo(root, tmp_path / "outside.png")
    for name, version, seed in (("digits-tiny", 1, 1), ("digits-tiny", 2, 2), ("broken", 1, 4)):
        result.versions[name, version] = _publish(root, name, seed)
    hostile_meta = {**_metadata("hostile", 3, passed=False), "description": HOSTILE_DESCRIPTION}
    result.versions["hostile", 1] = _publish(
        root, "hostile", 3, labels=(HOSTILE_LABEL, "b&b", '"q"'), metadata=hostile_meta
    )
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    _publish(root, "badmeta", 5)
    (root / "badmeta" / "1" / "metadata.json").write_text("{not json")
    odd = {
        "test_accuracy": "high",
        "val_accuracy": None,
        "parity": {"passed": "yes", "batch_sizes": "all", "max_abs_diff": [1]},
        "quantization": {"gate": 3, "accuracy_drop": "x", "top1_agreement": {}},
        "training": {"epochs_run": None},
        "dataset": {"name": ["x"], "splits": 7},
        "parameters": True,
    }
    _publish(root, "oddmeta", 6, metadata=odd)
    # Things in a version directory that are not published figures.
    version_dir = root / "digits-tiny" / "1"
    Image.new("L", (4, 4)).save(version_dir / ".hidden.png")
    Image.new("L", (4, 4)).save(result.outside)
    os.symlink(result.outside, version_dir / "outside.png")
    return result


@pytest.fixture
async def server(repo: Repo) -> AsyncIterator[InferenceServer]:
    settings = make_settings(
        repo.path,
        models=(ModelSelection("digits-tiny", 1), ModelSelection("hostile"), ModelSelection("broken")),
    )
    instance, _ = await create_server(settings)
    try:
        yield instance
    finally:
        await instance.stop(0)


@pytest.fixture
async def auth_server(repo: Repo) -> AsyncIterator[InferenceServer]:
    instance, _ = await create_server(make_settings(repo.path, auth_token=TOKEN))
    try:
        yield instance
    finally:
        await instance.stop(0)


# -- HTTP and HTML helpers --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


async def get(
    server: InferenceServer,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
) -> Reply:
    """One request with ``path`` sent exactly as written (no client-side normalisation)."""

    def call() -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    return await asyncio.to_thread(call)


@dataclass
class Version:
    facts: dict[str, str] = field(default_factory=dict)
    images: list[dict[str, str]] = field(default_factory=list)
    heading: str = ""


class PageParser(HTMLParser):
    """What the page shows: summary rows, per-version facts and figures, the classify select."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.versions: dict[tuple[str, int], Version] = {}
        self.options: list[str] = []
        self.text: list[str] = []
        self._row: str | None = None
        self._cells: list[str] = []
        self._version: Version | None = None
        self._capture: list[str] | None = None
        self._term = ""
        self._stat = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-model" in a:
            self._row, self._cells = a["data-model"], []
        elif tag == "article" and "data-version" in a:
            self._version = Version()
            self.versions[a["data-model"], int(a["data-version"])] = self._version
        elif tag in ("td", "th", "dt", "dd", "h3") and (self._row or self._version):
            self._capture = []
            self._stat = a.get("data-stat", "")
        elif tag == "img" and self._version is not None:
            self._version.images.append(a)
        elif tag == "option":
            self.options.append(a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "dt", "dd", "h3") and self._capture is not None:
            value = " ".join("".join(self._capture).split())
            self._capture = None
            if self._row is not None:
                self._cells.append(value)
                if self._stat:
                    self.rows.setdefault(self._row, {})[self._stat] = value
            elif self._version is not None:
                if tag == "dt":
                    self._term = value
                elif tag == "dd":
                    self._version.facts[self._term] = value
                elif tag == "h3":
                    self._version.heading = value
        elif tag == "tr" and self._row is not None:
            row = self.rows.setdefault(self._row, {})
            row.update(zip(("model", "state", "loaded", "on_disk", "input"), self._cells, strict=False))
            self._row = None
        elif tag == "article":
            self._version = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._capture is not None:
            self._capture.append(data)


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return parser


def percent(value: float) -> str:
    return f"{value:.2%}"


# -- the page -----------------------------------------------------------------------------------


async def test_page_lists_every_model_and_version_with_its_metadata(
    server: InferenceServer, repo: Repo
) -> None:
    reply = await get(server, "/")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert "nonce-" in reply.headers["content-security-policy"]
    page = parse(reply.text)

    on_disk = {name: modelrepo.list_versions(repo.path, name) for name in modelrepo.list_models(repo.path)}
    assert set(page.rows) == set(on_disk) == {"digits-tiny", "hostile", "broken", "badmeta", "oddmeta"}
    del on_disk["badmeta"], on_disk["oddmeta"]  # see test_page_reports_unreadable_metadata
    loaded = {m.name: m.version for m in server.manager.loaded()}
    for name, versions in on_disk.items():
        row = page.rows[name]
        assert row["on_disk"] == ", ".join(str(v) for v in reversed(versions))
        assert row["loaded"] == (str(loaded[name]) if name in loaded else "none")
        for number in versions:
            version = modelrepo.read_version(repo.path, name, number)
            shown = page.versions[name, number]
            meta = version.metadata
            assert shown.facts["Description"] == " ".join(meta["description"].split())
            spec = version.config.input
            assert shown.facts["Input"] == f"{spec.name}: {spec.datatype} {[-1, *spec.shape]}"
            tests = meta["test_accuracy"]
            assert shown.facts["Test accuracy"] == (
                f"ONNX {percent(tests['onnx'])} · PyTorch {percent(tests['torch'])}"
            )
            assert shown.facts["Validation accuracy"] == percent(meta["val_accuracy"])
            parity = meta["parity"]
            verdict = "passed" if parity["passed"] else "FAILED"
            assert shown.facts["Parity"].startswith(f"ONNX vs PyTorch {verdict}: ")
            assert f"max abs diff {parity['max_abs_diff']:.3g}" in shown.facts["Parity"]
            assert f"max rel diff {parity['max_rel_diff']:.3g}" in shown.facts["Parity"]
            assert f"top-1 agreement {percent(parity['top1_agreement'])}" in shown.facts["Parity"]
            assert shown.facts["Exported"] == meta["exported_at"]
            assert shown.facts["SHA-256"] == meta["model_sha256"]
            assert ("loaded" in shown.heading.split()) == (loaded.get(name) == number)
            # Exactly the published figures, each with alt text naming the model and version.
            assert [Path(i["src"]).name for i in shown.images] == list(FIGURES)
            for image in shown.images:
                assert f"{name} version {number}" in image["alt"]
                assert image["src"] == f"models/{name}/versions/{number}/files/{Path(image['src']).name}"

    # State and reason come from the manager.
    entries = {e.name: e for e in await server.manager.entries()}
    assert page.rows["digits-tiny"]["state"] == "READY"
    broken = entries["broken"]
    assert broken.state == "UNAVAILABLE" and broken.reason
    assert page.rows["broken"]["state"] == "UNAVAILABLE" + " ".join(broken.reason.split())
    assert str(repo.path) not in reply.text  # no server paths
    # Only READY models can be picked for classification.
    assert page.options == ["digits-tiny", "hostile"]


async def test_page_reports_unreadable_metadata(server: InferenceServer, repo: Repo) -> None:
    reply = await get(server, "/")
    assert reply.status == 200
    page = parse(reply.text)
    assert page.rows["badmeta"]["state"] == "UNAVAILABLEnot loaded"  # not in the start-up selection
    assert "badmeta/1/metadata.json is not valid JSON" in reply.text
    version = page.versions["badmeta", 1]
    assert version.facts["Input"] == "input: FP32 [-1, 1, 8, 8]"  # config.json still read
    assert version.facts["Parity"] == "not recorded"
    assert str(repo.path) not in reply.text
    odd = page.versions["oddmeta", 1].facts  # shown as they are, never a 500
    assert odd["Test accuracy"] == "high"
    assert odd["Parity"] == "ONNX vs PyTorch unknown: max abs diff [1]"
    assert odd["Quantization"].startswith("QUANTIZED gate vs FP32 unknown")


async def test_page_escapes_model_data(server: InferenceServer) -> None:
    reply = await get(server, "/")
    assert HOSTILE_LABEL not in reply.text
    assert "<img src=x" not in reply.text
    assert "&lt;script&gt;alert(&#39;label&#39;)&lt;/script&gt;" in reply.text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &amp; co" in reply.text
    page = parse(reply.text)
    facts = page.versions["hostile", 1].facts
    assert facts["Labels (3)"] == f'{HOSTILE_LABEL}, b&b, "q"'  # the text a browser shows
    assert facts["Description"] == HOSTILE_DESCRIPTION


async def test_page_shows_request_counts_without_javascript(server: InferenceServer) -> None:
    image = io.BytesIO()
    Image.new("L", (8, 8), 200).save(image, format="PNG")
    for _ in range(3):
        ok = await get(
            server,
            "/v2/models/digits-tiny/classify?top_k=2",
            {"Content-Type": "image/png"},
            method="POST",
            body=image.getvalue(),
        )
        assert ok.status == 200, ok.text
    bad = await get(
        server, "/v2/models/digits-tiny/classify", {"Content-Type": "image/png"}, method="POST", body=b"nope"
    )
    assert bad.status == 400
    stats = (await get(server, "/v2/models/digits-tiny/stats")).json()["model_stats"][0]["inference_stats"]
    page = parse((await get(server, "/")).text)
    assert page.rows["digits-tiny"]["success"] == str(stats["success"]["count"]) == "3"
    assert page.rows["digits-tiny"]["fail"] == str(stats["fail"]["count"]) == "1"
    assert page.rows["broken"]["success"] == "–"  # not loaded: no counts


# -- the figure route -------------------------------------------------------------------------------


async def test_figure_route_serves_the_published_png(server: InferenceServer, repo: Repo) -> None:
    page = parse((await get(server, "/")).text)
    for (name, number), shown in page.versions.items():
        for image in shown.images:
            reply = await get(server, "/" + image["src"])
            assert reply.status == 200, reply.text
            assert reply.headers["content-type"] == "image/png"
            assert "max-age" in reply.headers["cache-control"]
            assert reply.body == (repo.path / name / str(number) / Path(image["src"]).name).read_bytes()
            assert Image.open(io.BytesIO(reply.body)).format == "PNG"


#: Requests for things a version does not publish, sent exactly as written, and the bad value
#: each 404 must name.
REFUSED = [
    ("/models/digits-tiny/versions/1/files/..%2Fconfig.json", "'../config.json'"),
    ("/models/digits-tiny/versions/1/files/..%2F..%2F..%2Foutside.png", "'../../../outside.png'"),
    ("/models/digits-tiny/versions/1/files/../2/model.onnx", "'../2/model.onnx'"),
    ("/models/digits-tiny/versions/1/files/%2Fetc%2Fpasswd", "'/etc/passwd'"),
    ("/models/digits-tiny/versions/1/files/model.onnx", "'model.onnx'"),
    ("/models/digits-tiny/versions/1/files/metadata.json", "'metadata.json'"),
    ("/models/digits-tiny/versions/1/files/.hidden.png", "'.hidden.png'"),
    ("/models/digits-tiny/versions/1/files/outside.png", "'outside.png'"),  # a link out of the repository
    ("/models/digits-tiny/versions/1/files/TRAINING_CURVES.PNG", "'TRAINING_CURVES.PNG'"),
    ("/models/digits-tiny/versions/1/files/training_curves.png%00", "'training_curves.png\\x00'"),
    ("/models/digits-tiny/versions/01/files/training_curves.png", "'01'"),
    ("/models/digits-tiny/versions/-1/files/training_curves.png", "'-1'"),
    ("/models/digits-tiny/versions/%C2%B2/files/training_curves.png", "'²'"),
    ("/models/digits-tiny/versions/3/files/training_curves.png", "version 3"),
    ("/models/.hidden/versions/1/files/training_curves.png", "'.hidden'"),
    ("/models/..%2F..%2Fetc/versions/1/files/passwd", "/models/../../etc/versions/1/files/passwd"),
    ("/models/nosuch/versions/1/files/training_curves.png", "'nosuch'"),
]


async def test_figure_route_refuses_anything_not_published(server: InferenceServer) -> None:
    for path, named in REFUSED:
        reply = await get(server, path)
        assert reply.status == 404, (path, reply.status, reply.body[:200])
        assert reply.headers["content-type"].startswith("application/json"), path
        message = reply.json()["error"]
        assert named in message, (path, message)


async def test_figure_links_only_what_the_route_serves(server: InferenceServer) -> None:
    page = parse((await get(server, "/")).text)
    names = {Path(i["src"]).name for v in page.versions.values() for i in v.images}
    assert names == set(FIGURES)  # not .hidden.png, not the link out of the repository


# -- authentication ---------------------------------------------------------------------------------


async def test_auth_prompt_hides_every_model(auth_server: InferenceServer, repo: Repo) -> None:
    reply = await get(auth_server, "/")
    assert reply.status == 200
    assert 'id="token-form"' in reply.text
    page = parse(reply.text)
    assert not page.rows and not page.versions and not page.options
    for (name, _), version in repo.versions.items():
        assert name not in reply.text
        assert version.metadata["model_sha256"] not in reply.text
        assert percent(version.metadata["test_accuracy"]["onnx"]) not in reply.text
    assert "not accepted" not in reply.text

    wrong = await get(auth_server, "/", {"Cookie": "cnnserve_token=wrong"})
    assert 'id="token-form"' in wrong.text and "not accepted" in wrong.text
    assert "digits-tiny" not in wrong.text


async def test_auth_token_header_or_cookie_shows_the_page(auth_server: InferenceServer) -> None:
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"Cookie": f"cnnserve_token={TOKEN}"}):
        reply = await get(auth_server, "/", headers)
        assert reply.status == 200
        page = parse(reply.text)
        assert set(page.rows) == {"digits-tiny", "hostile", "broken", "badmeta", "oddmeta"}
        assert 'id="token-form"' not in reply.text


async def test_auth_figures_need_the_token(auth_server: InferenceServer, repo: Repo) -> None:
    path = "/models/digits-tiny/versions/1/files/training_curves.png"
    refused = await get(auth_server, path)
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert "error" in refused.json()
    cookie = await get(auth_server, path, {"Cookie": f"cnnserve_token={urllib.parse.quote(TOKEN)}"})
    assert cookie.status == 200
    assert cookie.body == (repo.path / "digits-tiny" / "1" / "training_curves.png").read_bytes()
