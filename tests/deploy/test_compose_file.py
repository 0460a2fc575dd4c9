"""Static checks of docker-compose.yml against the Dockerfiles, the entry points and the server's
settings. ``docker compose config`` runs too where the compose plugin is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from typing import Any

import pytest
import yaml
from deploytools import (
    COMPOSE_FILE,
    ROOT,
    Dockerfile,
    check_python_command,
    interpolation_names,
    parse_dockerfile,
    parse_server_settings,
    setting_names,
)

from server.settings import Settings

DOCS = ROOT / "docs" / "deployment.md"
SERVERS = ("server", "server-gpu")
PROFILE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def duration_s(text: str) -> float:
    """Seconds in a compose duration such as ``1m30s`` or ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"{text!r} is not a compose duration"
    return sum(float(n) * units[u] for n, u in parts)


def container_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[1].split("/")[0])


def host_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[0].rsplit(":", 1)[-1])


def server_settings(service: dict[str, Any]) -> Settings:
    """What ``python -m server`` builds from this service's environment and command."""
    environment = {str(k): str(v) for k, v in service["environment"].items()}
    return parse_server_settings(service["command"], environment)


def test_default_services_export_then_serve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    default = sorted(name for name, s in services.items() if not s.get("profiles"))
    assert default == ["export", "server"], f"plain `docker compose up` would start {default}"
    assert services["server"]["depends_on"] == {"export": {"condition": "service_completed_successfully"}}
    assert services["export"]["restart"] == "no", "export is a one-shot job"


@pytest.mark.parametrize("name", ["export", "server", "server-gpu"])
def test_builds_reference_existing_files_stages_and_args(compose: dict[str, Any], name: str) -> None:
    build = compose["services"][name]["build"]
    context = ROOT / build["context"]
    assert context.is_dir(), f"{name}: build context {build['context']} does not exist"
    dockerfile_path = context / build["dockerfile"]
    assert dockerfile_path.is_file(), f"{name}: {build['dockerfile']} does not exist"
    dockerfile: Dockerfile = parse_dockerfile(dockerfile_path)
    if "target" in build:
        dockerfile.stage(build["target"])
    for arg, value in build.get("args", {}).items():
        assert arg in dockerfile.args_declared(), f"{name}: build arg {arg} is not an ARG of the Dockerfile"
        if arg == "FLAVOR":
            lock = ROOT / "requirements" / f"serve-{value}.txt"
            assert lock.exists(), f"{name}: FLAVOR={value} names no lock file {lock.relative_to(ROOT)}"


def test_every_command_is_a_tested_entry_point_with_real_flags(compose: dict[str, Any]) -> None:
    checked = 0
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("prom/"):
            continue
        check_python_command(service["command"], f"service {name} command")
        checked += 1
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD", f"{name}: healthcheck must be exec form ['CMD', ...], got {test}"
            check_python_command(test[1:], f"service {name} healthcheck")
    assert checked == 3


def test_export_publishes_into_the_volume_the_servers_read(compose: dict[str, Any]) -> None:
    export = compose["services"]["export"]
    command = export["command"]
    assert "--defaults" in command and "--skip-existing" in command
    repository = command[command.index("--repository") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in export["volumes"]}
    volume = mounts[repository]
    assert volume in compose["volumes"], f"export writes to {volume!r}, which is not a named volume"
    for name in SERVERS:
        service = compose["services"][name]
        settings = server_settings(service)
        _source, target, *mode = next(v for v in service["volumes"] if v.startswith(f"{volume}:")).split(":")
        assert str(settings.repository) == target == repository, f"{name} reads {settings.repository}"
        assert mode == ["ro"], f"{name} must mount the model volume read-only"


@pytest.mark.parametrize("name", SERVERS)
def test_ports_and_health_check_agree_with_server_settings(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    settings = server_settings(service)
    defaults = Settings()
    # The container ports are the settings' defaults, so the image works without any env too.
    ports = ("http_port", "port", "metrics_port")
    assert [getattr(settings, p) for p in ports] == [getattr(defaults, p) for p in ports]
    assert settings.host == "0.0.0.0", f"{name}: host {settings.host} is not reachable from outside"
    published = sorted(container_port(p) for p in service["ports"])
    assert published == sorted(getattr(settings, p) for p in ports), f"{name} publishes {published}"
    test = service["healthcheck"]["test"]
    assert test[test.index("--server") + 1] == f"127.0.0.1:{settings.port}"
    assert "clients.health" in test


@pytest.mark.parametrize("name", SERVERS)
def test_every_server_variable_is_a_server_setting(compose: dict[str, Any], name: str) -> None:
    for key in compose["services"][name]["environment"]:
        if key.startswith("CNNSERVE_"):
            assert key in setting_names(), f"{name}: {key} is not a python -m server setting"


@pytest.mark.parametrize("name", SERVERS)
def test_server_lifecycle_settings(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["restart"] in ("always", "unless-stopped", "on-failure")
    check = service["healthcheck"]
    for key in ("interval", "timeout", "start_period"):
        duration_s(check[key])
    assert duration_s(check["timeout"]) > 3, "the health client's own --timeout 3 must fit in it"
    # Docker sends SIGKILL after stop_grace_period: the server's drain must finish first.
    grace = server_settings(service).grace_period
    assert duration_s(service["stop_grace_period"]) >= grace + 5, (
        f"{name}: stop_grace_period {service['stop_grace_period']} leaves no margin over grace {grace}s"
    )
    limits = service["deploy"]["resources"]["limits"]
    assert limits["memory"], f"{name}: memory limit missing"
    # 0 is "no limit"; any fixed number above the host's CPU count makes Docker refuse to start it.
    assert float(limits["cpus"]) == 0, f"{name}: cpus limit {limits['cpus']}; a 2-CPU host refuses > 2"


def test_gpu_profile_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    service = compose["services"]["server-gpu"]
    assert service["profiles"] == ["gpu"]
    assert server_settings(service).device == "cuda"
    assert service["build"]["args"]["FLAVOR"] == "gpu"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    cpu_ports = {host_port(p) for p in compose["services"]["server"]["ports"]}
    gpu_ports = {host_port(p) for p in service["ports"]}
    assert not cpu_ports & gpu_ports, "server and server-gpu would fight over host ports"
    assert compose["services"]["server"]["environment"]["CNNSERVE_DEVICE"] == "cpu"


def test_monitoring_profile_scrapes_every_server_metrics_port(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    _image, _, tag = prometheus["image"].partition(":")
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"prometheus image {prometheus['image']} is not pinned"
    source, target, *_ = next(v for v in prometheus["volumes"] if "prometheus.yml" in v).split(":")
    config_path = ROOT / source
    assert config_path.is_file(), f"{source} does not exist"
    assert f"--config.file={target}" in prometheus["command"]
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    # Every server of this file, plus the replicas of deploy/envoy/compose.yml (checked there).
    assert set(SERVERS) <= set(sd["names"])
    for name in SERVERS:
        assert sd["port"] == server_settings(compose["services"][name]).metrics_port


def test_profiles_are_well_formed(compose: dict[str, Any]) -> None:
    seen = set()
    for name, service in compose["services"].items():
        profiles = service.get("profiles", [])
        assert isinstance(profiles, list), f"{name}: profiles must be a list"
        for profile in profiles:
            assert PROFILE_NAME.fullmatch(profile), f"{name}: profile {profile!r} is not a valid name"
            seen.add(profile)
        for dependency in service.get("depends_on", {}):
            assert not compose["services"][dependency].get("profiles"), (
                f"{name} depends on {dependency}, which only runs under a profile"
            )
    assert seen == {"gpu", "monitoring"}


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source!r} is not declared"


def test_image_tags_default_to_the_project_version(compose: dict[str, Any]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name in ("export", "server", "server-gpu"):
        assert compose["services"][name]["image"].endswith(f":{version}"), name


def test_every_variable_is_documented(compose_raw: dict[str, Any]) -> None:
    docs = DOCS.read_text()
    names = interpolation_names(compose_raw)
    for service in compose_raw["services"].values():
        names |= {k for k in service.get("environment", {}) if k.startswith("CNNSERVE_")}
    assert names
    for name in sorted(names):
        assert f"`{name}`" in docs, f"{name} is used in docker-compose.yml but not documented in {DOCS.name}"


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return result.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="the docker CLI or its compose plugin is absent")
@pytest.mark.parametrize("profiles", [[], ["gpu", "monitoring"]], ids=["default", "all-profiles"])
def test_docker_compose_config_accepts_the_file(profiles: list[str]) -> None:
    # `config` only parses and validates against the compose spec: it needs no daemon.
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), *flags, "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
