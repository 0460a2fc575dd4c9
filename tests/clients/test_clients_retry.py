"""The retry policy over real gRPC: which calls gRPC sends again, how often, within which deadline.

Most tests go through :class:`RefusingProxy`, a real gRPC server in front of the real test server
that refuses the first attempts of a method as a load balancer does while a replica restarts,
and records the ``grpc-previous-rpc-attempts`` of every attempt it sees. One test turns a real
server's shutting-down state on and off while a call waits for its retry.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from clienttest_support import SIDE, RunningServer, publish_tiny, server_in_thread, tiny_logits
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import AsyncInferenceClient, InferenceClient, InferenceServerError, RetryPolicy, convert
from clients import classify as classify_cli
from clients.bench import cli as bench_cli
from clients.errors import InvalidArgumentError
from clients.retry import RETRIED_METHODS
from modelrepo import BatchingConfig
from protocol import grpc_service_pb2, grpc_service_pb2_grpc, image_classification_pb2

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: Short waits, so that tests of several attempts stay fast.
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
BATCH = np.random.default_rng(7).standard_normal((2, 1, SIDE, SIDE)).astype(np.float32)

_STREAMS = {
    "/inference.GRPCInferenceService/ModelStreamInfer": "stream_stream",
    "/grpc.health.v1.Health/Watch": "unary_stream",
}


class RefusingProxy(grpc.GenericRpcHandler):
    """Forwards every call to ``backend`` as bytes, except attempts it was told to refuse.

    ``attempts[method]`` lists, per attempt that arrived, its ``grpc-previous-rpc-attempts``
    (0 for a first attempt). ``on_attempt(method, previous)`` runs before an attempt is answered.
    """

    def __init__(self, backend: str) -> None:
        self._backend = grpc.insecure_channel(backend, options=convert.channel_options())
        self._lock = threading.Lock()
        self._refusals: dict[str, list[tuple[grpc.StatusCode, float]]] = defaultdict(list)
        self.attempts: dict[str, list[int]] = defaultdict(list)
        self.on_attempt: Callable[[str, int], None] | None = None
        self.address = ""

    def reset(self) -> None:
        with self._lock:
            self._refusals.clear()
            self.attempts.clear()
        self.on_attempt = None

    def refuse(
        self, method: str, code: grpc.StatusCode = UNAVAILABLE, *, times: int = 1, delay: float = 0.0
    ) -> None:
        """Answer the next ``times`` attempts of ``method`` with ``code``, each after ``delay`` s."""
        with self._lock:
            self._refusals[method].extend([(code, delay)] * times)

    def _admit(self, method: str, context: grpc.ServicerContext) -> None:
        previous = int(dict(context.invocation_metadata()).get("grpc-previous-rpc-attempts", 0))
        with self._lock:
            self.attempts[method].append(previous)
            queue = self._refusals[method]
            refusal = queue.pop(0) if queue else None
        if self.on_attempt is not None:
            self.on_attempt(method, previous)
        if refusal is not None:
            code, delay = refusal
            time.sleep(delay)
            context.abort(code, f"refused by the test proxy ({code.name})")

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        method = path.rsplit("/", 1)[-1]
        kind = _STREAMS.get(path, "unary_unary")
        forward = getattr(self._backend, kind)(path)  # no serializers: requests and answers stay bytes

        if kind == "unary_unary":

            def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
                self._admit(method, context)
                try:
                    answer: bytes = forward(request, timeout=context.time_remaining())
                except grpc.RpcError as error:
                    context.abort(error.code(), error.details())
                return answer

            return grpc.unary_unary_rpc_method_handler(unary)

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            self._admit(method, context)
            yield from forward(request, timeout=context.time_remaining())

        if kind == "unary_stream":
            return grpc.unary_stream_rpc_method_handler(streaming)
        return grpc.stream_stream_rpc_method_handler(streaming)


@pytest.fixture(scope="module")
def running_proxy(server: RunningServer) -> Iterator[RefusingProxy]:
    proxy = RefusingProxy(server.address)
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(16), handlers=[proxy], options=convert.channel_options()
    )
    proxy.address = f"127.0.0.1:{grpc_server.add_insecure_port('127.0.0.1:0')}"
    grpc_server.start()
    yield proxy
    grpc_server.stop(0)


@pytest.fixture
def proxy(running_proxy: RefusingProxy) -> Iterator[RefusingProxy]:
    """The proxy, with no refusals and no attempts recorded."""
    running_proxy.reset()
    yield running_proxy
    running_proxy.reset()


@pytest.fixture
def channel(proxy: RefusingProxy) -> Iterator[grpc.Channel]:
    """A raw channel to the proxy with the options the clients use for :data:`FAST`."""
    with grpc.insecure_channel(proxy.address, options=convert.channel_options(retry=FAST)) as raw:
        yield raw


# The policy and its table -------------------------------------------------------------------------


def test_without_a_policy_the_channel_options_are_the_old_ones() -> None:
    assert convert.channel_options() == [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    assert convert.channel_options(1024, None) == convert.channel_options(1024)


def test_the_service_config_holds_the_policy() -> None:
    options = dict(convert.channel_options(retry=RetryPolicy()))
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.service_config_disable_resolution"] == 1
    assert options["grpc.per_rpc_retry_buffer_size"] == 64 * 1024 * 1024
    [method_config] = json.loads(options["grpc.service_config"])["methodConfig"]
    assert method_config["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert method_config["name"] == [
        {"service": service, "method": method}
        for service, methods in RETRIED_METHODS.items()
        for method in methods
    ]


def test_the_retried_methods_are_the_unary_calls_that_change_nothing() -> None:
    services = {
        s.full_name: s
        for s in (
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
            image_classification_pb2.DESCRIPTOR.services_by_name["ImageClassification"],
            health_pb2.DESCRIPTOR.services_by_name["Health"],
        )
    }
    assert set(RETRIED_METHODS) == set(services)
    for service, methods in RETRIED_METHODS.items():
        for name in methods:
            method = services[service].methods_by_name[name]
            assert not method.client_streaming and not method.server_streaming, name
    # A new RPC in the protocol fails here until someone decides whether it may be sent twice.
    left_out = {
        (s.full_name, m.name)
        for s in services.values()
        for m in s.methods
        if m.name not in RETRIED_METHODS[s.full_name]
    }
    assert left_out == {
        ("inference.GRPCInferenceService", "ModelStreamInfer"),
        ("inference.GRPCInferenceService", "RepositoryModelLoad"),
        ("inference.GRPCInferenceService", "RepositoryModelUnload"),
        ("grpc.health.v1.Health", "Watch"),
        ("grpc.health.v1.Health", "List"),  # not served by the server
    }


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_attempts", 1, "max_attempts is 1; expected 2 to 5"),
        ("max_attempts", 6, "max_attempts is 6; expected 2 to 5"),
        ("max_attempts", 2.5, "max_attempts is 2.5 (float); expected an int from 2 to 5"),
        ("max_attempts", True, "max_attempts is True (bool); expected an int from 2 to 5"),
        ("initial_backoff", 0, "initial_backoff is 0; expected seconds >= 0.01"),
        ("initial_backoff", 0.001, "initial_backoff is 0.001; expected seconds >= 0.01"),
        ("initial_backoff", -1.0, "initial_backoff is -1.0; expected seconds >= 0.01"),
        ("initial_backoff", float("nan"), "initial_backoff is nan (float); expected seconds >= 0.01"),
        ("initial_backoff", "0.1", "initial_backoff is '0.1' (str); expected seconds >= 0.01"),
        ("max_backoff", 0.05, "max_backoff is 0.05; expected seconds >= initial_backoff (0.1)"),
        ("max_backoff", float("inf"), "max_backoff is inf (float); expected seconds >= 0.01"),
        ("backoff_multiplier", 0.5, "backoff_multiplier is 0.5 (float); expected a number >= 1"),
        ("backoff_multiplier", float("inf"), "backoff_multiplier is inf; expected a finite number >= 1"),
        ("retryable_codes", (), "retryable_codes is empty; expected at least one grpc.StatusCode"),
        ("retryable_codes", UNAVAILABLE, "retryable_codes is <StatusCode.UNAVAILABLE: (14, 'unavailable')> "),
        ("retryable_codes", ("UNAVAILABLE",), "retryable code 'UNAVAILABLE' (str) is not a grpc.StatusCode"),
        ("retryable_codes", (grpc.StatusCode.OK,), "retryable code OK is a success; expected failure codes"),
    ],
)
def test_bad_policy_values_are_refused(field: str, value: object, expected: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        RetryPolicy(**{field: value})
    assert expected in refused.value.message, refused.value.message


def test_a_retry_that_is_not_a_policy_is_refused(server: RunningServer) -> None:
    with pytest.raises(InvalidArgumentError, match=r"retry is 3 \(int\); expected a RetryPolicy"):
        InferenceClient(server.address, retry=3)
    with pytest.raises(InvalidArgumentError, match=r"retry is 'yes' \(str\); expected a RetryPolicy"):
        AsyncInferenceClient(server.address, retry="yes")


def test_retries_flag_maps_to_attempts() -> None:
    assert RetryPolicy.from_retries(0) is None
    assert RetryPolicy.from_retries(4) == RetryPolicy(max_attempts=5)
    assert RetryPolicy(retryable_codes=[UNAVAILABLE]).retryable_codes == (UNAVAILABLE,)
    numpy_values = RetryPolicy(np.int64(4), np.float32(0.5), np.float64(2), np.int64(3))
    assert numpy_values == RetryPolicy(4, 0.5, 2.0, 3.0)
    assert '"maxAttempts": 4' in numpy_values.service_config()


# What gRPC sends again --------------------------------------------------------------------------


def test_the_default_client_does_not_retry(proxy: RefusingProxy) -> None:
    proxy.refuse("ModelInfer")
    with InferenceClient(proxy.address) as client, pytest.raises(InferenceServerError) as refused:
        client.infer("tiny", BATCH)
    assert refused.value.code == UNAVAILABLE and not refused.value.local
    assert proxy.attempts["ModelInfer"] == [0]


def test_unavailable_answers_are_retried_until_one_succeeds(proxy: RefusingProxy) -> None:
    proxy.refuse("ModelInfer", times=2)
    with InferenceClient(proxy.address, retry=FAST) as client:
        logits = client.infer("tiny", BATCH)["logits"]
    np.testing.assert_allclose(logits, tiny_logits(BATCH), rtol=1e-5, atol=1e-5)
    assert proxy.attempts["ModelInfer"] == [0, 1, 2]


_CALLS: dict[str, Callable[[InferenceClient], object]] = {
    "ServerLive": lambda c: c.server_live(),
    "ServerReady": lambda c: c.server_ready(),
    "ModelReady": lambda c: c.model_ready("tiny"),
    "ServerMetadata": lambda c: c.server_metadata(),
    "ModelMetadata": lambda c: c.model_metadata("tiny"),
    "ModelConfig": lambda c: c.model_config("tiny"),
    "RepositoryIndex": lambda c: c.list_models(),
    "ModelInfer": lambda c: c.infer("tiny", BATCH),
    "Classify": lambda c: c.classify(np.zeros((4, 4), np.uint8), model="tiny"),
    "Check": lambda c: c.health(),
}


@pytest.mark.parametrize("method", [m for methods in RETRIED_METHODS.values() for m in methods])
def test_every_retried_method_is_retried(proxy: RefusingProxy, channel: grpc.Channel, method: str) -> None:
    proxy.refuse(method)
    # Calls the clients have no method for: the stubs, on a channel with the clients' options.
    if method == "ModelStatistics":
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelStatistics(grpc_service_pb2.ModelStatisticsRequest(name="tiny"), timeout=10)
    else:
        with InferenceClient(proxy.address, retry=FAST) as client:
            _CALLS[method](client)
    assert proxy.attempts[method] == [0, 1]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_other_codes_are_not_retried(proxy: RefusingProxy, code: grpc.StatusCode) -> None:
    proxy.refuse("ServerLive", code)
    with InferenceClient(proxy.address, retry=FAST) as client, pytest.raises(InferenceServerError) as refused:
        client.server_live()
    assert refused.value.code == code
    assert proxy.attempts["ServerLive"] == [0]


def _stream_infer(channel: grpc.Channel) -> None:
    request = grpc_service_pb2.ModelInferRequest(model_name="tiny")
    for _ in grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
        iter([request]), timeout=10
    ):
        pass


def _load(channel: grpc.Channel) -> None:
    # An unknown model: were it sent on, the real server would change nothing.
    request = grpc_service_pb2.RepositoryModelLoadRequest(model_name="no-such-model")
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(request, timeout=10)


def _unload(channel: grpc.Channel) -> None:
    request = grpc_service_pb2.RepositoryModelUnloadRequest(model_name="no-such-model")
    grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(request, timeout=10)


def _watch(channel: grpc.Channel) -> None:
    for _ in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10):
        pass


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("ModelStreamInfer", _stream_infer),
        ("RepositoryModelLoad", _load),
        ("RepositoryModelUnload", _unload),
        ("Watch", _watch),
    ],
)
def test_streams_and_repository_changes_are_not_retried(
    proxy: RefusingProxy, channel: grpc.Channel, method: str, call: Callable[[grpc.Channel], None]
) -> None:
    proxy.refuse(method)
    with pytest.raises(grpc.RpcError) as refused:
        call(channel)
    assert refused.value.code() == UNAVAILABLE
    assert proxy.attempts[method] == [0]


@pytest.mark.parametrize("max_attempts", [2, 5])
def test_attempts_stop_at_max_attempts(proxy: RefusingProxy, max_attempts: int) -> None:
    proxy.refuse("ServerLive", times=10)
    policy = RetryPolicy(max_attempts=max_attempts, initial_backoff=0.01, max_backoff=0.02)
    with (
        InferenceClient(proxy.address, retry=policy) as client,
        pytest.raises(InferenceServerError) as refused,
    ):
        client.server_live()
    assert refused.value.code == UNAVAILABLE and not refused.value.local
    assert refused.value.message == "refused by the test proxy (UNAVAILABLE)"
    assert proxy.attempts["ServerLive"] == list(range(max_attempts))


def test_the_deadline_bounds_all_attempts_together(proxy: RefusingProxy) -> None:
    # Each refusal takes 0.2 s: five attempts would take 1 s, the call has 0.5 s for all of them.
    proxy.refuse("ServerLive", times=10, delay=0.2)
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.01)
    with (
        InferenceClient(proxy.address, retry=policy) as client,
        pytest.raises(InferenceServerError) as refused,
    ):
        started = time.perf_counter()
        client.server_live(timeout=0.5)
    elapsed = time.perf_counter() - started
    assert refused.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 0.9
    assert 2 <= len(proxy.attempts["ServerLive"]) <= 3


def test_requests_bigger_than_grpcs_default_retry_buffer_are_retried(proxy: RefusingProxy) -> None:
    # Noise does not compress: about 1 MiB of PNG, four times gRPC's default 256 KiB buffer.
    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    assert len(convert.encode_image(noise)) > 4 * 256 * 1024
    proxy.refuse("Classify")
    with InferenceClient(proxy.address, retry=FAST) as client:
        [result] = client.classify(noise, model="tiny")
    assert result.model == "tiny"
    assert proxy.attempts["Classify"] == [0, 1]


def test_grpc_does_not_tell_the_client_how_many_attempts_a_call_took(
    proxy: RefusingProxy, channel: grpc.Channel
) -> None:
    """Why the clients keep no retry counter (docs/clients.md, "Retries"): the answer does not say."""
    proxy.refuse("ServerLive")
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    _, call = stub.ServerLive.with_call(grpc_service_pb2.ServerLiveRequest(), timeout=10)
    assert proxy.attempts["ServerLive"] == [0, 1]
    seen = {key for key, _ in [*call.initial_metadata(), *call.trailing_metadata()]}
    assert "grpc-previous-rpc-attempts" not in seen


async def test_the_async_client_retries_the_same_way(proxy: RefusingProxy) -> None:
    proxy.refuse("ModelInfer", times=2)
    async with AsyncInferenceClient(proxy.address, retry=FAST) as client:
        logits = (await client.infer("tiny", BATCH))["logits"]
    np.testing.assert_allclose(logits, tiny_logits(BATCH), rtol=1e-5, atol=1e-5)
    assert proxy.attempts["ModelInfer"] == [0, 1, 2]

    proxy.refuse("Classify", times=10)
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
    async with AsyncInferenceClient(proxy.address, retry=policy) as client:
        with pytest.raises(InferenceServerError) as refused:
            await client.classify(np.zeros((4, 4), np.uint8), model="tiny")
    assert refused.value.code == UNAVAILABLE
    assert proxy.attempts["Classify"] == [0, 1]

    proxy.refuse("ServerLive", grpc.StatusCode.NOT_FOUND)
    async with AsyncInferenceClient(proxy.address, retry=FAST) as client:
        with pytest.raises(InferenceServerError):
            await client.server_live()
    assert proxy.attempts["ServerLive"] == [0]


async def test_the_default_async_client_does_not_retry(proxy: RefusingProxy) -> None:
    proxy.refuse("ServerLive")
    async with AsyncInferenceClient(proxy.address) as client:
        with pytest.raises(InferenceServerError) as refused:
            await client.server_live()
    assert refused.value.code == UNAVAILABLE
    assert proxy.attempts["ServerLive"] == [0]


# A real server that is shutting down -------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A real server of its own (address, server), whose shutting-down state a test may turn on and off."""
    from server import Settings

    root = tmp_path_factory.mktemp("replica")
    publish_tiny(root / "repository", root, "tiny", BatchingConfig(max_batch_size=8, max_queue_delay_us=100))
    settings = Settings(
        repository=root / "repository",
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=0,
        device="cpu",
        intra_op_threads=1,
        log_level="WARNING",
    )
    with server_in_thread(settings) as running:
        yield running


def test_a_call_to_a_restarting_server_succeeds_once_it_is_back(replica: tuple[str, Any]) -> None:
    address, instance = replica
    manager = instance.manager
    # Attempt 1 at once, refused; the server is back at 0.2 s; the retry goes out at 0.4-0.6 s.
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.5, max_backoff=0.5)
    back = threading.Timer(0.2, setattr, (manager, "shutting_down", False))
    with InferenceClient(address, retry=policy) as client, InferenceClient(address) as plain:
        client.infer("tiny", BATCH)  # connected, metadata cached: what follows is one ModelInfer each
        plain.infer("tiny", BATCH)
        manager.shutting_down = True
        try:
            with pytest.raises(InferenceServerError) as refused:
                plain.infer("tiny", BATCH)
            started = time.perf_counter()
            back.start()
            logits = client.infer("tiny", BATCH)["logits"]
            elapsed = time.perf_counter() - started
        finally:
            back.cancel()
            manager.shutting_down = False
    assert refused.value.code == UNAVAILABLE and refused.value.message == "server is shutting down"
    np.testing.assert_allclose(logits, tiny_logits(BATCH), rtol=1e-5, atol=1e-5)
    assert elapsed >= 0.3  # the answer came from the retry, after its backoff


# The command lines --------------------------------------------------------------------------------


@pytest.mark.parametrize("parser", [classify_cli.get_args_parser, bench_cli.get_args_parser])
@pytest.mark.parametrize("value", ["-1", "5", "two"])
def test_bad_retries_flags_are_refused(
    parser: Callable[[], Any], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["--model", "tiny", "image.png", "--retries", value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --retries: {value!r} is not a number of retries; expected 0 (off) to 4" in error


def test_the_bench_refuses_retries_on_streams(capsys: pytest.CaptureFixture[str]) -> None:
    parser = bench_cli.get_args_parser()
    args = parser.parse_args(["--model", "tiny", "--stream", "--retries", "1"])
    with pytest.raises(SystemExit):
        bench_cli.config_from_args(args, parser)
    assert "--retries is 1; --stream sends on streams, which are never retried" in capsys.readouterr().err


def test_classify_cli_retries(
    proxy: RefusingProxy, image_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(image_files["white"])
    proxy.refuse("Classify", times=2)
    assert classify_cli.main(["--server", proxy.address, "--model", "tiny", image, "--retries", "2"]) == 0
    assert "bright" in capsys.readouterr().out
    assert proxy.attempts["Classify"] == [0, 1, 2]

    proxy.refuse("Classify")
    assert classify_cli.main(["--server", proxy.address, "--model", "tiny", image]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: refused by the test proxy")
    assert proxy.attempts["Classify"] == [0, 1, 2, 0]


def test_bench_cli_retries(proxy: RefusingProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    flags = ["--server", proxy.address, "--model", "tiny", "--concurrency", "1", "--requests", "4"]
    flags += ["--warmup", "0", "--no-progress", "--json", str(out)]

    proxy.refuse("ModelInfer")
    assert bench_cli.main([*flags, "--retries", "1"]) == 0
    [level] = json.loads(out.read_text())["levels"]
    assert (level["sent"], level["succeeded"], level["failed"]) == (4, 4, {})
    assert json.loads(out.read_text())["config"]["retries"] == 1
    assert proxy.attempts["ModelInfer"] == [0, 1, 0, 0, 0]

    proxy.reset()
    proxy.refuse("ModelInfer")
    assert bench_cli.main(flags) == 0
    [level] = json.loads(out.read_text())["levels"]
    assert (level["sent"], level["succeeded"], level["failed"]) == (4, 3, {"UNAVAILABLE": 1})
    assert proxy.attempts["ModelInfer"] == [0, 0, 0, 0]
    capsys.readouterr()
