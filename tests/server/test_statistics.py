"""ModelStatistics with Triton's meaning of every field, checked against a real server.

Requests go in with known batch sizes; the statistics must then say exactly that: per request
``success``, ``queue`` and ``compute_input/infer/output`` (all counts equal), per model
``inference_count`` (samples) and ``execution_count`` (batches), and ``batch_stats`` per batch
size counted once per executed batch. Failed requests count in ``fail`` and nowhere else.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from server_testlib import Running, TinyModel, infer_request, linear_weights, publish_tiny, start

import modelrepo
from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec
from protocol import grpc_service_pb2 as pb
from protocol import image_classification_pb2 as img_pb

ROOT = Path(__file__).resolve().parents[2]
COMPUTE_FIELDS = ("compute_input", "compute_infer", "compute_output")


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 12), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def publish_batch1_only(repository: Path, name: str) -> None:
    """A classifier whose graph reshapes to a fixed [1, 64]: it loads (warm-up runs batch 1) and
    fails in ONNX Runtime for any batch of 2 or more, a real failure inside a batch."""
    weight, bias = linear_weights(64, 4, seed=3)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        ],
        "batch1",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "shape"),
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    config = ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", (1, 8, 8)),
        output=TensorSpec("logits", "FP32", (4,)),
        labels=("a", "b", "c", "d"),
        preprocessing=Preprocessing(8, 8, 1, (0.5,), (0.25,)),
        batching=BatchingConfig(max_batch_size=4, max_queue_delay_us=0, max_queue_size=16),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        modelrepo.publish(repository, config, path, {"source": "test"})


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Running]:
    repo = tmp_path / "repo"
    models = {
        "tiny": publish_tiny(repo, "tiny", seed=1),
        # Waits up to 0.5 s for company and holds 8 samples: concurrent requests share one batch.
        "pooled": publish_tiny(
            repo,
            "pooled",
            seed=2,
            batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=500_000, max_queue_size=64),
        ),
    }
    publish_batch1_only(repo, "batch1")
    run = await start(repo, models, greedy_batching=False)
    try:
        yield run
    finally:
        await run.channel.close(None)
        await run.server.stop(0)


async def _stats(run: Running, name: str) -> pb.ModelStatistics:
    response = await run.infer.ModelStatistics(pb.ModelStatisticsRequest(name=name))
    (entry,) = response.model_stats
    assert (entry.name, entry.version) == (name, "1")
    return entry


def _check_per_request(entry: pb.ModelStatistics, requests: int) -> None:
    """Every per-request statistic counts ``requests``; the durations nest inside ``success``."""
    s = entry.inference_stats
    counts = {f: getattr(s, f).count for f in ("success", "queue", *COMPUTE_FIELDS)}
    assert counts == dict.fromkeys(counts, requests)
    assert (s.cache_hit.count, s.cache_miss.count) == (0, 0)
    for f in ("success", *COMPUTE_FIELDS):
        assert getattr(s, f).ns > 0, f
    # Decode, queue, run and encode are disjoint parts of each request's time in the server.
    parts = s.queue.ns + s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    assert parts <= s.success.ns


async def test_sequential_requests_one_batch_each(served: Running) -> None:
    sizes = [1, 2, 3, 2, 1]
    before_ms = time.time_ns() // 1_000_000
    for i, n in enumerate(sizes):
        await served.infer.ModelInfer(infer_request("tiny", _batch(n, seed=i)))
    after_ms = time.time_ns() // 1_000_000
    entry = await _stats(served, "tiny")

    _check_per_request(entry, len(sizes))
    assert entry.inference_count == sum(sizes)
    # One request at a time: every request is its own batch.
    assert entry.execution_count == len(sizes)
    assert before_ms <= entry.last_inference <= after_ms
    assert entry.inference_stats.fail.count == 0

    per_size = {b.batch_size: b for b in entry.batch_stats}
    assert sorted(per_size) == [1, 2, 3]
    for size, batch in per_size.items():
        assert batch.compute_infer.count == sizes.count(size)
        assert batch.compute_input.count == batch.compute_output.count == batch.compute_infer.count
        assert batch.compute_infer.ns > 0
    assert sum(b.compute_infer.count for b in entry.batch_stats) == entry.execution_count
    assert sum(b.batch_size * b.compute_infer.count for b in entry.batch_stats) == entry.inference_count
    # One request per batch: the per-request and per-batch run times are the same sum.
    assert sum(b.compute_infer.ns for b in entry.batch_stats) == entry.inference_stats.compute_infer.ns


async def test_concurrent_requests_share_a_batch(served: Running) -> None:
    sizes = [1, 2, 3, 2]  # 8 samples: the batch is full once the last one arrives
    await asyncio.gather(
        *(served.infer.ModelInfer(infer_request("pooled", _batch(n, seed=i))) for i, n in enumerate(sizes))
    )
    entry = await _stats(served, "pooled")

    # Per request: four requests, each counted once, each carrying its batch's run time.
    _check_per_request(entry, len(sizes))
    assert entry.inference_count == 8
    # Per batch: one execution of batch size 8.
    assert entry.execution_count == 1
    (batch,) = entry.batch_stats
    assert batch.batch_size == 8
    assert (batch.compute_input.count, batch.compute_infer.count, batch.compute_output.count) == (1, 1, 1)
    assert entry.inference_stats.compute_infer.ns == len(sizes) * batch.compute_infer.ns
    # Early arrivals waited for the batch to fill.
    assert entry.inference_stats.queue.ns > 0


async def test_failed_requests_count_only_as_failures(served: Running) -> None:
    await served.infer.ModelInfer(infer_request("tiny", _batch(2)))
    for bad in (
        infer_request("tiny", np.zeros((1, 1, 4, 4), np.float32)),  # wrong shape
        infer_request("tiny", _batch(17)),  # above max_batch_size 16
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.infer.ModelInfer(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    entry = await _stats(served, "tiny")

    s = entry.inference_stats
    assert s.fail.count == 2 and s.fail.ns > 0
    _check_per_request(entry, 1)
    assert (entry.inference_count, entry.execution_count) == (2, 1)
    assert [b.batch_size for b in entry.batch_stats] == [2]


async def test_failed_batch_is_not_counted_as_computed(served: Running) -> None:
    await served.infer.ModelInfer(infer_request("batch1", _batch(1)))
    # ONNX Runtime itself fails on a batch of 2 for this model.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.infer.ModelInfer(infer_request("batch1", _batch(2)))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    entry = await _stats(served, "batch1")

    assert entry.inference_stats.fail.count == 1
    _check_per_request(entry, 1)
    assert (entry.inference_count, entry.execution_count) == (1, 1)
    assert [b.batch_size for b in entry.batch_stats] == [1]


async def test_classify_counts_like_infer(served: Running) -> None:
    for images in ([_png(1)], [_png(2), _png(3), _png(4)]):
        await served.images.Classify(img_pb.ClassifyRequest(model_name="tiny", images=images))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.images.Classify(img_pb.ClassifyRequest(model_name="tiny", images=[b"not an image"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    entry = await _stats(served, "tiny")

    _check_per_request(entry, 2)
    assert entry.inference_stats.fail.count == 1
    assert (entry.inference_count, entry.execution_count) == (4, 2)
    assert sorted(b.batch_size for b in entry.batch_stats) == [1, 3]


async def test_statistics_of_every_model(served: Running) -> None:
    await served.infer.ModelInfer(infer_request("tiny", _batch(1)))
    response = await served.infer.ModelStatistics(pb.ModelStatisticsRequest())
    by_name = {s.name: s for s in response.model_stats}
    assert sorted(by_name) == ["batch1", "pooled", "tiny"]
    _check_per_request(by_name["tiny"], 1)
    assert by_name["pooled"].inference_stats.success.count == 0
    assert by_name["pooled"].execution_count == 0 and not by_name["pooled"].batch_stats


PERF_ANALYZER = os.environ.get("CNNSERVE_PERF_ANALYZER")


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER, reason="CNNSERVE_PERF_ANALYZER does not name a perf_analyzer binary")
@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_perf_analyzer_runs_to_the_end(tmp_path: Path, protocol: str) -> None:
    """Triton's perf_analyzer, over gRPC and over HTTP (``-i http``: the model's config and metadata
    as JSON, binary tensor data in the infer requests), checks the statistics between every two
    measurement windows and aborts on anything inconsistent; here it must reach its end."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import http_benchmark  # scripts/http_benchmark.py: perf_analyzer over either protocol

    repo = tmp_path / "repo"
    models: dict[str, TinyModel] = {"tiny": publish_tiny(repo, "tiny", seed=1)}
    run = await start(repo, models)
    port = run.port if protocol == "grpc" else run.server.http_port
    tool = http_benchmark.find_perf_analyzer()
    argv = http_benchmark.perf_analyzer_command(
        tool,
        protocol,
        f"127.0.0.1:{port}",
        "tiny",
        tmp_path / "report.csv",
        concurrency=(1, 7, 3),
        window_ms=1000,
    )
    try:
        # The server runs on this event loop: perf_analyzer waits in a thread.
        result = await asyncio.to_thread(http_benchmark.run_perf_analyzer, tool, argv, 300)
        entry = await _stats(run, "tiny")
    finally:
        await run.channel.close(None)
        await run.server.stop(0)
    assert "error" not in result, f"{http_benchmark.shown_perf_analyzer(argv)}\n{result['error']}"
    levels = result["rows"]
    assert [lvl["concurrency"] for lvl in levels] == [1, 4, 7]
    for lvl in levels:
        assert lvl["throughput_infer_per_s"] > 0
        assert lvl["server_compute_infer_us"] >= 0
    # The server counted at least the requests of perf_analyzer's last windows, and failed none.
    assert entry.inference_stats.success.count >= result["requests"] > 0
    assert entry.inference_stats.fail.count == 0
