"""Every RPC of the inference service against a real server and real ORT sessions."""

from __future__ import annotations

import asyncio
import struct
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_testlib import Running, infer_request, output_array

from protocol import grpc_service_pb2 as pb
from protocol import model_config_pb2 as mc


def _batch(n: int, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


async def test_live_ready_and_server_metadata(running: Running) -> None:
    assert (await running.infer.ServerLive(pb.ServerLiveRequest())).live
    assert (await running.infer.ServerReady(pb.ServerReadyRequest())).ready
    meta = await running.infer.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "cnnserve"
    assert {"classification", "model_repository", "model_configuration", "statistics"} <= set(meta.extensions)


async def test_model_ready(running: Running) -> None:
    assert (await running.infer.ModelReady(pb.ModelReadyRequest(name="tiny"))).ready
    assert (await running.infer.ModelReady(pb.ModelReadyRequest(name="tiny", version="1"))).ready
    assert not (await running.infer.ModelReady(pb.ModelReadyRequest(name="tiny", version="7"))).ready
    assert not (await running.infer.ModelReady(pb.ModelReadyRequest(name="nope"))).ready


async def test_model_metadata(running: Running) -> None:
    meta = await running.infer.ModelMetadata(pb.ModelMetadataRequest(name="tinyrgb"))
    assert meta.name == "tinyrgb"
    assert list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 3, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("logits", "FP32", [-1, 3])]


async def test_model_config(running: Running) -> None:
    config = (await running.infer.ModelConfig(pb.ModelConfigRequest(name="tiny"))).config
    assert config.name == "tiny"
    assert config.max_batch_size == 16
    assert config.platform == "onnxruntime_onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", mc.TYPE_FP32, [1, 8, 8])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", mc.TYPE_FP32, [4])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].count == 1
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
async def test_model_infer_matches_numpy(running: Running, raw: bool) -> None:
    batch = _batch(3)
    response = await running.infer.ModelInfer(infer_request("tiny", batch, raw=raw, request_id="abc"))
    assert response.model_name == "tiny"
    assert response.model_version == "1"
    assert response.id == "abc"
    assert response.outputs[0].name == "logits"
    assert not response.outputs[0].HasField("contents")
    np.testing.assert_allclose(
        output_array(response), running.models["tiny"].expected(batch), rtol=1e-4, atol=1e-4
    )


async def test_classification_extension_exact_format(running: Running) -> None:
    batch = _batch(2, seed=3)
    request = infer_request("tiny", batch)
    output = request.outputs.add(name="logits")
    output.parameters["classification"].int64_param = 2
    response = await running.infer.ModelInfer(request)
    tensor = response.outputs[0]
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("logits", "BYTES", [2, 2])
    raw = response.raw_output_contents[0]
    items = []
    offset = 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    logits = running.models["tiny"].expected(batch)
    labels = ("zero", "one", "two", "three")
    expected = []
    for row in logits:
        for index in np.argsort(-row, kind="stable")[:2]:
            expected.append(f"{float(row[index]):f}:{index}:{labels[index]}")
    # Scores are compared to 4 decimals (numpy vs ORT summation order), the format exactly.
    assert [s.split(":")[1:] for s in items] == [s.split(":")[1:] for s in expected]
    for got, want in zip(items, expected, strict=True):
        assert len(got.split(":")[0].split(".")[1]) == 6  # %f: six decimals
        assert abs(float(got.split(":")[0]) - float(want.split(":")[0])) < 1e-4


async def test_model_stream_infer(running: Running) -> None:
    batches = [_batch(1, seed=i) for i in range(5)]

    async def requests():  # type: ignore[no-untyped-def]
        for i, batch in enumerate(batches):
            yield infer_request("tiny", batch, request_id=str(i))
        yield infer_request("nope", batches[0], request_id="bad")

    answers = {}
    async for answer in running.infer.ModelStreamInfer(requests()):
        answers[answer.infer_response.id] = answer
    assert set(answers) == {"0", "1", "2", "3", "4", "bad"}
    assert "unknown model 'nope'" in answers["bad"].error_message
    for i, batch in enumerate(batches):
        answer = answers[str(i)]
        assert answer.error_message == ""
        np.testing.assert_allclose(
            output_array(answer.infer_response), running.models["tiny"].expected(batch), rtol=1e-4, atol=1e-4
        )


async def test_model_statistics_counts(running: Running) -> None:
    for n in (1, 2, 3):
        await running.infer.ModelInfer(infer_request("tiny", _batch(n)))
    with pytest.raises(grpc.aio.AioRpcError):
        await running.infer.ModelInfer(infer_request("tiny", _batch(1, shape=(1, 4, 4))))
    stats = await running.infer.ModelStatistics(pb.ModelStatisticsRequest(name="tiny"))
    (entry,) = stats.model_stats
    assert (entry.name, entry.version) == ("tiny", "1")
    assert entry.inference_count == 6
    assert 1 <= entry.execution_count <= 3
    assert entry.inference_stats.success.count == 3
    assert entry.inference_stats.fail.count == 1
    assert entry.inference_stats.queue.count == 3
    assert entry.inference_stats.compute_infer.ns > 0
    assert entry.last_inference > 0
    everything = await running.infer.ModelStatistics(pb.ModelStatisticsRequest())
    assert {s.name for s in everything.model_stats} == {"tiny", "tinyrgb"}


async def test_repository_index(running: Running) -> None:
    index = await running.infer.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.version, m.state) for m in index.models] == [
        ("tiny", "1", "READY"),
        ("tinyrgb", "1", "READY"),
    ]


async def test_health_overall_service_and_models(running: Running) -> None:
    stub = health_pb2_grpc.HealthStub(running.channel)
    for service in (
        "",
        "inference.GRPCInferenceService",
        "cnnserve.v1.ImageClassification",
        "tiny",
        "tinyrgb",
    ):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_services(running: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)

    async def one():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for reply in stub.ServerReflectionInfo(one()):
        names |= {s.name for s in reply.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "cnnserve.v1.ImageClassification",
        "grpc.health.v1.Health",
    } <= names


async def test_metrics_endpoint_exposes_counters(running: Running) -> None:
    await running.infer.ModelInfer(infer_request("tiny", _batch(2)))
    with pytest.raises(grpc.aio.AioRpcError):
        await running.infer.ModelInfer(infer_request("tiny", _batch(1, shape=(1, 2, 2))))
    port = running.server.metrics_port
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    assert 'cnnserve_request_success_total{model="tiny"} 1.0' in text
    assert 'cnnserve_request_failure_total{model="tiny",reason="invalid_argument"} 1.0' in text
    assert 'cnnserve_inference_count_total{model="tiny"} 2.0' in text
    assert 'cnnserve_execution_count_total{model="tiny"} 1.0' in text
    assert 'cnnserve_queue_duration_seconds_count{model="tiny"} 1.0' in text
    assert 'cnnserve_compute_duration_seconds_count{model="tiny"} 1.0' in text
    assert 'cnnserve_pending_requests{model="tiny"} 0.0' in text
    assert 'cnnserve_model_state{model="tiny",state="READY"} 1.0' in text
