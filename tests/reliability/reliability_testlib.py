# ruff: noqa: E501  (the BAD_INPUTS table is kept one case per line)
"""Helpers for the reliability suite, shared with ``scripts/reliability.py``.

Real servers (in a thread, or as a ``python -m server`` process), tiny ONNX models,
certificates made on the spot, the table of malformed requests, and the soak and
overload drivers. The script runs the same drivers for longer.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import io
import ipaddress
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
from grpc import aio
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "server"))

from server_testlib import RGB_LABELS, TinyModel, publish_tiny  # noqa: E402

import modelrepo  # noqa: E402
from modelrepo import BatchingConfig, ModelConfig, Preprocessing, TensorSpec  # noqa: E402
from protocol import grpc_service_pb2 as pb  # noqa: E402
from protocol import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from protocol import image_classification_pb2 as img_pb  # noqa: E402
from protocol import image_classification_pb2_grpc as img_grpc  # noqa: E402
from server import InferenceServer, Settings, create_server  # noqa: E402

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
CANCELLED = grpc.StatusCode.CANCELLED
#: Statuses that are an explicit, documented answer; UNKNOWN and INTERNAL never are.
CLEAN_CODES = frozenset(
    {
        OK,
        INVALID,
        NOT_FOUND,
        EXHAUSTED,
        UNAVAILABLE,
        DEADLINE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


# -- models --------------------------------------------------------------------------------------


def publish_fleet(repo: Path, batching: BatchingConfig | None = None) -> dict[str, TinyModel]:
    """Three small models of different shapes: the 'several models' of the soak and fault tests."""
    b = batching or BatchingConfig(max_batch_size=16, max_queue_delay_us=1000, max_queue_size=256)
    return {
        "tiny": publish_tiny(repo, "tiny", seed=1, batching=b),
        "tinyrgb": publish_tiny(repo, "tinyrgb", channels=3, labels=RGB_LABELS, seed=2, batching=b),
        "wide": publish_tiny(repo, "wide", size=16, seed=3, batching=b),
    }


def publish_slow(
    repo: Path, name: str, *, layers: int, batching: BatchingConfig, channels: int = 64, size: int = 32
) -> ModelConfig:
    """A convolution stack slow enough (milliseconds per sample) that clients can outrun it."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = []
    previous, width = "input", 3
    for i in range(layers):
        weight = rng.standard_normal((channels, width, 3, 3)).astype(np.float32) * 0.1
        inits.append(numpy_helper.from_array(weight, f"W{i}"))
        nodes.append(helper.make_node("Conv", [previous, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Tanh", [f"c{i}"], [f"h{i}"]))
        previous, width = f"h{i}", channels
    # Average over space only: logits [N, channels].
    nodes.append(helper.make_node("ReduceMean", [previous, "axes"], ["logits"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", channels])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    config = ModelConfig(
        name=name,
        input=TensorSpec("input", "FP32", (3, size, size)),
        output=TensorSpec("logits", "FP32", (channels,)),
        labels=tuple(str(i) for i in range(channels)),
        preprocessing=Preprocessing(size, size, 3, (0.5,) * 3, (0.25,) * 3),
        batching=batching,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        modelrepo.publish(repo, config, path, {"source": "test"})
    return config


class Reference:
    """ONNX Runtime run directly on a request's own input, per model version (no server involved)."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._sessions: dict[tuple[str, str], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, version: str, batch: np.ndarray) -> np.ndarray:
        key = (name, version)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                path = self.repo / name / version / "model.onnx"
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                self._sessions[key] = session
        out: np.ndarray = session.run(None, {"input": batch})[0]
        return out


def infer_request(
    model: str, batch: np.ndarray, *, raw: bool = True, version: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    if raw:
        request.raw_input_contents.append(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
    else:
        tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    return request


def output_of(response: pb.ModelInferResponse) -> np.ndarray:
    tensor = response.outputs[0]
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(tuple(tensor.shape))


# -- servers --------------------------------------------------------------------------------------


def settings_for(repo: Path, **overrides: Any) -> Settings:
    base = Settings(
        repository=repo,
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=-1,
        device="cpu",
        grace_period=5.0,
        intra_op_threads=1,
    )
    return replace(base, **overrides)


class ServerThread:
    """A real server on its own event loop in a thread, for synchronous callers (hypothesis, scripts)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self._thread.start()
        self.server: InferenceServer
        self.server, self.port = self.run(create_server(settings))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 0) -> None:
        try:
            self.run(self.server.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


class ServerProcess:
    """``python -m server`` as a child process; stderr is collected, the port read from the log."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--http-port",
                "0",
                "--metrics-port",
                "-1",
                *args,
            ],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        self.port = 0
        #: The Prometheus port when the server was started with ``--metrics-port 0`` (or another).
        self.metrics_port: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.port:
            self.kill()
            raise RuntimeError("server did not become ready:\n" + self.log)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            metrics = re.search(r"\(metrics on (\d+);", line)
            if metrics:
                self.metrics_port = int(metrics.group(1))
            match = re.search(r"ready on port (\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        return _proc_status_bytes(self.pid, "VmRSS")

    def peak_rss_bytes(self) -> int:
        """The highest resident memory the server process ever had (the kernel's ``VmHWM``).

        Unlike sampling :meth:`rss_bytes`, nothing between two samples can escape it.
        """
        return _proc_status_bytes(self.pid, "VmHWM")

    def scrape(self, timeout: float = 10) -> MetricsScrape:
        """The server's ``/metrics`` now (the process must run with ``--metrics-port``)."""
        if self.metrics_port is None:
            raise RuntimeError("the server was started without --metrics-port; its log:\n" + self.log)
        return scrape_metrics(self.metrics_port, timeout=timeout)

    def final_statistics(self) -> dict[str, FinalStatistics]:
        """The per-model ``final statistics`` lines the server logged when it stopped."""
        return final_statistics(self.log)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _proc_status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


# -- server-side accounting ------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsScrape:
    """One reading of a server's ``/metrics``, parsed by ``prometheus_client.parser``."""

    text: str
    #: (sample name, labels, value) of every sample, e.g. ("cnnserve_request_success_total", ...).
    samples: tuple[tuple[str, dict[str, str], float], ...]

    def value(self, family: str, **labels: str) -> float:
        """Sum of ``family``'s samples whose labels include ``labels``; 0 when there are none.

        For a counter the sample is ``<family>_total`` (``_created`` is left out).
        """
        names = {family, family + "_total"}
        return sum(
            value
            for name, sample_labels, value in self.samples
            if name in names and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def failures(self, model: str) -> dict[str, int]:
        """``cnnserve_request_failure`` of ``model`` by reason (only reasons with a count)."""
        found: Counter[str] = Counter()
        for name, labels, value in self.samples:
            if name == "cnnserve_request_failure_total" and labels.get("model") == model and value:
                found[labels["reason"]] += int(value)
        return dict(found)

    def model(self, model: str) -> ModelCounters:
        return ModelCounters(
            success=int(self.value("cnnserve_request_success", model=model)),
            failures=self.failures(model),
            samples=int(self.value("cnnserve_inference_count", model=model)),
            batches=int(self.value("cnnserve_execution_count", model=model)),
        )


@dataclass(frozen=True)
class ModelCounters:
    """What one model's Prometheus counters say: requests answered and failed, samples and batches computed."""

    success: int
    failures: dict[str, int]
    samples: int
    batches: int

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def parse_metrics(text: str) -> MetricsScrape:
    from prometheus_client.parser import text_string_to_metric_families

    samples = tuple(
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
    return MetricsScrape(text, samples)


def scrape_metrics(port: int, host: str = "127.0.0.1", timeout: float = 10) -> MetricsScrape:
    """GET ``http://host:port/metrics`` and parse it (blocking: call it in a thread from async code)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as answer:
        return parse_metrics(answer.read().decode())


@dataclass(frozen=True)
class FinalStatistics:
    """One model's ``final statistics`` line, logged by the server as it stops (server/app.py)."""

    model: str
    version: int
    answered: int
    failed: int
    samples: int
    batches: int


_FINAL_STATISTICS = re.compile(
    r"final statistics: model (?P<model>\S+) version (?P<version>\d+): (?P<answered>\d+) requests answered, "
    r"(?P<failed>\d+) failed, (?P<samples>\d+) samples computed in (?P<batches>\d+) batches"
)


def final_statistics(log: str) -> dict[str, FinalStatistics]:
    """Every ``final statistics`` line in a server log, by model name."""
    found = {}
    for match in _FINAL_STATISTICS.finditer(log):
        g = match.groupdict()
        found[g["model"]] = FinalStatistics(
            g["model"],
            int(g["version"]),
            int(g["answered"]),
            int(g["failed"]),
            int(g["samples"]),
            int(g["batches"]),
        )
    return found


def repo_args(repo: Path, *extra: str) -> list[str]:
    return ["--repository", str(repo), "--device", "cpu", "--intra-op-threads", "1", *extra]


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost / 127.0.0.1, a client certificate, and a rogue client."""

    directory: Path
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    rogue_cert: bytes
    rogue_key: bytes

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.pem"


def make_pki(directory: Path) -> Pki:
    """Generate the certificates with ``cryptography`` (EC P-256: fast to make)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca_cert(cn: str, k: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(k, hashes.SHA256())
        )

    def leaf(
        cn: str, k: ec.EllipticCurvePrivateKey, issuer: x509.Certificate, issuer_key: Any, server: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    def pem_cert(c: x509.Certificate) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key, rogue_ca_key = key(), key()
    ca = ca_cert("cnnserve test CA", ca_key)
    rogue_ca = ca_cert("rogue CA", rogue_ca_key)
    server_key, client_key, rogue_key = key(), key(), key()
    server = leaf("localhost", server_key, ca, ca_key, server=True)
    client = leaf("client", client_key, ca, ca_key, server=False)
    rogue = leaf("client", rogue_key, rogue_ca, rogue_ca_key, server=False)
    pki = Pki(
        directory,
        pem_cert(ca),
        pem_cert(server),
        pem_key(server_key),
        pem_cert(client),
        pem_key(client_key),
        pem_cert(rogue),
        pem_key(rogue_key),
    )
    directory.mkdir(parents=True, exist_ok=True)
    for attr in ("ca", "server_cert", "server_key", "client_cert", "client_key", "rogue_cert", "rogue_key"):
        pki.path(attr).write_bytes(getattr(pki, attr))
    return pki


#: The server certificate names localhost; tests connect to 127.0.0.1 and check that name.
TLS_OPTIONS = (("grpc.ssl_target_name_override", "localhost"),)


# -- malformed requests ----------------------------------------------------------------------------


def png_bytes(size: tuple[int, int] = (8, 8), mode: str = "L", fmt: str = "PNG", value: float = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height``, and no pixels at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _infer(
    *,
    model: str = "tiny",
    version: str = "",
    datatype: str = "FP32",
    shape: Sequence[int] = (1, 1, 8, 8),
    raw: bytes | None = None,
    typed: Sequence[float] | None = None,
    name: str = "input",
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    if typed is not None:
        tensor.contents.fp32_contents.extend(typed)
    if raw is not None:
        request.raw_input_contents.append(raw)
    elif typed is None:
        count = int(np.prod(shape)) if all(0 <= d < 1 << 20 for d in shape) else 0
        request.raw_input_contents.append(np.ones(count, np.float32).tobytes())
    return request


SAMPLE = np.ones(64, np.float32).tobytes()  # one 1x8x8 FP32 sample: 256 bytes


def _with(
    request: pb.ModelInferRequest, change: Callable[[pb.ModelInferRequest], None]
) -> pb.ModelInferRequest:
    change(request)
    return request


def _add_output(name: str, classification: Any = None) -> Callable[[pb.ModelInferRequest], None]:
    def change(request: pb.ModelInferRequest) -> None:
        output = request.outputs.add(name=name)
        if isinstance(classification, str):
            output.parameters["classification"].string_param = classification
        elif classification is not None:
            output.parameters["classification"].int64_param = classification

    return change


def _unknown_parameters(request: pb.ModelInferRequest) -> None:
    request.parameters["priority_x"].string_param = "high"
    request.inputs[0].parameters["foo"].bool_param = True
    request.outputs.add(name="logits").parameters["bar"].int64_param = 3


def _load(name: str, version: Any = None) -> pb.RepositoryModelLoadRequest:
    request = pb.RepositoryModelLoadRequest(model_name=name)
    if isinstance(version, str):
        request.parameters["version"].string_param = version
    elif version is not None:
        request.parameters["version"].int64_param = version
    return request


@dataclass(frozen=True)
class BadInput:
    """One malformed (or borderline) request, the status it must get and text its message must hold."""

    id: str
    what: str
    rpc: str  # ModelInfer | Classify | RepositoryModelLoad | RepositoryModelUnload
    make: Callable[[], Any]
    code: grpc.StatusCode
    expect: str


def _classify(images: Sequence[bytes], model: str = "tiny") -> img_pb.ClassifyRequest:
    return img_pb.ClassifyRequest(model_name=model, images=list(images), top_k=2)


#: The server these cases run against: models 'tiny' (FP32 [N,1,8,8], max batch 16) and
#: 'tinyrgb'; --max-message-bytes 1 MiB; --max-image-pixels 1000000; --allow-model-control.
BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput("datatype", "wrong datatype (INT32 for an FP32 input)", "ModelInfer",
             lambda: _infer(datatype="INT32"), INVALID, "has datatype 'INT32'; model 'tiny' expects FP32"),
    BadInput("datatype-unknown", "datatype that does not exist", "ModelInfer",
             lambda: _infer(datatype="FP8"), INVALID, "has datatype 'FP8'"),
    BadInput("shape", "wrong sample shape", "ModelInfer",
             lambda: _infer(shape=(1, 3, 8, 8)), INVALID, "has shape [1,3,8,8]; model 'tiny' expects [N,1,8,8]"),
    BadInput("rank", "shape without the batch dimension", "ModelInfer",
             lambda: _infer(shape=(1, 8, 8)), INVALID, "has shape [1,8,8]"),
    BadInput("negative-dim", "negative batch dimension", "ModelInfer",
             lambda: _infer(shape=(-1, 1, 8, 8), raw=SAMPLE), INVALID, "has shape [-1,1,8,8]"),
    BadInput("empty-batch", "empty batch (N = 0)", "ModelInfer",
             lambda: _infer(shape=(0, 1, 8, 8), raw=b""), INVALID, "has shape [0,1,8,8]"),
    BadInput("batch-above-max", "batch above the model's maximum (17 > 16)", "ModelInfer",
             lambda: _infer(shape=(17, 1, 8, 8)), INVALID, "has batch size 17; model 'tiny' accepts at most 16"),
    BadInput("batch-overflow", "batch size whose element count overflows 64 bits (2^58)", "ModelInfer",
             lambda: _infer(shape=(1 << 58, 1, 8, 8), raw=b""), INVALID, "has batch size 288230376151711744"),
    BadInput("bytes-short", "raw byte count below the shape's", "ModelInfer",
             lambda: _infer(shape=(2, 1, 8, 8), raw=SAMPLE), INVALID,
             "has 256 bytes of raw data; shape [2,1,8,8] of FP32 needs 512"),
    BadInput("bytes-odd", "raw byte count not a multiple of the element size", "ModelInfer",
             lambda: _infer(raw=SAMPLE + b"\0"), INVALID, "has 257 bytes of raw data"),
    BadInput("typed-count", "typed contents with the wrong number of values", "ModelInfer",
             lambda: _infer(typed=[1.0] * 10), INVALID, "has 10 values in contents.fp32_contents"),
    BadInput("raw-and-typed", "both raw_input_contents and typed contents", "ModelInfer",
             lambda: _infer(raw=SAMPLE, typed=[1.0] * 64), INVALID, "has both raw_input_contents and contents"),
    BadInput("raw-count", "two raw_input_contents for one input", "ModelInfer",
             lambda: _with(_infer(), lambda r: r.raw_input_contents.append(SAMPLE)), INVALID,
             "request has 2 raw_input_contents for 1 inputs"),
    BadInput("no-inputs", "no input tensor", "ModelInfer",
             lambda: pb.ModelInferRequest(model_name="tiny"), INVALID, "the request has 0: []"),
    BadInput("input-name", "unknown input name", "ModelInfer",
             lambda: _infer(name="image"), INVALID, "input 'image' is not an input of model 'tiny'"),
    BadInput("output-name", "unknown requested output", "ModelInfer",
             lambda: _with(_infer(), _add_output("probs")), INVALID, "output 'probs' is not an output"),
    BadInput("classification-text", "classification parameter that is not a number", "ModelInfer",
             lambda: _with(_infer(), _add_output("logits", "ten")), INVALID, "classification parameter 'ten'"),
    BadInput("classification-unicode-digit", "classification parameter '²' (a Unicode digit)", "ModelInfer",
             lambda: _with(_infer(), _add_output("logits", "²")), INVALID, "classification parameter '²'"),
    BadInput("classification-zero", "classification parameter 0", "ModelInfer",
             lambda: _with(_infer(), _add_output("logits", 0)), INVALID, "classification parameter 0"),
    BadInput("unknown-parameters", "unknown request, input and output parameters (ignored)", "ModelInfer",
             lambda: _with(_infer(), _unknown_parameters), OK, ""),
    BadInput("nan-inf", "NaN and ±infinity in the input (computed like any float)", "ModelInfer",
             lambda: _infer(raw=np.array([np.nan, np.inf, -np.inf] + [0.0] * 61, np.float32).tobytes()), OK, ""),
    BadInput("too-large", "message above --max-message-bytes (2 MiB > 1 MiB)", "ModelInfer",
             lambda: _infer(shape=(16, 1, 8, 8), raw=b"\0" * (2 << 20)), EXHAUSTED, "Received message larger than max"),
    BadInput("model-unknown", "unknown model", "ModelInfer",
             lambda: _infer(model="nope"), NOT_FOUND, "unknown model 'nope'"),
    BadInput("model-dotdot", "model name '../tiny'", "ModelInfer",
             lambda: _infer(model="../tiny"), NOT_FOUND, "unknown model '../tiny'"),
    BadInput("model-abs", "model name '/etc/passwd'", "ModelInfer",
             lambda: _infer(model="/etc/passwd"), NOT_FOUND, "unknown model '/etc/passwd'"),
    BadInput("version-leading-zero", "version '01'", "ModelInfer",
             lambda: _infer(version="01"), NOT_FOUND, "version '01' is not loaded"),
    BadInput("version-path", "version '1/../../x'", "ModelInfer",
             lambda: _infer(version="1/../../x"), NOT_FOUND, "version '1/../../x' is not loaded"),
    BadInput("image-empty", "empty image", "Classify",
             lambda: _classify([b""]), INVALID, "image 0 is empty"),
    BadInput("image-garbage", "bytes that are no image", "Classify",
             lambda: _classify([b"definitely not an image"]), INVALID,
             "image 0 (23 bytes) is not a recognised image format"),
    BadInput("image-truncated", "PNG cut in half", "Classify",
             lambda: _classify([png_bytes((64, 64))[:60]]), INVALID, "image 0 could not be decoded"),
    BadInput("image-bomb", "PNG header declaring 12000x12000 pixels (decompression bomb)", "Classify",
             lambda: _classify([png_header_only(12000, 12000)]), INVALID,
             "image 0 is 12000x12000 (144000000 pixels); the server accepts at most 1000000"),
    BadInput("image-bomb-pillow", "PNG header declaring 65535x65535 pixels", "Classify",
             lambda: _classify([png_header_only(65535, 65535)]), INVALID,
             "image 0 has more pixels than the server accepts (at most 1000000)"),
    BadInput("image-none", "no images", "Classify",
             lambda: _classify([]), INVALID, "the request holds no images"),
    BadInput("image-too-many", "more images than the maximum batch (17 > 16)", "Classify",
             lambda: _classify([png_bytes()] * 17), INVALID, "the request holds 17 images"),
    BadInput("image-second-bad", "one good and one undecodable image", "Classify",
             lambda: _classify([png_bytes(), b"GIF89a broken"]), INVALID, "image 1 "),
    BadInput("image-16bit", "16-bit grayscale PNG (converted)", "Classify",
             lambda: _classify([png_bytes(mode="I;16")]), OK, ""),
    BadInput("image-cmyk", "CMYK JPEG for a grayscale model (converted)", "Classify",
             lambda: _classify([png_bytes((9, 7), mode="CMYK", fmt="JPEG")]), OK, ""),
    BadInput("image-float-tiff", "32-bit float TIFF (mode F), values 0..1", "Classify",
             lambda: _classify([png_bytes(mode="F", fmt="TIFF", value=0.5)], model="tinyrgb"), OK, ""),
    BadInput("image-float-tiff-range", "32-bit float TIFF (mode F), values 128", "Classify",
             lambda: _classify([png_bytes(mode="F", fmt="TIFF")], model="tinyrgb"), INVALID,
             "image 0 has float pixels from 128 to 128; expected 0.0..1.0"),
    BadInput("image-eps", "EPS (PostScript: would run Ghostscript)", "Classify",
             lambda: _classify([b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"]), INVALID,
             "image 0 is in EPS format, which the server does not decode"),
    BadInput("image-model-dotdot", "image request for model '../tiny'", "Classify",
             lambda: _classify([png_bytes()], model="../tiny"), NOT_FOUND, "unknown model '../tiny'"),
    *(
        BadInput(f"load-name-{i}", f"load model name {name!r}", "RepositoryModelLoad",
                 functools.partial(_load, name), INVALID, f"model name {name!r} is not valid")
        for i, name in enumerate(
            ["../tiny", "/etc/passwd", "..", "a/b", "%2e%2e", "tiny\x00", "x" * 200, "", ".hidden", "a\\b"]
        )
    ),
    *(
        BadInput(f"load-version-{i}", f"load version parameter {version!r}", "RepositoryModelLoad",
                 functools.partial(_load, "tiny", version), INVALID,
                 f"load parameter version is {version!r}")
        for i, version in enumerate(["-1", "1/../../x", "01", "²", "1.0", "", -1, 0])
    ),
    BadInput("unload-dotdot", "unload model '../tiny'", "RepositoryModelUnload",
             lambda: pb.RepositoryModelUnloadRequest(model_name="../tiny"), NOT_FOUND,
             "unknown model '../tiny'"),
)  # fmt: skip


def bad_input_settings(repo: Path) -> Settings:
    return settings_for(repo, max_message_bytes=1 << 20, max_image_pixels=1_000_000, allow_model_control=True)


def call_case_sync(channel: grpc.Channel, case: BadInput, timeout: float = 30) -> tuple[grpc.StatusCode, str]:
    """Send one case on a synchronous channel; return the status code and details."""
    infer = pb_grpc.GRPCInferenceServiceStub(channel)
    images = img_grpc.ImageClassificationStub(channel)
    method = getattr(images if case.rpc == "Classify" else infer, case.rpc)
    try:
        method(case.make(), timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return OK, ""


# -- soak ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Every request accounted for: sent = correct + rejected (by status) + wrong + unexplained."""

    sent: int = 0
    correct: int = 0
    wrong: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    unexplained: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    latencies: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    #: Per model: OK answers (correct or wrong) and the samples they held: what the server
    #: must have counted as answered and computed for that model.
    answered: Counter[str] = field(default_factory=Counter)
    answered_samples: Counter[str] = field(default_factory=Counter)
    #: Per model: requests refused with each status, e.g. ``refused["tiny"]["UNAVAILABLE"]``.
    refused: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def accounted(self) -> bool:
        return self.sent == self.correct + self.wrong + sum(self.rejected.values()) + sum(
            self.unexplained.values()
        )

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


def stream_error_code(message: str) -> grpc.StatusCode:
    """The status a ModelStreamInfer ``error_message`` stands for (the stream carries text only)."""
    if "queue is full" in message or "(--max-queue-bytes)" in message:
        return EXHAUSTED
    if re.search(r" is (UNAVAILABLE|UNLOADING|LOADING)\b|shutting down|not accepting requests", message):
        return UNAVAILABLE
    return grpc.StatusCode.UNKNOWN


async def soak(
    address: str,
    reference: Reference,
    models: dict[str, tuple[int, ...]],
    *,
    duration: float,
    clients: int,
    max_batch: int = 8,
    allowed: frozenset[grpc.StatusCode] = frozenset({EXHAUSTED}),
    seed: int = 0,
    credentials: grpc.ChannelCredentials | None = None,
) -> Tally:
    """``clients`` concurrent callers, each on its own channel, for ``duration`` seconds.

    Each request picks a model, a batch size (half single, half batched), raw or typed
    contents, unary or stream; each answer is compared with ``reference`` on the same input.
    Statuses in ``allowed`` count as explicit rejections, everything else as unexplained.
    """
    tally = Tally()
    stop_at = time.monotonic() + duration
    names = sorted(models)

    async def check(name: str, batch: np.ndarray, response: pb.ModelInferResponse, started: float) -> None:
        tally.latencies.append(time.monotonic() - started)
        tally.answered[name] += 1
        tally.answered_samples[name] += len(batch)
        got = output_of(response)
        want = await asyncio.to_thread(reference, name, response.model_version, batch)
        if got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-4):
            tally.correct += 1
            tally.samples += len(batch)
        else:
            tally.wrong += 1
            tally.note(f"wrong answer from {name} v{response.model_version}")

    def failed(name: str, code: grpc.StatusCode, details: str) -> None:
        tally.refused.setdefault(name, Counter())[code.name] += 1
        if code in allowed:
            tally.rejected[code.name] += 1
        else:
            tally.unexplained[code.name] += 1
            tally.note(f"{code.name}: {details}")

    async def client(index: int) -> None:
        rng = np.random.default_rng(seed * 1000 + index)
        if credentials is None:
            channel = aio.insecure_channel(address)
        else:
            channel = aio.secure_channel(address, credentials, options=TLS_OPTIONS)
        async with channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < stop_at:
                name = names[int(rng.integers(len(names)))]
                size = 1 if rng.random() < 0.5 else int(rng.integers(2, max_batch + 1))
                batch = rng.standard_normal((size, *models[name])).astype(np.float32)
                request = infer_request(name, batch, raw=bool(rng.random() < 0.8))
                request.id = f"{index}-{tally.sent}"
                tally.sent += 1
                started = time.monotonic()
                if rng.random() < 0.15:
                    # A short stream of this and two more requests on the same model.
                    batches = [batch] + [
                        rng.standard_normal((1, *models[name])).astype(np.float32) for _ in range(2)
                    ]
                    tally.sent += 2
                    requests = [request] + [infer_request(name, b) for b in batches[1:]]
                    for i, r in enumerate(requests):
                        r.id = str(i)
                    # Answers that arrived before the stream ended with an error count as answers:
                    # the server computed them (a shutdown answers what it admitted, then ends the
                    # stream with UNAVAILABLE); only the requests left without an answer failed.
                    answers = []
                    error: grpc.aio.AioRpcError | None = None
                    try:
                        async for answer in stub.ModelStreamInfer(iter(requests)):
                            answers.append(answer)
                    except grpc.aio.AioRpcError as exc:
                        error = exc
                    for answer in answers:
                        if answer.error_message:
                            code = stream_error_code(answer.error_message)
                            failed(name, code, "stream: " + answer.error_message)
                        else:
                            await check(
                                name, batches[int(answer.infer_response.id)], answer.infer_response, started
                            )
                    missing = len(requests) - len(answers)
                    for _ in range(missing):
                        if error is not None:
                            failed(name, error.code(), "stream call: " + (error.details() or ""))
                        else:
                            failed(name, grpc.StatusCode.UNKNOWN, "stream answer missing")
                    continue
                try:
                    response = await stub.ModelInfer(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    failed(name, exc.code(), exc.details() or "")
                    continue
                await check(name, batch, response, started)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return tally


# -- overload ------------------------------------------------------------------------------------


@dataclass
class OverloadReport:
    offered: int = 0
    accepted: int = 0
    rejected: int = 0
    other: Counter[str] = field(default_factory=Counter)
    accepted_latency: list[float] = field(default_factory=list)
    rejected_latency: list[float] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    recovery_ok: int = 0
    recovery_total: int = 0
    recovery_latency: list[float] = field(default_factory=list)
    baseline_latency: list[float] = field(default_factory=list)


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def overload(
    address: str,
    model: str,
    sample_shape: tuple[int, ...],
    *,
    duration: float,
    clients: int,
    rss: Callable[[], int] | None = None,
    recovery_requests: int = 20,
) -> OverloadReport:
    """``clients`` callers sending back-to-back (no pause) for ``duration`` s, then a quiet check."""
    report = OverloadReport()
    x = np.ones((1, *sample_shape), np.float32)
    async with aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(5):
            t = time.monotonic()
            await stub.ModelInfer(infer_request(model, x), timeout=30)
            report.baseline_latency.append(time.monotonic() - t)
        report.rss_before = report.rss_peak = rss() if rss else 0
        stop_at = time.monotonic() + duration

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                if rss:
                    report.rss_peak = max(report.rss_peak, rss())
                await asyncio.sleep(0.2)

        async def client() -> None:
            while time.monotonic() < stop_at:
                report.offered += 1
                t = time.monotonic()
                try:
                    await stub.ModelInfer(infer_request(model, x), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == EXHAUSTED:
                        report.rejected += 1
                        report.rejected_latency.append(time.monotonic() - t)
                        await asyncio.sleep(0)  # a fresh turn of the loop, as a retrying client would have
                    else:
                        report.other[exc.code().name] += 1
                    continue
                report.accepted += 1
                report.accepted_latency.append(time.monotonic() - t)

        await asyncio.gather(sampler(), *(client() for _ in range(clients)))
        await asyncio.sleep(0.5)
        for _ in range(recovery_requests):
            report.recovery_total += 1
            t = time.monotonic()
            try:
                await stub.ModelInfer(infer_request(model, x), timeout=30)
            except grpc.aio.AioRpcError:
                continue
            report.recovery_ok += 1
            report.recovery_latency.append(time.monotonic() - t)
        report.rss_after = rss() if rss else 0
    return report


def random_images(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        png_bytes((rng.randint(1, 40), rng.randint(1, 40)), rng.choice(["L", "RGB"])) for _ in range(count)
    ]


# -- overload with large requests: server memory ----------------------------------------------------

MiB = 2**20
#: The large-input model: 3x224x224 FP32, 602,112 bytes a sample; requests of LARGE_BATCH samples.
LARGE_SHAPE = (3, 224, 224)
LARGE_BATCH = 8
LARGE_REQUEST_BYTES = LARGE_BATCH * int(np.prod(LARGE_SHAPE)) * 4  # 4,816,896: 4.6 MiB a request


@dataclass
class LargeOverloadReport:
    """What :func:`large_request_overload` measured; byte counts are the server's, from /proc."""

    max_queue_bytes: int
    streams: int
    depth: int
    request_bytes: int = LARGE_REQUEST_BYTES
    seconds: float = 0.0
    offered: int = 0
    accepted: int = 0
    #: RESOURCE_EXHAUSTED naming the byte budget (``--max-queue-bytes``).
    byte_limited: int = 0
    #: RESOURCE_EXHAUSTED from the request count bound (``queue is full``).
    count_limited: int = 0
    other: Counter[str] = field(default_factory=Counter)
    byte_limit_message: str = ""
    rss_before: int = 0
    #: The highest RSS of the server process while the clients ran (the kernel's VmHWM).
    rss_peak: int = 0
    #: The highest of the RSS samples taken every 20 ms (a cross-check of ``rss_peak``).
    rss_sampled_peak: int = 0
    rss_after: int = 0
    #: The clients were stopped early because the server's RSS passed ``rss_limit``.
    stopped_at_rss_limit: bool = False
    recovery_ok: int = 0
    recovery_total: int = 0
    #: The server's final statistics for the model (answered, failed, samples computed).
    server: FinalStatistics | None = None

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_before

    def summary(self) -> str:
        return (
            f"--max-queue-bytes {self.max_queue_bytes >> 20} MiB, {self.streams} streams x {self.depth} "
            f"outstanding requests of {self.request_bytes / MiB:.1f} MiB for {self.seconds:.1f} s: offered "
            f"{self.offered}, accepted {self.accepted}, RESOURCE_EXHAUSTED {self.byte_limited} by bytes / "
            f"{self.count_limited} by count, other {dict(self.other) or 0}; server RSS before / peak / after "
            f"{self.rss_before >> 20} / {self.rss_peak >> 20} / {self.rss_after >> 20} MiB"
            + (" (clients stopped at the RSS limit)" if self.stopped_at_rss_limit else "")
            + f"; recovery {self.recovery_ok}/{self.recovery_total}"
        )


def large_overload_rss_bound(
    max_queue_bytes: int,
    streams: int,
    *,
    request_bytes: int = LARGE_REQUEST_BYTES,
    instances: int = 1,
    per_stream_requests: int = 6,
    slack: int = 768 * MiB,
) -> int:
    """How much the server's RSS may grow over its idle baseline under :func:`large_request_overload`.

    - queued: at most ``max_queue_bytes`` of input (one request more than the budget only into
      an empty queue), every queued request held twice (its parsed protobuf message and the
      bytes of its input that the batch array is made of): ``2 * (max_queue_bytes + request_bytes)``;
    - computing: one batch per instance, out of the queue: ``2 * request_bytes`` each;
    - in transit, per stream (``--max-concurrent-rpcs`` bounds the streams): the request the
      stream read while it waits for a free place of its ``--max-stream-inflight``, the one
      gRPC is receiving behind it (HTTP/2 flow control lets a busy connection buffer several
      megabytes), each once as wire bytes and once parsed; a refused request is answered and
      dropped at once. This is not a setting of the server: ``per_stream_requests`` = 6 is
      measured (4 to 5 requests' worth per busy stream on 2 cores, 4 to 32 streams);
    - ``slack``: what the allocator keeps of the memory freed by the stream of refused
      requests (hundreds of MiB a second), the ONNX Runtime arena, gRPC's buffers. It varies
      from run to run: with the 64 MiB budget and 4 streams (a bound of 1 GiB) the total growth
      measured 234 to 675 MiB in six runs; the same driver without the budget grew by 2.4 to
      2.6 GiB, so the bound still tells the two apart.

    Without the byte budget the queue is bounded only by streams x ``--max-stream-inflight``
    requests: 4 x 64 requests of 4.6 MiB hold 2.3 GiB of input and messages.
    """
    return (
        2 * (max_queue_bytes + request_bytes)
        + 2 * request_bytes * instances
        + per_stream_requests * request_bytes * streams
        + slack
    )


def publish_large(repo: Path, name: str = "large", *, max_queue_size: int = 1024) -> ModelConfig:
    """A 3x224x224 FP32 model of one small convolution (8 channels): about 30 ms a batch of 8 on
    one thread, so 4.6 MiB requests arrive faster than it computes them and its queue fills."""
    return publish_slow(
        repo,
        name,
        layers=1,
        channels=8,
        size=LARGE_SHAPE[1],
        batching=BatchingConfig(
            max_batch_size=LARGE_BATCH, max_queue_delay_us=0, max_queue_size=max_queue_size
        ),
    )


async def large_request_overload(
    repo: Path,
    *,
    duration: float,
    max_queue_bytes: int = 64 * MiB,
    streams: int = 4,
    depth: int = 64,
    rss_limit: int | None = None,
    recovery_requests: int = 5,
    env: dict[str, str] | None = None,
) -> LargeOverloadReport:
    """Overload ``python -m server`` with large requests; measure its RSS before, at peak, after.

    Publishes :func:`publish_large` into ``repo`` (an empty directory) and starts the server with
    ``--max-queue-bytes max_queue_bytes``, a request bound of 1024 (so only the byte budget
    bounds the queue), ``--max-stream-inflight depth`` and ``--max-concurrent-rpcs streams + 8``.
    ``streams`` clients, each on its own connection, keep ``depth`` requests of
    :data:`LARGE_BATCH` samples (4.6 MiB) outstanding on one ``ModelStreamInfer`` stream for
    ``duration`` seconds, sending the next as soon as an answer (or a refusal) arrives. Then
    ``recovery_requests`` sequential ``ModelInfer`` calls. With ``rss_limit`` the clients stop
    early once the server's RSS passes it (for runs without a byte budget: they would take the
    machine's memory).
    """
    publish_large(repo)
    report = LargeOverloadReport(max_queue_bytes, streams, depth)
    process = ServerProcess(
        repo_args(
            repo,
            "--max-queue-bytes",
            str(max_queue_bytes),
            "--max-stream-inflight",
            str(depth),
            "--max-concurrent-rpcs",
            str(streams + 8),
        ),
        env=env,
    )
    x = np.random.default_rng(0).standard_normal((LARGE_BATCH, *LARGE_SHAPE)).astype(np.float32)
    request = infer_request("large", x)
    try:
        async with aio.insecure_channel(process.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3):  # warm: the runtime's arena for a batch of 8, gRPC's buffers
                await stub.ModelInfer(request, timeout=60)
            report.rss_before = report.rss_sampled_peak = process.rss_bytes()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            started = loop.time()
            timer = loop.call_later(duration, stop.set)

            async def sampler() -> None:
                while not stop.is_set():
                    rss = process.rss_bytes()
                    report.rss_sampled_peak = max(report.rss_sampled_peak, rss)
                    if rss_limit is not None and rss > rss_limit:
                        report.stopped_at_rss_limit = True
                        stop.set()
                    await asyncio.sleep(0.02)

            async def client() -> None:
                credit = asyncio.Semaphore(depth)

                async def requests() -> AsyncIterator[pb.ModelInferRequest]:
                    while True:
                        await credit.acquire()
                        if stop.is_set():
                            return
                        report.offered += 1
                        yield request

                async def wake() -> None:
                    await stop.wait()
                    credit.release()  # a generator waiting for credit sees the stop

                waker = asyncio.ensure_future(wake())
                async with aio.insecure_channel(process.address) as own:
                    try:
                        async for answer in pb_grpc.GRPCInferenceServiceStub(own).ModelStreamInfer(
                            requests()
                        ):
                            credit.release()
                            message = answer.error_message
                            if not message:
                                report.accepted += 1
                            elif "(--max-queue-bytes)" in message:
                                report.byte_limited += 1
                                report.byte_limit_message = report.byte_limit_message or message
                            elif "queue is full" in message:
                                report.count_limited += 1
                            else:
                                report.other[message[:80]] += 1
                    except grpc.aio.AioRpcError as exc:
                        report.other[f"stream {exc.code().name}: {exc.details()}"[:80]] += 1
                    finally:
                        waker.cancel()

            await asyncio.gather(sampler(), *(client() for _ in range(streams)))
            timer.cancel()
            report.seconds = loop.time() - started
            report.rss_peak = max(process.peak_rss_bytes(), report.rss_sampled_peak)
            for _ in range(recovery_requests):
                report.recovery_total += 1
                try:
                    await stub.ModelInfer(request, timeout=30)
                except grpc.aio.AioRpcError:
                    continue
                report.recovery_ok += 1
            report.rss_after = process.rss_bytes()
    finally:
        process.terminate()
        try:
            process.wait(30)
        finally:
            process.kill()
    report.server = process.final_statistics().get("large")
    return report
