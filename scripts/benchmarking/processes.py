"""The servers under load, as subprocesses on free loopback ports: ``python -m server`` and the
bare baseline handler ``scripts/bare_server.py``."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from benchmarking.commands import PYTHON, ROOT, log, shown
from clients import InferenceClient, InferenceServerError
from clients.bench.accounting import tree_rss_bytes

#: How long a server may take to load its models and answer.
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """A free port P such that P .. P + count - 1 are all free (for --workers' metrics ports)."""
    while True:
        base = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base


class ServerProcess:
    """A gRPC server subprocess: started on entry once it answers, stopped with SIGTERM on exit."""

    #: What ``clients.bench --metrics-url`` reads; None for a server without metrics.
    metrics_url: str | None = None

    def __init__(self, command: Sequence[str], port: int) -> None:
        self.command = list(command)
        self.port = port
        # Closed in __exit__; the server writes its log here for error reports.
        # Append mode: the server writes at the end whatever position log_tail() reads from.
        self.log_file = tempfile.TemporaryFile(mode="a+b")  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    def shown_command(self) -> str:
        """The command as a reader would type it (ports as used in this run)."""
        return shown(self.command)

    def ready(self, client: InferenceClient) -> bool:
        """Whether the server answers; raises InferenceServerError while it cannot."""
        raise NotImplementedError

    def rss_bytes(self) -> int:
        """Resident memory of the server and its child processes (its --workers)."""
        return tree_rss_bytes(self.pid) or 0

    def __enter__(self) -> ServerProcess:
        log("$ " + self.shown_command())
        self.proc = subprocess.Popen(self.command, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT)
        try:
            return self._wait_until_ready()
        except BaseException:
            # ``with`` runs __exit__ only after __enter__ returned: stop what was started here.
            self.__exit__()
            raise

    def _wait_until_ready(self) -> ServerProcess:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with InferenceClient(self.address, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if self.ready(client):
                        time.sleep(0.5)
                        return self
                except InferenceServerError as exc:
                    # Not up yet answers UNAVAILABLE; a server lacking the RPC will never be ready.
                    if exc.status == "UNIMPLEMENTED":
                        raise RuntimeError(f"{self.shown_command()} cannot answer: {exc.message}") from None
                time.sleep(0.3)
        raise RuntimeError(f"server not ready within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()

    def log_tail(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")[-4000:]


class Server(ServerProcess):
    """``python -m server`` on one repository, CPU only, as configured apart from ``extra`` flags."""

    def __init__(
        self, repository: Path, models: Sequence[str], extra: Sequence[str] = (), workers: int = 1
    ) -> None:
        port = free_port()
        self.workers = workers
        # Worker i serves its metrics on metrics_port + i.
        self.metrics_port = free_ports(workers)
        command = [
            PYTHON,
            "-m",
            "server",
            "--repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            "-1",
            "--metrics-port",
            str(self.metrics_port),
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
        ]
        if models:
            command += ["--models", ",".join(models)]
        if workers > 1:
            command += ["--workers", str(workers)]
        super().__init__([*command, *extra], port)
        # Every worker's metrics endpoint, comma-separated (clients.bench adds them up).
        self.metrics_url = ",".join(self._metrics_urls())

    def _metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.metrics_port + i}/metrics" for i in range(self.workers)]

    def ready(self, client: InferenceClient) -> bool:
        # With --workers, connections made before every worker listens would all land on the
        # first one: wait for each worker's metrics endpoint too.
        return client.server_ready() and all(_answers(url) for url in self._metrics_urls())


class BareServer(ServerProcess):
    """``scripts/bare_server.py``: one ONNX Runtime session, one run per request, nothing else."""

    def __init__(self, model_file: Path, model: str, threads: int) -> None:
        self.model = model
        port = free_port()
        command = [
            PYTHON,
            str(ROOT / "scripts" / "bare_server.py"),
            "--model-file",
            str(model_file),
            "--port",
            str(port),
            "--threads",
            str(threads),
        ]
        super().__init__(command, port)

    def ready(self, client: InferenceClient) -> bool:
        # The bare handler has no health RPCs; the metadata clients.bench asks for first will do.
        return bool(client.model_metadata(self.model).inputs)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
