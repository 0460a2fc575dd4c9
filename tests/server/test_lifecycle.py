"""Model states: unavailable-model isolation, load/unload, version swap under traffic."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_testlib import (
    Running,
    TinyModel,
    infer_request,
    make_settings,
    output_array,
    publish_tiny,
    start,
)

import modelrepo
from protocol import grpc_service_pb2 as pb
from server import create_server
from server.errors import StartupError


@pytest.fixture
async def broken(tmp_path: Path) -> Running:
    repo = tmp_path / "repo"
    models = {"tiny": publish_tiny(repo, "tiny", seed=1)}
    publish_tiny(repo, "tampered", seed=2)
    model_file = repo / "tampered" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")  # no longer matches metadata's sha256
    publish_tiny(repo, "corrupt", seed=3)
    corrupt = repo / "corrupt" / "1"
    (corrupt / "model.onnx").write_bytes(b"this is not onnx")
    metadata = json.loads((corrupt / "metadata.json").read_text())
    del metadata["model_sha256"]  # the file is what it claims to be, but ORT cannot read it
    (corrupt / "metadata.json").write_text(json.dumps(metadata))
    return await start(repo, models)


async def test_unavailable_models_are_isolated(broken: Running) -> None:
    try:
        index = await broken.infer.RepositoryIndex(pb.RepositoryIndexRequest())
        states = {m.name: (m.state, m.reason) for m in index.models}
        assert states["tiny"] == ("READY", "")
        assert states["tampered"][0] == "UNAVAILABLE"
        assert "sha256" in states["tampered"][1] and "metadata.json records" in states["tampered"][1]
        assert states["corrupt"][0] == "UNAVAILABLE"
        assert "model 'corrupt' version 1 failed to load" in states["corrupt"][1]
        ready = await broken.infer.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
        assert [m.name for m in ready.models] == ["tiny"]

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await broken.infer.ModelInfer(infer_request("tampered", np.zeros((1, 1, 8, 8), np.float32)))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "model 'tampered' is UNAVAILABLE" in (info.value.details() or "")

        health = health_pb2_grpc.HealthStub(broken.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="tampered"))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        x = np.ones((2, 1, 8, 8), np.float32)
        response = await broken.infer.ModelInfer(infer_request("tiny", x))
        np.testing.assert_allclose(
            output_array(response), broken.models["tiny"].expected(x), rtol=1e-4, atol=1e-4
        )
        assert (await broken.infer.ServerReady(pb.ServerReadyRequest())).ready
    finally:
        await broken.channel.close(None)
        await broken.server.stop(0)


async def test_unload_and_load(running: Running) -> None:
    await running.infer.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tinyrgb"))
    assert not (await running.infer.ModelReady(pb.ModelReadyRequest(name="tinyrgb"))).ready
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.infer.ModelInfer(infer_request("tinyrgb", np.zeros((1, 3, 8, 8), np.float32)))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unloaded" in (info.value.details() or "")
    index = await running.infer.RepositoryIndex(pb.RepositoryIndexRequest())
    assert {m.name: m.state for m in index.models}["tinyrgb"] == "UNAVAILABLE"

    await running.infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tinyrgb"))
    assert (await running.infer.ModelReady(pb.ModelReadyRequest(name="tinyrgb"))).ready
    await running.infer.ModelInfer(infer_request("tinyrgb", np.zeros((1, 3, 8, 8), np.float32)))


async def test_version_swap_under_traffic(running: Running) -> None:
    """While clients send requests, version 2 replaces version 1: no request fails, none mixes versions."""
    v1 = running.models["tiny"]
    v2: TinyModel = publish_tiny(running.repository, "tiny", seed=99)
    versions = {"1": v1, "2": v2}
    rng = np.random.default_rng(0)
    stop = asyncio.Event()
    seen: list[str] = []

    async def client() -> None:
        while not stop.is_set():
            x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
            response = await running.infer.ModelInfer(infer_request("tiny", x))
            expected = versions[response.model_version].expected(x)
            np.testing.assert_allclose(output_array(response), expected, rtol=1e-4, atol=1e-4)
            seen.append(response.model_version)

    clients = [asyncio.create_task(client()) for _ in range(6)]
    await asyncio.sleep(0.2)
    await running.infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"))
    after_load = len(seen)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*clients)  # any failed request raises here
    assert "1" in seen[:after_load]
    assert set(seen[after_load + 6 :]) == {"2"}
    meta = await running.infer.ModelMetadata(pb.ModelMetadataRequest(name="tiny"))
    assert list(meta.versions) == ["2"]


async def test_load_pinned_version_and_failed_new_version(running: Running) -> None:
    publish_tiny(running.repository, "tiny", seed=5)  # version 2
    publish_tiny(running.repository, "tiny", seed=6)  # version 3, broken below
    (running.repository / "tiny" / "3" / "model.onnx").write_bytes(b"garbage")

    request = pb.RepositoryModelLoadRequest(model_name="tiny")
    request.parameters["version"].int64_param = 2
    await running.infer.RepositoryModelLoad(request)
    assert (await running.infer.ModelReady(pb.ModelReadyRequest(name="tiny", version="2"))).ready

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model 'tiny' version 3" in (info.value.details() or "")
    # The failed load left version 2 serving.
    response = await running.infer.ModelInfer(infer_request("tiny", np.zeros((1, 1, 8, 8), np.float32)))
    assert response.model_version == "2"

    request.parameters["version"].int64_param = 7
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.infer.RepositoryModelLoad(request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'tiny' has no version 7; versions: [1, 2, 3]" in (info.value.details() or "")


async def _health(channel: grpc.aio.Channel) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(channel)
    services = ("", "inference.GRPCInferenceService", "cnnserve.v1.ImageClassification", "tiny")
    return {s: (await stub.Check(health_pb2.HealthCheckRequest(service=s))).status for s in services}


async def test_health_follows_readiness_when_no_model_is_ready(tmp_path: Path) -> None:
    """Every model failed to load, then one loads, then it is unloaded: health says what ServerReady says."""
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    repo = tmp_path / "repo"
    models = {"tiny": publish_tiny(repo, "tiny", seed=1)}
    model_file = repo / "tiny" / "1" / "model.onnx"
    good = model_file.read_bytes()
    model_file.write_bytes(good + b"\0")  # no longer matches metadata's sha256: the only model fails
    running = await start(repo, models)
    try:
        assert not (await running.infer.ServerReady(pb.ServerReadyRequest())).ready
        assert set((await _health(running.channel)).values()) == {not_serving}

        model_file.write_bytes(good)
        await running.infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"))
        assert (await running.infer.ServerReady(pb.ServerReadyRequest())).ready
        assert set((await _health(running.channel)).values()) == {serving}

        await running.infer.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"))
        assert not (await running.infer.ServerReady(pb.ServerReadyRequest())).ready
        assert set((await _health(running.channel)).values()) == {not_serving}
    finally:
        await running.channel.close(None)
        await running.server.stop(0)


async def test_default_model_that_is_not_loaded_stops_start_up(tmp_path: Path) -> None:
    """--default-model must name a loaded model: unknown or failed, the server does not start."""
    repo = tmp_path / "repo"
    publish_tiny(repo, "tiny", seed=1)
    publish_tiny(repo, "tampered", seed=2)
    model_file = repo / "tampered" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(StartupError, match=r"--default-model 'nope' is not loaded \(no such model"):
        await create_server(make_settings(repo, default_model="nope"))
    with pytest.raises(StartupError, match=r"'tampered' is not loaded \(it is UNAVAILABLE: .*sha256"):
        await create_server(make_settings(repo, default_model="tampered"))
    server, _port = await create_server(make_settings(repo, default_model="tiny"))
    await server.stop(0)


async def test_load_failures_tell_clients_no_server_paths(tmp_path: Path) -> None:
    """RepositoryIndex reasons and UNAVAILABLE details name files inside the repository, not its location."""
    repo = tmp_path / "secret-location" / "repo"
    publish_tiny(repo, "tiny", seed=1)
    publish_tiny(repo, "nofile", seed=2)
    (repo / "nofile" / "1" / "model.onnx").unlink()
    publish_tiny(repo, "badjson", seed=3)
    (repo / "badjson" / "1" / "config.json").write_text("{not json")
    publish_tiny(repo, "corrupt", seed=4)
    corrupt = repo / "corrupt" / "1"
    (corrupt / "model.onnx").write_bytes(b"this is not onnx")
    metadata = json.loads((corrupt / "metadata.json").read_text())
    del metadata["model_sha256"]
    (corrupt / "metadata.json").write_text(json.dumps(metadata))
    running = await start(repo, {})
    try:
        index = await running.infer.RepositoryIndex(pb.RepositoryIndexRequest())
        reasons = {m.name: m.reason for m in index.models}
        assert "nofile/1/model.onnx" in reasons["nofile"]
        assert "unreadable configuration" in reasons["badjson"]
        details = []
        for name in ("nofile", "badjson", "corrupt", "absent"):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await running.infer.ModelInfer(infer_request(name, np.zeros((1, 1, 8, 8), np.float32)))
            details.append(info.value.details() or "")
        for text in [*reasons.values(), *details]:
            assert "secret-location" not in text and str(tmp_path) not in text, text
    finally:
        await running.channel.close(None)
        await running.server.stop(0)


async def test_repository_scans_run_off_the_event_loop(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow file system must not stall every other request: the scans run in a thread."""
    threads: list[str] = []
    real_list_models, real_list_versions = modelrepo.list_models, modelrepo.list_versions

    def list_models(repository: Path) -> list[str]:
        threads.append(threading.current_thread().name)
        return real_list_models(repository)

    def list_versions(repository: Path, name: str) -> list[int]:
        threads.append(threading.current_thread().name)
        return real_list_versions(repository, name)

    monkeypatch.setattr(modelrepo, "list_models", list_models)
    monkeypatch.setattr(modelrepo, "list_versions", list_versions)
    await running.infer.RepositoryIndex(pb.RepositoryIndexRequest())
    await running.infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"))
    await running.infer.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tinyrgb"))
    assert len(threads) >= 3
    assert threading.main_thread().name not in threads


async def test_shutdown_delay_keeps_serving_while_health_says_not_serving(tmp_path: Path) -> None:
    """A stop signal turns health and ServerReady NOT_SERVING at once; inference goes on for the
    shutdown delay (what a load balancer needs to stop sending), and only then does the server stop."""
    delay = 1.5
    models = {"tiny": publish_tiny(tmp_path, "tiny", seed=3)}
    running = await start(tmp_path, models, shutdown_delay=delay)
    batch = np.zeros((1, 1, 8, 8), np.float32)
    try:
        began = asyncio.get_running_loop().time()
        stopping = asyncio.ensure_future(running.server.stop())
        await asyncio.sleep(0.2)
        assert set((await _health(running.channel)).values()) == {health_pb2.HealthCheckResponse.NOT_SERVING}
        assert not (await running.infer.ServerReady(pb.ServerReadyRequest())).ready
        for _ in range(3):
            response = await running.infer.ModelInfer(infer_request("tiny", batch))
            got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, -1)
            np.testing.assert_allclose(got, models["tiny"].expected(batch), rtol=1e-4, atol=1e-4)
            await asyncio.sleep(0.3)
        assert not stopping.done(), "the server stopped before its shutdown delay ended"
        await asyncio.wait_for(stopping, delay + 5)
        assert asyncio.get_running_loop().time() - began >= delay
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await running.infer.ModelInfer(infer_request("tiny", batch), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.channel.close(None)
        await running.server.stop(0)
