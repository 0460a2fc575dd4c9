"""Static checks of deploy/envoy/ (three replicas behind Envoy) against docker-compose.yml and the
server's settings. The replicas run for real in ``make compose-test`` (scripts/compose_test.py);
``docker compose config`` runs here too where the compose plugin is installed."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml
from deploytools import COMPOSE_FILE, ROOT, resolve_defaults
from test_compose_file import SERVERS, docker_compose_available, duration_s, server_settings

from server.settings import Settings

sys.path.insert(0, str(ROOT / "scripts"))
import failover

REPLICAS_FILE = ROOT / "deploy" / "envoy" / "compose.yml"


class _ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: ``!reset`` (drop what an extended service set) becomes None."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


@pytest.fixture(scope="module")
def replicas() -> dict[str, Any]:
    data = resolve_defaults(yaml.load(REPLICAS_FILE.read_text(), Loader=_ComposeLoader))
    assert isinstance(data, dict)
    return data["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    data = yaml.safe_load(failover.ENVOY_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def cluster(envoy: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = envoy["static_resources"]["clusters"]
    return cluster  # type: ignore[no-any-return]


def test_each_replica_is_the_compose_server_without_published_ports(replicas: dict[str, Any]) -> None:
    names = sorted(name for name in replicas if name != "envoy")
    assert names == sorted(failover.REPLICAS)
    for name in names:
        assert replicas[name]["extends"] == {"file": COMPOSE_FILE.name, "service": "server"}, name
        assert "ports" in replicas[name] and replicas[name]["ports"] is None, f"{name} must reset ports"
        assert set(replicas[name]) == {"extends", "ports", "environment"}, (
            f"{name} overrides {set(replicas[name])}"
        )
        assert set(replicas[name]["environment"]) == {"CNNSERVE_SHUTDOWN_DELAY"}


def test_envoy_sends_to_every_replica_on_the_server_port(
    compose: dict[str, Any], cluster: dict[str, Any]
) -> None:
    port = server_settings(compose["services"]["server"]).port
    endpoints = [
        e["endpoint"]["address"]["socket_address"]
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]
    assert sorted((a["address"], a["port_value"]) for a in endpoints) == [
        (n, port) for n in failover.REPLICAS
    ]
    assert cluster["type"] == "STRICT_DNS", "a restarted replica may come back at another address"
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"], "gRPC needs HTTP/2 to the replicas"


def test_envoy_checks_the_overall_health_service(cluster: dict[str, Any]) -> None:
    (check,) = cluster["health_checks"]
    # "" is the server's overall status: NOT_SERVING from the moment it receives SIGTERM.
    assert check["grpc_health_check"]["service_name"] == ""
    assert check["unhealthy_threshold"] == 1, "one NOT_SERVING answer must take a replica out"
    assert cluster["common_lb_config"]["healthy_panic_threshold"]["value"] == 0


def replica_settings(compose: dict[str, Any], replicas: dict[str, Any], name: str) -> Settings:
    """What ``python -m server`` builds in a replica: the server's environment plus the replica's."""
    server = compose["services"]["server"]
    return server_settings(
        {**server, "environment": {**server["environment"], **replicas[name]["environment"]}}
    )


@pytest.mark.parametrize("name", failover.REPLICAS)
def test_a_stopping_replica_serves_until_envoy_has_taken_it_out(
    compose: dict[str, Any], replicas: dict[str, Any], name: str
) -> None:
    # Envoy stops sending to a replica at most one window after SIGTERM (its next health check
    # sees NOT_SERVING); the replica goes on serving for its shutdown delay, which must cover that.
    settings = replica_settings(compose, replicas, name)
    window = failover.shutdown_window_s()
    assert settings.shutdown_delay >= window, f"{name}: delay {settings.shutdown_delay} s < window {window} s"
    # Then it drains; Docker's SIGKILL comes only after stop_grace_period.
    stop = duration_s(compose["services"]["server"]["stop_grace_period"])
    assert settings.shutdown_delay + settings.grace_period + 5 <= stop, f"{name}: stop_grace_period {stop} s"


def test_the_callers_deadline_bounds_every_request(envoy: dict[str, Any]) -> None:
    listener = envoy["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    for route in host["routes"]:
        # Envoy's default 15 s route timeout would cut long batches short; the grpc-timeout header rules.
        assert route["route"]["timeout"] == "0s"
        assert route["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}


def test_published_ports_are_envoys_listener_and_admin(
    replicas: dict[str, Any], envoy: dict[str, Any]
) -> None:
    service = replicas["envoy"]
    assert service["image"] == failover.ENVOY_IMAGE
    listener = envoy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    admin = envoy["admin"]["address"]["socket_address"]["port_value"]
    targets = sorted(int(p.rsplit(":", 1)[1]) for p in service["ports"])
    assert targets == sorted([listener, admin])
    (admin_mapping,) = [p for p in service["ports"] if p.endswith(f":{admin}")]
    assert admin_mapping.startswith("127.0.0.1:"), "Envoy's admin page must not be published beyond loopback"
    mount = f"./{failover.ENVOY_CONFIG.relative_to(ROOT)}:/etc/envoy/envoy.yaml:ro"
    assert service["volumes"] == [mount]
    assert service["command"][:2] == ["-c", "/etc/envoy/envoy.yaml"]


def test_shutdown_window_reads_the_health_check(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load(failover.ENVOY_CONFIG.read_text())
    config["static_resources"]["clusters"][0]["health_checks"][0].update(interval="3s", timeout="0.25s")
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(failover, "ENVOY_CONFIG", path)
    assert failover.shutdown_window_s() == 3.25
    config["static_resources"]["clusters"][0]["health_checks"][0]["interval"] = "3000ms"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="'3000ms'"):
        failover.shutdown_window_s()


def test_monitoring_profile_scrapes_the_replicas(compose: dict[str, Any], replicas: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (sd,) = config["scrape_configs"][0]["dns_sd_configs"]
    assert sorted(sd["names"]) == sorted([*SERVERS, *failover.REPLICAS]), (
        f"Prometheus discovers {sd['names']}"
    )
    for name in failover.REPLICAS:
        assert sd["port"] == replica_settings(compose, replicas, name).metrics_port


@pytest.mark.skipif(not docker_compose_available(), reason="the docker CLI or its compose plugin is absent")
def test_docker_compose_config_accepts_both_files() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "-f", str(REPLICAS_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
